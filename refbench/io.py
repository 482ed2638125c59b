"""Small file helpers every part of refbench shares: atomic writes, JSON lines, the cache root,
stable hashes of JSON-able values (cache keys, checksums) and COCO RLE encoding.

Writes that a later run depends on go through `atomic_write_*` (temp file in the same folder,
fsync, rename), so a crash never leaves a half-written file behind; the temp file is removed
when the write fails, and one left by a killed process is removed by the next process that
holds the folder's lock (`remove_stale_temp_files`). A full disk (or quota) is a
`DiskFullError` naming the file, never a partial file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from refbench.errors import DataError, OutputError

if TYPE_CHECKING:
    import numpy as np

CACHE_ENV = "REFBENCH_CACHE"
TEMP_SUFFIX = ".tmp"  # atomic writes use ``.<name>.<random>.tmp`` beside the target
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(OutputError):
    """A write that ran out of disk space or quota; nothing partial was left behind."""


def disk_full_error(error: OSError, path: str | Path) -> DiskFullError | None:
    """The `DiskFullError` for `error` when it is ENOSPC or EDQUOT while writing `path`."""
    if error.errno not in _DISK_FULL:
        return None
    what = "no space left on the device" if error.errno == errno.ENOSPC else "disk quota exceeded"
    return DiskFullError(
        f"{what} while writing {path}; nothing partial was kept: free space and rerun the same "
        "command, which resumes where it stopped"
    )


def canonical_json(obj: Any, *, compact: bool = True, strict: bool = False) -> str:
    """`obj` as JSON with sorted keys: the one serialisation behind every stable hash.

    `compact` writes ``,``/``:`` separators (else json's default ``, ``/``: ``, which some
    recorded hashes were made with); unless `strict`, a value JSON cannot hold is written as
    its ``str()``, and with `strict` it is a TypeError.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":") if compact else None,
                      default=None if strict else str)


def sha256_hex(text: str, length: int | None = None) -> str:
    """SHA-256 of `text` (UTF-8) in hex, cut to its first `length` characters when given."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def stable_hash(
    obj: Any, length: int | None = None, *, compact: bool = True, strict: bool = False
) -> str:
    """SHA-256 hex of `canonical_json(obj)`: the same value always gives the same key.

    Changing any argument changes the hashes that caches, run folders and checkpoints were
    stored under; each caller keeps the arguments its stored hashes were made with.
    """
    return sha256_hex(canonical_json(obj, compact=compact, strict=strict), length)


def encode_rle(mask: np.ndarray | Any) -> dict[str, Any]:
    """COCO compressed RLE of one [H, W] bool mask (a NumPy array or a torch tensor):
    ``{"size": [H, W], "counts": str}``, as run folders and proposal stores hold it."""
    return encode_masks([mask])[0]


def encode_masks(masks: Sequence[np.ndarray | Any]) -> list[dict[str, Any]]:
    """COCO compressed RLEs of bool masks [H, W] (all of one size), counts as str."""
    if not masks:
        return []
    import numpy as np
    from pycocotools import mask as mask_utils

    arrays = [m.detach().cpu().numpy() if hasattr(m, "detach") else m for m in masks]
    stack = np.asfortranarray(np.stack([np.asarray(m, dtype=np.uint8) for m in arrays], axis=-1))
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            for rle in mask_utils.encode(stack)]


def print_note(message: str) -> None:
    """One line on stderr for something the user should know but that is not an error."""
    print(f"note: {message}", file=sys.stderr, flush=True)


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        raise disk_full_error(error, path) or error from None
    replaced = False
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        replaced = True
    except OSError as error:
        full = disk_full_error(error, path)
        if full is None:
            raise
        raise full from None
    finally:
        if not replaced:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temp files of atomic writes under `folder` (not below it); return them.

    Only call this while holding the folder's lock: then no live writer owns any of them.
    """
    folder = Path(folder)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed.append(entry)
    return removed


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
    """Append whole lines to an open handle, then fsync (one batch at a time).

    The lines bypass the handle's buffer; a failed write (a full disk) is cut back off the
    file, so it never ends in a partial batch, and a full disk is a `DiskFullError`.
    """
    text = "".join(canonical_json(r, strict=True) + "\n" for r in records)
    if not text:
        return
    data = memoryview(text.encode("utf-8"))
    handle.flush()
    fd = handle.fileno()
    start = os.fstat(fd).st_size
    try:
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        raise disk_full_error(error, getattr(handle, "name", "a JSON-lines file")) or error from None


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


class FileLock:
    """An exclusive ``flock`` on a lock file, held until `release` (or the process ends).

    The holder writes ``pid@host`` into the file so that a refused process can name it; the
    kernel drops the lock when the holder dies, so a lock is never stale.
    """

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._handle = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def try_lock(path: str | Path) -> FileLock | None:
    """Take the exclusive lock at `path` (creating the file), or None if a live process holds it."""
    path = Path(path)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    with contextlib.suppress(OSError):
        handle.truncate(0)
        handle.write(f"{os.getpid()}@{socket.gethostname()}\n")
        handle.flush()
    return FileLock(path, handle)


def lock_holder(path: str | Path) -> str:
    """Who holds the lock at `path`, as it wrote itself (``pid 123 on host``), for messages."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    pid, _, host = text.partition("@")
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid} on {host}" if host else f"pid {pid}"


def lock_is_held(path: str | Path) -> bool:
    """Whether a live process holds the lock at `path` (never creates the file)."""
    try:
        handle = open(path, "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def acquire_lock(path: str | Path, what: str = "this folder") -> FileLock:
    """Take the exclusive lock at `path`; a live holder makes it an `OutputError` naming it."""
    path = Path(path)
    ensure_dir(path.parent)
    lock = try_lock(path)
    if lock is None:
        raise OutputError(
            f"another refbench process is using {what} ({lock_holder(path)}, lock {path}); "
            "wait for it to finish"
        )
    return lock


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str = "this folder") -> Iterator[None]:
    """Hold an exclusive lock file; a second holder fails at once with a clear message."""
    with acquire_lock(path, what):
        yield
