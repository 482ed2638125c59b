"""Generic training: the sampler, batch assembly, checkpoints and the `Trainer`.

`Trainer` is imported lazily so that `import refbench.train.sampler` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SampledImage", "Trainer", "TrainingData", "TrainingSampler"]


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from refbench.train.trainer import Trainer

        return Trainer
    if name in ("TrainingSampler", "SampledImage"):
        from refbench.train import sampler

        return getattr(sampler, name)
    if name == "TrainingData":
        from refbench.train.data import TrainingData

        return TrainingData
    raise AttributeError(f"module 'refbench.train' has no attribute {name!r}")
