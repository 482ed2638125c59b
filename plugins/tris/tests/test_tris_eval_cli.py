"""A TRIS checkpoint evaluated through `refbench eval`, found through its entry point alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from refbench_tris import TRIS

from refbench.cli import main
from tests.plugin_fixture import register_checkout_plugin
from tests.refer_fixture import make_tiny_refer

SPLIT = "refcocog-val-g"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """refbench-tris registered on sys.path through a .dist-info, as pip would."""
    register_checkout_plugin(tmp_path, monkeypatch, "refbench-tris", {"tris": "refbench_tris.model:TRIS"})


def test_checkpoint_round_trip_through_refbench_eval(tmp_path, installed, capsys) -> None:
    make_tiny_refer(tmp_path / "data")
    torch.manual_seed(0)
    model = TRIS({"preset": "small"}).eval()
    checkpoint = tmp_path / "tris.pt"
    torch.save(model.checkpoint_state(), checkpoint)

    def run(out: str) -> dict:
        code = main(
            [
                "eval", "--model", "tris", "--checkpoint", str(checkpoint), "--split", SPLIT,
                "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / out),
            ]
        )
        assert code == 0, capsys.readouterr().err
        (run_dir,) = (tmp_path / out / "tris" / SPLIT).iterdir()
        config = json.loads((run_dir / "config.json").read_text())
        lines = (run_dir / "predictions.jsonl").read_text().splitlines()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        return {"config": config, "predictions": lines, "metrics": metrics}

    first = run("runs_a")
    assert first["config"]["model_config"]["preset"] == "small"
    assert first["config"]["weights"].startswith("checkpoint tris.pt (backbone initialised from")
    assert len(first["predictions"]) > 0
    # The checkpoint, loaded twice, scores every sentence identically.
    second = run("runs_b")
    assert first["predictions"] == second["predictions"]
    assert first["metrics"]["metrics"] == second["metrics"]["metrics"]
    assert all(np.isfinite(v) for v in first["metrics"]["metrics"].values() if v is not None)
