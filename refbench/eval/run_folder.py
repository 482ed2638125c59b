"""Run folders: ``runs/<model>/<split>/<YYYYmmdd-HHMMSS>_<sha7>/`` with config, env, resume.

A folder appears complete or not at all: config.json and env.json are written into a hidden
``.<name>.<random>.partial`` folder that is renamed into place. predictions.jsonl grows one
batch at a time; metrics.json is written last. A folder without metrics.json is unfinished
and resumes when its config matches the new run's. The process writing a run holds the
exclusive lock ``.eval.lock`` inside it for its whole life, so no two processes write one run
(see docs/runs.md).
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refbench.errors import OutputError, RefbenchError, describe_differences
from refbench.io import (
    FileLock,
    atomic_write_json,
    disk_full_error,
    ensure_dir,
    lock_holder,
    print_note,
    read_json,
    remove_stale_temp_files,
    try_lock,
)

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
MAPS_FOLDER = "maps"
LOCK_FILE = ".eval.lock"
PARTIAL_SUFFIX = ".partial"  # a run folder being created; renamed into place when complete

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


def check_resumable(run_dir: Path, config: dict[str, Any]) -> None:
    """Raise `OutputError` unless `run_dir` is an unfinished run with the same config."""
    if not is_run_dir(run_dir):
        raise OutputError(
            f"--resume {run_dir}: no {CONFIG_FILE} there, so it is not a refbench run folder; "
            "pass a folder made by `refbench eval`"
        )
    if not (run_dir / ENV_FILE).is_file():
        raise OutputError(
            f"--resume {run_dir}: no {ENV_FILE} there, so the folder was never completely "
            "created and holds nothing to resume; delete it and rerun without --resume"
        )
    if is_finished(run_dir):
        raise OutputError(
            f"run {run_dir} is already finished ({METRICS_FILE} exists); re-score it with "
            f"`refbench score {run_dir}` or start a new run without --resume"
        )
    stored = read_json(run_dir / CONFIG_FILE, "run config")
    differing = config_differences(stored, config)
    if differing:
        detail = describe_differences({k: stored.get(k) for k in differing},
                                      {k: config.get(k) for k in differing})
        raise OutputError(
            f"cannot resume {run_dir}: its config differs ({detail}); rerun with the same "
            "options or start a new run without --resume"
        )


@dataclass
class RunFolder:
    """A run folder this process writes, with the lock that keeps every other process out."""

    path: Path
    resumed: bool
    lock: FileLock | None

    def release(self) -> None:
        """Give up the folder's lock (after the last write, or when the run failed)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_run(run_dir: Path) -> FileLock:
    """Take `run_dir`'s eval lock, or raise `OutputError` naming the live process that holds it."""
    lock_path = run_dir / LOCK_FILE
    try:
        lock = try_lock(lock_path)
    except OSError as error:
        raise disk_full_error(error, lock_path) or OutputError(
            f"cannot lock run folder {run_dir} ({error.strerror}); choose a writable --out"
        ) from None
    if lock is None:
        raise OutputError(
            f"run {run_dir} is being written by another refbench process ({lock_holder(lock_path)}); "
            "wait for it to finish, or stop it, before running this again"
        )
    return lock


