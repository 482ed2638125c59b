"""Importers for proposals computed elsewhere.

- ``sam-rle``: a folder of segment-anything automatic-mask-generator outputs, one JSON per image
  (a list of ``{segmentation: RLE, area, predicted_iou, stability_score, ...}``; also the
  already filtered ``sam_rle/filter/<image file stem>.json`` files read by PCNet's code), named
  by the image's file stem or its id. The shared post-processing is applied.
- ``pcnet``: the files read by PCNet's released code (github.com/zaiquanyang/Boosting_WRIS,
  ``dataset/ReferDataset.py``), under ``refer/<dataset>/SAM_Mask/`` (SAM) or
  ``refer/<dataset>/SOLO_Mask/`` (FreeSOLO):
  ``SAM_out/<image file stem>.npy`` holds [P, H, W] masks (P = 40, zero-padded) at the image's
  size, addressed by index; ``<splitBy>_candidate_2_4_6_8.npy`` beside ``SAM_out/`` is a saved
  dict {ref id: {"sam_mask_path", "clip_score" [n_sentences, P], "candidate_2"
  [n_sentences, P]}} covering the refs of every split. refbench keeps all P masks in their
  order, empty ones included, so mask p of `ProposalStore.load` is the file's mask p and
  ``clip_score[s][p]`` scores it; the clip scores and candidate flags are stored beside the
  masks (`ProposalStore.clip_scores`, `ProposalStore.candidates`). Nothing is resized: a file
  whose shape is not [P, H, W] of its image is an error.

An import is all or nothing: every input is checked before anything is written, and an import
that fails part-way leaves the store as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from refbench.data.pcnet_files import candidate_file_name, load_pickled_npy, npy_header
from refbench.errors import ConfigError, DataError
from refbench.io import exclusive_lock
from refbench.proposals.postprocess import PAPER_MIN_AREA, encode_masks, postprocess_rles
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


def _import(store: ProposalStore, dataset: Any, read_one, progress: bool,
            finish: Any = None) -> ProposalStore:
    """Append every missing image's masks, then call `finish(store)`; on an error the records
    file (and any folder this call created) is put back as it was."""
    from refbench.proposals.store import _progress

    created = [p for p in (store.folder.parent, store.folder) if not p.exists()]
    try:
        with exclusive_lock(store.folder / ".lock", f"proposal cache {store.folder}"):
            path = store.records_path
            size_before = path.stat().st_size if path.exists() else None
            try:
                done = store.images_done()
                todo = [i for i in dataset.image_ids if i not in done]
                with _progress(progress, len(todo), f"import {store.backend_name}") as advance:
                    for start in range(0, len(todo), 64):
                        records = []
                        for image_id in todo[start:start + 64]:
                            height, width = _image_size(dataset, image_id)
                            rles = read_one(image_id, height, width)
                            records.append({"image_id": image_id, "height": height,
                                            "width": width, "rles": [r["counts"] for r in rles]})
                        store.append(records)
                        advance(len(records))
                if finish is not None:
                    finish(store)
            except Exception:
                store.close()
                if size_before is None:
                    path.unlink(missing_ok=True)
                elif path.exists():
                    os.truncate(path, size_before)
                raise
    except Exception:
        for folder in reversed(created):
            if folder.is_dir() and folder == store.folder:
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
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


def _pcnet_folders(folder: Path, generator: str) -> tuple[Path, Path]:
    """(the folder of ``<image stem>.npy`` masks, the folder holding the candidate file)."""
    nested, leaf = PCNET_SUBFOLDERS[generator]
    if (folder / leaf).is_dir():  # the official SAM_Mask folder
        return folder / leaf, folder
    if (folder / nested).is_dir():  # refer/<dataset>/
        return folder / nested, (folder / nested).parent
    if any(p for p in folder.glob("*.npy") if "_candidate_" not in p.name):  # SAM_out itself
        return folder, folder.parent
    raise DataError(f"no PCNet {generator} proposal files in {folder}: pass the "
                    f"{nested.split('/')[0]} folder (holding {leaf}/ and the candidate file) or "
                    f"{leaf}/ itself")


def _group_sentences(dataset: Any) -> dict[int, tuple[int, int]]:
    """ref id -> (image id, number of sentences), for the refs of the split."""
    refs: dict[int, tuple[int, int]] = {}
    for expression in dataset.expressions("all"):
        image_id, count = refs.get(expression.ref_id, (expression.image_id, 0))
        refs[expression.ref_id] = (image_id, count + 1)
    return refs


def read_pcnet_candidates(
    path: str | Path, dataset: Any, num_masks: int = 40
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{ref id: (clip_score float32 [n_sentences, P], candidate bool [n_sentences, P])} for the
    refs of `dataset` from PCNet's ``<splitBy>_candidate_2_4_6_8.npy``, checked against the
    split: every ref present, one row per sentence, P columns, the ref's image."""
    path = Path(path)
    split = getattr(dataset.info, "id", "?")
    fix = (f"use refer/{dataset.info.dataset}/SAM_Mask/"
           f"{candidate_file_name(dataset.info.split_by)} of this data set")
    content = load_pickled_npy(path, "PCNet candidate file")
    if not isinstance(content, dict):
        raise DataError(f"PCNet candidate file {path} holds a {type(content).__name__}, not a "
                        f"dict of refs; {fix}")
    by_ref = {int(k): v for k, v in content.items() if isinstance(k, (int, np.integer, str))
              and str(k).lstrip("-").isdigit()}
    refs = _group_sentences(dataset)
    missing = [r for r in refs if r not in by_ref]
    if missing:
        raise DataError(f"PCNet candidate file {path} lacks {len(missing)} of {len(refs)} refs of "
                        f"{split} (e.g. ref {', '.join(map(str, missing[:3]))}); it is for "
                        f"another split or data set: {fix}")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for ref_id, (image_id, count) in refs.items():
        entry = by_ref[ref_id]
        expected = (count, num_masks)
        try:
            clip = np.asarray(entry["clip_score"], dtype=np.float32)
            flags = np.asarray(entry["candidate_2"], dtype=np.float32)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DataError(f"PCNet candidate file {path}: ref {ref_id} has no readable "
                            f"clip_score and candidate_2 ({error}); {fix}") from None
        for what, array in (("clip_score", clip), ("candidate_2", flags)):
            if array.shape != expected:
                raise DataError(
                    f"PCNet candidate file {path}: ref {ref_id} has {what} of shape "
                    f"{list(array.shape)}, expected {list(expected)} ({count} sentences x "
                    f"{num_masks} masks); it is for another split or data set: {fix}")
        mask_path = entry.get("sam_mask_path") if isinstance(entry, dict) else None
        stem = Path(str(_field(dataset.image_info(image_id), "file_name"))).stem
        if isinstance(mask_path, str) and Path(mask_path).stem != stem:
            raise DataError(f"PCNet candidate file {path}: ref {ref_id} points at "
                            f"{Path(mask_path).name}, but its image is {stem}; {fix}")
        out[ref_id] = (clip, flags != 0)
    return out


