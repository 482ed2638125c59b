"""Where a split's files live: one rule for every command that opens a split.

RefCOCO-family splits read ``--data-root`` or, without it, ``$REFBENCH_DATA_ROOT``. SynthRef
splits read ``--data-root`` when given (a folder written by ``refbench data synth``) and
otherwise the cache-generated default data set, made on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from refbench.data.splits import SplitInfo, get_split
from refbench.errors import ConfigError

DATA_ROOT_ENV = "REFBENCH_DATA_ROOT"


def resolve_data_root(split: str | SplitInfo, data_root: str | Path | None = None) -> Path:
    """The data root for `split`, generating SynthRef into the cache when it is needed."""
    info = split if isinstance(split, SplitInfo) else get_split(split)
    if data_root is not None:
        return Path(data_root).expanduser()
    if info.is_synthetic:
        from refbench.synth import ensure_synthref
        from refbench.synth.variants import variant_of_dataset

        return ensure_synthref(variant=variant_of_dataset(info.dataset).variant)
    from_env = os.environ.get(DATA_ROOT_ENV)
    if from_env:
        return Path(from_env).expanduser()
    raise ConfigError(
        f"split {info.id} needs --data-root (or ${DATA_ROOT_ENV}): the folder holding "
        f"{info.dataset}/{info.refs_file}, {info.dataset}/instances.json and the COCO images; "
        "see docs/data.md"
    )


def open_split(split: str | SplitInfo, data_root: str | Path | None = None) -> Any:
    """A `ReferDataset` for `split` under the root `resolve_data_root` picks."""
    from refbench.data.refer import ReferDataset

    info = split if isinstance(split, SplitInfo) else get_split(split)
    return ReferDataset(resolve_data_root(info, data_root), info)
