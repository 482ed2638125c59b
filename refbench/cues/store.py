"""The on-disk cue cache: one JSON-lines file per data set and backend config, appended as work
finishes, so an interrupted build resumes where it stopped.

Layout: ``cache_root()/cues/<dataset>-<split_by>-<refs id>/<backend>-<confighash>.jsonl``
where ``<refs id>`` is 12 hex digits of the SHA-256 of the refs file (`refbench.data.identity`):
cues built from another refs file under the same data-set name are another folder, never read.
Each line is ``{"hash", "key", "text", "cues", "fallback"}``. Backends whose phrases depend
only on the text (heuristic, llm, template) write one line per distinct sentence with ``hash``
= SHA-256 of the sentence and the backend config. Imported phrases belong to one expression
(two refs may share a sentence but not its phrases): their lines also hold ``ref_id`` and
``sent_id``, and ``hash`` is SHA-256 of those ids and the config. A lookup prefers the
expression's own line and falls back to the text's. Beside each file,
``<backend>-<confighash>.config.json`` records the config (never a secret).

Caches written before this keying (``<dataset>-<split_by>`` without the id): ``heuristic`` and
``llm`` files are copied forward on first use (their lines depend only on text and config);
the others are built or imported again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refbench.cues.base import CueBackend, CueResult, config_hash, sentence_hash
from refbench.cues.padding import pad_cues
from refbench.data.identity import data_key, name_key
from refbench.errors import ConfigError, DataError, RefbenchError
from refbench.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    cache_root,
    ensure_dir,
    exclusive_lock,
    read_json,
    read_jsonl,
)

FLUSH_EVERY = 256  # records per fsync for fast backends
FLUSH_SECONDS = 0.5  # and never hold a finished record longer than this


TEXT_ONLY_BACKENDS = ("heuristic", "llm")  # legacy caches of these are valid for any data


def _base(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else cache_root() / "cues"


def dataset_folder(dataset: Any, cache_dir: str | Path | None = None) -> Path:
    """``<cache>/cues/<dataset>-<split_by>-<refs id>``: all splits of one refs file share their
    cues; another refs file under the same name gets another folder."""
    return _base(cache_dir) / data_key(dataset, images=False)


def _adopt_legacy(dataset: Any, backend_name: str, cache_dir: str | Path | None) -> None:
    """Copy a text-keyed backend's files from the pre-identity folder into the data's folder."""
    if backend_name not in TEXT_ONLY_BACKENDS:
        return
    legacy = _base(cache_dir) / name_key(dataset)
    if not legacy.is_dir():
        return
    folder = dataset_folder(dataset, cache_dir)
    for path in legacy.glob(f"{backend_name}-*.jsonl"):
        config = path.with_name(path.stem + ".config.json")
        if (folder / path.name).exists() or not config.is_file():
            continue
        ensure_dir(folder, "cue cache folder")
        atomic_write_bytes(folder / config.name, config.read_bytes())
        atomic_write_bytes(folder / path.name, path.read_bytes())


def _other_data(dataset: Any, backend_name: str, cache_dir: str | Path | None) -> list[Path]:
    """Cue files of `backend_name` under this data set's name built from another refs file."""
    base, name, own = _base(cache_dir), name_key(dataset), dataset_folder(dataset, cache_dir)
    if not base.is_dir():
        return []
    folders = [p for p in base.iterdir() if p.is_dir() and p != own
               and (p.name == name or re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", p.name))]
    return [f for folder in sorted(folders) for f in sorted(folder.glob(f"{backend_name}-*.jsonl"))]


class CueStore:
    """One cache file: read the finished records, append new ones whole and flushed."""

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config = dict(config)
        self.records: dict[str, dict[str, Any]] = {}
        self._valid_bytes = 0

    @classmethod
    def for_backend(
        cls, dataset: Any, name: str, config: dict[str, Any], cache_dir: str | Path | None = None
    ) -> CueStore:
        """The store of backend `name` with `config` for `dataset`'s data set."""
        folder = dataset_folder(dataset, cache_dir)
        return cls(folder / f"{name}-{config_hash(config)}.jsonl", config)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def hash(self, text: str) -> str:
        """The cache key of `text` under this store's config."""
        return sentence_hash(text, self.config)

    def expression_hash(self, ref_id: int, sent_id: int) -> str:
        """The cache key of one expression's own phrases (imported ones) under this config."""
        return sentence_hash(f"\x00ref {int(ref_id)} sent {int(sent_id)}", self.config)

    def lookup(self, expression: Any) -> dict[str, Any] | None:
        """The record for `expression`: its own (ref id, sentence id) line, else its text's."""
        record = self.records.get(self.expression_hash(expression.ref_id, expression.sent_id))
        return record if record is not None else self.records.get(self.hash(expression.text))

    def load(self) -> dict[str, dict[str, Any]]:
        """Read every finished record (a torn last line is ignored); corrupt lines are errors."""
        self.records = {}
        self._valid_bytes = 0
        if not self.path.exists():
            return self.records
        records, self._valid_bytes = read_jsonl(self.path)
        for number, record in enumerate(records, start=1):
            cues = record.get("cues") if isinstance(record, dict) else None
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("hash"), str)
                or not isinstance(cues, list)
                or not cues
                or not all(isinstance(c, str) and c for c in cues)
            ):
                raise DataError(
                    f"cue cache {self.path} record {number} is not a cue record; delete the "
                    "file to build these cues again"
                )
            self.records[record["hash"]] = record
        return self.records

    def open_for_append(self):
        """Open for appending, first cutting off a torn last line left by a crash."""
        ensure_dir(self.path.parent, "cue cache folder")
        if self.path.exists() and self.path.stat().st_size > self._valid_bytes:
            with open(self.path, "r+b") as handle:
                handle.truncate(self._valid_bytes)
        atomic_write_json(self.path.with_name(self.path.stem + ".config.json"), self.config)
        return open(self.path, "a", encoding="utf-8")

    def record(self, key: str, text: str, result: CueResult) -> dict[str, Any]:
        """The cache line for one finished sentence (any expression with this text)."""
        return {
            "hash": self.hash(text),
            "key": key,
            "text": text,
            "cues": list(result.phrases),
            "fallback": bool(result.fallback),
        }

    def expression_record(self, expression: Any, result: CueResult) -> dict[str, Any]:
        """The cache line for one expression's own phrases, keyed by (ref id, sentence id)."""
        return {
            "hash": self.expression_hash(expression.ref_id, expression.sent_id),
            "key": expression.key,
            "ref_id": int(expression.ref_id),
            "sent_id": int(expression.sent_id),
            "text": expression.text,
            "cues": list(result.phrases),
            "fallback": bool(result.fallback),
        }


