"""Old import path of a run's metrics, kept only for `refbench.eval.runner` until it imports
`refbench.metrics.records` (the streaming accumulators that lived here are gone: see that module).
"""

from __future__ import annotations

from refbench.metrics.records import metrics_from_records, per_group

__all__ = ["MetricSet", "per_group"]


class MetricSet:
    """`MetricSet.from_records` and `MetricSet.per_group`, as the runner calls them."""

    from_records = staticmethod(metrics_from_records)
    per_group = staticmethod(per_group)
