"""Run folders under concurrency and faults: one writer per run, no orphans or temp files that
break a later command, a full disk as one line, and a plugin that breaks the predict contract.

The concurrent and killed runs are real processes (`python -m refbench eval`) on the tiny refer
data set, with the test model sleeping in predict so that two processes overlap for certain.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from refbench.cli import main
from refbench.io import DiskFullError, append_jsonl, atomic_write_json, read_jsonl
from tests.eval_support import SPLIT, subprocess_env, write_model_plugin, write_refer
from tests.plugin_fixture import write_plugin
from tests.report_fixture import make_records, write_run


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    write_model_plugin(tmp_path / "plugin")
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    monkeypatch.setenv("REFBENCH_NO_PROGRESS", "1")
    yield tmp_path / "plugin"
    sys.modules.pop("evaltest_plugin", None)


def _command(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "refbench", "eval", "--model", "evaltest", "--split", SPLIT,
            "--data-root", str(tmp_path / "data"), "--batch-size", "1", *extra]


def _expected_keys(data: dict) -> set[str]:
    """Every val sentence of the fixture, built from the refs (not by the runner)."""
    return {f"{ref['image_id']}:{ref['ref_id']}:{s['sent_id']}"
            for ref in data["refs"] if ref["split"] == "val" for s in ref["sentences"]}


def _lines(run_dir: Path) -> list[str]:
    path = run_dir / "predictions.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def _wait_for_lines(parent: Path, count: int, process: subprocess.Popen, timeout: float = 120):
    """The run folder under `parent` once its predictions hold `count` lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for predictions in parent.glob("*/predictions.jsonl"):
            if len(predictions.read_text().splitlines()) >= count:
                return predictions.parent
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError(f"no run under {parent} reached {count} predictions")


def _visible(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if not p.name.startswith("."))


