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

Fallbacks: a line with ``"fallback": true`` holds heuristic phrases that stood in for an
unusable answer (llm). Such lines are asked again by the next build, and cues whose fallbacks
exceed `DEFAULT_MAX_FALLBACK` of the expressions (or ``REFBENCH_CUES_MAX_FALLBACK``, or the
``max_fallback`` argument) are refused, by the build and by every later load.

Caches written before this keying (``<dataset>-<split_by>`` without the id): ``heuristic`` and
``llm`` files are copied forward on first use (their lines depend only on text and config);
the others are built or imported again.
"""

from __future__ import annotations

import os
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
DEFAULT_MAX_FALLBACK = 0.05  # the largest fraction of expressions with heuristic stand-ins
ENV_MAX_FALLBACK = "REFBENCH_CUES_MAX_FALLBACK"
ENV_CUE_CONFIG = "REFBENCH_CUE_CONFIG"  # chooses among several caches of one backend


def max_fallback_fraction(value: float | None = None) -> float:
    """The allowed fraction of fallback cues: `value`, else ``REFBENCH_CUES_MAX_FALLBACK``,
    else `DEFAULT_MAX_FALLBACK`."""
    source = "max_fallback"
    if value is None:
        text = os.environ.get(ENV_MAX_FALLBACK, "").strip()
        if not text:
            return DEFAULT_MAX_FALLBACK
        source = ENV_MAX_FALLBACK
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{ENV_MAX_FALLBACK}={text!r} is not a number; give a fraction "
                              "between 0 and 1, e.g. 0.2") from None
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{source}={value!r} is not a fraction; give a number between 0 and 1")
    return float(value)


def _fallback_refusal(count: int, total: int, allowed: float, split: str, backend: str,
                      path: Path, note: str, command: str) -> DataError:
    why = f" (last problem: {note})" if note else ""
    return DataError(
        f"{count} of {total} expressions of {split} ({count / max(total, 1):.1%}) have heuristic "
        f"stand-ins instead of {backend} cues in {path}, more than the {allowed:.0%} allowed"
        f"{why}; fix the endpoint and rerun `{command}` (fallbacks are asked again), or allow "
        f"more with {ENV_MAX_FALLBACK}=<fraction>"
    )


def build_command_for(dataset: Any, backend_name: str) -> str:
    """The command that builds (or imports) `backend_name`'s cues of `dataset`'s split."""
    split = getattr(dataset.info, "id", "?")
    if backend_name == "pcnet-import":
        return f"refbench cues import --split {split} --from DIR"
    return f"refbench cues build --split {split} --backend {backend_name}"


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
        line = {
            "hash": self.hash(text),
            "key": key,
            "text": text,
            "cues": list(result.phrases),
            "fallback": bool(result.fallback),
        }
        if result.fallback and result.note:
            line["note"] = result.note
        return line

    def fallback_count(self, expressions: Iterable[Any]) -> tuple[int, str]:
        """(how many of `expressions` have fallback phrases, the last fallback's note)."""
        count, note = 0, ""
        for expression in expressions:
            record = self.lookup(expression)
            if record is not None and record.get("fallback"):
                count += 1
                note = record.get("note", note)
        return count, note

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
    retried: int = 0  # expressions whose cached fallback phrases were asked again
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
    max_fallback: float | None = None,
) -> tuple[dict[str, tuple[str, ...]], BuildStats]:
    """`build_cues`, also saying how many came from the cache, were built or fell back.

    Cached fallback lines are asked again. When more than `max_fallback` (see
    `max_fallback_fraction`) of the expressions end with fallback phrases, the build stops with
    a `DataError` as soon as that is certain; what finished stays cached, marked.
    """
    allowed = max_fallback_fraction(max_fallback)
    expressions = dataset.expressions("all")
    _adopt_legacy(dataset, backend.name, cache_dir)
    store = CueStore.for_backend(dataset, backend.name, backend.config(), cache_dir)
    stats = BuildStats(total=len(expressions), path=store.path)
    command = build_command_for(dataset, backend.name)
    with exclusive_lock(store.lock_path, f"cue cache {store.path}"):
        store.load()
        by_text = _keys_by_text(expressions)
        missing, retry = [], set()
        for text in by_text:
            record = store.records.get(store.hash(text))
            if record is None:
                missing.append(text)
            elif record.get("fallback"):
                missing.append(text)
                retry.add(text)
        missing_set = set(missing)
        stats.from_cache = sum(len(keys) for t, keys in by_text.items() if t not in missing_set)
        stats.retried = sum(len(by_text[t]) for t in retry)
        if missing:
            backend.bind(dataset)
            limit = allowed * len(expressions)
            _run(store, backend, missing, by_text, stats, progress,
                 lambda count, note: _fallback_refusal(
                     count, len(expressions), allowed, getattr(dataset.info, "id", "?"),
                     backend.name, store.path, note, command) if count > limit else None)
        count, note = store.fallback_count(expressions)
        if count > allowed * len(expressions):
            raise _fallback_refusal(count, len(expressions), allowed,
                                    getattr(dataset.info, "id", "?"), backend.name, store.path,
                                    note, command)
    return _padded(store, expressions, k), stats


