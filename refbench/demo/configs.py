"""The demo's training configurations, as data in one place.

Update `DEMO_MODELS` from a tuning report (config overrides and training length); the pipeline,
the ablation grid and the docs read them from here. Each entry is a `ModelSpec`: the registered
model name, the label used for folders and tables, the model config overrides (on top of the
plugin's own defaults) and the training length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One model the demo trains: registry name, label, config overrides, training length.

    `max_steps` stops training early (None: the config's epochs run to the end); `epochs`
    overrides the config's epochs. Both are part of the training key, so changing either
    trains a new checkpoint instead of reusing an old one.
    """

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    max_steps: int | None = None

    def with_overrides(self, label: str, **overrides: Any) -> ModelSpec:
        """A copy with another label and extra config overrides (an ablation cell)."""
        return ModelSpec(self.name, label, {**self.overrides, **overrides}, self.epochs,
                         self.max_steps)

    def with_steps(self, max_steps: int | None) -> ModelSpec:
        """A copy trained for at most `max_steps` steps."""
        return ModelSpec(self.name, self.label, dict(self.overrides), self.epochs, max_steps)


# PCNet's and TRIS's small presets (plugins/*/refbench_*/config) for a fixed number of steps:
# 600 steps of batch 32 (19 200 samples, about two passes over synth-train's 10 000 images).
# Measured times are in docs/synthref.md.
PCNET_DEMO = ModelSpec(
    name="pcnet",
    label="pcnet",
    overrides={"preset": "small"},
    epochs=2,
    max_steps=600,
)

# TRIS's small preset (plugins/tris), the single-stage baseline PCNet builds on.
TRIS_DEMO = ModelSpec(
    name="tris",
    label="tris",
    overrides={"preset": "small"},
    epochs=2,
    max_steps=600,
)

DEMO_MODELS: tuple[ModelSpec, ...] = (PCNET_DEMO, TRIS_DEMO)

# Splits the demo prepares and scores.
TRAIN_SPLIT = "synth-train"
VAL_SPLIT = "synth-val"
TEST_SPLIT = "synth-test"
DATA_SPLITS = (TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT)
PROPOSAL_BACKEND = "felzenszwalb"
CUE_BACKEND = "template"
# Expressions drawn in leaderboards/synthref.png.
FIGURE_EXPRESSIONS = 6
