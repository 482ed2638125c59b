"""One restricted unpickler for every pickle refbench reads (refs files, PCNet's NumPy dicts).

A pickle names the globals it needs (a class, a function such as ``os.system``); this
unpickler admits only the plain builtin containers and, when asked, the few NumPy globals an
``np.save`` of a dict of arrays needs, and refuses every other global before it is imported or
called.

Python 2 pickles hold byte strings (``str``) whose encoding the file does not say. Without
NumPy they are decoded as UTF-8 when the bytes are valid UTF-8 and as latin-1 otherwise, string
by string (ASCII, what the RefCOCO refs hold, reads the same either way); with NumPy (whose
Python 2 arrays keep their data in such strings) they are read as latin-1, as NumPy requires.
"""

from __future__ import annotations

import builtins
import codecs
import io
import pickle
from typing import IO, Any

_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int",
                       "float", "complex", "bool"})


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """What unpickling NumPy arrays and scalars needs, under NumPy 1.x's and 2.x's names."""
    import numpy as np

    core = getattr(np, "_core", None)
    multiarray = getattr(core, "multiarray", None) if core is not None else None
    if multiarray is None:  # NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a global this unpickler does not admit (never imported or called)."""


class _EncodedBytes(bytes):
    """A real ``bytes`` object (pickled by Python 3 as ``_codecs.encode``), not a Python 2 str."""


def _encode_marked(text: str, encoding: str = "utf-8") -> bytes:
    return _EncodedBytes(codecs.encode(text, encoding))


def _decode_py2(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _decode_strings(obj: Any) -> Any:
    """`obj` with every Python 2 str (plain bytes after ``encoding="bytes"``) decoded, and the
    real bytes objects kept as bytes."""
    kind = type(obj)
    if kind is bytes:
        return _decode_py2(obj)
    if kind is _EncodedBytes:
        return bytes(obj)
    if kind is list:
        return [_decode_strings(item) for item in obj]
    if kind is tuple:
        return tuple(_decode_strings(item) for item in obj)
    if kind is dict:
        return {_decode_strings(key): _decode_strings(value) for key, value in obj.items()}
    if kind is set:
        return {_decode_strings(item) for item in obj}
    if kind is frozenset:
        return frozenset(_decode_strings(item) for item in obj)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers and scalars (and NumPy arrays with ``allow_numpy``); any other
    global raises `pickle.UnpicklingError` naming it."""

    def __init__(self, handle: IO[bytes], allow_numpy: bool = False, **kwargs: Any) -> None:
        super().__init__(handle, **kwargs)
        self._numpy = _numpy_globals() if allow_numpy else {}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return getattr(builtins, name)
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol-2 pickles
            return _encode_marked if self._mark_bytes else codecs.encode
        found = self._numpy.get((module, name))
        if found is None:
            raise RefusedGlobalError(f"the pickle references the global {module}.{name}")
        return found

    _mark_bytes = False


class _MarkingUnpickler(RestrictedUnpickler):
    _mark_bytes = True


def restricted_load(handle: IO[bytes], allow_numpy: bool = False) -> Any:
    """The object pickled in `handle`, read with `RestrictedUnpickler`.

    Python 2 byte strings: UTF-8 when valid, else latin-1, per string (latin-1 throughout with
    `allow_numpy`, see the module docstring). A refused global raises `RefusedGlobalError`; a
    truncated or damaged pickle raises `pickle.UnpicklingError`, `EOFError` or `ValueError`.
    """
    if allow_numpy:
        return RestrictedUnpickler(handle, allow_numpy, encoding="latin1").load()
    data = handle.read()
    try:  # one fast pass when every Python 2 string is ASCII or UTF-8 (or there are none)
        return RestrictedUnpickler(io.BytesIO(data), encoding="utf-8", errors="strict").load()
    except UnicodeDecodeError:
        pass
    loaded = _MarkingUnpickler(io.BytesIO(data), encoding="bytes").load()
    return _decode_strings(loaded)