def _run(
    store: CueStore,
    backend: CueBackend,
    missing: list[str],
    by_text: dict[str, list[str]],
    stats: BuildStats,
    progress: bool,
    refuse: Any = None,
) -> None:
    """Ask `backend` for the `missing` texts, appending each result; `refuse(fallbacks so far,
    last note)` returns an error to stop with once too many fell back, else None."""
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
    refusal: RefbenchError | None = None
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task(f"cues ({backend.name})", total=len(missing))
        results = backend.iter_results(missing)
        try:
            for index, result in results:
                text = missing[index]
                if not result.phrases:
                    raise DataError(f"cue backend {backend.name} returned no phrase for {text!r}")
                record = store.record(by_text[text][0], text, result)
                store.records[record["hash"]] = record
                buffer.append(record)
                stats.built += len(by_text[text])
                if result.fallback:
                    stats.fallback += len(by_text[text])
                    refusal = refuse(stats.fallback, result.note) if refuse is not None else None
                    if refusal is not None:
                        break
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
            close = getattr(results, "close", None)
            if close is not None:
                close()  # a generator left early: its requests in flight finish, no new ones
    finally:
        append_jsonl(handle, buffer)
        handle.close()
        if bar is not None:
            bar.stop()
    if refusal is not None:
        raise refusal


def build_cues(
    dataset: Any,
    backend: CueBackend,
    k: int = 5,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    max_fallback: float | None = None,
) -> dict[str, tuple[str, ...]]:
    """Expression key -> K phrases for every expression of `dataset`, computing only what the
    cache lacks (and asking again for cached fallbacks), appending each finished sentence."""
    cues, _ = build_cues_with_stats(dataset, backend, k, cache_dir, progress, max_fallback)
    return cues


def _config_of(path: Path) -> dict[str, Any] | None:
    config_file = path.with_name(path.stem + ".config.json")
    return read_json(config_file, "cue cache config") if config_file.exists() else None


def _describe_file(path: Path) -> str:
    config = _config_of(path) or {}
    details = [f"{key} {config[key]}" for key in ("model", "prompt") if key in config]
    return f"{path.name} ({', '.join(details)})" if details else path.name


