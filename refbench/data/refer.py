"""The refer-format reader: RefCOCO, RefCOCO+, RefCOCOg and SynthRef from the same files.

A data set lives in ``<root>/<dataset>/``: ``refs(<split_by>).p`` (a pickled list of refs, each
with ref_id, ann_id, image_id, category_id, split and sentences) and ``instances.json`` (COCO
style: images, annotations, categories). Images are COCO train2014 files (or, for SynthRef,
``<root>/synthref/images/``). Files are parsed once per process and shared between splits.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refbench.api import Expression
from refbench.data.splits import SplitInfo, get_split
from refbench.errors import ConfigError, DataError
from refbench.metrics.protocols import GT_OVERLAPS
from refbench.safe_pickle import RefusedGlobalError, restricted_load

DOCS_HINT = "see docs/data.md for the expected data-root layout"
SENTENCE_MODES = ("all", "first")


# --------------------------------------------------------------------------- pickles


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle holding only dicts, lists, tuples, str, bytes, numbers, bools and None.

    A pickle that references any other global (a class, a function such as ``os.system``) is
    refused (`refbench.safe_pickle`) with a `DataError` before anything it names is imported
    or called; a truncated or damaged file is a `DataError` saying so. Python 2 pickles load:
    their byte strings are decoded as UTF-8 when valid, else as latin-1.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return restricted_load(handle)
    except FileNotFoundError:
        raise DataError(f"missing file {path}; {DOCS_HINT}") from None
    except RefusedGlobalError as error:
        raise DataError(
            f"refusing to load {path}: {error}; refs files hold only plain data, so this file "
            "is not a refer-format pickle (re-download it)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError) as error:
        size = path.stat().st_size if path.exists() else 0
        raise DataError(
            f"{path} is truncated or corrupt ({size:,} bytes; the pickle cannot be read: "
            f"{error or type(error).__name__}); re-download it"
        ) from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror})") from None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Sentence:
    """One referring sentence; `extra` keeps every other field (raw, tokens, template, cues...)."""

    sent_id: int
    text: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Ref:
    """One referred object and its sentences."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: tuple[Sentence, ...]


@dataclass(frozen=True)
class ImageInfo:
    """One image as instances.json describes it, with the file it was found at."""

    image_id: int
    file_name: str
    height: int
    width: int
    path: Path


# --------------------------------------------------------------------------- file cache


@dataclass
class _Instances:
    """instances.json parsed and indexed by id."""

    images: dict[int, dict[str, Any]]
    annotations: dict[int, dict[str, Any]]
    anns_by_image: dict[int, list[int]]
    categories: dict[int, dict[str, Any]]
    info: dict[str, Any] | None


@dataclass
class _RefsFile:
    """A refs pickle parsed into `Ref` records (all splits), with its SHA-256."""

    refs: list[Ref]
    sha256: str


_FILE_CACHE: dict[tuple[str, str, int, int], Any] = {}
_CACHE_LOCK = threading.Lock()


