"""What every golden-output script needs to run a reference implementation offline on a CPU.

Imported by path from the scripts in the folders beside this file (tests/golden/*/), in the
throwaway reference venv; only the standard library, NumPy and torch are used. The patches
change nothing of the reference code's arithmetic: CUDA placement becomes the CPU, CUDA
bookkeeping does nothing, and a plain state dict can stand in for OpenAI's TorchScript CLIP
files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch


def load_by_path(name: str, path: Path):
    """Import the module at `path` under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patch_for_cpu() -> None:
    """CUDA calls become CPU no-ops: ``.cuda()``, memory and synchronise calls, and
    ``torch.tensor(..., device='cuda…')``, which is created on the CPU."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.max_memory_allocated = lambda *args, **kwargs: 0
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.empty_cache = lambda *args, **kwargs: None
    original_tensor = torch.tensor

    def tensor(*args, **kwargs):
        if str(kwargs.get("device", "cpu")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return original_tensor(*args, **kwargs)

    torch.tensor = tensor


def serve_state_dicts() -> None:
    """Seeded CLIP files are plain state dicts, not OpenAI's TorchScript archives: when
    clip.load's torch.jit.load refuses one, rewind the file so its torch.load fallback reads it."""
    original_jit_load = torch.jit.load

    def jit_load(f, *args, **kwargs):
        start = f.tell() if hasattr(f, "tell") else None
        try:
            return original_jit_load(f, *args, **kwargs)
        except RuntimeError:
            if start is not None:
                f.seek(start)
            raise

    torch.jit.load = jit_load


class RecordingWriter:
    """Stands in for tensorboardX's SummaryWriter: keeps every scalar."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def add_scalar(self, name, value, step) -> None:
        self.scalars.append((name, float(np.asarray(value)), int(step)))


def clip_state(reference_clip, vision: str, txt_length: int) -> dict:
    """A state dict of the official CLIP class (the ``CLIP/clip/model.py`` both TRIS and PCNet
    ship) with OpenAI's RN50 or ViT-B/32 shapes and a text context of `txt_length`."""
    if vision == "RN50":
        model = reference_clip.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, txt_length, 49408,
                                    512, 8, 12)
    else:
        model = reference_clip.CLIP(512, 224, 12, 768, 32, 77, txt_length, 49408, 512, 8, 12)
    return model.state_dict()