def select_cue_file(
    dataset: Any,
    backend_name: str,
    cue_config: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The one cache file of `backend_name` for `dataset`'s refs file.

    `cue_config` (else ``REFBENCH_CUE_CONFIG``) is the config hash in the file name
    (``<backend>-<hash>.jsonl``) and picks one of several; several files and no choice is a
    `ConfigError` naming them. None is a `DataError` naming the build command.
    """
    split = getattr(dataset.info, "id", "?")
    folder = dataset_folder(dataset, cache_dir)
    command = build_command_for(dataset, backend_name)
    _adopt_legacy(dataset, backend_name, cache_dir)
    files = sorted(p for p in folder.glob(f"{backend_name}-*.jsonl")
                   if re.fullmatch(re.escape(backend_name) + r"-[0-9a-f]{12}", p.stem))
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
    chosen = cue_config if cue_config is not None else os.environ.get(ENV_CUE_CONFIG) or None
    if chosen is not None:
        chosen = chosen.strip()
        if chosen.startswith(f"{backend_name}-"):
            chosen = chosen[len(backend_name) + 1:]
        matches = [p for p in files if p.stem == f"{backend_name}-{chosen}"]
        if not matches:
            raise ConfigError(
                f"no {backend_name} cue cache with config {chosen!r} for {split} in {folder}; "
                f"there are: {', '.join(_describe_file(p) for p in files)}"
            )
        return matches[0]
    if len(files) > 1:
        hashes = ", ".join(p.stem[len(backend_name) + 1:] for p in files)
        raise ConfigError(
            f"several {backend_name} cue caches for {split} in {folder}: "
            f"{'; '.join(_describe_file(p) for p in files)}; choose one by its config hash "
            f"({hashes}) with {ENV_CUE_CONFIG}=<hash> (cue_config=), or delete the others"
        )
    return files[0]


def _open_complete(
    dataset: Any, backend_name: str, path: Path, max_fallback: float | None
) -> CueStore:
    """The store at `path`, checked to cover every expression with few enough fallbacks."""
    split = getattr(dataset.info, "id", "?")
    command = build_command_for(dataset, backend_name)
    config = _config_of(path)
    if config is None:
        raise DataError(f"cue cache {path} has no {path.stem}.config.json beside it; delete the "
                        f"file and build it again with `{command}`")
    store = CueStore(path, config)
    store.load()
    expressions = dataset.expressions("all")
    have = sum(store.lookup(e) is not None for e in expressions)
    if have < len(expressions):
        raise DataError(
            f"{backend_name} cues for {split} are incomplete ({have} of {len(expressions)} "
            f"expressions in {path}); finish them with `{command}`"
        )
    allowed = max_fallback_fraction(max_fallback)
    count, note = store.fallback_count(expressions)
    if count > allowed * len(expressions):
        raise _fallback_refusal(count, len(expressions), allowed, split, backend_name, path,
                                note, command)
    return store


def load_cues(
    dataset: Any,
    backend_name: str,
    k: int = 5,
    cache_dir: str | Path | None = None,
    cue_config: str | None = None,
    max_fallback: float | None = None,
) -> dict[str, tuple[str, ...]]:
    """Cues built earlier with `backend_name`; a `DataError` naming the build command if absent.

    The cache file is `select_cue_file`'s (several of one backend need `cue_config`); it must
    cover every expression of the split, with at most `max_fallback` of them fallbacks.
    """
    path = select_cue_file(dataset, backend_name, cue_config, cache_dir)
    store = _open_complete(dataset, backend_name, path, max_fallback)
    return _padded(store, dataset.expressions("all"), k)


def describe_cue_store(
    dataset: Any,
    backend_name: str,
    cue_config: str | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """What a run should record about the cues it used: the cache file that `load_cues` (same
    arguments) reads, its backend config and hash, and how many of the split's expressions
    have fallback phrases.

    Keys: ``backend``, ``file``, ``config_hash``, ``config`` (model, prompt version and hash,
    decoding settings for llm), ``refs_sha256``, ``expressions``, ``fallback``.
    """
    from refbench.data.identity import refs_sha256

    path = select_cue_file(dataset, backend_name, cue_config, cache_dir)
    config = _config_of(path)
    if config is None:
        raise DataError(f"cue cache {path} has no {path.stem}.config.json beside it; delete the "
                        f"file and build it again with `{build_command_for(dataset, backend_name)}`")
    store = CueStore(path, config)
    store.load()
    expressions = dataset.expressions("all")
    count, _ = store.fallback_count(expressions)
    return {
        "backend": backend_name,
        "file": str(path),
        "config_hash": path.stem[len(backend_name) + 1:],
        "config": config,
        "refs_sha256": refs_sha256(dataset),
        "expressions": len(expressions),
        "fallback": count,
    }


def ensure_cues(
    dataset: Any,
    backend: str | None,
    k: int,
    cache_dir: str | Path | None = None,
    cue_config: str | None = None,
    max_fallback: float | None = None,
) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(backend, cue table) for `dataset`, building what a model-free backend can build.

    The default backend is ``template`` on SynthRef and ``heuristic`` elsewhere; both are
    built (or completed) on demand with their current config, so older caches of another
    config are not read. Other backends (an LLM, imported files) must have been built first:
    their `DataError` names the command that does it.
    """
    from refbench.cues import get_backend

    chosen = backend or ("template" if dataset.info.is_synthetic else "heuristic")
    if chosen not in ("template", "heuristic"):
        return chosen, load_cues(dataset, chosen, k, cache_dir, cue_config, max_fallback)
    if chosen == "template" and not dataset.info.is_synthetic:
        raise ConfigError(f"cue backend template only works on SynthRef splits, not {dataset.info.id}")
    engine = get_backend(chosen)
    if cue_config is None:
        cue_config = config_hash(engine.config())
    try:
        return chosen, load_cues(dataset, chosen, k, cache_dir, cue_config, max_fallback)
    except (DataError, ConfigError):
        pass
    return chosen, build_cues(dataset, engine, k, cache_dir=cache_dir, progress=False,
                              max_fallback=max_fallback)
