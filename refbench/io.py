"""Small file helpers every part of refbench shares: atomic writes, JSON lines, the cache root.

Writes that a later run depends on go through `atomic_write_*` (temp file in the same folder,
fsync, rename), so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from refbench.errors import DataError, OutputError

CACHE_ENV = "REFBENCH_CACHE"


def cache_root() -> Path:
    """The cache folder: ``$REFBENCH_CACHE`` or ``~/.cache/refbench``."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "refbench"


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (and parents) or raise an `OutputError` saying why it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create {what} {path} ({error.strerror}); choose a writable location"
        ) from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path} is not writable; choose a writable location")
    return path


@contextlib.contextmanager
def atomic_writer(path: str | Path, what: str = "output folder") -> Iterator[BinaryIO]:
    """A binary handle whose content replaces `path` only if the block finishes.

    The data goes to a temp file in the same folder, is fsynced, then renamed over `path`; an
    exception (or a crash) leaves the previous file untouched and no temp file behind.
    """
    path = Path(path)
    ensure_dir(path.parent, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and a rename."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; missing or corrupt files raise a `DataError` naming the path."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path} is not valid JSON ({error})") from None


def append_jsonl(handle, records: Iterable[dict[str, Any]]) -> None:
    """Append whole lines to an open text handle, then flush and fsync (one batch at a time)."""
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
    if text:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a JSON-lines file and the byte length of its complete, valid prefix.

    A crash can leave a partial last line; it is not returned, and the caller may truncate the
    file to the returned length before appending. A corrupt line elsewhere is a `DataError`.
    """
    path = Path(path)
    records: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if not line:
            good += 0 if is_last else 1
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if is_last:  # an unterminated last line: a write that did not finish
                break
            raise DataError(
                f"{path} line {number} is corrupt; delete the file to start that work again"
            ) from None
        if is_last:  # valid JSON but no newline: still treat as unfinished
            records.pop()
            break
        good += len(line) + 1
    return records, good


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str = "this folder") -> Iterator[None]:
    """Hold an exclusive lock file; a second holder fails at once with a clear message."""
    path = Path(path)
    ensure_dir(path.parent)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"another refbench process is using {what} (lock {path}); wait for it to finish"
            ) from None
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
