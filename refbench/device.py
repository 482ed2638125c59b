"""Which compute device a command may use."""

from __future__ import annotations

from refbench.errors import ConfigError


def check_device(device: str) -> str:
    """`device` if usable here; CUDA without a GPU is a `ConfigError`."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} was requested but CUDA is not available here; use --device cpu"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"--device {device!r} is not cpu or cuda[:N]")
    return device
