"""User mistakes on the command line: one line on stderr, exit code 2, nothing left behind.

Config values are checked (types, ranges, lengths) before any run folder, cache or model is
made; `--set` values are JSON with bare words as strings; a misspelt subcommand gets a "did you
mean"; a full disk is one line naming the file, for every subcommand.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from refbench.api import validate_base_config, validate_training_config
from refbench.cli import main
from refbench.cli.options import parse_overrides
from refbench.errors import ConfigError
from tests.test_train_cli import _train, train_plugin  # noqa: F401 - the fixture is used


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_set_values_are_json_and_bare_words_are_strings() -> None:
    assert parse_overrides(("input_size=448", "lr=1e-4", "mean=[0.5, 0.5, 0.5]", "preset=small",
                            "weights=null", "flag=true", "name=\"quoted\"")) == {
        "input_size": 448, "lr": 1e-4, "mean": [0.5, 0.5, 0.5], "preset": "small",
        "weights": None, "flag": True, "name": "quoted",
    }
    for bad in ("input_size={bad", "mean=[1,2", "lr=1e-", "name=\"open"):
        key = bad.split("=")[0]
        with pytest.raises(ConfigError, match=rf"--set {key}=.*not valid JSON.*--set '{key}=\["):
            parse_overrides((bad,))


@pytest.mark.parametrize(("config", "key"), [
    ({"input_size": "abc"}, "input_size"), ({"input_size": -5}, "input_size"),
    ({"input_size": 0}, "input_size"), ({"input_size": 3.5}, "input_size"),
    ({"input_size": True}, "input_size"), ({"mean": [1, 2]}, "mean"),
    ({"mean": [123.7, 116.3, 103.5]}, "mean"), ({"std": [0.2, 0.0, 0.2]}, "std"),
    ({"std": "wide"}, "std"), ({"resize": "cv2"}, "resize"), ({"num_cues": -1}, "num_cues"),
])
def test_base_config_rejects_bad_values_naming_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"model 'm' config {key}="):
        validate_base_config(config, "model 'm'")


def test_base_config_accepts_good_values() -> None:
    validate_base_config({"input_size": 96, "mean": [0.5, 0.4, 0.3], "std": (0.2, 0.2, 0.2),
                          "resize": "pil", "num_cues": 0}, "model 'm'")


@pytest.mark.parametrize(("config", "key"), [
    ({"lr": "abc"}, "lr"), ({"lr": 0}, "lr"), ({"lr": -1e-3}, "lr"), ({"epochs": 0}, "epochs"),
    ({"epochs": 1.5}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"warmup_steps": -1}, "warmup_steps"), ({"weight_decay": -0.1}, "weight_decay"),
    ({"poly_power": 0}, "poly_power"), ({"grad_clip": "x"}, "grad_clip"),
    ({"num_distinct": -2}, "num_distinct"),
])
def test_training_recipe_rejects_bad_values_naming_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"config {key}="):
        validate_training_config(config, "model 'm'")


def test_warmup_must_be_shorter_than_the_run() -> None:
    validate_training_config({"warmup_steps": 3, "grad_clip": None}, "model 'm'", total_steps=4)
    with pytest.raises(ConfigError, match="warmup_steps=4 is not shorter than the run's 4 steps"):
        validate_training_config({"warmup_steps": 4}, "model 'm'", total_steps=4)


@pytest.fixture
def synth_root(tmp_path: Path) -> Path:
    from refbench.synth import generate

    return generate(tmp_path / "data", images={"train": 4, "val": 2, "test": 2})


@pytest.mark.parametrize(("pair", "says"), [
    ("input_size={bad", "input_size={bad: the value is not valid JSON"),
    ("input_size=abc", "input_size='abc': must be a positive integer"),
    ("input_size=-5", "input_size=-5: must be a positive integer"),
    ("mean=[1,2]", "mean=[1, 2]: must be three numbers"),
])
def test_eval_bad_set_values_are_one_line_and_leave_no_run(
    synth_root: Path, tmp_path: Path, capsys, pair: str, says: str
) -> None:
    code = main(["eval", "--model", "center", "--split", "synth-val", "--data-root",
                 str(synth_root), "--out", str(tmp_path / "runs"), "--set", pair])
    assert code == 2
    assert says in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "says"), [
    (("--set", "lr=abc"), "lr='abc': must be a number > 0"),
    (("--num-workers", "-1"), "--num-workers"),
    (("--epochs", "0"), "--epochs"),
    (("--set", "epochs=0"), "epochs=0: must be an integer >= 1"),
    (("--set", "warmup_steps=5"), "warmup_steps=5 is not shorter than the run's 2 steps"),
])
def test_train_bad_settings_are_refused_before_anything_is_made(
    train_plugin: Path, capsys, args: tuple[str, ...], says: str  # noqa: F811
) -> None:
    cache = Path(os.environ["REFBENCH_CACHE"])
    before = sorted(cache.rglob("*")) if cache.exists() else []
    assert _train(train_plugin, *args) == (2, None)
    assert says in _one_error_line(capsys)
    assert not (train_plugin / "runs").exists()
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before


def test_misspelt_subcommand_suggests_the_right_one(capsys) -> None:
    assert main(["evl"]) == 2
    assert "Did you mean 'eval'?" in _one_error_line(capsys)


def test_uncaught_disk_full_is_one_line_naming_the_file(monkeypatch, capsys) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/predictions.jsonl")

    monkeypatch.setattr("refbench.cli.eval.open_dataset", full)
    code = main(["eval", "--model", "center", "--split", "synth-val"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "/data/runs/x/predictions.jsonl" in line
    assert "free space and rerun the same command: it resumes" in line


@pytest.mark.parametrize("command", ["synth", "eval", "cues", "train"])
def test_a_full_disk_is_one_line_for_every_subcommand(
    train_plugin: Path, monkeypatch, capsys, command: str  # noqa: F811
) -> None:
    full = train_plugin / "full"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(full)):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setenv("REFBENCH_CACHE", str(full / "cache"))
    data = ["--data-root", str(train_plugin / "data")]
    argv = {
        "synth": ["data", "synth", "--out", str(full / "synth"), "--images", "2",
                  "--val-images", "1", "--test-images", "1"],
        "eval": ["eval", "--model", "traintest", "--split", "refcocog-val-g", *data,
                 "--out", str(full / "runs")],
        "cues": ["cues", "build", "--split", "refcocog-val-g", "--backend", "heuristic", *data],
        "train": ["train", "--model", "traintest", "--split", "refcocog-train-g", *data,
                  "--out", str(full / "train"), "--device", "cpu"],
    }[command]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert str(full) in line
