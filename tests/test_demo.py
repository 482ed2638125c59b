"""The demo pipeline on a tiny SynthRef with two tiny PCNet configurations (a few steps each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from refbench.demo.configs import ModelSpec
from refbench.demo.pipeline import DemoOptions, run_demo
from refbench.errors import OutputError
from refbench.io import exclusive_lock

TINY = {"preset": "small", "batch_size": 4, "warmup_steps": 0, "hidden_dim": 16}
MODELS = (
    ModelSpec("pcnet", "pcnet", {**TINY, "num_stages": 2, "num_cues": 2}, epochs=1, max_steps=2),
    ModelSpec("pcnet", "single", {**TINY, "num_stages": 1, "num_cues": 1, "ras": False},
              epochs=1, max_steps=2),
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    from refbench.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, images={"train": 16, "val": 4, "test": 4})
    return root


def options(tmp_path: Path, root: Path, **extra) -> DemoOptions:
    return DemoOptions(out_dir=tmp_path / "lb", work_dir=tmp_path / "work", data_root=root,
                       models=MODELS, progress=False, figure_expressions=2, **extra)


def test_demo_runs_reuses_resumes_and_retrains(tmp_path, tiny_root, capsys):
    first = run_demo(options(tmp_path, tiny_root))
    assert [first.step(f"train {m.label}").status for m in MODELS] == ["done", "done"]
    for name in ("synthref.md", "synthref.tex", "synthref.png"):
        assert (tmp_path / "lb" / name).stat().st_size > 0
    markdown = (tmp_path / "lb" / "synthref.md").read_text()
    assert "chance: random object" in markdown and "BackgroundPeaks" in markdown
    assert "PointM: attribute" in markdown
    assert (tmp_path / "lb" / "synthref.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoints = {m.label: first.train_dirs[m.label] / "last.pt" for m in MODELS}
    mtimes = {label: path.stat().st_mtime_ns for label, path in checkpoints.items()}
    for label in mtimes:
        assert (first.eval_dirs[label] / "metrics.json").is_file()

    # second run: nothing is trained or scored again
    second = run_demo(options(tmp_path, tiny_root))
    assert [second.step(f"train {m.label}").status for m in MODELS] == ["reused", "reused"]
    assert [second.step(f"evaluate {m.label}").status for m in MODELS] == ["reused", "reused"]
    assert {label: p.stat().st_mtime_ns for label, p in checkpoints.items()} == mtimes
    assert "train pcnet: reused" in capsys.readouterr().out

    # killed after its last checkpoint but before the summary: resumes, does not restart
    (first.train_dirs["single"] / "train_summary.json").unlink()
    # a changed config trains a new checkpoint beside the old one, never reusing it
    changed = (MODELS[0].with_overrides("pcnet", hidden_dim=8), MODELS[1])
    third = run_demo(DemoOptions(out_dir=tmp_path / "lb", work_dir=tmp_path / "work",
                                 data_root=tiny_root, models=changed, progress=False,
                                 figure_expressions=1))
    assert third.step("train pcnet").status == "done"
    assert third.train_dirs["pcnet"] != first.train_dirs["pcnet"]
    assert third.step("train single").status == "resumed"
    assert (first.train_dirs["single"] / "train_summary.json").is_file()

    fourth = run_demo(options(tmp_path, tiny_root, retrain=True))
    assert fourth.step("train pcnet").status == "done"
    assert checkpoints["pcnet"].stat().st_mtime_ns != mtimes["pcnet"]


def test_concurrent_demo_is_refused(tmp_path, tiny_root):
    work = tmp_path / "work"
    work.mkdir()
    with exclusive_lock(work / ".demo.lock"), pytest.raises(OutputError, match="demo is running"):
        run_demo(options(tmp_path, tiny_root))


def test_unwritable_cache_says_set_refbench_cache(tmp_path, tiny_root, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")  # unwritable even for root
    monkeypatch.setenv("REFBENCH_CACHE", str(blocker / "cache"))
    with pytest.raises(OutputError, match="set REFBENCH_CACHE to a writable folder"):
        run_demo(options(tmp_path, tiny_root))
    assert not (tmp_path / "work").exists()


def test_demo_cli_reports_lock_in_one_line(tmp_path, tiny_root, capsys):
    from refbench.cli import main

    work = tmp_path / "work"
    work.mkdir()
    with exclusive_lock(work / ".demo.lock"):
        code = main(["demo", "--work-dir", str(work), "--out", str(tmp_path / "lb"),
                     "--data-root", str(tiny_root), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a demo is running" in err[0]
