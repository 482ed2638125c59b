"""The evaluation runner: grouped encoding, records against a per-sentence NumPy reference,
resume from a torn predictions file, run-folder config checks, masks as RLE."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from refbench.errors import OutputError
from tests.eval_support import SPLIT, reference_records, write_model_plugin, write_refer


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    write_model_plugin(tmp_path / "plugin")
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    yield
    sys.modules.pop("evaltest_plugin", None)


@pytest.fixture
def data(tmp_path):
    return write_refer(tmp_path / "data", num_images=7)


def _dataset(tmp_path):
    from refbench.data.refer import ReferDataset

    return ReferDataset(tmp_path / "data", SPLIT)


def _records(run_dir):
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _reference_metrics(reference):
    inter = np.array([r["inter"] for r in reference], dtype=np.float64)
    union = np.array([r["union"] for r in reference], dtype=np.float64)
    return {
        "PointM": float(np.mean([r["point_hit"] for r in reference])),
        "mIoU": float(np.mean(inter / union)),
        "oIoU": float(inter.sum() / union.sum()),
    }


def test_grouped_run_matches_a_per_sentence_reference(tmp_path, plugin, data):
    from refbench import create_model
    from refbench.eval.runner import evaluate

    model = create_model("evaltest")
    result = evaluate(model, _dataset(tmp_path), batch_size=3, out_dir=tmp_path / "runs",
                      progress=False)
    reference = reference_records(data)
    # every image encoded exactly once, in ceil(7 / 3) batches
    assert model.images_encoded == 7 and model.predict_calls == 3
    from pathlib import Path

    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path / "runs" / "evaltest" / SPLIT
    records = {r["key"]: r for r in _records(run_dir)}
    assert sorted(records) == sorted(r["key"] for r in reference)
    for expected in reference:
        got = records[expected["key"]]
        for field in ("peak", "point_hit", "box_hit", "inter", "union", "on_background"):
            assert got[field] == expected[field], (expected["key"], field)
    assert result["n"] == len(reference)
    for name, value in _reference_metrics(reference).items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-12)
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert stored["metrics"] == result["metrics"] and "run_dir" not in stored
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["model"], config["split"], config["protocol"]) == ("evaltest", SPLIT, "tris")
    assert config["num_expressions"] == len(reference) and config["weights"] == "random init"
    env = json.loads((run_dir / "env.json").read_text())
    assert env["model_distribution"] == {"name": "evaltest-plugin", "version": "0.0.1"}
    assert env["world_size"] == 1 and env["seed"] == 0


def test_first_sentence_mode_scores_one_sentence_per_object(tmp_path, plugin, data):
    from refbench import create_model
    from refbench.eval.runner import evaluate

    result = evaluate(create_model("evaltest"), _dataset(tmp_path), sentences="first",
                      out_dir=tmp_path / "runs", progress=False, num_workers=2)
    reference = reference_records(data, sentences="first")
    assert result["n"] == len(reference) == 14
    for name, value in _reference_metrics(reference).items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-12)


def test_resume_skips_finished_expressions_and_cuts_a_torn_line(tmp_path, plugin, data):
    from refbench import create_model
    from refbench.eval.runner import evaluate

    full = evaluate(create_model("evaltest"), _dataset(tmp_path), batch_size=2,
                    out_dir=tmp_path / "full", progress=False)
    partial = evaluate(create_model("evaltest"), _dataset(tmp_path), batch_size=2,
                       out_dir=tmp_path / "part", progress=False)
    from pathlib import Path

    run_dir = Path(partial["run_dir"])
    lines = (run_dir / "predictions.jsonl").read_text().splitlines(keepends=True)
    # a crash after 5 whole lines and half of the sixth, before metrics.json
    (run_dir / "predictions.jsonl").write_text("".join(lines[:5]) + lines[5][:20])
    (run_dir / "metrics.json").unlink()
    model = create_model("evaltest")
    resumed = evaluate(model, _dataset(tmp_path), batch_size=2, out_dir=tmp_path / "part",
                       progress=False)
    assert resumed["run_dir"] == str(run_dir)  # the unfinished folder was reused
    keys = [r["key"] for r in _records(run_dir)]
    assert len(keys) == len(set(keys)) == full["n"]
    assert model.predict_calls > 0 and model.images_encoded < 7  # finished images skipped
    assert resumed["metrics"] == full["metrics"]
    env = json.loads((run_dir / "env.json").read_text())
    assert len(env["resumes"]) == 1


def test_resume_refuses_a_folder_with_another_config(tmp_path, plugin, data):
    from refbench import create_model
    from refbench.eval.runner import evaluate

    first = evaluate(create_model("evaltest"), _dataset(tmp_path), out_dir=tmp_path / "runs",
                     progress=False)
    from pathlib import Path

    run_dir = Path(first["run_dir"])
    (run_dir / "metrics.json").unlink()
    with pytest.raises(OutputError, match="protocol"):
        evaluate(create_model("evaltest"), _dataset(tmp_path), protocol="sag",
                 run_dir=run_dir, progress=False)
    with pytest.raises(OutputError, match="grid"):
        evaluate(create_model("evaltest", grid=4), _dataset(tmp_path), run_dir=run_dir,
                 progress=False)
    # without --resume a different config starts a new folder instead of reusing this one
    other = evaluate(create_model("evaltest"), _dataset(tmp_path), protocol="sag",
                     out_dir=tmp_path / "runs", progress=False)
    assert other["run_dir"] != str(run_dir) and not (run_dir / "metrics.json").exists()


def test_saved_masks_decode_to_the_protocol_mask(tmp_path, plugin, data):
    from pycocotools import mask as mask_utils

    from refbench import create_model
    from refbench.eval.runner import evaluate

    result = evaluate(create_model("evaltest", stages=2), _dataset(tmp_path), save_masks=True,
                      out_dir=tmp_path / "runs", progress=False)
    from pathlib import Path

    records = {r["key"]: r for r in _records(Path(result["run_dir"]))}
    for expected in reference_records(data):
        record = records[expected["key"]]
        rle = dict(record["rle"])
        rle["counts"] = rle["counts"].encode("ascii")
        decoded = mask_utils.decode(rle).astype(bool)
        assert np.array_equal(decoded, expected["mask"])
        assert record["stage_peaks"][0] == expected["peak"]  # stage 0 is the map itself
        assert len(record["stage_peaks"]) == 2


def _tiny_annotation_1002() -> dict[str, np.ndarray]:
    """Annotation 1002 of tests/refer_fixture.py (image 101, 16 x 24): the polygons
    (12, 2)-(20, 8) and (16, 5)-(23, 12) cover columns 12..19 x rows 2..7 and columns 16..22 x
    rows 5..11; both cover columns 16..19 x rows 5..7."""
    first = np.zeros((16, 24), dtype=bool)
    first[2:8, 12:20] = True
    second = np.zeros((16, 24), dtype=bool)
    second[5:12, 16:23] = True
    return {"union": first | second, "once": first ^ second}


@pytest.mark.parametrize(("protocol", "overlap"), [("tris", "once"), ("sag", "union")])
def test_ground_truth_masks_follow_the_protocol(tmp_path, protocol, overlap):
    from refbench.data.refer import ReferDataset
    from refbench.data.transforms import ModelImageTransform
    from refbench.eval.runner import ImageGroups
    from tests.refer_fixture import make_tiny_refer

    fixture = make_tiny_refer(tmp_path / "tiny")
    dataset = ReferDataset(fixture["root"], "refcoco-val")
    groups = [(101, dataset.expressions_by_image()[101])]
    transform = ModelImageTransform(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    item = ImageGroups(dataset, groups, transform, protocol=protocol)[0]
    expected = _tiny_annotation_1002()
    for index, expression in enumerate(groups[0][1]):
        want = fixture["masks"][expression.ann_id]
        if expression.ann_id == 1002:
            want = expected[overlap]
        assert np.array_equal(item["gt_masks"][index].numpy(), want), expression.key
    # BackgroundPeaks' objects stay the union of every annotation under every protocol
    objects = np.zeros((16, 24), dtype=bool)
    for ann_id in fixture["annotation_ids"][101]:
        objects |= fixture["masks"][ann_id]
    assert np.array_equal(item["object_masks"][0].numpy(), objects)
    assert item["object_masks"][0, 6, 17]  # a pixel both polygons of 1002 cover


def test_runs_score_against_the_protocol_ground_truth(tmp_path):
    """Records of annotation 1002 (two overlapping polygons): tris scores against the pixels
    covered once, sag against the union; the saved masks are what was scored."""
    from pathlib import Path

    from pycocotools import mask as mask_utils

    from refbench import create_model
    from refbench.data.refer import ReferDataset
    from refbench.eval.runner import evaluate
    from tests.refer_fixture import make_tiny_refer

    fixture = make_tiny_refer(tmp_path / "tiny")
    expected = _tiny_annotation_1002()
    counts = {}
    for protocol, overlap in (("tris", "once"), ("sag", "union")):
        result = evaluate(create_model("center"), ReferDataset(fixture["root"], "refcoco-val"),
                          protocol=protocol, save_masks=True, out_dir=tmp_path / "runs",
                          progress=False)
        records = [r for r in _records(Path(result["run_dir"])) if r["ann_id"] == 1002]
        assert records
        for record in records:
            rle = dict(record["rle"])
            rle["counts"] = rle["counts"].encode("ascii")
            predicted = mask_utils.decode(rle).astype(bool)
            gt = expected[overlap]
            assert record["inter"] == int((predicted & gt).sum()), protocol
            assert record["union"] == int((predicted | gt).sum()), protocol
            y, x = record["peak"]
            assert record["point_hit"] == bool(gt[y, x])
        counts[protocol] = (records[0]["inter"], records[0]["union"])
    # the centre prior's tris mask is the whole image: its intersection is the whole target
    assert counts["tris"] == (48 + 49 - 2 * 12, 16 * 24)


def test_transform_resizes_and_normalises():
    from refbench.data.transforms import ModelImageTransform

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    same_size = ModelImageTransform(size=30, mean=mean, std=std)(image[:, :30])
    expected = (image[:, :30].astype(np.float64) / 255.0 - mean) / np.array(std)
    assert same_size.shape == (3, 30, 30)
    assert np.allclose(same_size.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    constant = np.full((30, 50, 3), 200, dtype=np.uint8)
    resized = ModelImageTransform(size=16, mean=mean, std=std)(constant)
    assert resized.shape == (3, 16, 16)
    assert torch.allclose(resized[0], torch.full((16, 16), (200 / 255 - 0.5) / 0.2), atol=1e-5)


@pytest.mark.parametrize("sentences", ["all", "first"])
def test_every_refcoco_family_split_of_the_tiny_fixture(tmp_path, sentences):
    """Mixed image formats (grayscale, RGBA, JPEG, dataset-local copies) on every split."""
    from refbench import create_model
    from refbench.data.refer import ReferDataset
    from refbench.eval.runner import evaluate
    from tests.refer_fixture import make_tiny_refer

    fixture = make_tiny_refer(tmp_path / "tiny")
    for split_id, expected in fixture["splits"].items():
        if not expected["sentences"]:
            continue
        result = evaluate(create_model("center"), ReferDataset(fixture["root"], split_id),
                          sentences=sentences, batch_size=2, out_dir=tmp_path / "runs",
                          progress=False)
        from pathlib import Path

        records = _records(Path(result["run_dir"]))
        wanted = expected["sentences"] if sentences == "all" else expected["first"]
        assert sorted(r["key"] for r in records) == sorted(f"{i}:{r}:{s}" for i, r, s, _ in wanted)
        for record in records:
            image = fixture["images"][record["image_id"]]
            assert (record["height"], record["width"]) == (image["height"], image["width"])
            y, x = record["peak"]
            # the default protocol (tris) scores annotation 1002 against the pixels only one of
            # its two polygons covers; every other annotation is one polygon or one RLE
            gt = fixture["masks"][record["ann_id"]]
            if record["ann_id"] == 1002:
                gt = _tiny_annotation_1002()["once"]
            assert record["point_hit"] == bool(gt[y, x])
            on_any = any(fixture["masks"][a][y, x]
                         for a in fixture["annotation_ids"][record["image_id"]])
            assert record["on_background"] == (not on_any)


def test_saved_maps_hold_each_expression_and_stage_at_model_resolution(tmp_path, plugin, data):
    import zlib
    from pathlib import Path

    import torch

    from refbench import create_model
    from refbench.eval.runner import evaluate

    result = evaluate(create_model("evaltest", stages=3), _dataset(tmp_path), save_maps=True,
                      out_dir=tmp_path / "runs", progress=False)
    folder = Path(result["run_dir"]) / "maps"
    records = _records(Path(result["run_dir"]))
    assert sorted(p.stem for p in folder.glob("*.npz")) == sorted(
        {str(r["image_id"]) for r in records}
    )
    seen = 0
    for path in folder.glob("*.npz"):
        with np.load(path) as saved:
            assert saved["response"].shape[1:] == (8, 8) and saved["stages"].shape[1:] == (3, 8, 8)
            for index, key in enumerate(saved["keys"]):
                # the test model's map: randn seeded by the key; stage s = map rolled by s
                generator = torch.Generator().manual_seed(zlib.crc32(str(key).encode()))
                expected = torch.randn(8, 8, generator=generator).numpy()
                np.testing.assert_allclose(saved["response"][index], expected, atol=2e-3, rtol=1e-3)
                np.testing.assert_allclose(
                    saved["stages"][index, 2], np.roll(expected, 2, axis=-1), atol=2e-3, rtol=1e-3
                )
                seen += 1
    assert seen == len(records)
