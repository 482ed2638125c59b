"""torchmetrics-style accumulators over per-expression records, and the MetricSet collection.

Each metric keeps a few sums (never a list), so memory stays flat and a distributed run
reduces with one all-reduce. `MetricSet.from_records` gives the "metrics" dict of
metrics.json (docs/runs.md); it uses the order-independent functional twins, so re-scoring a
predictions.jsonl in any line order gives identical numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch

from refbench.errors import PredictionError
from refbench.metrics.functional import (
    EMPTY_UNION_IOU,
    fraction_true,
    iou_values,
    mean_iou,
    overall_iou,
)

Record = Mapping[str, Any]


def _field(record: Record, path: tuple[str, ...]) -> Any:
    value: Any = record
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            key = record.get("key", "?") if isinstance(record, Mapping) else "?"
            raise PredictionError(
                f"prediction record {key!r} has no {'.'.join(path)!r}; "
                "re-run the evaluation (with proposals for Prop*/Oracle* metrics)"
            )
        value = value[name]
    return value


class Metric:
    """Base accumulator: `update(records)`, `compute()`, `reset()`, `state()`, `sync()`."""

    name: ClassVar[str] = ""
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Zero the state."""
        self._state: dict[str, float] = dict.fromkeys(self.state_names, 0)
        self._synced = False

    def state(self) -> dict[str, float | int]:
        """A copy of the summed state."""
        return dict(self._state)

    def update(self, records: Iterable[Record]) -> None:
        """Add records (dicts as `score_batch` returns them) to the state."""
        if self._synced:
            raise RuntimeError(f"{type(self).__name__}.update after sync(); call reset() first")
        for name, value in self._sums(list(records)).items():
            self._state[name] += value

    def _sums(self, records: Sequence[Record]) -> dict[str, float]:
        raise NotImplementedError

    def compute(self) -> float:
        """The metric value from the state (NaN when no sample was added)."""
        raise NotImplementedError

    def sync(self, group: Any = None) -> None:
        """Sum the state over all processes (one all_reduce); no-op without torch.distributed.

        Call once, after the last update: the state becomes the global sum.
        """
        sync_metrics([self], group=group)


