"""One restricted unpickler for every pickle refbench reads (refs files, PCNet's NumPy dicts).

A pickle names the globals it needs (a class, a function such as ``os.system``); this
unpickler admits only the plain builtin containers and, when asked, the few NumPy globals an
``np.save`` of a dict of arrays needs, and refuses every other global before it is imported or
called.
"""

from __future__ import annotations

import builtins
import codecs
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
            return codecs.encode
        found = self._numpy.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"the pickle references the global {module}.{name}")
        return found


def restricted_load(handle: IO[bytes], allow_numpy: bool = False) -> Any:
    """The object pickled in `handle`, read with `RestrictedUnpickler`; Python 2 byte strings
    are decoded as latin-1."""
    return RestrictedUnpickler(handle, allow_numpy, encoding="latin1").load()
