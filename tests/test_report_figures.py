"""Figures: valid PNGs with the expected panel count; `show` end to end on the tiny refer set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from refbench.api import Batch, Prediction, RISModel
from refbench.cli import cli
from refbench.data.refer import ReferDataset
from refbench.errors import ConfigError, DataError
from refbench.report.figures import compute_items, plot_curves, show_compare, show_run
from refbench.report.runs import load_run
from tests.refer_fixture import make_tiny_refer
from tests.report_fixture import write_run


def _records(info, split="refcoco-val"):
    return [{"key": f"{i}:{r}:{s}", "point_hit": True, "box_hit": True, "on_background": False,
             "inter": 1, "union": 2} for i, r, s, _ in info["splits"][split]["sentences"]]


@pytest.fixture
def tiny(tmp_path):
    info = make_tiny_refer(tmp_path / "data")
    run = write_run(tmp_path, "center", "refcoco-val", _records(info), data_root=str(tmp_path / "data"),
                    model_config={"input_size": 32, "map_size": 10, "sigma": 0.25})
    other = write_run(tmp_path, "random", "refcoco-val", _records(info), data_root=str(tmp_path / "data"),
                      model_config={"input_size": 32, "map_size": 10, "seed": 0})
    return info, run, other


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_show_center_end_to_end(tiny, tmp_path) -> None:
    info, run, _ = tiny
    out = tmp_path / "show.png"
    panels = show_run(load_run(run), out, n=3, seed=1)
    assert panels == 3 * 3  # image, ground truth, map per expression
    # 240 px per panel at 100 dpi: 3 columns by 3 rows
    assert _png_size(out) == (720, 720)


def test_center_map_peak_is_the_image_centre(tiny, tmp_path) -> None:
    info, run, _ = tiny
    key = "{}:{}:{}".format(*info["splits"]["refcoco-val"]["sentences"][0][:3])
    item = compute_items(load_run(run), [key])[0]
    height, width = item.image.shape[:2]
    assert item.response_map.shape == (height, width)
    # the centre prior's peak is at the middle of the image, within one map cell
    assert abs(item.peak[0] - (height - 1) / 2) <= height / 10 + 0.5
    assert abs(item.peak[1] - (width - 1) / 2) <= width / 10 + 0.5
    ann_id = info["refs"][("refcoco", "unc")][int(key.split(":")[1])]["ann_id"]
    # the ground truth the run's protocol (tris) scores: pixels under exactly one polygon
    once = ReferDataset(tmp_path / "data", "refcoco-val").mask(ann_id, overlap="once")
    assert np.array_equal(item.ground_truth, once)
    assert not (item.ground_truth & ~info["masks"][ann_id]).any()


class StagedModel(RISModel):
    """Three stage maps whose peaks move left to right (for the stage-panel test)."""

    name = "staged"

    def predict(self, batch: Batch) -> Prediction:
        count = batch.num_expressions
        stages = torch.zeros(count, 3, 8, 8)
        for stage in range(3):
            stages[:, stage, 4, 2 * stage + 1] = 1.0
        return Prediction(response_maps=stages[:, -1], stage_maps=stages)


def test_show_draws_each_stage(tiny, tmp_path) -> None:
    _, run, _ = tiny
    out = tmp_path / "stages.png"
    panels = show_run(load_run(run), out, n=2, model=StagedModel())
    assert panels == 2 * (3 + 3)
    assert _png_size(out) == (6 * 240, 2 * 240)


def test_show_compare_side_by_side(tiny, tmp_path) -> None:
    info, run, other = tiny
    out = tmp_path / "compare.png"
    keys = ["{}:{}:{}".format(*s[:3]) for s in info["splits"]["refcoco-val"]["sentences"][:2]]
    panels = show_compare([load_run(run), load_run(other)], out, keys=keys)
    assert panels == 2 * (2 + 2)
    _png_size(out)


def test_show_compare_refuses_other_splits(tiny, tmp_path) -> None:
    info, run, _ = tiny
    testa = write_run(tmp_path, "random", "refcoco-testa", _records(info, "refcoco-testa"),
                      data_root=str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="different splits"):
        show_compare([load_run(run), load_run(testa)], tmp_path / "x.png")


def test_show_unknown_key(tiny, tmp_path) -> None:
    _, run, _ = tiny
    with pytest.raises(DataError, match="9:9:9"):
        show_run(load_run(run), tmp_path / "x.png", keys=["9:9:9"])


def test_show_cli(tiny, tmp_path) -> None:
    _, run, _ = tiny
    out = tmp_path / "cli.png"
    result = CliRunner().invoke(cli, ["show", str(run), "--n", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "(6 panels)" in result.output
    _png_size(out)


def test_curves(tmp_path) -> None:
    log = tmp_path / "train_log.jsonl"
    lines = [{"step": s, "epoch": s // 5, "loss/cls": 1 / (s + 1), "loss/ras": 0.5 - s / 40,
              "loss": 1.5, "lr": 1e-4 * (1 - s / 10)} for s in range(10)]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "curves.png"
    assert plot_curves(tmp_path, out) == 4  # loss, loss/cls, loss/ras, lr
    _png_size(out)
    result = CliRunner().invoke(cli, ["curves", str(log), "--out", str(tmp_path / "c2.png")])
    assert result.exit_code == 0 and "(4 panels)" in result.output
    # the trainer's own layout: named losses nested under "losses", validation lines skipped
    trainer_lines = [{"kind": "train", "step": s, "loss": 2.0 - s / 10, "losses": {"cls": 1.0, "ras": 0.2},
                      "lr": 1e-4, "lrs": [1e-4, 1e-5]} for s in range(5)]
    trainer_lines.append({"kind": "val", "epoch": 0, "value": 0.4, "metrics": {"PointM": 0.4}})
    log.write_text("".join(json.dumps(line) + "\n" for line in trainer_lines))
    assert plot_curves(log, out) == 4  # loss, loss/cls, loss/ras, lr
    log.write_text(json.dumps({"step": 1, "lr": 0.1}) + "\n")
    with pytest.raises(DataError, match="no 'loss"):
        plot_curves(log, out)


def test_figure_labels_equal_the_runs_predictions(tiny, tmp_path, monkeypatch) -> None:
    """A figure's peaks and hit/miss labels are the run's, whether read from predictions.jsonl
    or recomputed by the run's protocol (the old align_corners=False resize disagreed)."""
    import torch.nn.functional as F

    from refbench.data.transforms import ModelImageTransform
    from refbench.eval.runner import evaluate
    from refbench.registry import load_model
    from refbench.report import figures

    dataset = ReferDataset(tmp_path / "data", "refcoco-val")
    model = load_model("random", input_size=32, map_size=10, seed=3)
    result = evaluate(model, dataset, protocol="tris", out_dir=tmp_path / "runs", progress=False)
    run = load_run(result["run_dir"])
    records = {r["key"]: r for r in run.records()}
    keys = sorted(records)
    titles: list[str] = []

    def keep_titles(figure, out):
        titles.extend(axis.get_title() for axis in figure.axes[2::3])
        return len(figure.axes)

    monkeypatch.setattr(figures, "save_figure", keep_titles)
    show_run(run, tmp_path / "show.png", keys=keys)
    assert titles == [f"random {'hit' if records[k]['point_hit'] else 'miss'}" for k in keys]

    recomputed = load_run(result["run_dir"])
    recomputed._records = [{"key": k} for k in keys]  # no recorded peaks: the protocol decides
    for source in (run, recomputed):
        items = compute_items(source, keys)
        assert [i.peak for i in items] == [tuple(records[k]["peak"]) for k in keys]
        assert [i.hit for i in items] == [records[k]["point_hit"] for k in keys]

    # the resize the figures used to do moves some peaks: this test would have caught it
    old_peaks = []
    for item in compute_items(recomputed, keys):
        expression = next(e for e in dataset.expressions("all") if e.key == item.key)
        image = dataset.load_image(expression.image_id)
        batch = Batch(ModelImageTransform.for_model(model.config)(image)[None], [[expression]])
        maps = model.predict(batch).response_maps[:, None].float()
        resized = F.interpolate(maps, size=image.shape[:2], mode="bilinear", align_corners=False)
        old = np.unravel_index(int(np.argmax(resized[0, 0].numpy())), image.shape[:2])
        old_peaks.append((int(old[0]), int(old[1])))
    assert old_peaks != [tuple(records[k]["peak"]) for k in keys]
