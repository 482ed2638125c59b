"""Reading the NumPy files PCNet's released code keeps beside the refer data.

PCNet (github.com/zaiquanyang/Boosting_WRIS) stores dicts with ``np.save`` (a pickled 0-d
object array): ``refcocog/umd_2_google_ref.npy`` ({umd ref id: google ref id}) and
``SAM_Mask/<splitBy>_candidate_2_4_6_8.npy`` ({ref id: {"sam_mask_path", "clip_score",
"candidate_2"}}). They are read here with an unpickler that admits plain containers, scalars
and NumPy arrays only, never any other global.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from refbench.errors import DataError
from refbench.safe_pickle import restricted_load

REF_ID_MAP_FILE = "umd_2_google_ref.npy"


def candidate_file_name(split_by: str) -> str:
    """``<splitBy>_candidate_2_4_6_8.npy``: the clip-score file of PCNet's SAM masks."""
    return f"{split_by}_candidate_2_4_6_8.npy"


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a ``.npy`` file, read from its header alone."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a NumPy .npy file ({error})") from None
    return tuple(int(v) for v in shape), dtype


def load_pickled_npy(path: str | Path, what: str) -> Any:
    """The object an ``np.save(path, obj)`` of a dict (or other object) wrote, read safely."""
    path = Path(path)
    shape, dtype = npy_header(path)
    if not dtype.hasobject:
        raise DataError(f"{what} {path} holds a {dtype} array of shape {list(shape)}, not a "
                        "saved dict; is it the right file?")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                np.lib.format.read_array_header_1_0(handle)
            else:
                np.lib.format.read_array_header_2_0(handle)
            array = restricted_load(handle, allow_numpy=True)
    except pickle.UnpicklingError as error:
        raise DataError(f"refusing to load {what} {path}: {error}") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{what} {path} is not readable ({error})") from None
    if isinstance(array, np.ndarray) and array.shape == ():
        return array.item()
    return array


def load_ref_id_map(path: str | Path) -> dict[int, int]:
    """PCNet's ``umd_2_google_ref.npy``: {umd ref id: google ref id}."""
    mapping = load_pickled_npy(path, "ref id map")
    try:
        return {int(k): int(v) for k, v in dict(mapping).items()}
    except (TypeError, ValueError):
        raise DataError(f"ref id map {path} is not a dict of ref ids to ref ids") from None