def test_two_evals_with_one_out_write_two_whole_runs(tmp_path, plugin):
    data = write_refer(tmp_path / "data", num_images=8)
    command = _command(tmp_path, "--out", str(tmp_path / "runs"), "--set", "sleep=0.4")
    first = subprocess.Popen(command, env=subprocess_env(plugin), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    parent = tmp_path / "runs" / "evaltest" / SPLIT
    try:
        _wait_for_lines(parent, 1, first)  # the first run is live and unfinished
        second = subprocess.run(command, env=subprocess_env(plugin), capture_output=True, text=True,
                                timeout=300)
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 0, second.stderr
    runs = _visible(parent)
    assert len(runs) == 2  # the second did not resume the live first one
    for run_dir in runs:
        keys = [json.loads(line)["key"] for line in _lines(run_dir)]
        assert sorted(keys) == sorted(_expected_keys(data))  # each expression exactly once
        assert json.loads((run_dir / "metrics.json").read_text())["n"] == len(keys)


def test_resume_of_a_live_run_is_refused_naming_it_and_its_process(tmp_path, plugin):
    write_refer(tmp_path / "data", num_images=12)
    command = _command(tmp_path, "--out", str(tmp_path / "runs"), "--set", "sleep=1.0")
    live = subprocess.Popen(command, env=subprocess_env(plugin), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    parent = tmp_path / "runs" / "evaltest" / SPLIT
    try:
        run_dir = _wait_for_lines(parent, 1, live)
        refused = subprocess.run([*command, "--resume", str(run_dir)], env=subprocess_env(plugin),
                                 capture_output=True, text=True, timeout=300)
        still_running = live.poll() is None
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    assert refused.returncode == 2, refused.stderr
    assert still_running, "the live run ended before the second process tried it"
    err = refused.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert str(run_dir) in err[0] and f"pid {live.pid}" in err[0]
    keys = [json.loads(line)["key"] for line in _lines(run_dir)]
    assert len(keys) == len(set(keys))  # the refused process wrote nothing

    # the kernel dropped the killed holder's lock: the folder is free again at once
    from refbench.io import try_lock

    lock = try_lock(run_dir / ".eval.lock")
    assert lock is not None
    lock.release()


KILL_SCRIPT = """
import os, signal, sys
import refbench.eval.run_folder as run_folder
import refbench.eval.runner as runner
from refbench.io import atomic_writer
from refbench.cli import main

where = sys.argv[1]
if where == "creation":  # die on the second file written into a new run folder
    calls = []
    real = run_folder.atomic_write_json
    def dying(path, obj):
        calls.append(path)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, obj)
    run_folder.atomic_write_json = dying
else:  # die half-way through writing metrics.json
    def dying(path, obj):
        with atomic_writer(path) as handle:
            handle.write(b'{"half": ')
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    runner.atomic_write_json = dying
sys.exit(main(sys.argv[2:]))
"""


def _killed_at(tmp_path: Path, plugin: Path, where: str, args: list[str]) -> int:
    script = tmp_path / "die.py"
    script.write_text(KILL_SCRIPT)
    done = subprocess.run([sys.executable, str(script), where, *args], env=subprocess_env(plugin),
                          capture_output=True, text=True, timeout=300)
    return done.returncode


def test_a_kill_while_creating_the_run_folder_does_not_block_the_rerun(tmp_path, plugin):
    data = write_refer(tmp_path / "data", num_images=3)
    args = _command(tmp_path, "--out", str(tmp_path / "runs"))[3:]
    assert _killed_at(tmp_path, plugin, "creation", args) == -signal.SIGKILL
    parent = tmp_path / "runs" / "evaltest" / SPLIT
    assert _visible(parent) == []  # no half-made run folder is visible

    done = subprocess.run(_command(tmp_path, "--out", str(tmp_path / "runs")),
                          env=subprocess_env(plugin), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(parent.iterdir()) == _visible(parent)  # the dead creation was cleaned up
    (run_dir,) = _visible(parent)
    assert sorted(json.loads(line)["key"] for line in _lines(run_dir)) == sorted(
        _expected_keys(data))


def test_a_run_folder_without_env_json_is_removed_once_and_the_rerun_succeeds(
    tmp_path, plugin, capsys
):
    write_refer(tmp_path / "data", num_images=2)
    assert main(_command(tmp_path, "--out", str(tmp_path / "runs"))[3:]) == 0
    parent = tmp_path / "runs" / "evaltest" / SPLIT
    (finished,) = _visible(parent)
    orphan = parent / "20990101-000000_abcdef0"  # newest: what automatic resume looks at first
    orphan.mkdir()
    (orphan / "config.json").write_text((finished / "config.json").read_text())
    capsys.readouterr()

    assert main(_command(tmp_path, "--out", str(tmp_path / "runs"))[3:]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if str(orphan) in line] == [err[0]] and "env.json" in err[0]
    assert not orphan.exists()
    assert len(_visible(parent)) == 2


def test_a_kill_during_the_metrics_write_leaves_no_temp_file_after_the_rerun(tmp_path, plugin):
    write_refer(tmp_path / "data", num_images=3)
    args = _command(tmp_path, "--out", str(tmp_path / "runs"))[3:]
    assert _killed_at(tmp_path, plugin, "metrics", args) == -signal.SIGKILL
    (run_dir,) = _visible(tmp_path / "runs" / "evaltest" / SPLIT)
    assert not (run_dir / "metrics.json").exists()
    assert list(run_dir.glob(".metrics.json.*.tmp"))  # what the kill left

    done = subprocess.run(_command(tmp_path, "--out", str(tmp_path / "runs")),
                          env=subprocess_env(plugin), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["n"] == len(_lines(run_dir))
    assert list(run_dir.glob(".*.tmp")) == []


def test_leaderboard_skips_training_runs_and_runs_without_predictions(tmp_path, capsys):
    records = make_records(4, 0.5, seed=0)
    for index, record in enumerate(records):
        record["point_hit"] = index % 2 == 0
    finished = write_run(tmp_path, "center", "refcoco-val", records)
    orphan = write_run(tmp_path, "center", "refcoco-val", [], name="20240502-000000_abc1234",
                       write_metrics=False)
    (orphan / "predictions.jsonl").unlink(missing_ok=True)
    training = tmp_path / "runs" / "train" / "refcoco-train" / "20240503-000000_abc1234"
    training.mkdir(parents=True)
    (training / "config.json").write_text(json.dumps({"model": "pcnet", "split": "refcoco-train"}))
    (training / "train_log.jsonl").write_text('{"step": 1}\n')
    partial = finished.parent / ".20240504-000000_abc1234.123-abcd.partial"
    partial.mkdir()
    (partial / "config.json").write_text((finished / "config.json").read_text())

    folders = sorted(glob.glob(str(tmp_path / "runs" / "*" / "*" / "*")))  # as a shell expands it
    assert main(["leaderboard", *folders, "--splits", "refcoco-val", "--metric", "PointM"]) == 0
    captured = capsys.readouterr()
    assert "50.0" in captured.out  # 2 of the 4 finished records hit
    notes = captured.err.strip().splitlines()
    assert len(notes) == 2
    assert any(str(orphan) in n and "no predictions" in n for n in notes)
    assert any(str(training) in n and "training run" in n for n in notes)
    assert main(["leaderboard", str(tmp_path / "runs"), "--metric", "PointM"]) == 0
    assert ".partial" not in capsys.readouterr().err


BAD_MODEL_SOURCE = '''
import numpy as np
import torch

from refbench.api import Prediction, RISModel


class BadModel(RISModel):
    name = "badpredict"

    @classmethod
    def default_config(cls):
        config = super().default_config()
        config.update({"input_size": 32, "returns": "numpy", "allow_random_weights": False})
        return config

    def __init__(self, config=None):
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def predict(self, batch):
        count = len(batch.flat_expressions)
        if self.config["returns"] == "numpy":
            return np.zeros((count, 8, 8), dtype=np.float32)
        if self.config["returns"] == "maps-numpy":
            return Prediction(response_maps=np.zeros((count, 8, 8), dtype=np.float32))
        return None
'''


@pytest.mark.parametrize("returns, said", [("numpy", "a NumPy array of shape"),
                                           ("none", "returned None"),
                                           ("maps-numpy", "response_maps is a NumPy array")])
def test_predict_outside_the_contract_is_one_line_naming_the_plugin(
    tmp_path, monkeypatch, capsys, returns, said
):
    write_plugin(tmp_path / "bad", "badpredict-plugin", "0.3.0", "badpredict_plugin",
                 {"badpredict": "badpredict_plugin:BadModel"}, textwrap.dedent(BAD_MODEL_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path / "bad"))
    monkeypatch.setenv("REFBENCH_NO_PROGRESS", "1")
    write_refer(tmp_path / "data", num_images=2)
    try:
        code = main(["eval", "--model", "badpredict", "--split", SPLIT, "--data-root",
                     str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
                     "--set", f"returns={json.dumps(returns)}"])
    finally:
        sys.modules.pop("badpredict_plugin", None)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for part in ("'badpredict'", "badpredict-plugin 0.3.0", said, "refbench.api.Prediction",
                 "[E, S, S]", "one map per expression"):
        assert part in err[0], (part, err[0])
    assert not list((tmp_path / "runs").rglob("config.json"))  # nothing left behind


def _disk_full_after(monkeypatch, module, name: str, calls_before: int, partial: bool = False):
    """Make `module.name` (os.write or os.fsync) fail with ENOSPC from call `calls_before`."""
    real = getattr(module, name)
    count = [0]

    def failing(fd, *rest):
        count[0] += 1
        if count[0] > calls_before:
            if partial and rest:  # half the bytes reach the file first, as on a real disk
                real(fd, bytes(rest[0])[: len(rest[0]) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *rest)

    monkeypatch.setattr(module, name, failing)


def test_disk_full_while_appending_predictions_keeps_whole_lines_and_resumes(
    tmp_path, plugin, monkeypatch, capsys
):
    data = write_refer(tmp_path / "data", num_images=4)
    args = _command(tmp_path, "--out", str(tmp_path / "runs"))[3:]
    import refbench.io

    with monkeypatch.context() as patch:
        _disk_full_after(patch, refbench.io.os, "write", 2, partial=True)
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    (run_dir,) = _visible(tmp_path / "runs" / "evaltest" / SPLIT)
    predictions = run_dir / "predictions.jsonl"
    assert len(err) == 1 and "no space left on the device" in err[0], err
    assert str(predictions) in err[0] and "rerun the same command" in err[0]
    records, good = read_jsonl(predictions)
    assert good == predictions.stat().st_size and len(records) > 0  # only whole lines

    assert main(args) == 0
    keys = [json.loads(line)["key"] for line in _lines(run_dir)]
    assert sorted(keys) == sorted(_expected_keys(data))


def test_disk_full_in_an_atomic_write_leaves_neither_file_nor_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"old": 1})
    import refbench.io

    _disk_full_after(monkeypatch, refbench.io.os, "fsync", 0)
    with pytest.raises(DiskFullError, match=f"no space left on the device while writing {target}"):
        atomic_write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_append_is_cut_back_off_the_file(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        append_jsonl(handle, [{"k": 1}])
    import refbench.io

    _disk_full_after(monkeypatch, refbench.io.os, "write", 0, partial=True)
    with open(path, "a", encoding="utf-8") as handle:
        with pytest.raises(DiskFullError, match="log.jsonl"):
            append_jsonl(handle, [{"k": 2}, {"k": 3}])
    assert path.read_text() == '{"k":1}\n'


def test_train_resume_refuses_a_newest_run_without_a_checkpoint(tmp_path):
    from refbench.cli.train import find_resume_dir
    from refbench.errors import CheckpointError

    parent = tmp_path / "tiny" / "synth-train"
    older, newest = parent / "20250101-000000_abc", parent / "20250102-000000_abc"
    for folder in (older, newest):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (older / "last.pt").write_bytes(b"x")
    (older / "train_summary.json").write_text("{}")
    with pytest.raises(CheckpointError) as caught:
        find_resume_dir(tmp_path, "tiny", "synth-train", "latest")
    message = str(caught.value)
    assert str(newest) in message and "no last.pt" in message and str(older) in message
    (newest / "last.pt").write_bytes(b"x")
    assert find_resume_dir(tmp_path, "tiny", "synth-train", "latest") == newest


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch

    import refbench.io
    from refbench.train.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    _disk_full_after(monkeypatch, refbench.io.os, "fsync", 0)
    with pytest.raises(DiskFullError, match="last.pt"):
        save_checkpoint(path, {"step": torch.tensor(2)})
    assert int(torch.load(path, weights_only=True)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