@dataclass
class BuildStats:
    """What a build did: expressions answered from the cache, newly built, and fallbacks."""

    total: int = 0
    from_cache: int = 0
    built: int = 0
    fallback: int = 0
    path: Path | None = None


def _keys_by_text(expressions: Sequence[Any]) -> dict[str, list[str]]:
    by_text: dict[str, list[str]] = {}
    for expression in expressions:
        by_text.setdefault(expression.text, []).append(expression.key)
    return by_text


def _padded(store: CueStore, expressions: Iterable[Any], k: int) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for expression in expressions:
        record = store.lookup(expression)
        if record is not None:
            out[expression.key] = pad_cues(record["cues"], k)
    return out


def build_cues_with_stats(
    dataset: Any,
    backend: CueBackend,
    k: int = 5,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, tuple[str, ...]], BuildStats]:
    """`build_cues`, also saying how many came from the cache, were built or fell back."""
    expressions = dataset.expressions("all")
    _adopt_legacy(dataset, backend.name, cache_dir)
    store = CueStore.for_backend(dataset, backend.name, backend.config(), cache_dir)
    stats = BuildStats(total=len(expressions), path=store.path)
    with exclusive_lock(store.lock_path, f"cue cache {store.path}"):
        store.load()
        by_text = _keys_by_text(expressions)
        missing = [text for text in by_text if store.hash(text) not in store.records]
        missing_set = set(missing)
        stats.from_cache = sum(len(keys) for t, keys in by_text.items() if t not in missing_set)
        if missing:
            backend.bind(dataset)
            _run(store, backend, missing, by_text, stats, progress)
    return _padded(store, expressions, k), stats


