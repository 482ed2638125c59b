"""`refbench train`: resume folders, config files, cue building, and short CLI runs of a tiny
trainable plugin (the model's selection metric and sampling unit)."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest

from refbench.cli import main
from refbench.cli.train import false_negative_mask, find_resume_dir, read_config_file
from refbench.cues import ensure_cues
from refbench.errors import CheckpointError, ConfigError, DataError


def test_resume_finds_the_newest_run_with_a_checkpoint(tmp_path: Path) -> None:
    parent = tmp_path / "tiny" / "synth-train"
    for name, has_ckpt in (("20250101-000000_abc", True), ("20250102-000000_abc", True),
                           ("20250103-000000_abc", False)):
        (parent / name).mkdir(parents=True)
        if has_ckpt:
            (parent / name / "last.pt").write_bytes(b"x")
    assert find_resume_dir(tmp_path, "tiny", "synth-train", "latest").name == "20250102-000000_abc"
    explicit = parent / "20250101-000000_abc"
    assert find_resume_dir(tmp_path, "tiny", "synth-train", str(explicit)) == explicit
    assert find_resume_dir(tmp_path, "tiny", "synth-train", str(explicit / "last.pt")) == explicit
    with pytest.raises(CheckpointError, match="20250103-000000_abc/last.pt does not exist"):
        find_resume_dir(tmp_path, "tiny", "synth-train", str(parent / "20250103-000000_abc"))
    with pytest.raises(CheckpointError, match="no training run of tiny on refcoco-train"):
        find_resume_dir(tmp_path, "tiny", "refcoco-train", "latest")


def test_config_file_must_be_a_json_object(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"lr": 1e-4, "epochs": 2}))
    assert read_config_file(str(good)) == {"lr": 1e-4, "epochs": 2}
    assert read_config_file(None) == {}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        read_config_file(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        read_config_file(str(tmp_path / "missing.json"))


def test_missing_heuristic_cues_are_built_on_demand(tmp_path: Path, monkeypatch) -> None:
    from refbench.data import refer
    from tests.refer_fixture import make_tiny_refer

    monkeypatch.setenv("REFBENCH_CACHE", str(tmp_path / "cache"))
    refer.clear_cache()
    make_tiny_refer(tmp_path / "data")
    dataset = refer.ReferDataset(tmp_path / "data", "refcoco-train")
    backend, table = ensure_cues(dataset, None, 3)
    assert backend == "heuristic"
    keys = {e.key for e in dataset.expressions("all")}
    assert set(table) >= keys and all(len(table[k]) == 3 for k in keys)
    with pytest.raises(ConfigError, match="only works on SynthRef"):
        ensure_cues(dataset, "template", 3)
    with pytest.raises(ConfigError, match="needs a SynthRef split"):
        false_negative_mask(dataset)


# --- short runs through the CLI ------------------------------------------------------------

TRAIN_MODEL_SOURCE = """
import torch

from refbench.api import Batch, Prediction, TrainableModel


class TrainTestModel(TrainableModel):
    name = "traintest"

    @classmethod
    def default_config(cls):
        config = super().default_config()
        config.update({"input_size": 16, "batch_size": 2, "epochs": 1, "num_distinct": 1,
                       "sampling": "images", "selection_metric": "PointM", "resize": "torch"})
        return config

    def __init__(self, config=None):
        super().__init__(config)
        self.weight = torch.nn.Parameter(torch.ones(3))

    def _maps(self, batch):
        maps = torch.einsum("bchw,c->bhw", batch.images, self.weight)
        return maps[batch.image_index()]

    def training_step(self, batch: Batch):
        return {"loss": self._maps(batch).mean() ** 2}

    def predict(self, batch: Batch) -> Prediction:
        return Prediction(response_maps=self._maps(batch))
"""


@pytest.fixture
def train_plugin(tmp_path, monkeypatch):
    from tests.eval_support import write_refer
    from tests.plugin_fixture import write_plugin

    write_plugin(tmp_path / "plugin", "traintest-plugin", "0.0.1", "traintest_plugin",
                 {"traintest": "traintest_plugin:TrainTestModel"}, TRAIN_MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    monkeypatch.setenv("REFBENCH_NO_PROGRESS", "1")
    data = write_refer(tmp_path / "data", num_images=4)
    # two train refs per image (write_refer gives one): 8 refs over 4 images
    refs = data["refs"]
    for index, ref in enumerate(refs):
        ref["split"] = "val" if index % 3 == 0 else "train"
    with open(tmp_path / "data" / "refcocog" / "refs(google).p", "wb") as handle:
        pickle.dump(refs, handle)
    yield tmp_path
    sys.modules.pop("traintest_plugin", None)


def _runs(root: Path) -> set[Path]:
    parent = root / "runs" / "traintest" / "refcocog-train-g"
    return set(parent.iterdir()) if parent.is_dir() else set()


def _train(root: Path, *extra: str) -> tuple[int, Path | None]:
    """(exit code, the run folder this call created or None)."""
    from refbench.data import refer

    refer.clear_cache()
    before = _runs(root)
    code = main(["train", "--model", "traintest", "--split", "refcocog-train-g",
                 "--val-split", "refcocog-val-g", "--data-root", str(root / "data"),
                 "--out", str(root / "runs"), "--device", "cpu", *extra])
    created = _runs(root) - before
    assert len(created) <= 1
    return code, created.pop() if created else None


def _read(run: Path | None, name: str) -> dict:
    assert run is not None
    return json.loads((run / name).read_text())


def test_cli_selection_metric_defaults_to_the_models(train_plugin: Path, capsys) -> None:
    code, run = _train(train_plugin)
    assert code == 0
    assert _read(run, "config.json")["selection_metric"] == "PointM"
    assert _read(run, "train_summary.json")["best_metric"] == "PointM"

    code, run = _train(train_plugin, "--set", "selection_metric=mIoU")
    assert code == 0
    assert _read(run, "config.json")["selection_metric"] == "mIoU"
    assert _read(run, "train_summary.json")["best_metric"] == "mIoU"
    assert "best checkpoint (mIoU " in capsys.readouterr().out

    code, run = _train(train_plugin, "--set", "selection_metric=mIoU", "--metric", "PointM")
    assert code == 0
    assert _read(run, "config.json")["selection_metric"] == "PointM"


def test_cli_batch_size_check_follows_the_sampling_unit(train_plugin: Path, capsys) -> None:
    assert _train(train_plugin, "--batch-size", "5") == (2, None)  # 4 images: nothing written
    assert "batch_size 5 is larger than the 4 distinct images" in capsys.readouterr().err
    assert _train(train_plugin, "--batch-size", "9", "--set", "sampling=refs") == (2, None)
    assert "batch_size 9 is larger than the 8 refs" in capsys.readouterr().err
    code, run = _train(train_plugin, "--batch-size", "8", "--set", "sampling=refs")
    assert code == 0
    assert _read(run, "config.json")["model_config"]["sampling"] == "refs"
    summary = _read(run, "train_summary.json")
    assert summary["steps_per_epoch"] == 1 and summary["finished"]
