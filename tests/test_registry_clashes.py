"""A name two distributions register, or a plugin that cannot be imported, makes only that
model unusable: `refbench list` marks it with the reason, using it is a one-line error, and
every other model still lists and evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest

from refbench import registry
from refbench.cli import main
from refbench.errors import PluginError
from tests.plugin_fixture import register_checkout_plugin


@pytest.fixture
def clashing(tmp_path: Path, monkeypatch) -> Path:
    """A fake distribution that registers 'center' (the core's) again, a plugin whose package
    is not installed and one whose class does not exist."""
    register_checkout_plugin(tmp_path, monkeypatch, "clash-dist", {
        "center": "refbench.baselines:RandomMapModel",
        "ghost": "refbench_ghost_package.model:Ghost",
        "missingclass": "refbench.baselines:NoSuchModel",
    })
    monkeypatch.setenv("COLUMNS", "400")
    return tmp_path


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_clash_makes_only_that_name_unusable(clashing: Path) -> None:
    entries = registry.discover()
    assert entries["random"].clashes == ()
    assert registry.get_model_class("random").__name__ == "RandomMapModel"
    with pytest.raises(PluginError, match="'center' is registered twice") as raised:
        registry.get_model_class("center")
    assert "refbench (refbench.baselines:CenterPriorModel)" in str(raised.value)
    assert "clash-dist (refbench.baselines:RandomMapModel)" in str(raised.value)


def test_list_marks_clashes_and_broken_plugins(clashing: Path, capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    center = next(line for line in out.splitlines() if line.startswith("│ center "))
    assert "clash-dist" in center and "registered twice" in center
    ghost = next(line for line in out.splitlines() if "refbench_ghost_package" in line)
    assert "'refbench_ghost_package' of clash-dist is not installed" in ghost
    random = next(line for line in out.splitlines() if "RandomMapModel" in line
                  and "random " in line)
    assert "ok" in random

    assert main(["list", "--check"]) == 0
    out = capsys.readouterr().out
    missing = next(line for line in out.splitlines() if "NoSuchModel" in line)
    assert "failed to import" in missing and "AttributeError" in missing


def test_using_an_unusable_model_gives_its_reason_and_others_still_run(
    clashing: Path, tmp_path: Path, capsys
) -> None:
    from refbench.synth import generate

    root = generate(tmp_path / "data", images={"train": 2, "val": 2, "test": 2})
    common = ["--split", "synth-val", "--data-root", str(root), "--out", str(tmp_path / "runs")]
    assert main(["eval", "--model", "center", *common]) == 2
    assert "registered twice" in _err_line(capsys)
    assert main(["eval", "--model", "missingclass", *common]) == 2
    assert "clash-dist 0.1.0 failed to import (AttributeError" in _err_line(capsys)
    assert main(["eval", "--model", "random", *common]) == 0
