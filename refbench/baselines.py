"""Reference models that need no training: lower bounds and harness smoke tests.

`random` gives every expression its own seeded random map (deterministic per expression, so
results do not depend on batching or sharding); `center` is the centre prior, a Gaussian at the
image centre that ignores the sentence. Both are registered by the core distribution.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch

from refbench.api import Batch, Prediction, RISModel


class RandomMapModel(RISModel):
    """A uniformly random response map per expression: the chance level of the harness."""

    name = "random"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        config = super().default_config()
        config.update({"map_size": 10, "seed": 0, "weights": "none (random maps)"})
        return config

    def predict(self, batch: Batch) -> Prediction:
        size = int(self.config["map_size"])
        maps = []
        for expression in batch.flat_expressions:
            # Seeded by the expression's key so a map never depends on batch or shard layout.
            seed = zlib.crc32(f"{self.config['seed']}:{expression.key}".encode())
            generator = torch.Generator().manual_seed(seed)
            maps.append(torch.rand(size, size, generator=generator))
        return Prediction(response_maps=torch.stack(maps).to(batch.images.device))


class CenterPriorModel(RISModel):
    """An isotropic Gaussian at the image centre for every expression (sentence ignored)."""

    name = "center"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        config = super().default_config()
        config.update({"map_size": 10, "sigma": 0.25, "weights": "none (centre prior)"})
        return config

    def predict(self, batch: Batch) -> Prediction:
        size = int(self.config["map_size"])
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        prior = torch.exp(-(xx**2 + yy**2) / (2 * float(self.config["sigma"]) ** 2))
        maps = prior.expand(batch.num_expressions, size, size).contiguous()
        return Prediction(response_maps=maps.to(batch.images.device))
