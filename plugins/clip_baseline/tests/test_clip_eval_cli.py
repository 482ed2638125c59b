"""`refbench eval --model clip`: refused without weights, runs with --allow-random-weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refbench.cli import main
from tests.plugin_fixture import register_checkout_plugin
from tests.refer_fixture import make_tiny_refer

SPLIT = "refcocog-val-g"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """refbench-clip-baseline registered on sys.path through a .dist-info, as pip would."""
    register_checkout_plugin(tmp_path, monkeypatch, "refbench-clip-baseline", {"clip": "refbench_clip_baseline.model:ClipBaseline"})


def _eval(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "eval", "--model", "clip", "--split", SPLIT, "--data-root", str(tmp_path / "data"),
            "--out", str(tmp_path / "runs"), "--set", "small_backbone=true",
            "--set", "input_size=128", *extra,
        ]
    )


def test_eval_without_weights_says_how_to_supply_them(tmp_path, installed, capsys) -> None:
    make_tiny_refer(tmp_path / "data")
    assert _eval(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "--set weights=openai" in err[0] and "--allow-random-weights" in err[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_eval_with_allow_random_weights_runs(tmp_path, installed, capsys) -> None:
    make_tiny_refer(tmp_path / "data")
    assert _eval(tmp_path, "--allow-random-weights") == 0
    (run_dir,) = (tmp_path / "runs" / "clip" / SPLIT).iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_config"]["allow_random_weights"] is True
    assert "random init" in config["weights"]
    assert (run_dir / "metrics.json").is_file()
