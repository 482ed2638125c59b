"""The one table of metrics: name, record fields, aggregation, direction, leaderboard block.

Every consumer reads it: `refbench.metrics.records` (the "metrics" of metrics.json),
`refbench.report.bootstrap` (intervals), `refbench.report.leaderboard` (blocks, ranking) and the
CLI (column order). A metric is a ratio of sums over per-expression records (docs/metrics.md):

- ``fraction``: the mean of one boolean field (PointM over ``point_hit``);
- ``mean_iou``: the mean over records of inter / union (an empty union counts IoU 0);
- ``overall_iou``: sum(inter) / sum(union).

Every value is a fraction in [0, 1]; tables print it x100. Torch-free, so `refbench list` and
the report commands can read it without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refbench.errors import UnknownNameError

AGGREGATES = ("fraction", "mean_iou", "overall_iou")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its metrics.json key, the record fields it reads and how they reduce.

    fields: dotted record paths, one boolean flag (``fraction``) or (inter, union) (the IoUs).
    block: the leaderboard block (its "Metric" column) that shows it; proposal-selected and
    oracle IoUs share the mIoU / oIoU blocks on rows marked by ``segmentor`` and ``supervision``.
    requires: a record key without which a run leaves the metric out (``proposal``).
    skip_null: records whose field is null are left out; the metric is absent when none knows it.
    default: shown when no metric is asked for (leaderboard blocks, ``refbench compare``).
    """

    name: str
    fields: tuple[str, ...]
    aggregate: str
    block: str
    description: str
    higher_is_better: bool = True
    segmentor: str = "no"
    supervision: str = "weak"
    requires: str | None = None
    skip_null: bool = False
    default: bool = False

    def __post_init__(self) -> None:
        assert self.aggregate in AGGREGATES, f"{self.name}: unknown aggregate {self.aggregate!r}"
        expected = 1 if self.aggregate == "fraction" else 2
        assert len(self.fields) == expected, f"{self.name}: {self.aggregate} reads {expected} field(s)"


_PROPOSAL = {"segmentor": "yes", "requires": "proposal"}
_ORACLE = {**_PROPOSAL, "supervision": "oracle"}

# In display order: metrics.json, `refbench eval` / `score` tables and bootstrap choices follow it.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("PointM", ("point_hit",), "fraction", "PointM",
               "the fraction of peaks inside the ground-truth mask", default=True),
    MetricSpec("mIoU", ("inter", "union"), "mean_iou", "mIoU",
               "the mean IoU of the protocol's mask", default=True),
    MetricSpec("oIoU", ("inter", "union"), "overall_iou", "oIoU",
               "total intersection over total union of the protocol's mask", default=True),
    MetricSpec("Hit", ("box_hit",), "fraction", "Hit",
               "the fraction of peaks inside the ground-truth box (the protocol's box rule)"),
    MetricSpec("BackgroundPeaks", ("on_background",), "fraction", "BackgroundPeaks",
               "the fraction of peaks outside every annotated object", higher_is_better=False,
               skip_null=True),
    MetricSpec("PropMIoU", ("proposal.inter", "proposal.union"), "mean_iou", "mIoU",
               "the mean IoU of the proposal holding the peak (PCNet's Segmentor rows)",
               default=True, **_PROPOSAL),
    MetricSpec("PropOIoU", ("proposal.inter", "proposal.union"), "overall_iou", "oIoU",
               "the overall IoU of the proposal holding the peak", default=True, **_PROPOSAL),
    MetricSpec("OracleMIoU", ("proposal.oracle_inter", "proposal.oracle_union"), "mean_iou",
               "mIoU", "the mean IoU of the best proposal by IoU (PCNet's Oracle row)",
               default=True, **_ORACLE),
    MetricSpec("OracleOIoU", ("proposal.oracle_inter", "proposal.oracle_union"), "overall_iou",
               "oIoU", "the overall IoU of the best proposal by IoU", default=True, **_ORACLE),
)

METRIC_NAMES: tuple[str, ...] = tuple(spec.name for spec in METRICS)
_BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in METRICS}

# Leaderboard blocks, in order: each is named after the plain metric that heads it.
BLOCKS: tuple[str, ...] = tuple(spec.name for spec in METRICS if spec.block == spec.name)
DEFAULT_BLOCKS: tuple[str, ...] = tuple(b for b in BLOCKS if _BY_NAME[b].default)


def get_metric(name: str) -> MetricSpec:
    """The spec of metric `name`; `UnknownNameError` listing the metrics if there is none."""
    spec = _BY_NAME.get(name)
    if spec is None:
        raise UnknownNameError(f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    return spec


def block_metrics(block: str) -> tuple[MetricSpec, ...]:
    """The metrics a leaderboard block shows, in table order (empty for an unknown block)."""
    return tuple(spec for spec in METRICS if spec.block == block)


def ordered(names: Any) -> list[str]:
    """`names` (an iterable of metric names) in table order, unknown names last as given."""
    names = list(names)
    return [m for m in METRIC_NAMES if m in names] + [m for m in names if m not in _BY_NAME]


def field_value(record: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value at dotted `path` in `record` ("proposal.inter"), or `default` if absent."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return default
        value = value[part]
    return value