def import_pcnet_proposals(
    folder: str | Path,
    dataset: Any,
    generator: str = "sam",
    name: str | None = None,
    max_proposals: int = 40,
    progress: bool = False,
    candidates: str | Path | None = None,
) -> ProposalStore:
    """Import PCNet's published masks (``<file stem>.npy``, [P, H, W]) and, when found, the
    per-sentence clip scores and candidate flags of ``<splitBy>_candidate_2_4_6_8.npy``.

    `folder` is ``SAM_Mask`` (or ``SOLO_Mask``, with `generator` ``freesolo``), its
    ``SAM_out`` subfolder, or the data set's refer folder; the candidate file is looked for
    beside ``SAM_out`` unless `candidates` names it. The store is named ``pcnet-<generator>``
    unless `name` is given. Every file is checked before anything is written.
    """
    if generator not in PCNET_SUBFOLDERS:
        raise ConfigError(f"unknown PCNet proposal generator {generator!r}; use sam or freesolo")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"PCNet proposal folder {folder} does not exist")
    source, generator_root = _pcnet_folders(folder, generator)
    if candidates is not None:
        candidate_path: Path | None = Path(candidates)
        if not candidate_path.is_file():
            raise DataError(f"PCNet candidate file {candidate_path} does not exist")
    else:
        default = generator_root / candidate_file_name(dataset.info.split_by)
        candidate_path = default if default.is_file() else None
    scores = (read_pcnet_candidates(candidate_path, dataset, max_proposals)
              if candidate_path is not None else None)

    paths: dict[Any, Path] = {}
    for image_id in dataset.image_ids:
        path = _find_file(source, dataset, image_id, ".npy")
        height, width = _image_size(dataset, image_id)
        shape, dtype = npy_header(path)
        expected = (max_proposals, height, width)
        if shape != expected or dtype.hasobject:
            raise DataError(
                f"{path} holds {dtype} masks of shape {list(shape)}; image {image_id!r} needs "
                f"[{max_proposals}, {height}, {width}] ({max_proposals} masks at the image's "
                f"height and width); is {source} the mask folder of this data set?")
        paths[image_id] = path

    config = {"importer": "pcnet", "generator": generator, "source": str(source.resolve()),
              "candidates": str(candidate_path.resolve()) if candidate_path else None,
              "max_proposals": int(max_proposals), "version": 2}
    store = ProposalStore(dataset, name or f"pcnet-{generator}", config)

    def read_one(image_id: Any, height: int, width: int) -> list[dict]:
        path = paths[image_id]
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{path} (image {image_id!r}) is not a NumPy mask array ({error})"
                            ) from None
        return encode_masks(list(array != 0))  # every mask, empty ones too: index p is mask p

    def finish(store: ProposalStore) -> None:
        if scores is not None:
            store.write_sentence_scores(scores)

    return _import(store, dataset, read_one, progress, finish)
