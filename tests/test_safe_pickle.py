"""refbench.safe_pickle: the one restricted unpickler for refs files and PCNet's NumPy dicts."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from refbench.safe_pickle import restricted_load


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_plain_data_and_builtin_containers_load() -> None:
    data = {"refs": [{"ref_id": 1, "sent": "a cat", "box": (1.5, 2.0)}], "ids": {3, 4},
            "frozen": frozenset({"x"}), "raw": b"\x00"}
    assert restricted_load(io.BytesIO(pickle.dumps(data, protocol=2))) == data


def test_arrays_load_only_when_asked() -> None:
    saved = io.BytesIO()
    np.save(saved, {7: {"clip_score": np.arange(6, dtype=np.float32).reshape(2, 3)}},
            allow_pickle=True)
    payload = saved.getvalue()[saved.getvalue().index(b"\n") + 1:]  # the pickle after the header
    loaded = restricted_load(io.BytesIO(payload), allow_numpy=True)
    table = loaded.item() if hasattr(loaded, "item") else loaded
    assert np.array_equal(table[7]["clip_score"], np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        restricted_load(io.BytesIO(payload))


@pytest.mark.parametrize("allow_numpy", [False, True])
def test_any_other_global_is_refused_before_it_runs(allow_numpy) -> None:
    with pytest.raises(pickle.UnpicklingError, match="global (posix|os|nt).system"):
        restricted_load(io.BytesIO(pickle.dumps(Exploit())), allow_numpy=allow_numpy)
