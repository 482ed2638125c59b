"""The metric table: its consumers (records, bootstrap, leaderboard, CLI) agree with it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from refbench.errors import UnknownNameError
from refbench.metrics.records import metrics_from_records
from refbench.metrics.scoring import score_batch
from refbench.metrics.table import (
    BLOCKS,
    DEFAULT_BLOCKS,
    METRIC_NAMES,
    METRICS,
    block_metrics,
    field_value,
    get_metric,
    ordered,
)
from refbench.report.bootstrap import available_metrics, bootstrap_ci
from tests.test_metrics import random_records


def test_names_blocks_and_lookups():
    assert METRIC_NAMES == (
        "PointM", "mIoU", "oIoU", "Hit", "BackgroundPeaks",
        "PropMIoU", "PropOIoU", "OracleMIoU", "OracleOIoU",
    )
    assert BLOCKS == ("PointM", "mIoU", "oIoU", "Hit", "BackgroundPeaks")
    assert DEFAULT_BLOCKS == ("PointM", "mIoU", "oIoU")
    assert [s.name for s in block_metrics("mIoU")] == ["mIoU", "PropMIoU", "OracleMIoU"]
    assert [(s.segmentor, s.supervision) for s in block_metrics("oIoU")] == [
        ("no", "weak"), ("yes", "weak"), ("yes", "oracle"),
    ]
    assert block_metrics("PointM: spatial") == ()
    assert [s.name for s in METRICS if not s.higher_is_better] == ["BackgroundPeaks"]
    assert get_metric("Hit").fields == ("box_hit",)
    with pytest.raises(UnknownNameError, match="choose from PointM, mIoU"):
        get_metric("F1")
    assert ordered(["extra", "OracleOIoU", "PointM"]) == ["PointM", "OracleOIoU", "extra"]


def test_field_value_walks_dotted_paths():
    record = {"inter": 3, "proposal": {"inter": 5}, "on_background": None}
    assert field_value(record, "proposal.inter") == 5
    assert field_value(record, "proposal.union", "absent") == "absent"
    assert field_value(record, "inter.deeper") is None
    assert field_value(record, "on_background", "absent") is None


def test_every_field_is_written_by_score_batch():
    maps = torch.rand(2, 6, 6)
    gt = torch.zeros(2, 12, 12, dtype=torch.bool)
    gt[:, 2:8, 3:9] = True
    boxes = torch.tensor([[3.0, 2.0, 6.0, 6.0]] * 2, dtype=torch.float64)
    proposals = torch.zeros(3, 12, 12, dtype=torch.bool)
    proposals[1, 2:8, 3:9] = True
    records = score_batch(maps, 12, 12, gt, boxes, proposals=proposals, object_masks=gt[:1])
    missing = object()
    for spec in METRICS:
        for path in spec.fields:
            assert field_value(records[0], path, missing) is not missing, (spec.name, path)


def test_bootstrap_point_estimates_equal_the_run_metrics():
    """One definition: bootstrap's value of each metric is the metrics.json value."""
    records = random_records(21, 150)
    for record in records:  # bootstrap needs on_background known on every record
        record["on_background"] = bool(record["inter"] % 2)
    values = metrics_from_records(records)
    assert available_metrics(records) == list(METRIC_NAMES) == list(values)
    intervals = bootstrap_ci(records, METRIC_NAMES, n_resamples=5)
    for name, value in values.items():
        assert intervals[name].value == pytest.approx(value, abs=1e-12), name


def test_table_module_imports_without_torch():
    code = ("import sys, refbench.metrics.table, refbench.report.reported; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
