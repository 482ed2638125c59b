"""Where a result came from: git state, package and plugin versions, device, seed, time."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("refbench", "torch", "torchvision", "numpy", "open_clip_torch", "pycocotools")


def git_state(directory: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(full sha, dirty flag) of the git repository holding `directory`, or (None, None)."""
    cwd = Path(directory or Path.cwd())

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return sha.strip(), bool(status.strip()) if status is not None else None


def package_version(name: str) -> str | None:
    """Installed version of distribution `name`, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def plugin_distributions() -> list[dict[str, Any]]:
    """Every distribution registering a model, with its version and model names."""
    from refbench.registry import discover

    by_dist: dict[tuple[str, str], list[str]] = {}
    for entry in discover().values():
        by_dist.setdefault((entry.distribution, entry.version), []).append(entry.name)
    return [
        {"name": name, "version": version, "models": sorted(models)}
        for (name, version), models in sorted(by_dist.items())
    ]


def model_distribution(model_name: str) -> dict[str, str] | None:
    """``{"name", "version"}`` of the distribution that registered `model_name`, if any."""
    from refbench.errors import RefbenchError
    from refbench.registry import get_entry

    try:
        entry = get_entry(model_name)
    except RefbenchError:
        return None
    return {"name": entry.distribution, "version": entry.version}


def device_name(device: str) -> str:
    """A human name for the device: the GPU model for CUDA, the CPU otherwise."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def environment(
    *, model_name: str, device: str, seed: int, world_size: int = 1,
    directory: str | Path | None = None,
) -> dict[str, Any]:
    """The env.json of a run (see docs/runs.md)."""
    import refbench

    sha, dirty = git_state(directory)
    return {
        "refbench_version": refbench.__version__,
        "git_sha": sha,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "numpy": package_version("numpy"),
        "packages": {name: package_version(name) for name in PACKAGES},
        "device": str(device),
        "device_name": device_name(device),
        "world_size": int(world_size),
        "seed": int(seed),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_distribution": model_distribution(model_name),
        "plugins": plugin_distributions(),
    }
