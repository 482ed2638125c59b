"""Builds a fake out-of-tree plugin distribution on disk: a package plus a .dist-info folder.

importlib.metadata finds a distribution by its .dist-info folder on sys.path, exactly as it
finds one installed by pip, so a test can prove discovery works through entry points alone.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_dist_info(root: Path, dist: str, version: str, entry_points: dict[str, str]) -> Path:
    """A .dist-info under `root` registering `entry_points` in refbench.models, as pip would."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[refbench.models]\n{lines}")
    return root


def register_checkout_plugin(
    root: Path, monkeypatch, dist: str, entry_points: dict[str, str]
) -> None:
    """Register a plugin package importable from the checkout (e.g. refbench_tris) through a
    .dist-info on sys.path, as pip would, with progress bars off for the CLI."""
    write_dist_info(root / "site", dist, "0.1.0", entry_points)
    monkeypatch.syspath_prepend(str(root / "site"))
    monkeypatch.setenv("REFBENCH_NO_PROGRESS", "1")


def write_plugin(
    root: Path, dist: str, version: str, package: str, entry_points: dict[str, str], source: str
) -> Path:
    """Write `package` with `source` and a dist-info registering `entry_points` under root."""
    (root / package).mkdir(parents=True, exist_ok=True)
    (root / package / "__init__.py").write_text(textwrap.dedent(source))
    return write_dist_info(root, dist, version, entry_points)


TOY_MODEL_SOURCE = '''
    import torch
    from refbench.api import Batch, Prediction, RISModel

    class ToyModel(RISModel):
        name = "toy"

        @classmethod
        def default_config(cls):
            config = super().default_config()
            config.update({"input_size": 32, "scale": 1.0})
            return config

        def __init__(self, config=None):
            super().__init__(config)
            self.weight = torch.nn.Parameter(torch.ones(1) * self.config["scale"])

        def predict(self, batch: Batch) -> Prediction:
            pooled = batch.images.mean(dim=1)[:, ::4, ::4]  # [B, 8, 8]
            maps = pooled[batch.image_index()] * self.weight
            return Prediction(response_maps=maps)
'''