def _is_partial(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


def remove_dead_partials(parent: Path) -> None:
    """Remove ``.*.partial`` folders (run folders whose creation a killed process left)."""
    if not parent.is_dir():
        return
    for candidate in parent.iterdir():
        if not (_is_partial(candidate) and candidate.is_dir()):
            continue
        try:
            lock = try_lock(candidate / LOCK_FILE)
        except OSError:
            continue  # removed meanwhile, or unwritable: not ours to clean
        if lock is None:
            continue  # still being created by a live process
        with lock:
            shutil.rmtree(candidate, ignore_errors=True)


def _create(out_root: str | Path, config: dict[str, Any], env: dict[str, Any]) -> RunFolder:
    parent = ensure_dir(Path(out_root) / config["model"] / config["split"], "output folder")
    remove_dead_partials(parent)
    base = run_folder_name(env.get("git_sha"))
    staging = parent / f".{base}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    try:
        staging.mkdir()
    except OSError as error:
        raise disk_full_error(error, parent) or OutputError(
            f"cannot create a run folder in {parent} ({error.strerror}); choose another --out"
        ) from None
    lock: FileLock | None = None
    try:
        lock = lock_run(staging)
        atomic_write_json(staging / ENV_FILE, env)
        atomic_write_json(staging / CONFIG_FILE, config)
        suffix = 1
        while True:
            run_dir = parent / (base if suffix == 1 else f"{base}-{suffix}")
            try:
                if not run_dir.exists():
                    # a directory renames only over a missing or empty one: a live run's
                    # folder is never empty, so two processes never share a name
                    os.rename(staging, run_dir)
                    return RunFolder(run_dir, False, lock)
            except OSError as error:
                if run_dir.exists():
                    suffix += 1
                    continue
                raise disk_full_error(error, run_dir) or OutputError(
                    f"cannot create run folder {run_dir} ({error.strerror}); choose another --out"
                ) from None
            suffix += 1
    except BaseException:
        if lock is not None:
            lock.release()
        shutil.rmtree(staging, ignore_errors=True)
        raise


def create_run_dir(out_root: str | Path, config: dict[str, Any], env: dict[str, Any]) -> Path:
    """Make a fresh run folder holding config.json and env.json (complete or not at all)."""
    folder = _create(out_root, config, env)
    folder.release()
    return folder.path


def note_resume(run_dir: Path, env: dict[str, Any]) -> None:
    """Record in env.json that the run was resumed, and where/when."""
    stored = read_json(run_dir / ENV_FILE, "run environment")
    keys = ("started_at", "git_sha", "git_dirty", "device_name", "world_size")
    stored.setdefault("resumes", []).append({key: env.get(key) for key in keys})
    atomic_write_json(run_dir / ENV_FILE, stored)


def remove_stale_files(run_dir: Path) -> None:
    """Remove the temp files that killed writers left in `run_dir` (hold its lock first)."""
    remove_stale_temp_files(run_dir)
    remove_stale_temp_files(run_dir / MAPS_FOLDER)


def _has_predictions(run_dir: Path) -> bool:
    path = run_dir / PREDICTIONS_FILE
    return path.is_file() and path.stat().st_size > 0


def claim_unfinished(out_root: str | Path, config: dict[str, Any]) -> RunFolder | None:
    """Lock the newest unfinished run under ``out_root/<model>/<split>`` with the same config.

    Runs a live process holds are skipped; a folder without env.json (a creation that a killed
    process left) is removed when it holds no predictions, else skipped, with one line either
    way. The returned folder is locked: the caller writes it and then releases it.
    """
    parent = Path(out_root) / config["model"] / config["split"]
    if not parent.is_dir():
        return None
    remove_dead_partials(parent)
    for candidate in sorted(parent.iterdir(), reverse=True):
        if candidate.name.startswith(".") or not is_run_dir(candidate) or is_finished(candidate):
            continue
        try:
            lock = try_lock(candidate / LOCK_FILE)
        except OSError:
            continue  # an unwritable folder cannot be resumed
        if lock is None:
            continue  # a live process is writing it
        keep = False
        try:
            if is_finished(candidate):
                continue  # finished between the look and the lock
            if not (candidate / ENV_FILE).is_file():
                if _has_predictions(candidate):
                    print_note(
                        f"skipped {candidate}: it has predictions but no {ENV_FILE}, so it "
                        "cannot be resumed; move or delete it"
                    )
                else:
                    shutil.rmtree(candidate, ignore_errors=True)
                    print_note(f"removed {candidate}: an incomplete run folder (no {ENV_FILE}) "
                               "that held no predictions")
                continue
            try:
                stored = read_json(candidate / CONFIG_FILE, "run config")
            except RefbenchError:
                continue  # an unreadable config is simply not a candidate
            if config_differences(stored, config):
                continue
            keep = True
            remove_stale_files(candidate)
            return RunFolder(candidate, True, lock)
        finally:
            if not keep:
                lock.release()
    return None


def open_run(
    out_root: str | Path,
    config: dict[str, Any],
    env: dict[str, Any],
    *,
    resume_dir: str | Path | None = None,
    resume: bool = True,
) -> RunFolder:
    """The run folder to write into, locked by this process, and whether it is a resumed one.

    `resume_dir` (or an `out_root` that is itself a run folder) must be an unfinished run with
    the same config that no live process writes; otherwise, with `resume`, the newest matching
    unfinished run under `out_root` that no live process writes is reused, else a new folder is
    created. Release the returned folder when the run ends.
    """
    if resume_dir is None and is_run_dir(out_root):
        resume_dir = out_root
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if not is_run_dir(run_dir):
            check_resumable(run_dir, config)  # names what is wrong; nothing is created there
        lock = lock_run(run_dir)
        try:
            check_resumable(run_dir, config)
            remove_stale_files(run_dir)
            note_resume(run_dir, env)
        except BaseException:
            lock.release()
            raise
        return RunFolder(run_dir, True, lock)
    if resume:
        found = claim_unfinished(out_root, config)
        if found is not None:
            try:
                note_resume(found.path, env)
            except BaseException:
                found.release()
                raise
            return found
    return _create(out_root, config, env)
