"""Importers for proposals computed elsewhere.

- ``sam-rle``: a folder of segment-anything automatic-mask-generator outputs, one JSON per image
  (a list of ``{segmentation: RLE, area, predicted_iou, stability_score, ...}``; also the
  already filtered ``sam_rle/filter/<image file stem>.json`` files read by PCNet's code), named
  by the image's file stem or its id. The shared post-processing is applied.
- ``pcnet``: the per-image mask arrays read by PCNet's released code
  (github.com/zaiquanyang/Boosting_WRIS, ``dataset/ReferDataset.py``): a NumPy file
  ``<image file stem>.npy`` holding [P, H, W] masks (P = 40, zero-padded) under
  ``refer/<dataset>/SAM_Mask/SAM_out/`` (SAM) or ``refer/<dataset>/SOLO_Mask/SOLO_out/``
  (FreeSOLO). These are already post-processed by the authors: refbench keeps their order,
  drops the all-zero padding, resizes (nearest) to the original image size if they differ, and
  stores them as RLE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from refbench.errors import ConfigError, DataError
from refbench.io import exclusive_lock
from refbench.proposals.postprocess import PAPER_MIN_AREA, encode_masks, postprocess_rles
from refbench.proposals.rle import nearest_indices
from refbench.proposals.store import ProposalStore

PCNET_SUBFOLDERS = {
    "sam": ("SAM_Mask/SAM_out", "SAM_out"),
    "freesolo": ("SOLO_Mask/SOLO_out", "SOLO_out"),
}


def _field(info: Any, key: str) -> Any:
    return info[key] if isinstance(info, dict) else getattr(info, key)


def _find_file(folder: Path, dataset: Any, image_id: Any, suffix: str) -> Path:
    stem = Path(str(_field(dataset.image_info(image_id), "file_name"))).stem
    for name in (f"{stem}{suffix}", f"{image_id}{suffix}"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"no proposals for image {image_id!r} in {folder} (looked for {stem}{suffix} "
                    f"and {image_id}{suffix})")


def _image_size(dataset: Any, image_id: Any) -> tuple[int, int]:
    info = dataset.image_info(image_id)
    return int(_field(info, "height")), int(_field(info, "width"))


def _import(store: ProposalStore, dataset: Any, read_one, progress: bool) -> ProposalStore:
    from refbench.proposals.store import _progress

    with exclusive_lock(store.folder / ".lock", f"proposal cache {store.folder}"):
        done = store.images_done()
        todo = [i for i in dataset.image_ids if i not in done]
        with _progress(progress, len(todo), f"import {store.backend_name}") as advance:
            for start in range(0, len(todo), 64):
                records = []
                for image_id in todo[start:start + 64]:
                    height, width = _image_size(dataset, image_id)
                    rles = read_one(image_id, height, width)
                    records.append({"image_id": image_id, "height": height, "width": width,
                                    "rles": [r["counts"] for r in rles]})
                store.append(records)
                advance(len(records))
    return store


def import_sam_rle_folder(
    folder: str | Path,
    dataset: Any,
    name: str = "sam-rle",
    max_proposals: int = 40,
    min_area: float = PAPER_MIN_AREA,
    dedup_iou: float = 0.8,
    progress: bool = False,
) -> ProposalStore:
    """Import one SAM automatic-mask-generator JSON per image from `folder`; post-processed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"SAM RLE folder {folder} does not exist")
    config = {"importer": "sam-rle", "source": str(folder.resolve()),
              "max_proposals": int(max_proposals), "min_area": float(min_area),
              "dedup_iou": float(dedup_iou)}
    store = ProposalStore(dataset, name, config)

    def read_one(image_id: Any, height: int, width: int) -> list[dict]:
        path = _find_file(folder, dataset, image_id, ".json")
        try:
            with open(path, encoding="utf-8") as handle:
                annotations = json.load(handle)
            rles = [a["segmentation"] if isinstance(a, dict) and "segmentation" in a else a
                    for a in annotations]
            for rle in rles:
                if [int(v) for v in rle["size"]] != [height, width]:
                    raise DataError(f"{path}: a mask of size {rle['size']} does not match image "
                                    f"{image_id!r} ({height}x{width})")
            return postprocess_rles(rles, max_proposals, min_area, dedup_iou)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path} (image {image_id!r}) is not SAM RLE JSON ({err})") from None

    return _import(store, dataset, read_one, progress)


def _pcnet_folder(folder: Path, generator: str) -> Path:
    if any(folder.glob("*.npy")):
        return folder
    for sub in PCNET_SUBFOLDERS[generator]:
        if any((folder / sub).glob("*.npy")):
            return folder / sub
    raise DataError(f"no PCNet {generator} proposal files (*.npy) in {folder} or its "
                    f"{' / '.join(PCNET_SUBFOLDERS[generator])} subfolders")


def import_pcnet_proposals(
    folder: str | Path,
    dataset: Any,
    generator: str = "sam",
    name: str | None = None,
    max_proposals: int = 40,
    progress: bool = False,
) -> ProposalStore:
    """Import PCNet's published per-image proposal arrays (``<file stem>.npy``, [P, H, W]).

    `generator` is ``sam`` or ``freesolo`` (which subfolder to look in); the store is named
    ``pcnet-<generator>`` unless `name` is given.
    """
    if generator not in PCNET_SUBFOLDERS:
        raise ConfigError(f"unknown PCNet proposal generator {generator!r}; use sam or freesolo")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"PCNet proposal folder {folder} does not exist")
    source = _pcnet_folder(folder, generator)
    config = {"importer": "pcnet", "generator": generator, "source": str(source.resolve()),
              "max_proposals": int(max_proposals)}
    store = ProposalStore(dataset, name or f"pcnet-{generator}", config)

    def read_one(image_id: Any, height: int, width: int) -> list[dict]:
        path = _find_file(source, dataset, image_id, ".npy")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{path} (image {image_id!r}) is not a NumPy mask array ({error})") from None
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise DataError(f"{path} (image {image_id!r}) has shape {array.shape}; expected [P, H, W]")
        masks = array != 0
        masks = masks[masks.reshape(len(masks), -1).any(axis=1)][:max_proposals]
        if masks.shape[1:] != (height, width):
            masks = masks[:, nearest_indices(masks.shape[1], height)]
            masks = masks[:, :, nearest_indices(masks.shape[2], width)]
        return encode_masks(list(masks))

    return _import(store, dataset, read_one, progress)
