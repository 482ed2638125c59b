"""Checkpoint paths that are folders or unsafe files, misspelt cue and proposal backends, and
the one-line summary of two differing configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from refbench.api import read_checkpoint_file
from refbench.cli import main
from refbench.errors import CheckpointError, describe_differences


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_a_checkpoint_folder_lists_the_checkpoints_inside(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a file: it holds no .pt or .pth"):
        read_checkpoint_file(tmp_path / "run")
    torch.save({"a": torch.zeros(1)}, tmp_path / "run" / "best.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "run" / "last.pth")
    (tmp_path / "run" / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"it holds best\.pt, last\.pth; pass one of them"):
        read_checkpoint_file(tmp_path / "run")


def test_an_unsafe_checkpoint_is_refused_without_advice_to_load_it_unsafely(
    tmp_path: Path,
) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as raised:
        read_checkpoint_file(path)
    message = str(raised.value)
    assert "never runs code from a checkpoint" in message and "system" in message
    assert "weights_only" not in message and "\n" not in message


@pytest.fixture
def synth_root(tmp_path: Path) -> Path:
    from refbench.synth import generate

    return generate(tmp_path / "data", images={"train": 4, "val": 2, "test": 2})


@pytest.mark.parametrize(("option", "says"), [
    (("--cues", "heuristc"), "unknown cue backend 'heuristc'. Did you mean 'heuristic'?"),
    (("--proposals", "felzenswalb"),
     "unknown proposal backend 'felzenswalb'. Did you mean 'felzenszwalb'?"),
])
@pytest.mark.parametrize("command", ["eval", "train"])
def test_misspelt_backends_get_the_right_name_before_anything_is_made(
    synth_root: Path, tmp_path: Path, capsys, option: tuple[str, str], says: str, command: str
) -> None:
    split = "synth-val" if command == "eval" else "synth-train"
    argv = [command, "--model", "pcnet", "--split", split, "--data-root", str(synth_root),
            "--out", str(tmp_path / "runs"), "--set", "preset=small", *option]
    if command == "train":
        argv += ["--batch-size", "2", "--set", "warmup_steps=0", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    cache = Path(os.environ["REFBENCH_CACHE"])
    assert not any(p.is_file() for p in cache.rglob("*")) if cache.exists() else True


def test_differences_name_the_keys_in_one_short_line() -> None:
    before = {"epochs": 1, "model_config": {"lr": 1e-3, "mean": [0.1] * 3, "depth": 50,
                                            "text": "x" * 500}, "seed": 0}
    after = {"epochs": 2, "model_config": {"lr": 2e-3, "mean": [0.1] * 3, "depth": 50,
                                           "text": "y" * 500}, "seed": 0}
    line = describe_differences(before, after)
    assert line.startswith("epochs 1 -> 2; model_config.lr 0.001 -> 0.002; model_config.text")
    assert "mean" not in line and "seed" not in line and len(line) < 200
    many = describe_differences({str(i): i for i in range(10)}, {str(i): -i for i in range(10)},
                                limit=3)
    assert many.endswith("; and 6 more")  # 0 is equal to -0


def test_resuming_a_checkpoint_of_changed_settings_names_the_keys_in_one_line(tmp_path) -> None:
    """The message names the differing keys, not whole configs (it was 1 812 characters)."""
    import json

    import torch

    from refbench.train.checkpoint import load_training_checkpoint

    config = {"model": "pcnet", "model_config": {f"key_{i}": list(range(40)) for i in range(30)}}
    config["model_config"]["lr"] = 0.001
    changed = json.loads(json.dumps(config))
    changed["model_config"]["lr"] = 0.002
    path = tmp_path / "last.pt"
    from refbench.api import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT, "model": "pcnet", "config": {}, "state_dict": {},
                "trainer": {"fingerprint": json.dumps(config),
                                              "fingerprint_hash": "old"}}, path)
    with pytest.raises(CheckpointError) as caught:
        load_training_checkpoint(path, "pcnet", json.dumps(changed), "new")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert "model_config.lr 0.001 -> 0.002" in message
