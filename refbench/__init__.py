"""refbench: a benchmark and evaluation toolkit for weakly-supervised referring image segmentation."""

from __future__ import annotations

__version__ = "0.1.0"

from refbench.errors import RefbenchError

__all__ = ["RefbenchError", "__version__", "load_model", "create_model"]


def load_model(name: str, checkpoint: str | None = None, **overrides):
    """Build the registered model `name`, from `checkpoint` when given (lazy: imports torch)."""
    from refbench.registry import load_model as _load

    return _load(name, checkpoint=checkpoint, **overrides)


def create_model(name: str, **overrides):
    """Build the registered model `name` from its default config with `overrides` applied."""
    from refbench.registry import load_model as _load

    return _load(name, checkpoint=None, **overrides)
