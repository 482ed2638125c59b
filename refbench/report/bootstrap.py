"""Bootstrap statistics over the expressions of a run: confidence intervals and a paired test.

Every resample draws units with replacement and recomputes each metric from the records of the
drawn units, vectorised over resamples with NumPy: PointM = mean(point_hit), mIoU = mean(inter /
union), oIoU = sum(inter) / sum(union) (the same definitions as refbench.metrics; an empty union
counts IoU 0). The unit (`resample_by`) is the expression (each record alone) or the image
(all expressions of an image together: a cluster bootstrap). Expressions of one image share
its difficulty, so they are not independent draws; resampling them one by one understates the
spread of a run with several sentences per image. ``"auto"`` resamples by image when some image
has several records, else by expression (the two coincide then). The generator is seeded
(`numpy.random.default_rng(seed)`), so results are reproducible; with one record per image the
image and expression bootstraps draw the same indices and give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refbench.errors import ConfigError, DataError
from refbench.metrics.table import METRIC_NAMES, field_value, get_metric

# resamples x expressions drawn at once: bounds memory to ~40 MB of indices
_CHUNK_ELEMENTS = 5_000_000


def metric_arrays(records: Sequence[dict[str, Any]], metric: str) -> tuple[str, list[np.ndarray]]:
    """The per-record arrays behind `metric` ([n] each) and how they reduce; `DataError` if absent."""
    if metric not in METRIC_NAMES:
        raise ConfigError(f"no bootstrap for metric {metric!r}; choose from {', '.join(METRIC_NAMES)}")
    spec = get_metric(metric)
    arrays = []
    for name in spec.fields:
        values = [field_value(r, name) for r in records]
        if any(v is None for v in values):
            missing = next(r.get("key", "?") for r, v in zip(records, values) if v is None)
            raise DataError(f"metric {metric} needs '{name}' in every record; record {missing} has none")
        arrays.append(np.asarray(values, dtype=np.float64))
    return spec.aggregate, arrays


def available_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics every record carries the fields for."""
    names = []
    for metric in METRIC_NAMES:
        try:
            metric_arrays(records, metric)
        except DataError:
            continue
        names.append(metric)
    return names


RESAMPLE_UNITS = ("auto", "image", "expression")


