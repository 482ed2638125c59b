"""Training checkpoints: atomic writes, RNG capture, and the config fingerprint resumption checks.

A training checkpoint is a model checkpoint (`TrainableModel.checkpoint_state()`: format, model,
config, state_dict, so `Model.from_checkpoint` reads it) plus a ``trainer`` entry holding the
optimiser, schedule, RNG states, step/epoch, sampler position and the config fingerprint.
Everything in it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refbench.api import load_checkpoint_file
from refbench.errors import CheckpointError, describe_differences
from refbench.io import atomic_writer, canonical_json, sha256_hex


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """`torch.save` to a temp file in the same folder, fsync, then rename over `path`.

    A crash or an exception during the save leaves the previous file at `path` untouched.
    """
    with atomic_writer(path, "checkpoint folder") as handle:
        torch.save(state, handle)


def training_fingerprint(model_name: str, settings: dict[str, Any]) -> tuple[str, str]:
    """(canonical JSON, sha256) of everything a resumed run must share with the original."""
    text = canonical_json({"model": model_name, **settings}, compact=False)
    return text, sha256_hex(text)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, in types `weights_only` loading accepts."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `capture_rng`: set every RNG back to the captured state."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_training_checkpoint(
    path: str | Path, model_name: str, fingerprint: str, fingerprint_hash: str
) -> dict[str, Any]:
    """Read a checkpoint to resume from; another model or config is a `CheckpointError`."""
    state = load_checkpoint_file(path)
    if state.get("model") != model_name:
        raise CheckpointError(
            f"checkpoint {path} was written by model {state.get('model')!r}, not {model_name!r}; "
            f"resume it with --model {state.get('model')} or start a new run without --resume"
        )
    trainer = state.get("trainer")
    if not isinstance(trainer, dict):
        raise CheckpointError(
            f"checkpoint {path} holds model weights only (no optimiser or schedule), so training "
            "cannot resume from it; start a new run without --resume"
        )
    if trainer.get("fingerprint_hash") != fingerprint_hash:
        saved = json.loads(trainer.get("fingerprint", "{}"))
        now = json.loads(fingerprint)
        detail = describe_differences(saved, now)
        raise CheckpointError(
            f"checkpoint {path} was trained with another config ({detail}); resume with the "
            "original settings or start a new run without --resume"
        )
    return state
