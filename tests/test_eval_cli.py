"""``refbench eval`` and ``refbench score`` through the CLI: the table, the run folder, and every
user mistake as one line with exit code 2 and nothing half-written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from refbench.cli import main
from tests.eval_support import SPLIT, write_model_plugin, write_refer


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    write_model_plugin(tmp_path / "plugin")
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    monkeypatch.setenv("REFBENCH_NO_PROGRESS", "1")
    yield
    sys.modules.pop("evaltest_plugin", None)


@pytest.fixture
def data(tmp_path):
    return write_refer(tmp_path / "data", num_images=5)


def _eval(tmp_path, *extra):
    args = ["eval", "--model", "evaltest", "--split", SPLIT, "--data-root",
            str(tmp_path / "data"), "--out", str(tmp_path / "runs"), *extra]
    return main(args)


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_eval_prints_the_table_and_leaves_a_run_folder(tmp_path, plugin, data, capsys):
    assert _eval(tmp_path, "--batch-size", "2") == 0
    out = capsys.readouterr().out
    run_dirs = list((tmp_path / "runs" / "evaltest" / SPLIT).iterdir())
    assert len(run_dirs) == 1
    metrics = json.loads((run_dirs[0] / "metrics.json").read_text())
    assert f"{100 * metrics['metrics']['mIoU']:.2f}" in out
    assert "PointM" in out and "weights: random init" in out and str(run_dirs[0]) in out.replace("\n", "")


def test_score_recomputes_from_predictions_alone(tmp_path, plugin, data, capsys):
    assert _eval(tmp_path) == 0
    run_dir = next((tmp_path / "runs" / "evaltest" / SPLIT).iterdir())
    stored = json.loads((run_dir / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["score", str(run_dir)]) == 0
    assert "matches the stored" in capsys.readouterr().out
    # flip one expression's point hit: PointM must move by exactly 1/n
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["point_hit"] = not record["point_hit"]
    lines[0] = json.dumps(record)
    (run_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["score", str(run_dir)]) == 0
    assert "differs" in capsys.readouterr().out
    rescored = json.loads((run_dir / "metrics.json").read_text())
    step = (1 if record["point_hit"] else -1) / stored["n"]
    assert rescored["metrics"]["PointM"] == pytest.approx(stored["metrics"]["PointM"] + step)
    # an unfinished run is not scored as if it were complete
    (run_dir / "predictions.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert main(["score", str(run_dir)]) == 2
    assert "unfinished (3 of" in _one_error_line(capsys)


def test_unknown_model_and_split(tmp_path, plugin, data, capsys):
    assert main(["eval", "--model", "evaltset", "--split", SPLIT, "--data-root",
                 str(tmp_path / "data"), "--out", str(tmp_path / "runs")]) == 2
    assert "evaltest" in _one_error_line(capsys)  # did-you-mean
    assert main(["eval", "--model", "evaltest", "--split", "refcocog-vall-g", "--data-root",
                 str(tmp_path / "data"), "--out", str(tmp_path / "runs")]) == 2
    assert "refcocog-val-g" in _one_error_line(capsys)
    assert _files_under(tmp_path / "runs") == []


def test_missing_data_root_and_files(tmp_path, plugin, data, capsys):
    assert main(["eval", "--model", "evaltest", "--split", SPLIT,
                 "--out", str(tmp_path / "runs")]) == 2
    assert "--data-root" in _one_error_line(capsys)
    assert main(["eval", "--model", "evaltest", "--split", SPLIT, "--data-root",
                 str(tmp_path / "nowhere"), "--out", str(tmp_path / "runs")]) == 2
    assert str(tmp_path / "nowhere") in _one_error_line(capsys)
    (tmp_path / "data" / "refcocog" / "refs(google).p").unlink()
    assert _eval(tmp_path) == 2
    assert "refs(google).p" in _one_error_line(capsys)
    assert _files_under(tmp_path / "runs") == []


def test_corrupt_image_is_named_and_nothing_is_left(tmp_path, plugin, data, capsys):
    name = data["images"][0]["file_name"]
    (tmp_path / "data" / "images" / "train2014" / name).write_bytes(b"not a png at all")
    for workers in ("0", "2"):
        assert _eval(tmp_path, "--num-workers", workers) == 2
        assert name in _one_error_line(capsys)
        assert _files_under(tmp_path / "runs") == []


def test_checkpoint_of_another_model(tmp_path, plugin, data, capsys):
    from refbench import create_model

    checkpoint = tmp_path / "other.pt"
    torch.save(create_model("evalother").checkpoint_state(), checkpoint)
    assert _eval(tmp_path, "--checkpoint", str(checkpoint)) == 2
    assert "evalother" in _one_error_line(capsys)
    assert _files_under(tmp_path / "runs") == []


def test_nan_response_map_names_the_expression(tmp_path, plugin, data, capsys):
    ref = next(r for r in data["refs"] if r["split"] == "val")
    sentence = ref["sentences"][0]
    word = sentence["sent"].split()[0]
    assert _eval(tmp_path, "--set", f'nan_word="{word}"') == 2
    line = _one_error_line(capsys)
    assert "NaN" in line and f"{ref['image_id']}:{ref['ref_id']}:" in line
    assert _files_under(tmp_path / "runs") == []


def test_unwritable_output_folder(tmp_path, plugin, data, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert main(["eval", "--model", "evaltest", "--split", SPLIT, "--data-root",
                 str(tmp_path / "data"), "--out", str(blocker / "runs")]) == 2
    assert str(blocker) in _one_error_line(capsys)


def test_cuda_without_cuda_and_bad_override(tmp_path, plugin, data, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _eval(tmp_path, "--device", "cuda") == 2
    assert "CUDA is not available" in _one_error_line(capsys)
    assert _eval(tmp_path, "--set", "gird=4") == 2
    assert "grid" in _one_error_line(capsys)
    assert _files_under(tmp_path / "runs") == []


def test_synthref_run_reports_templates_and_chance(tmp_path, plugin, capsys):
    from refbench.synth import generate, stats

    root = generate(tmp_path / "synth", seed=1, images={"train": 1, "val": 4, "test": 1})
    assert main(["eval", "--model", "center", "--split", "synth-val", "--data-root", str(root),
                 "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "SynthRef per template" in out and "chance PointM" in out
    run_dir = next((tmp_path / "runs" / "center" / "synth-val").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert all("template" in r for r in records)
    by_template: dict[str, list[bool]] = {}
    for record in records:
        by_template.setdefault(record["template"], []).append(record["point_hit"])
    assert sorted(metrics["per_template"]) == sorted(by_template)
    for template, hits in by_template.items():
        assert metrics["per_template"][template]["n"] == len(hits)
        assert metrics["per_template"][template]["PointM"] == pytest.approx(sum(hits) / len(hits))
    assert metrics["chance"]["PointM"] == stats(root, "synth-val")["overall"]