def _ratio_parts(kind: str, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per record [n]: each metric is sum(num) / sum(den)."""
    if kind == "fraction":
        return arrays[0], np.ones_like(arrays[0])
    inter, union = arrays
    if kind == "mean_iou":
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), np.ones_like(inter)
    return inter, union


def _cluster_sums(parts: tuple[np.ndarray, np.ndarray], clusters: np.ndarray,
                  count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums ([C] each) of the numerator and denominator."""
    return (np.bincount(clusters, weights=parts[0], minlength=count),
            np.bincount(clusters, weights=parts[1], minlength=count))


def _value(sums: tuple[np.ndarray, np.ndarray], index: np.ndarray | None) -> np.ndarray:
    """The metric for each row of `index` ([R, C] cluster draws) or, when None, for all ([1])."""
    num, den = sums
    if index is None:
        total_num, total_den = np.array([num.sum()]), np.array([den.sum()])
    else:
        total_num, total_den = num[index].sum(axis=1), den[index].sum(axis=1)
    return np.divide(total_num, total_den, out=np.zeros_like(total_num), where=total_den > 0)


def resample_clusters(
    records: Sequence[dict[str, Any]], resample_by: str = "expression"
) -> tuple[str, np.ndarray, int]:
    """(the unit used, cluster index per record [n] in order of first appearance, #clusters).

    `resample_by` is "expression", "image" (records need ``image_id``) or "auto" (image when
    some image has several records and every record names its image, else expression).
    """
    if resample_by not in RESAMPLE_UNITS:
        raise ConfigError(f"--resample-by must be one of {', '.join(RESAMPLE_UNITS)}, "
                          f"got {resample_by!r}")
    n = len(records)
    images = [r.get("image_id") for r in records]
    if resample_by == "image" and any(i is None for i in images):
        missing = next(r.get("key", "?") for r, i in zip(records, images) if i is None)
        raise DataError(f"resampling by image needs 'image_id' in every record; record {missing} "
                        "has none (use --resample-by expression)")
    if resample_by == "auto":
        known = all(i is not None for i in images)
        resample_by = "image" if known and len(set(map(str, images))) < n else "expression"
    if resample_by == "expression":
        return "expression", np.arange(n), n
    _, first, inverse = np.unique(np.asarray([str(i) for i in images]), return_index=True,
                                  return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return "image", rank[inverse], len(first)


def _resample_indices(n: int, n_resamples: int, rng: np.random.Generator):
    """Yield [r, n] index blocks that together make `n_resamples` resamples of n units."""
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
    resample_by: str = "expression"  # the unit drawn: "expression" or "image"
    n_units: int = 0  # how many units (images, or expressions) were drawn from


def bootstrap_ci(
    records: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    resample_by: str = "expression",
) -> dict[str, Interval]:
    """Percentile bootstrap CI of each metric over `records`, drawing expressions or images
    (`resample_by`, see the module docstring)."""
    _check_args(n_resamples, level)
    if not records:
        raise DataError("no records to bootstrap; the run has no predictions")
    unit, clusters, count = resample_clusters(records, resample_by)
    prepared = {}
    for metric in metrics:
        kind, arrays = metric_arrays(records, metric)
        prepared[metric] = _cluster_sums(_ratio_parts(kind, arrays), clusters, count)
    samples: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    rng = np.random.default_rng(seed)
    for index in _resample_indices(count, n_resamples, rng):
        for metric, sums in prepared.items():
            samples[metric].append(_value(sums, index))
    alpha = (1.0 - level) / 2
    result = {}
    for metric, sums in prepared.items():
        values = np.concatenate(samples[metric])
        low, high = np.quantile(values, [alpha, 1 - alpha])
        point = float(_value(sums, None)[0])
        result[metric] = Interval(point, float(low), float(high), level, len(records),
                                  n_resamples, unit, count)
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
    resample_by: str = "expression"
    n_units: int = 0


def paired_bootstrap(
    records_a: Sequence[dict[str, Any]],
    records_b: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    resample_by: str = "expression",
) -> dict[str, PairedResult]:
    """Paired bootstrap of A − B: both runs resampled with the same draws of expressions or
    images (`resample_by`; the images are A's records').

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
    unit, clusters, count = resample_clusters(records_a, resample_by)
    prepared = {}
    for metric in metrics:
        kind_a, arr_a = metric_arrays(records_a, metric)
        kind_b, arr_b = metric_arrays(aligned_b, metric)
        prepared[metric] = (_cluster_sums(_ratio_parts(kind_a, arr_a), clusters, count),
                            _cluster_sums(_ratio_parts(kind_b, arr_b), clusters, count))
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    rng = np.random.default_rng(seed)
    for index in _resample_indices(count, n_resamples, rng):
        for metric, (sums_a, sums_b) in prepared.items():
            diffs[metric].append(_value(sums_a, index) - _value(sums_b, index))
    alpha = (1.0 - level) / 2
    result = {}
    for metric, (sums_a, sums_b) in prepared.items():
        value_a = float(_value(sums_a, None)[0])
        value_b = float(_value(sums_b, None)[0])
        observed = value_a - value_b
        samples = np.concatenate(diffs[metric])
        low, high = np.quantile(samples, [alpha, 1 - alpha])
        # tolerance so that a null difference of exactly 0 is not split by rounding noise
        extreme = np.abs(samples - observed) >= abs(observed) - 1e-12
        p_value = (1 + int(extreme.sum())) / (1 + len(samples))
        result[metric] = PairedResult(
            metric, value_a, value_b, observed, float(low), float(high), min(1.0, p_value),
            level, len(keys_a), n_resamples, unit, count,
        )
    return result


def _check_args(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ConfigError(f"--resamples must be at least 1, got {n_resamples}")
    if not 0 < level < 1:
        raise ConfigError(f"--level must be between 0 and 1 (e.g. 0.95), got {level}")