def _cached(kind: str, path: Path, build: Any) -> Any:
    """Parse `path` once per (resolved path, mtime, size); a changed file is parsed again."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"missing file {path}; {DOCS_HINT}") from None
    key = (kind, str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        if key in _FILE_CACHE:
            return _FILE_CACHE[key]
    value = build(path)
    with _CACHE_LOCK:
        # drop stale versions of the same file so edited files do not pile up
        for old in [k for k in _FILE_CACHE if k[:2] == key[:2] and k != key]:
            del _FILE_CACHE[old]
        _FILE_CACHE[key] = value
    return value


def clear_cache() -> None:
    """Forget every parsed refs/instances file (tests, or after editing files in place)."""
    with _CACHE_LOCK:
        _FILE_CACHE.clear()


def _int_field(record: Mapping[str, Any], name: str, where: str) -> int:
    try:
        return int(record[name])
    except KeyError:
        raise DataError(f"{where} has no {name!r} field; the file is not in refer format") from None
    except (TypeError, ValueError):
        raise DataError(f"{where} has a non-integer {name!r}: {record[name]!r}") from None


def _parse_sentence(raw: Any, where: str) -> Sentence:
    if not isinstance(raw, Mapping):
        raise DataError(f"{where} is not a dict; the file is not in refer format")
    sent_id = _int_field(raw, "sent_id", where)
    # refer's "sent" is the normalised sentence most WRIS code feeds the text encoder; "raw"
    # (as typed by the annotator) stays in `extra`.
    text = raw.get("sent", raw.get("raw"))
    if not isinstance(text, str):
        raise DataError(f"{where} has no text ('sent' or 'raw'); the file is not in refer format")
    extra = {k: v for k, v in raw.items() if k not in ("sent_id", "sent")}
    return Sentence(sent_id, text, extra)


def _load_refs(path: Path) -> _RefsFile:
    data = safe_load_pickle(path)
    if not isinstance(data, list):
        raise DataError(
            f"{path} holds a {type(data).__name__}, not a list of refs; the file is not in "
            "refer format"
        )
    refs: list[Ref] = []
    for index, raw in enumerate(data):
        where = f"{path} ref #{index}"
        if not isinstance(raw, Mapping):
            raise DataError(f"{where} is not a dict; the file is not in refer format")
        split = raw.get("split")
        if not isinstance(split, str):
            raise DataError(f"{where} has no string 'split' field")
        sentences = raw.get("sentences")
        if not isinstance(sentences, Sequence) or isinstance(sentences, str):
            raise DataError(f"{where} has no 'sentences' list")
        refs.append(
            Ref(
                ref_id=_int_field(raw, "ref_id", where),
                ann_id=_int_field(raw, "ann_id", where),
                image_id=_int_field(raw, "image_id", where),
                category_id=int(raw.get("category_id", -1)),
                split=split,
                sentences=tuple(
                    _parse_sentence(s, f"{where} sentence #{i}") for i, s in enumerate(sentences)
                ),
            )
        )
    refs.sort(key=lambda r: r.ref_id)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _RefsFile(refs, digest)


def _load_instances(path: Path) -> _Instances:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error}); re-download it") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DataError(f"{path} has no 'images'/'annotations' lists; it is not COCO-style")
    images: dict[int, dict[str, Any]] = {}
    for index, image in enumerate(data["images"]):
        where = f"{path} image #{index}"
        image_id = _int_field(image, "id", where)
        for name in ("file_name", "height", "width"):
            if name not in image:
                raise DataError(f"{where} (id {image_id}) has no {name!r} field")
        images[image_id] = image
    annotations: dict[int, dict[str, Any]] = {}
    anns_by_image: dict[int, list[int]] = {}
    for index, ann in enumerate(data["annotations"]):
        where = f"{path} annotation #{index}"
        ann_id = _int_field(ann, "id", where)
        image_id = _int_field(ann, "image_id", where)
        annotations[ann_id] = ann
        anns_by_image.setdefault(image_id, []).append(ann_id)
    for ids in anns_by_image.values():
        ids.sort()
    categories = {int(c["id"]): c for c in data.get("categories", []) if "id" in c}
    info = data.get("info") if isinstance(data.get("info"), dict) else None
    return _Instances(images, annotations, anns_by_image, categories, info)


# --------------------------------------------------------------------------- split matching


def split_matches(ref_split: str, wanted: str) -> bool:
    """Whether a ref whose ``split`` field is `ref_split` belongs to split `wanted`.

    As the refer API does it: testA/testB/testC keep every test split naming that letter
    (so a "testAB" ref is in both testA and testB); "test" keeps every test split; anything
    else (train, val, testAB...) is an exact match.
    """
    if wanted in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and wanted[-1] in ref_split[4:]
    if wanted == "test":
        return "test" in ref_split
    return ref_split == wanted


# --------------------------------------------------------------------------- the data set


class ReferDataset:
    """One split of a refer-format data set: refs, sentences, images, masks and boxes.

    `data_root` holds ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``; `split`
    is a split id from refbench.data.splits (``refcocog-val-u``) or a `SplitInfo`.
    """

    def __init__(self, data_root: str | Path, split: str | SplitInfo) -> None:
        self.info: SplitInfo = split if isinstance(split, SplitInfo) else get_split(split)
        self.data_root = Path(data_root).expanduser()
        if not self.data_root.is_dir():
            raise DataError(f"data root {self.data_root} does not exist; {DOCS_HINT}")
        folder = self.data_root / self.info.dataset
        self.refs_path = folder / self.info.refs_file
        self.instances_path = folder / "instances.json"
        for path in (self.refs_path, self.instances_path):
            if not path.is_file():
                raise DataError(
                    f"split {self.info.id} needs {path}, which does not exist; {DOCS_HINT}"
                )
        refs_file: _RefsFile = _cached("refs", self.refs_path, _load_refs)
        self._instances_cache: _Instances | None = None
        self._refs_sha256 = refs_file.sha256
        self.refs: list[Ref] = [r for r in refs_file.refs if split_matches(r.split, self.info.split)]
        self._ref_by_id = {r.ref_id: r for r in self.refs}
        self._refs_by_image: dict[int, list[Ref]] = {}
        for ref in self.refs:
            self._refs_by_image.setdefault(ref.image_id, []).append(ref)
        self.image_ids: list[int] = sorted(self._refs_by_image)
        self._image_paths: dict[int, Path] = {}

    @property
    def _instances(self) -> _Instances:
        # parsed on first use: counting refs and sentences never needs instances.json
        if self._instances_cache is None:
            self._instances_cache = _cached("instances", self.instances_path, _load_instances)
        return self._instances_cache

    def __repr__(self) -> str:
        return f"ReferDataset({str(self.data_root)!r}, {self.info.id!r}: {len(self.refs)} refs)"

    def __len__(self) -> int:
        return len(self.refs)

    # ---------------------------------------------------------------- refs and sentences

    def refs_of_image(self, image_id: int) -> list[Ref]:
        """The refs of this split in image `image_id`, ordered by ref_id (empty if none)."""
        return list(self._refs_by_image.get(image_id, []))

    def ref(self, ref_id: int) -> Ref:
        """The ref `ref_id` of this split."""
        try:
            return self._ref_by_id[ref_id]
        except KeyError:
            raise DataError(f"split {self.info.id} has no ref {ref_id}") from None

    def expressions(self, sentences: str = "all") -> list[Expression]:
        """Every expression of the split, ordered by image_id, then ref_id, then sentence order.

        sentences="first" keeps only each ref's first sentence, as PCNet's released evaluation
        does (one sentence per object).
        """
        _check_sentence_mode(sentences)
        return [e for image_id in self.image_ids for e in self._image_expressions(image_id, sentences)]

    def expressions_by_image(self, sentences: str = "all") -> dict[int, list[Expression]]:
        """The expressions grouped by image, images in ascending id order."""
        _check_sentence_mode(sentences)
        return {i: self._image_expressions(i, sentences) for i in self.image_ids}

    def _image_expressions(self, image_id: int, sentences: str) -> list[Expression]:
        out: list[Expression] = []
        for ref in self._refs_by_image.get(image_id, []):
            chosen = ref.sentences[:1] if sentences == "first" else ref.sentences
            for sentence in chosen:
                out.append(
                    Expression(
                        text=sentence.text,
                        image_id=ref.image_id,
                        ref_id=ref.ref_id,
                        ann_id=ref.ann_id,
                        sent_id=sentence.sent_id,
                        cues=_stored_cues(sentence),
                    )
                )
        return out

    def sentence(self, key: str) -> Sentence:
        """The sentence behind an `Expression.key` (``image:ref:sent``)."""
        try:
            image_id, ref_id, sent_id = (int(part) for part in key.split(":"))
        except ValueError:
            raise DataError(f"expression key {key!r} is not 'image:ref:sent'") from None
        ref = self._ref_by_id.get(ref_id)
        if ref is None or ref.image_id != image_id:
            raise DataError(f"split {self.info.id} has no ref {ref_id} in image {image_id} ({key})")
        for sentence in ref.sentences:
            if sentence.sent_id == sent_id:
                return sentence
        raise DataError(f"ref {ref_id} of split {self.info.id} has no sentence {sent_id} ({key})")

    # ---------------------------------------------------------------- images

    def image_info(self, image_id: int) -> ImageInfo:
        """The image's file name and size from instances.json, and the file found for it."""
        record = self._image_record(image_id)
        return ImageInfo(
            image_id=image_id,
            file_name=str(record["file_name"]),
            height=int(record["height"]),
            width=int(record["width"]),
            path=self._image_path(image_id, str(record["file_name"])),
        )

    def _image_record(self, image_id: int) -> dict[str, Any]:
        try:
            return self._instances.images[image_id]
        except KeyError:
            raise DataError(f"image {image_id} is not in {self.instances_path}") from None

    def image_candidates(self, file_name: str) -> list[Path]:
        """The paths tried, in order, for an image file."""
        root = self.data_root
        return [
            root / self.info.dataset / "images" / file_name,
            root / "images" / "train2014" / file_name,
            root / "images" / "mscoco" / "images" / "train2014" / file_name,
        ]

    def _image_path(self, image_id: int, file_name: str) -> Path:
        cached = self._image_paths.get(image_id)
        if cached is not None:
            return cached
        candidates = self.image_candidates(file_name)
        for path in candidates:
            if path.is_file():
                self._image_paths[image_id] = path
                return path
        tried = ", ".join(str(p) for p in candidates)
        raise DataError(f"image {image_id} ({file_name}) not found; tried {tried}; {DOCS_HINT}")

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as [H, W, 3] uint8 RGB (grayscale, RGBA, CMYK and palettes converted)."""
        from PIL import Image, UnidentifiedImageError

        info = self.image_info(image_id)
        try:
            with Image.open(info.path) as image:
                # No EXIF rotation: COCO masks are drawn on the pixels as stored.
                rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataError(
                f"cannot decode image {info.path} ({error}); the file is corrupt, re-download it"
            ) from None
        if rgb.shape[:2] != (info.height, info.width):
            raise DataError(
                f"image {info.path} is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but "
                f"{self.instances_path} says {info.width}x{info.height}; the image file does "
                "not belong to this annotation set"
            )
        return rgb

    # ---------------------------------------------------------------- annotations

    def _annotation(self, ann_id: int) -> dict[str, Any]:
        try:
            return self._instances.annotations[ann_id]
        except KeyError:
            raise DataError(f"annotation {ann_id} is not in {self.instances_path}") from None

    def annotation_ids(self, image_id: int) -> list[int]:
        """All annotation ids in image `image_id` (referred or not), ascending."""
        self._image_record(image_id)
        return list(self._instances.anns_by_image.get(image_id, []))

    def mask(self, ann_id: int, overlap: str = "union") -> np.ndarray:
        """The annotation's segmentation as [H, W] bool (polygons, RLE or compressed RLE).

        For an annotation made of several polygons, `overlap` says which pixels are foreground:
        "union": covered by any polygon; "once": covered by exactly one, as the refer API's
        getMask (the decoded polygons summed) followed by TRIS's ``mask == 1`` gives it
        (docs/metrics.md). An RLE segmentation is one mask, the same under both.
        """
        from pycocotools import mask as mask_utils

        if overlap not in GT_OVERLAPS:
            raise ValueError(f"unknown overlap {overlap!r}; use one of {', '.join(GT_OVERLAPS)}")
        ann = self._annotation(ann_id)
        record = self._image_record(int(ann["image_id"]))
        height, width = int(record["height"]), int(record["width"])
        segmentation = ann.get("segmentation")
        try:
            if isinstance(segmentation, list):
                polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
                if not polygons:
                    return np.zeros((height, width), dtype=bool)
                rle = mask_utils.frPyObjects(polygons, height, width)  # one RLE per polygon
                if overlap == "union":
                    rle = mask_utils.merge(rle)
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            elif isinstance(segmentation, dict) and isinstance(
                segmentation.get("counts"), (str, bytes)
            ):
                counts = segmentation["counts"]
                rle = {
                    "size": list(segmentation["size"]),
                    "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
                }
            else:
                raise DataError(
                    f"annotation {ann_id} in {self.instances_path} has no polygon or RLE "
                    "segmentation"
                )
            with warnings.catch_warnings():
                # pycocotools' Cython decode trips NumPy 2's __array__(copy=) deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = mask_utils.decode([rle] if isinstance(rle, dict) else rle)
        except DataError:
            raise
        except Exception as error:  # pycocotools raises bare Exceptions on malformed input
            raise DataError(
                f"annotation {ann_id} in {self.instances_path} has a malformed segmentation "
                f"({error})"
            ) from None
        if decoded.ndim == 3:  # [H, W, n]: one layer per polygon (one after a merge or for RLE)
            if overlap == "once":
                decoded = decoded.sum(axis=2, dtype=np.int64) == 1
            else:
                decoded = decoded.any(axis=2)
        binary = decoded.astype(bool)
        if binary.shape != (height, width):
            raise DataError(
                f"annotation {ann_id} decodes to {binary.shape[1]}x{binary.shape[0]} but image "
                f"{ann['image_id']} is {width}x{height} in {self.instances_path}"
            )
        return binary

    def box(self, ann_id: int) -> tuple[float, float, float, float]:
        """The annotation's box as (x, y, w, h) in pixels, COCO style."""
        bbox = self._annotation(ann_id).get("bbox")
        if not isinstance(bbox, Sequence) or len(bbox) != 4:
            raise DataError(f"annotation {ann_id} in {self.instances_path} has no 4-number bbox")
        x, y, w, h = (float(v) for v in bbox)
        return (x, y, w, h)

    def category_name(self, category_id: int) -> str:
        """The category's name, or its id as text when instances.json does not list it."""
        category = self._instances.categories.get(category_id)
        return str(category.get("name", category_id)) if category else str(category_id)

    # ---------------------------------------------------------------- provenance

    def metadata(self) -> dict[str, Any]:
        """Where this split came from, for run provenance: files, hash, counts, info block."""
        meta: dict[str, Any] = {
            "split_id": self.info.id,
            "dataset": self.info.dataset,
            "split_by": self.info.split_by,
            "split": self.info.split,
            "refs_file": str(self.refs_path),
            "refs_sha256": self._refs_sha256,
            "num_refs": len(self.refs),
            "num_sentences": sum(len(r.sentences) for r in self.refs),
            "num_images": len(self.image_ids),
        }
        if self._instances.info is not None:
            meta["instances_info"] = self._instances.info
        return meta


def _check_sentence_mode(sentences: str) -> None:
    if sentences not in SENTENCE_MODES:
        raise ConfigError(
            f"unknown sentence mode {sentences!r}; use one of {', '.join(SENTENCE_MODES)}"
        )


def _stored_cues(sentence: Sentence) -> tuple[str, ...]:
    """Cue phrases a data set stores with a sentence (SynthRef does), else ()."""
    cues = sentence.extra.get("cues")
    if isinstance(cues, (list, tuple)) and all(isinstance(c, str) for c in cues):
        return tuple(cues)
    return ()
