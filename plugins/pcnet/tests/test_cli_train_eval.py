"""End to end through the CLI: `refbench train` PCNet on a tiny SynthRef, then `refbench eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from refbench.cli import main
from refbench.synth import generate


def test_train_then_evaluate_the_best_checkpoint(tmp_path, capsys):
    root = generate(tmp_path / "data", images={"train": 8, "val": 3, "test": 3})
    common = ["--data-root", str(root)]
    code = main([
        "train", "--model", "pcnet", "--split", "synth-train", "--val-split", "synth-val",
        *common, "--set", "preset=small", "--set", "warmup_steps=0", "--set", "num_proposals=4",
        "--batch-size", "4", "--epochs", "1", "--out", str(tmp_path / "train"),
        "--mask-false-negatives",
    ])
    assert code == 0, capsys.readouterr().err
    best = list((tmp_path / "train").rglob("best.pt"))
    assert len(best) == 1
    log = [json.loads(line) for line in best[0].with_name("train_log.jsonl").read_text().split()]
    steps = [r for r in log if r["kind"] == "train"]
    assert len(steps) == 2 and all("iad" in r["losses"] and "ras" in r["losses"] for r in steps)

    code = main([
        "eval", "--model", "pcnet", "--checkpoint", str(best[0]), "--split", "synth-test",
        *common, "--out", str(tmp_path / "runs"), "--save-maps",
    ])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "runs").rglob("metrics.json")).parent
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["n"] == config["num_expressions"] > 0
    assert config["weights"].startswith("checkpoint best.pt")
    assert config["cues"] == "template"  # SynthRef's own decomposition fed the stages
    assert set(metrics["per_template"]) <= {"attribute", "position", "superlative", "relation"}
    stages = [np.load(p)["stages"].shape[1] for p in Path(run, "maps").glob("*.npz")]
    assert stages and set(stages) == {3}