def _run(
    store: CueStore,
    backend: CueBackend,
    missing: list[str],
    by_text: dict[str, list[str]],
    stats: BuildStats,
    progress: bool,
) -> None:
    buffer: list[dict[str, Any]] = []
    last_flush = time.monotonic()
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
    handle = store.open_for_append()
    index = -1
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task(f"cues ({backend.name})", total=len(missing))
        try:
            for index, result in backend.iter_results(missing):
                text = missing[index]
                if not result.phrases:
                    raise DataError(f"cue backend {backend.name} returned no phrase for {text!r}")
                record = store.record(by_text[text][0], text, result)
                store.records[record["hash"]] = record
                buffer.append(record)
                stats.built += len(by_text[text])
                stats.fallback += len(by_text[text]) if result.fallback else 0
                if bar is not None:
                    bar.advance(task)
                now = time.monotonic()
                if len(buffer) >= FLUSH_EVERY or now - last_flush >= FLUSH_SECONDS:
                    append_jsonl(handle, buffer)
                    buffer, last_flush = [], now
        except RefbenchError as error:
            append_jsonl(handle, buffer)
            buffer = []
            kept = len(store.records)
            item = getattr(error, "item_index", None)
            where = ""
            if item is not None:
                where = f"expression {by_text[missing[item]][0]}: "
            raise type(error)(
                f"{where}{error} (cue cache {store.path} keeps {kept} finished sentences; rerun the "
                "same command to continue)"
            ) from None
    finally:
        append_jsonl(handle, buffer)
        handle.close()
        if bar is not None:
            bar.stop()


def build_cues(
    dataset: Any,
    backend: CueBackend,
    k: int = 5,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, tuple[str, ...]]:
    """Expression key -> K phrases for every expression of `dataset`, computing only what the
    cache lacks and appending each finished sentence to it."""
    cues, _ = build_cues_with_stats(dataset, backend, k, cache_dir, progress)
    return cues


def load_cues(
    dataset: Any,
    backend_name: str,
    k: int = 5,
    cache_dir: str | Path | None = None,
) -> dict[str, tuple[str, ...]]:
    """Cues built earlier with `backend_name`; a `DataError` naming the build command if absent.

    Several cache files of one backend (built with different configs) are tried newest first;
    the first that covers every expression of the split is used.
    """
    split = getattr(dataset.info, "id", "?")
    folder = dataset_folder(dataset, cache_dir)
    command = (
        f"refbench cues import --split {split} --from DIR"
        if backend_name == "pcnet-import"
        else f"refbench cues build --split {split} --backend {backend_name}"
    )
    _adopt_legacy(dataset, backend_name, cache_dir)
    files = sorted(
        folder.glob(f"{backend_name}-*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    if not files:
        others = _other_data(dataset, backend_name, cache_dir)
        if others:
            raise DataError(
                f"no {backend_name} cues for {split} built from this refs file ({folder}); "
                f"{', '.join(str(p) for p in others[:3])} were built from other data under the "
                f"same name and are not used; build them with `{command}`"
            )
        raise DataError(
            f"no {backend_name} cues for {split} in {folder}; build them with `{command}`"
        )
    expressions = dataset.expressions("all")
    best: tuple[int, Path] | None = None
    for path in files:
        config_file = path.with_name(path.stem + ".config.json")
        config = read_json(config_file, "cue cache config") if config_file.exists() else None
        if config is None:
            continue
        store = CueStore(path, config)
        store.load()
        cues = _padded(store, expressions, k)
        if len(cues) == len(expressions):
            return cues
        if best is None or len(cues) > best[0]:
            best = (len(cues), path)
    have = best[0] if best else 0
    raise DataError(
        f"{backend_name} cues for {split} are incomplete ({have} of {len(expressions)} "
        f"expressions in {best[1] if best else folder}); finish them with `{command}`"
    )


def ensure_cues(
    dataset: Any, backend: str | None, k: int, cache_dir: str | Path | None = None
) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(backend, cue table) for `dataset`, building what a model-free backend can build.

    The default backend is ``template`` on SynthRef and ``heuristic`` elsewhere; both are
    built (or completed) on demand. Other backends (an LLM, imported files) must have been
    built first: their `DataError` names the command that does it.
    """
    from refbench.cues import get_backend

    chosen = backend or ("template" if dataset.info.is_synthetic else "heuristic")
    try:
        return chosen, load_cues(dataset, chosen, k, cache_dir)
    except DataError:
        if chosen not in ("template", "heuristic"):
            raise
    if chosen == "template" and not dataset.info.is_synthetic:
        raise ConfigError(f"cue backend template only works on SynthRef splits, not {dataset.info.id}")
    return chosen, build_cues(dataset, get_backend(chosen), k, cache_dir=cache_dir, progress=False)
