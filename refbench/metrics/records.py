"""A run's metrics from its per-expression records (predictions.jsonl lines, docs/runs.md).

Each metric of `refbench.metrics.table` is reduced by its order-independent functional twin,
so re-scoring a predictions.jsonl in any line order gives identical numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from refbench.errors import PredictionError
from refbench.metrics.functional import fraction_true, mean_iou, overall_iou
from refbench.metrics.table import METRICS, MetricSpec, field_value, get_metric

Record = Mapping[str, Any]

_REDUCE: dict[str, Callable[..., float]] = {
    "fraction": fraction_true,
    "mean_iou": mean_iou,
    "overall_iou": overall_iou,
}
# what `per_group` gives for each group, besides its size n
GROUP_METRICS = ("PointM", "mIoU")
_MISSING = object()


def _column(records: Sequence[Record], path: str) -> list[Any]:
    values = []
    for record in records:
        value = field_value(record, path, _MISSING)
        if value is _MISSING:
            raise PredictionError(
                f"prediction record {record.get('key', '?')!r} has no {path!r}; "
                "re-run the evaluation (with proposals for Prop*/Oracle* metrics)"
            )
        values.append(value)
    return values


def metric_value(spec: MetricSpec, records: Sequence[Record]) -> float | None:
    """`spec`'s value over `records`; None when the run leaves it out (see `MetricSpec`)."""
    if spec.requires is not None and not any(spec.requires in record for record in records):
        return None
    if spec.skip_null:
        columns = [[v for r in records if (v := field_value(r, path)) is not None]
                   for path in spec.fields]
        if not columns[0]:
            return None
    else:
        columns = [_column(records, path) for path in spec.fields]
    return _REDUCE[spec.aggregate](*columns)


def metrics_from_records(records: Iterable[Record]) -> dict[str, float]:
    """The "metrics" dict of metrics.json from all records, in table order, order-independent.

    Prop*/Oracle* appear when the records carry "proposal" (all of them must then);
    BackgroundPeaks appears when any record has a non-null on_background.
    """
    records = list(records)
    values = {}
    for spec in METRICS:
        value = metric_value(spec, records)
        if value is not None:
            values[spec.name] = value
    return values


def per_group(records: Iterable[Record], key: str = "template") -> dict[str, dict[str, Any]]:
    """n, PointM and mIoU for each value of `key`, sorted by value; records lacking it skipped."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        value = record.get(key)
        if value is not None:
            groups.setdefault(str(value), []).append(record)
    result: dict[str, dict[str, Any]] = {}
    for value in sorted(groups):
        members = groups[value]
        result[value] = {"n": len(members)}
        for name in GROUP_METRICS:
            result[value][name] = metric_value(get_metric(name), members)
    return result
