"""Bootstrap CIs and the paired bootstrap test, against NumPy references written here."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from refbench.cli import cli
from refbench.errors import ConfigError, DataError
from refbench.report.bootstrap import bootstrap_ci, paired_bootstrap
from tests.report_fixture import make_records, numpy_metrics, write_run


def _reference_ci(records, seed, resamples, level=0.95):
    """A loop-per-resample reference with the same draws (one [R, n] block of integers)."""
    hits = np.array([r["point_hit"] for r in records], dtype=float)
    inter = np.array([r["inter"] for r in records], dtype=float)
    union = np.array([r["union"] for r in records], dtype=float)
    index = np.random.default_rng(seed).integers(0, len(records), size=(resamples, len(records)))
    values = {"PointM": [], "mIoU": [], "oIoU": []}
    for row in index:
        values["PointM"].append(hits[row].mean())
        values["mIoU"].append(np.mean(inter[row] / union[row]))
        values["oIoU"].append(inter[row].sum() / union[row].sum())
    alpha = (1 - level) / 2
    return {k: tuple(np.quantile(v, [alpha, 1 - alpha])) for k, v in values.items()}


def test_ci_matches_reference_and_contains_estimate() -> None:
    records = make_records(200, 0.6, seed=1)
    result = bootstrap_ci(records, ["PointM", "mIoU", "oIoU"], n_resamples=300, seed=7)
    expected_point = numpy_metrics(records)
    reference = _reference_ci(records, seed=7, resamples=300)
    for metric, interval in result.items():
        assert interval.value == pytest.approx(expected_point[metric], abs=1e-12)
        assert (interval.low, interval.high) == pytest.approx(reference[metric], abs=1e-12)
        assert interval.low <= interval.value <= interval.high
        assert interval.low < interval.high


def test_ci_shrinks_with_more_expressions() -> None:
    small = bootstrap_ci(make_records(50, 0.6, seed=2), ["PointM", "mIoU"], seed=0)
    large = bootstrap_ci(make_records(2000, 0.6, seed=2), ["PointM", "mIoU"], seed=0)
    for metric in ("PointM", "mIoU"):
        width_small = small[metric].high - small[metric].low
        width_large = large[metric].high - large[metric].low
        # the width scales like 1/sqrt(n): 40x the data, about 1/6 the width
        assert width_large < width_small / 3


def test_ci_is_seeded() -> None:
    records = make_records(100, 0.5, seed=3)
    first = bootstrap_ci(records, ["PointM"], seed=11)["PointM"]
    again = bootstrap_ci(records, ["PointM"], seed=11)["PointM"]
    other = bootstrap_ci(records, ["PointM"], seed=12)["PointM"]
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)


def test_ci_needs_the_fields() -> None:
    with pytest.raises(DataError, match="proposal.inter"):
        bootstrap_ci(make_records(10, 0.5, seed=0), ["PropMIoU"])
    with pytest.raises(ConfigError, match="no bootstrap"):
        bootstrap_ci(make_records(10, 0.5, seed=0), ["F1"])


def _paired(hit_a: np.ndarray, hit_b: np.ndarray):
    records_a = [{"key": f"0:{i}:{i}", "point_hit": bool(h), "inter": int(h), "union": 1}
                 for i, h in enumerate(hit_a)]
    records_b = [{"key": f"0:{i}:{i}", "point_hit": bool(h), "inter": int(h), "union": 1}
                 for i, h in enumerate(hit_b)]
    return records_a, records_b


def test_paired_test_detects_a_real_difference() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(600) < 0.5
    better = base | (rng.random(600) < 0.3)  # B plus about 15 points of extra hits
    records_a, records_b = _paired(better, base)
    result = paired_bootstrap(records_a, records_b[::-1], ["PointM"], seed=0)["PointM"]
    assert result.difference == pytest.approx(better.mean() - base.mean())
    assert result.low > 0
    assert result.p_value < 0.01


def test_paired_test_does_not_flag_a_null_difference() -> None:
    rng = np.random.default_rng(6)
    a = rng.random(600) < 0.5
    b = rng.random(600) < 0.5
    result = paired_bootstrap(*_paired(a, b), ["PointM"], seed=0)["PointM"]
    assert result.low < result.difference < result.high
    assert result.low < 0 < result.high
    assert result.p_value > 0.05
    same = paired_bootstrap(*_paired(a, a), ["PointM"], seed=0)["PointM"]
    assert same.difference == 0 and same.p_value == 1.0


def test_paired_test_refuses_different_expressions() -> None:
    records_a, records_b = _paired(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(DataError, match="different expressions"):
        paired_bootstrap(records_a, records_b, ["PointM"])


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path, "center", "refcoco-val", make_records(120, 0.8, seed=1))
    b = write_run(tmp_path, "random", "refcoco-val", make_records(120, 0.3, seed=1))
    return tmp_path, a, b


def test_compare_cli_reports_difference(two_runs) -> None:
    _, a, b = two_runs
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    expected = 100 * (numpy_metrics(make_records(120, 0.8, seed=1))["PointM"]
                      - numpy_metrics(make_records(120, 0.3, seed=1))["PointM"])
    line = next(x for x in result.output.splitlines() if x.startswith("| PointM"))
    assert f"{expected:+.1f}" in line
    assert "mIoU" in result.output and "oIoU" in result.output


@pytest.mark.parametrize(
    "change, message",
    [({"split": "refcoco-testa"}, "different splits"), ({"protocol": "sag"}, "different protocols"),
     ({"sentences": "first"}, "different sentence modes")],
)
def test_compare_refuses_mismatched_runs(tmp_path, change, message) -> None:
    from refbench.cli import main

    a = write_run(tmp_path, "center", "refcoco-val", make_records(20, 0.8, seed=1))
    args = {"split": "refcoco-val", **change}
    b = write_run(tmp_path, "random", args.pop("split"), make_records(20, 0.3, seed=1), **args)
    assert main(["compare", str(a), str(b)]) == 2
    with pytest.raises(ConfigError, match=message):
        from refbench.cli.report import check_comparable
        from refbench.report.runs import load_run

        check_comparable(load_run(a), load_run(b))


def test_compare_refuses_unfinished_run(tmp_path, capsys) -> None:
    from refbench.cli import main

    a = write_run(tmp_path, "center", "refcoco-val", make_records(20, 0.8, seed=1))
    b = write_run(tmp_path, "random", "refcoco-val", make_records(20, 0.3, seed=1), write_metrics=False)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and str(b) in err
