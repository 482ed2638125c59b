"""Finished run folders as the report tools see them (format: docs/runs.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench.errors import DataError
from refbench.io import lock_holder, lock_is_held, print_note, read_json, read_jsonl, stable_hash

EVAL_LOCK_FILE = ".eval.lock"  # refbench.eval.run_folder.LOCK_FILE (not imported: no torch here)
# Files only a training run folder holds (refbench train); its val/ runs are eval runs.
TRAINING_FILES = ("train_summary.json", "train_log.jsonl", "last.pt", ".train.lock")


@dataclass
class Run:
    """One finished run folder: its config, environment and metrics; predictions on demand."""

    path: Path
    config: dict[str, Any]
    env: dict[str, Any]
    metrics: dict[str, Any]
    _records: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))

    @property
    def split(self) -> str:
        return str(self.metrics.get("split") or self.config.get("split") or "?")

    @property
    def protocol(self) -> str:
        return str(self.metrics.get("protocol") or self.config.get("protocol") or "?")

    @property
    def sentences(self) -> str:
        return str(self.metrics.get("sentences") or self.config.get("sentences") or "?")

    @property
    def started_at(self) -> str:
        """When the run started (env.json), else the folder name, which starts with the time."""
        return str(self.env.get("started_at") or self.path.name)

    @property
    def checkpoint_sha256(self) -> str | None:
        value = self.config.get("checkpoint_sha256")
        return str(value) if value else None

    @property
    def config_digest(self) -> str:
        """A short hash of the resolved model config: runs of one model with other settings differ."""
        return stable_hash(self.config.get("model_config", {}), 8, compact=False)

    def records(self) -> list[dict[str, Any]]:
        """predictions.jsonl, one record per expression key (the first line of a key wins), by key.

        Sharded or resumed runs may hold a key twice; the runner scores the first, so do we.
        """
        if self._records is None:
            path = self.path / "predictions.jsonl"
            if not path.is_file():
                raise DataError(f"run {self.path} has no predictions.jsonl; it cannot be resampled")
            raw, _ = read_jsonl(path)
            unique: dict[str, dict[str, Any]] = {}
            for index, record in enumerate(raw):
                if "key" not in record:
                    raise DataError(f"{path} record #{index} has no 'key'; see docs/runs.md")
                unique.setdefault(str(record["key"]), record)
            self._records = [unique[key] for key in sorted(unique)]
        return self._records


def load_run(path: str | Path) -> Run:
    """Read a finished run folder; an unfinished one is a `DataError` naming it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise DataError(f"{path} is not a run folder (no config.json); see docs/runs.md")
    if not (path / "metrics.json").is_file():
        raise DataError(
            f"run {path} is unfinished (no metrics.json); finish it with `refbench eval --resume "
            f"{path}` or re-score it with `refbench score {path}`"
        )
    config = read_json(path / "config.json", "run config")
    env_path = path / "env.json"
    env = read_json(env_path, "run environment") if env_path.is_file() else {}
    metrics = read_json(path / "metrics.json", "run metrics")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("metrics"), dict):
        raise DataError(f"{path / 'metrics.json'} has no 'metrics' table; re-score with `refbench score {path}`")
    return Run(path=path, config=config, env=env, metrics=metrics)


def skip_reason(path: str | Path) -> str | None:
    """Why a folder holding config.json is not a run to tabulate, or None when it is one.

    Training runs, evals a live process is still writing, and incomplete folders holding no
    predictions (killed or refused before their first batch) are skipped; an unfinished eval
    with predictions is not skipped (`load_run` says how to finish it).
    """
    path = Path(path)
    if (path / "metrics.json").is_file():
        return None
    if any((path / name).exists() for name in TRAINING_FILES):
        return "a training run, not an eval run (its validation runs are under val/)"
    lock = path / EVAL_LOCK_FILE
    if lock_is_held(lock):
        return f"an eval still being written ({lock_holder(lock)})"
    predictions = path / "predictions.jsonl"
    if not predictions.is_file() or predictions.stat().st_size == 0:
        return ("an incomplete eval run holding no predictions (stopped before its first "
                "batch); delete it, or finish it with `refbench eval ... --resume` on it")
    return None


def find_runs(
    paths: list[str | Path], on_skip: Callable[[str], None] | None = print_note
) -> list[Run]:
    """Every run folder at or below `paths` (a folder holding config.json is a run), by path.

    Folders `skip_reason` rejects are left out with one line each through `on_skip`; hidden
    folders (a run folder still being created) are never searched.
    """
    found: dict[Path, None] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise DataError(f"run folder {root} does not exist")
        if (root / "config.json").is_file():
            found[root] = None
            continue
        folders = sorted(
            p.parent for p in root.rglob("config.json")
            if not any(part.startswith(".") for part in p.parent.relative_to(root).parts)
        )
        if not folders:
            raise DataError(f"no run folders (with config.json) under {root}; see docs/runs.md")
        for folder in folders:
            found[folder] = None
    runs = []
    for path in found:
        reason = skip_reason(path)
        if reason is None:
            runs.append(load_run(path))
        elif on_skip is not None:
            on_skip(f"skipped {path}: {reason}")
    if not runs:
        raise DataError(
            f"no finished eval runs among {', '.join(str(p) for p in paths)} (every folder found "
            "was skipped); run `refbench eval` first"
        )
    return runs
