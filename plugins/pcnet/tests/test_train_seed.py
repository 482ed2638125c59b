"""`refbench train --seed`: the same command twice gives the same weights bit for bit (CPU), and
another seed gives other weights (the seed reaches the model's initialisation)."""

from __future__ import annotations

from pathlib import Path

import torch

from refbench.cli import main
from refbench.synth import generate


def _train(root: Path, out: Path, seed: int) -> dict[str, torch.Tensor]:
    code = main([
        "train", "--model", "pcnet", "--split", "synth-train", "--data-root", str(root),
        "--set", "preset=small", "--set", "warmup_steps=0", "--set", "num_proposals=4",
        "--batch-size", "4", "--epochs", "1", "--device", "cpu", "--seed", str(seed),
        "--out", str(out),
    ])
    assert code == 0
    (last,) = out.rglob("last.pt")
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("REFBENCH_NO_PROGRESS", "1")
    root = generate(tmp_path / "data", images={"train": 8, "val": 2, "test": 2})
    first = _train(root, tmp_path / "a", seed=3)
    # something else draws random numbers in between, as another run in the same process would
    torch.rand(17)
    second = _train(root, tmp_path / "b", seed=3)
    other = _train(root, tmp_path / "c", seed=4)
    assert _same(first, second)
    assert not _same(first, other)
