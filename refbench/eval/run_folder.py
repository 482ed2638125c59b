"""Run folders: ``runs/<model>/<split>/<YYYYmmdd-HHMMSS>_<sha7>/`` with config, env, resume.

A folder is created with config.json and env.json first; predictions.jsonl grows one batch
at a time; metrics.json is written last. A folder without metrics.json is unfinished and
resumes when its config matches the new run's (see docs/runs.md).
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any

from refbench.errors import OutputError
from refbench.io import atomic_write_json, ensure_dir, read_json

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"

# Config keys that change what a run computes; a folder resumes only when all of them match.
# batch_size, device, num_workers and paths do not change any per-expression result.
RESULT_KEYS = (
    "model", "model_config", "weights", "checkpoint_sha256", "split", "dataset", "protocol",
    "protocol_rules", "sentences", "proposals", "cues", "seed", "save_masks",
)


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a run folder (holds a config.json)."""
    return (Path(path) / CONFIG_FILE).is_file()


def is_finished(path: str | Path) -> bool:
    """Whether the run in `path` wrote its metrics."""
    return (Path(path) / METRICS_FILE).is_file()


def config_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The result-changing keys on which two run configs disagree."""
    return [key for key in RESULT_KEYS if stored.get(key) != wanted.get(key)]


def run_folder_name(git_sha: str | None, now: _dt.datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>_<sha7>`` (``nogit`` outside a git checkout)."""
    now = now or _dt.datetime.now()
    return f"{now:%Y%m%d-%H%M%S}_{git_sha[:7] if git_sha else 'nogit'}"


def find_unfinished(out_root: str | Path, config: dict[str, Any]) -> Path | None:
    """The newest unfinished run under ``out_root/<model>/<split>`` with the same config."""
    parent = Path(out_root) / config["model"] / config["split"]
    if not parent.is_dir():
        return None
    for candidate in sorted(parent.iterdir(), reverse=True):
        if not is_run_dir(candidate) or is_finished(candidate):
            continue
        try:
            stored = read_json(candidate / CONFIG_FILE, "run config")
        except Exception:  # noqa: BLE001 - an unreadable folder is simply not a candidate
            continue
        if not config_differences(stored, config):
            return candidate
    return None


def check_resumable(run_dir: Path, config: dict[str, Any]) -> None:
    """Raise `OutputError` unless `run_dir` is an unfinished run with the same config."""
    if not is_run_dir(run_dir):
        raise OutputError(
            f"--resume {run_dir}: no {CONFIG_FILE} there, so it is not a refbench run folder; "
            "pass a folder made by `refbench eval`"
        )
    if is_finished(run_dir):
        raise OutputError(
            f"run {run_dir} is already finished ({METRICS_FILE} exists); re-score it with "
            f"`refbench score {run_dir}` or start a new run without --resume"
        )
    stored = read_json(run_dir / CONFIG_FILE, "run config")
    differing = config_differences(stored, config)
    if differing:
        detail = "; ".join(
            f"{key}: run has {_short(stored.get(key))}, now {_short(config.get(key))}"
            for key in differing
        )
        raise OutputError(
            f"cannot resume {run_dir}: its config differs ({detail}); rerun with the same "
            "options or start a new run without --resume"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def create_run_dir(
    out_root: str | Path, config: dict[str, Any], env: dict[str, Any]
) -> Path:
    """Make a fresh run folder and write config.json and env.json into it."""
    parent = ensure_dir(Path(out_root) / config["model"] / config["split"], "output folder")
    base = run_folder_name(env.get("git_sha"))
    run_dir = parent / base
    suffix = 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            suffix += 1
            run_dir = parent / f"{base}-{suffix}"
        except OSError as error:
            raise OutputError(
                f"cannot create run folder {run_dir} ({error.strerror}); choose another --out"
            ) from None
    try:
        atomic_write_json(run_dir / CONFIG_FILE, config)
        atomic_write_json(run_dir / ENV_FILE, env)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def note_resume(run_dir: Path, env: dict[str, Any]) -> None:
    """Record in env.json that the run was resumed, and where/when."""
    stored = read_json(run_dir / ENV_FILE, "run environment")
    keys = ("started_at", "git_sha", "git_dirty", "device_name", "world_size")
    stored.setdefault("resumes", []).append({key: env.get(key) for key in keys})
    atomic_write_json(run_dir / ENV_FILE, stored)


def open_run(
    out_root: str | Path,
    config: dict[str, Any],
    env: dict[str, Any],
    *,
    resume_dir: str | Path | None = None,
    resume: bool = True,
) -> tuple[Path, bool]:
    """The run folder to write into and whether it is a resumed one.

    `resume_dir` (or an `out_root` that is itself a run folder) must be an unfinished run with
    the same config; otherwise, with `resume`, the newest matching unfinished run under
    `out_root` is reused, else a new folder is created.
    """
    if resume_dir is None and is_run_dir(out_root):
        resume_dir = out_root
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        check_resumable(run_dir, config)
        note_resume(run_dir, env)
        return run_dir, True
    if resume:
        found = find_unfinished(out_root, config)
        if found is not None:
            note_resume(found, env)
            return found, True
    return create_run_dir(out_root, config, env), False