def sync_metrics(metrics: Sequence[Metric], group: Any = None) -> None:
    """All-reduce the states of `metrics` with ONE all_reduce of a stacked float64 tensor."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for metric in metrics:
        if metric._synced:
            raise RuntimeError(f"{type(metric).__name__} was already synced; call reset() first")
    values = [metric._state[name] for metric in metrics for name in metric.state_names]
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
    stacked = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
    summed = stacked.cpu().tolist()
    position = 0
    for metric in metrics:
        for name in metric.state_names:
            value = summed[position]
            # counts stay integers (float64 holds them exactly below 2**53)
            metric._state[name] = int(value) if name != "iou_sum" else value
            position += 1
        metric._synced = True


class _FractionMetric(Metric):
    """The fraction of records whose boolean field is true."""

    state_names = ("hits", "count")
    path: ClassVar[tuple[str, ...]] = ()

    def _sums(self, records: Sequence[Record]) -> dict[str, float]:
        flags = [bool(_field(record, self.path)) for record in records]
        return {"hits": sum(flags), "count": len(flags)}

    def compute(self) -> float:
        """hits / count."""
        count = self._state["count"]
        return self._state["hits"] / count if count else float("nan")


class PointM(_FractionMetric):
    """PointM: the fraction of peaks inside the ground-truth mask."""

    name = "PointM"
    path = ("point_hit",)


class Hit(_FractionMetric):
    """Hit: the fraction of peaks inside the ground-truth box (the protocol's box rule)."""

    name = "Hit"
    path = ("box_hit",)


class BackgroundPeaks(_FractionMetric):
    """The fraction of peaks outside every annotated object (records with on_background null
    are skipped)."""

    name = "BackgroundPeaks"
    path = ("on_background",)

    def _sums(self, records: Sequence[Record]) -> dict[str, float]:
        flags = [record.get("on_background") for record in records]
        known = [bool(flag) for flag in flags if flag is not None]
        return {"hits": sum(known), "count": len(known)}


class _MeanIoUMetric(Metric):
    """The mean over records of inter / union (empty union counts `EMPTY_UNION_IOU`)."""

    state_names = ("iou_sum", "count")
    prefix: ClassVar[tuple[str, ...]] = ()
    inter_name: ClassVar[str] = "inter"
    union_name: ClassVar[str] = "union"

    def _sums(self, records: Sequence[Record]) -> dict[str, float]:
        inter = [_field(r, (*self.prefix, self.inter_name)) for r in records]
        union = [_field(r, (*self.prefix, self.union_name)) for r in records]
        ious = iou_values(torch.tensor(inter, dtype=torch.int64), torch.tensor(union))
        return {"iou_sum": float(ious.sum()), "count": len(records)}

    def compute(self) -> float:
        """iou_sum / count."""
        count = self._state["count"]
        return self._state["iou_sum"] / count if count else float("nan")


class _OverallIoUMetric(Metric):
    """Total intersection over total union."""

    state_names = ("inter", "union", "count")
    prefix: ClassVar[tuple[str, ...]] = ()
    inter_name: ClassVar[str] = "inter"
    union_name: ClassVar[str] = "union"

    def _sums(self, records: Sequence[Record]) -> dict[str, float]:
        inter = sum(int(_field(r, (*self.prefix, self.inter_name))) for r in records)
        union = sum(int(_field(r, (*self.prefix, self.union_name))) for r in records)
        return {"inter": inter, "union": union, "count": len(records)}

    def compute(self) -> float:
        """inter / union (`EMPTY_UNION_IOU` if every union was empty)."""
        if not self._state["count"]:
            return float("nan")
        union = self._state["union"]
        return self._state["inter"] / union if union else EMPTY_UNION_IOU


class MeanIoU(_MeanIoUMetric):
    """mIoU of the protocol's mask."""

    name = "mIoU"


class OverallIoU(_OverallIoUMetric):
    """oIoU of the protocol's mask."""

    name = "oIoU"


class ProposalMeanIoU(_MeanIoUMetric):
    """mIoU of the proposal holding the peak (PCNet's "Segmentor" rows)."""

    name = "PropMIoU"
    prefix = ("proposal",)


class ProposalOverallIoU(_OverallIoUMetric):
    """oIoU of the proposal holding the peak."""

    name = "PropOIoU"
    prefix = ("proposal",)


class OracleMeanIoU(_MeanIoUMetric):
    """mIoU of the best proposal by IoU against the ground truth (PCNet's "Oracle" row)."""

    name = "OracleMIoU"
    prefix = ("proposal",)
    inter_name = "oracle_inter"
    union_name = "oracle_union"


class OracleOverallIoU(_OverallIoUMetric):
    """oIoU of the best proposal by IoU against the ground truth."""

    name = "OracleOIoU"
    prefix = ("proposal",)
    inter_name = "oracle_inter"
    union_name = "oracle_union"


BASE_METRICS: tuple[type[Metric], ...] = (PointM, MeanIoU, OverallIoU, Hit, BackgroundPeaks)
PROPOSAL_METRICS: tuple[type[Metric], ...] = (
    ProposalMeanIoU,
    ProposalOverallIoU,
    OracleMeanIoU,
    OracleOverallIoU,
)


def _column(records: Sequence[Record], path: tuple[str, ...]) -> list[Any]:
    return [_field(record, path) for record in records]


class MetricSet:
    """The metrics of one run: PointM, mIoU, oIoU, Hit, BackgroundPeaks (+ Prop*/Oracle*)."""

    def __init__(self, proposals: bool = False) -> None:
        classes = BASE_METRICS + (PROPOSAL_METRICS if proposals else ())
        self.metrics: dict[str, Metric] = {cls.name: cls() for cls in classes}

    def update(self, records: Iterable[Record]) -> None:
        """Add records to every metric."""
        records = list(records)
        for metric in self.metrics.values():
            metric.update(records)

    def reset(self) -> None:
        """Zero every metric."""
        for metric in self.metrics.values():
            metric.reset()

    def sync(self, group: Any = None) -> None:
        """All-reduce every metric's state at once (one all_reduce)."""
        sync_metrics(list(self.metrics.values()), group=group)

    def state(self) -> dict[str, dict[str, float | int]]:
        """Every metric's state by metric name."""
        return {name: metric.state() for name, metric in self.metrics.items()}

    def compute(self) -> dict[str, float]:
        """Metric values by name; BackgroundPeaks is left out when no record knew it."""
        values = {name: metric.compute() for name, metric in self.metrics.items()}
        if not self.metrics["BackgroundPeaks"].state()["count"]:
            del values["BackgroundPeaks"]
        return values

    @staticmethod
    def from_records(records: Iterable[Record]) -> dict[str, float]:
        """The "metrics" dict of metrics.json from all records, independent of their order.

        Prop*/Oracle* appear when the records carry "proposal" (all of them must then);
        BackgroundPeaks appears when any record has a non-null on_background.
        """
        records = list(records)
        values = {
            "PointM": fraction_true(_column(records, ("point_hit",))),
            "mIoU": mean_iou(_column(records, ("inter",)), _column(records, ("union",))),
            "oIoU": overall_iou(_column(records, ("inter",)), _column(records, ("union",))),
            "Hit": fraction_true(_column(records, ("box_hit",))),
        }
        background = [r.get("on_background") for r in records]
        known = [flag for flag in background if flag is not None]
        if known:
            values["BackgroundPeaks"] = fraction_true(known)
        if any("proposal" in record for record in records):
            for name, inter_name, union_name, kind in (
                ("PropMIoU", "inter", "union", mean_iou),
                ("PropOIoU", "inter", "union", overall_iou),
                ("OracleMIoU", "oracle_inter", "oracle_union", mean_iou),
                ("OracleOIoU", "oracle_inter", "oracle_union", overall_iou),
            ):
                inter = _column(records, ("proposal", inter_name))
                union = _column(records, ("proposal", union_name))
                values[name] = kind(inter, union)
        return values

    @staticmethod
    def per_group(records: Iterable[Record], key: str = "template") -> dict[str, dict[str, Any]]:
        """n, PointM and mIoU for each value of `key` (records without it are skipped)."""
        return per_group(records, key=key)


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
        result[value] = {
            "n": len(members),
            "PointM": fraction_true(_column(members, ("point_hit",))),
            "mIoU": mean_iou(_column(members, ("inter",)), _column(members, ("union",))),
        }
    return result
