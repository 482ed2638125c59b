"""Leaderboards never merge runs of one split made on different data; bootstrap intervals
resample images when an image has several expressions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from refbench.cli import cli
from refbench.errors import ConfigError
from refbench.report.bootstrap import bootstrap_ci, paired_bootstrap
from refbench.report.leaderboard import build_leaderboard, to_markdown
from refbench.report.runs import find_runs
from tests.report_fixture import make_records, write_run


def _set_refs_sha(folder: Path, sha: str) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["dataset"] = {"refs_sha256": sha, "num_sentences": 0}
    path.write_text(json.dumps(config))


def _correlated(n_images: int, per_image: int, seed: int) -> list[dict]:
    """Records whose hits and IoUs are decided by their image (strong within-image correlation)."""
    rng = np.random.default_rng(seed)
    records = []
    for image in range(n_images):
        hit = bool(rng.random() < 0.6)
        union = int(rng.integers(50, 200))
        inter = int(rng.integers(union // 2, union + 1)) if hit else int(rng.integers(0, 10))
        for sentence in range(per_image):
            records.append({"key": f"{image}:{image}:{sentence}", "image_id": image,
                            "point_hit": hit, "inter": inter, "union": union})
    return records


# --------------------------------------------------------------------------- data identity

def test_runs_of_one_split_on_different_data_are_separate_rows_with_a_note(tmp_path) -> None:
    small = write_run(tmp_path, "center", "synth-val", make_records(211, 0.9, seed=1),
                      name="20240501-120000_aaa", started_at="2024-05-01T12:00:00")
    large = write_run(tmp_path, "center", "synth-val", make_records(505, 0.2, seed=2),
                      name="20240502-120000_bbb", started_at="2024-05-02T12:00:00")
    _set_refs_sha(small, "1" * 64)
    _set_refs_sha(large, "2" * 64)
    runs = find_runs([tmp_path])
    board = build_leaderboard(runs, None, metrics=["PointM"], splits=["synth-val"])
    rows = board.table[(board.table["block"] == "PointM") & (board.table["source"] == "measured")]
    assert sorted(rows["method"]) == ["center (data 111111111111)", "center (data 222222222222)"]
    values = dict(zip(rows["method"], rows["synth-val"]))
    expected_small = 100 * np.mean([r["point_hit"] for r in make_records(211, 0.9, seed=1)])
    expected_large = 100 * np.mean([r["point_hit"] for r in make_records(505, 0.2, seed=2)])
    assert values["center (data 111111111111)"] == pytest.approx(expected_small)
    assert values["center (data 222222222222)"] == pytest.approx(expected_large)
    text = to_markdown(board)
    note = next(line for line in text.splitlines() if "runs on different data" in line)
    assert small.name in note and large.name in note and "n=211" in note and "n=505" in note
    with pytest.raises(ConfigError, match="different data"):
        build_leaderboard(runs, None, metrics=["PointM"], splits=["synth-val"], strict=True)


def test_runs_on_the_same_data_still_keep_the_newest(tmp_path) -> None:
    for day, seed in ((1, 1), (2, 2)):
        folder = write_run(tmp_path, "center", "synth-val", make_records(30, 0.5, seed=seed),
                           name=f"2024050{day}-120000_x", started_at=f"2024-05-0{day}T12:00:00")
        _set_refs_sha(folder, "3" * 64)
    board = build_leaderboard(find_runs([tmp_path]), None, metrics=["PointM"],
                              splits=["synth-val"])
    measured = board.table[(board.table["source"] == "measured")
                           & (board.table["block"] == "PointM")]
    assert list(measured["method"]) == ["center"]
    expected = 100 * np.mean([r["point_hit"] for r in make_records(30, 0.5, seed=2)])
    assert measured["synth-val"].iloc[0] == pytest.approx(expected)
    assert not any("different data" in n for n in board.notes)


def test_compare_refuses_runs_on_different_data(tmp_path) -> None:
    a = write_run(tmp_path, "center", "refcoco-val", make_records(30, 0.8, seed=1))
    b = write_run(tmp_path, "random", "refcoco-val", make_records(30, 0.3, seed=1))
    _set_refs_sha(a, "4" * 64)
    _set_refs_sha(b, "5" * 64)
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "--resamples", "20"])
    assert isinstance(result.exception, ConfigError) and "different data" in str(result.exception)


# --------------------------------------------------------------------------- clustered bootstrap

def test_image_clusters_widen_the_interval_when_sentences_of_an_image_agree() -> None:
    records = _correlated(150, 5, seed=0)
    metrics = ["PointM", "mIoU", "oIoU"]
    by_image = bootstrap_ci(records, metrics, n_resamples=800, seed=3, resample_by="image")
    by_expression = bootstrap_ci(records, metrics, n_resamples=800, seed=3)
    for metric in metrics:
        wide = by_image[metric].high - by_image[metric].low
        narrow = by_expression[metric].high - by_expression[metric].low
        assert wide > 1.5 * narrow, metric  # about sqrt(5) wider for copies of one outcome
        assert by_image[metric].value == pytest.approx(by_expression[metric].value, abs=1e-12)
        assert (by_image[metric].resample_by, by_image[metric].n_units) == ("image", 150)
    auto = bootstrap_ci(records, ["PointM"], n_resamples=800, seed=3, resample_by="auto")
    assert (auto["PointM"].low, auto["PointM"].high) == (by_image["PointM"].low,
                                                         by_image["PointM"].high)


def test_with_one_expression_per_image_both_bootstraps_agree() -> None:
    records = _correlated(120, 1, seed=5)
    metrics = ["PointM", "mIoU", "oIoU"]
    by_image = bootstrap_ci(records, metrics, n_resamples=300, seed=9, resample_by="image")
    by_expression = bootstrap_ci(records, metrics, n_resamples=300, seed=9,
                                 resample_by="expression")
    for metric in metrics:
        assert by_image[metric].low == pytest.approx(by_expression[metric].low, abs=1e-12)
        assert by_image[metric].high == pytest.approx(by_expression[metric].high, abs=1e-12)
    assert bootstrap_ci(records, ["PointM"], seed=9, resample_by="auto")["PointM"].resample_by \
        == "expression"


def test_paired_bootstrap_by_image_is_wider_too() -> None:
    a = _correlated(100, 4, seed=1)
    b = _correlated(100, 4, seed=2)
    by_image = paired_bootstrap(a, b, ["PointM"], n_resamples=600, seed=0,
                                resample_by="image")["PointM"]
    by_expression = paired_bootstrap(a, b, ["PointM"], n_resamples=600, seed=0)["PointM"]
    assert by_image.high - by_image.low > 1.5 * (by_expression.high - by_expression.low)
    assert by_image.difference == pytest.approx(by_expression.difference, abs=1e-12)


def test_leaderboard_and_compare_resample_images_by_default_and_say_so(tmp_path) -> None:
    a = write_run(tmp_path, "center", "refcoco-val", make_records(120, 0.8, seed=1))
    b = write_run(tmp_path, "random", "refcoco-val", make_records(120, 0.3, seed=1))
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    assert "resampling 40 images" in result.output  # make_records: 3 expressions per image
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "--resamples", "50",
                                      "--resample-by", "expression"])
    assert "resampling expressions" in result.output
    result = CliRunner().invoke(cli, ["leaderboard", str(a), "--splits", "refcoco-val", "--ci",
                                      "--resamples", "50", "--metric", "PointM"])
    assert result.exit_code == 0, result.output
    assert "resampling images" in result.output
