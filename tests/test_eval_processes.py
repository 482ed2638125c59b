"""Real processes: a SIGKILLed eval resumes to the same metrics, and a 2-process gloo run under
torchrun gives the same records and metrics as one process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval_support import SPLIT, subprocess_env, write_model_plugin, write_refer


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    write_model_plugin(tmp_path / "plugin")
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    yield tmp_path / "plugin"
    sys.modules.pop("evaltest_plugin", None)


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["key"])


def _single_process_run(tmp_path: Path, **config) -> dict:
    from refbench import create_model
    from refbench.data.refer import ReferDataset
    from refbench.eval.runner import evaluate

    return evaluate(create_model("evaltest", **config), ReferDataset(tmp_path / "data", SPLIT),
                    out_dir=tmp_path / "single", progress=False)


def test_killed_run_resumes_to_the_same_metrics(tmp_path, plugin):
    write_refer(tmp_path / "data", num_images=12)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "refbench", "eval", "--model", "evaltest", "--split", SPLIT,
               "--data-root", str(tmp_path / "data"), "--out", str(out), "--batch-size", "1",
               "--set", "sleep=0.3"]
    process = subprocess.Popen(command, env=subprocess_env(plugin), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    predictions = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            found = list(out.glob(f"evaltest/{SPLIT}/*/predictions.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 4:
                predictions = found[0]
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert predictions is not None, "the run never wrote 4 predictions"
    run_dir = predictions.parent
    written = len(predictions.read_text().splitlines())
    assert not (run_dir / "metrics.json").exists()

    expected = _single_process_run(tmp_path)  # sleep does not change the maps
    assert written < expected["n"]
    done = subprocess.run([*command, "--resume", str(run_dir)], env=subprocess_env(plugin),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == expected["n"]
    assert metrics["metrics"] == expected["metrics"]
    keys = [r["key"] for r in _records(run_dir)]
    assert len(keys) == len(set(keys)) == expected["n"]


def test_two_gloo_processes_match_one(tmp_path, plugin):
    write_refer(tmp_path / "data", num_images=7)  # odd: the ranks get 4 and 3 images
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "refbench", "eval", "--model", "evaltest",
               "--split", SPLIT, "--data-root", str(tmp_path / "data"), "--out", str(out),
               "--batch-size", "2"]
    done = subprocess.run(command, env=subprocess_env(plugin), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = list((out / "evaltest" / SPLIT).iterdir())
    expected = _single_process_run(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"] == expected["metrics"] and metrics["n"] == expected["n"]
    assert json.loads((run_dir / "env.json").read_text())["world_size"] == 2
    single = _records(Path(expected["run_dir"]))
    assert _records(run_dir) == single  # every expression exactly once, identical fields
