"""Bootstrap statistics over the expressions of a run: confidence intervals and a paired test.

Every resample draws expressions (records of predictions.jsonl) with replacement and recomputes
each metric from the drawn records, vectorised over resamples with NumPy:
PointM = mean(point_hit), mIoU = mean(inter / union), oIoU = sum(inter) / sum(union) (the same
definitions as refbench.metrics; an empty union counts IoU 0). The generator is seeded
(`numpy.random.default_rng(seed)`), so results are reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refbench.errors import ConfigError, DataError

# metric -> (kind, record fields): "mean" of a 0/1 field, "miou" / "oiou" of (inter, union)
METRIC_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PointM": ("mean", ("point_hit",)),
    "Hit": ("mean", ("box_hit",)),
    "BackgroundPeaks": ("mean", ("on_background",)),
    "mIoU": ("miou", ("inter", "union")),
    "oIoU": ("oiou", ("inter", "union")),
    "PropMIoU": ("miou", ("proposal.inter", "proposal.union")),
    "PropOIoU": ("oiou", ("proposal.inter", "proposal.union")),
    "OracleMIoU": ("miou", ("proposal.oracle_inter", "proposal.oracle_union")),
    "OracleOIoU": ("oiou", ("proposal.oracle_inter", "proposal.oracle_union")),
}

# resamples x expressions drawn at once: bounds memory to ~40 MB of indices
_CHUNK_ELEMENTS = 5_000_000


def _field(record: dict[str, Any], name: str) -> Any:
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def metric_arrays(records: Sequence[dict[str, Any]], metric: str) -> tuple[str, list[np.ndarray]]:
    """The per-record arrays behind `metric` ([n] each) and how they reduce; `DataError` if absent."""
    if metric not in METRIC_FIELDS:
        raise ConfigError(f"no bootstrap for metric {metric!r}; choose from {', '.join(METRIC_FIELDS)}")
    kind, names = METRIC_FIELDS[metric]
    arrays = []
    for name in names:
        values = [_field(r, name) for r in records]
        if any(v is None for v in values):
            missing = next(r.get("key", "?") for r, v in zip(records, values) if v is None)
            raise DataError(f"metric {metric} needs '{name}' in every record; record {missing} has none")
        arrays.append(np.asarray(values, dtype=np.float64))
    return kind, arrays


def available_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics every record carries the fields for."""
    names = []
    for metric in METRIC_FIELDS:
        try:
            metric_arrays(records, metric)
        except DataError:
            continue
        names.append(metric)
    return names


def _reduce(kind: str, arrays: list[np.ndarray], index: np.ndarray | None) -> np.ndarray:
    """The metric for each row of `index` ([R, n] int) or, when None, for all records ([1])."""
    taken = [a[None, :] if index is None else a[index] for a in arrays]
    if kind == "mean":
        return taken[0].mean(axis=1)
    inter, union = taken
    if kind == "miou":
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        return iou.mean(axis=1)
    total_union = union.sum(axis=1)
    return np.divide(inter.sum(axis=1), total_union, out=np.zeros_like(total_union), where=total_union > 0)


def _resample_indices(n: int, n_resamples: int, rng: np.random.Generator):
    """Yield [r, n] index blocks that together make `n_resamples` resamples of n records."""
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_resamples:
        size = min(per_chunk, n_resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval (fractions, as metrics.json)."""

    value: float
    low: float
    high: float
    level: float
    n: int
    n_resamples: int


def bootstrap_ci(
    records: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile bootstrap CI of each metric over the expressions in `records`."""
    _check_args(n_resamples, level)
    if not records:
        raise DataError("no records to bootstrap; the run has no predictions")
    prepared = {m: metric_arrays(records, m) for m in metrics}
    samples: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    rng = np.random.default_rng(seed)
    for index in _resample_indices(len(records), n_resamples, rng):
        for metric, (kind, arrays) in prepared.items():
            samples[metric].append(_reduce(kind, arrays, index))
    alpha = (1.0 - level) / 2
    result = {}
    for metric, (kind, arrays) in prepared.items():
        values = np.concatenate(samples[metric])
        low, high = np.quantile(values, [alpha, 1 - alpha])
        point = float(_reduce(kind, arrays, None)[0])
        result[metric] = Interval(point, float(low), float(high), level, len(records), n_resamples)
    return result


@dataclass(frozen=True)
class PairedResult:
    """A − B for one metric on the same expressions: difference, its CI and a two-sided p-value."""

    metric: str
    value_a: float
    value_b: float
    difference: float
    low: float
    high: float
    p_value: float
    level: float
    n: int
    n_resamples: int


def paired_bootstrap(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, PairedResult]:
    """Paired bootstrap of A − B: both runs resampled with the same expression indices.

    The p-value is two-sided, from the resampled differences centred on the observed one
    (the null distribution): p = (1 + #{|d* − d| >= |d|}) / (1 + R).
    """
    _check_args(n_resamples, level)
    keys_a = [str(r["key"]) for r in records_a]
    keys_b = [str(r["key"]) for r in records_b]
    if sorted(keys_a) != sorted(keys_b):
        only_a, only_b = set(keys_a) - set(keys_b), set(keys_b) - set(keys_a)
        raise DataError(
            f"the runs scored different expressions ({len(only_a)} only in A, {len(only_b)} only "
            f"in B, e.g. {sorted(only_a or only_b)[0]}); compare runs over the same expressions"
        )
    if not keys_a:
        raise DataError("no records to compare; the runs have no predictions")
    by_key_b = {str(r["key"]): r for r in records_b}
    aligned_b = [by_key_b[k] for k in keys_a]
    prepared = {m: (metric_arrays(records_a, m), metric_arrays(aligned_b, m)) for m in metrics}
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    rng = np.random.default_rng(seed)
    for index in _resample_indices(len(keys_a), n_resamples, rng):
        for metric, ((kind, arr_a), (_, arr_b)) in prepared.items():
            diffs[metric].append(_reduce(kind, arr_a, index) - _reduce(kind, arr_b, index))
    alpha = (1.0 - level) / 2
    result = {}
    for metric, ((kind, arr_a), (_, arr_b)) in prepared.items():
        value_a = float(_reduce(kind, arr_a, None)[0])
        value_b = float(_reduce(kind, arr_b, None)[0])
        observed = value_a - value_b
        samples = np.concatenate(diffs[metric])
        low, high = np.quantile(samples, [alpha, 1 - alpha])
        # tolerance so that a null difference of exactly 0 is not split by rounding noise
        extreme = np.abs(samples - observed) >= abs(observed) - 1e-12
        p_value = (1 + int(extreme.sum())) / (1 + len(samples))
        result[metric] = PairedResult(
            metric, value_a, value_b, observed, float(low), float(high), min(1.0, p_value),
            level, len(keys_a), n_resamples,
        )
    return result


def _check_args(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ConfigError(f"--level must be between 0 and 1 (e.g. 0.95), got {level}")
