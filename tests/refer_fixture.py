"""A tiny refer-format data set written into a temp folder, with expectations written by hand.

`make_tiny_refer(root)` writes RefCOCO, RefCOCO+ and RefCOCOg (Google and UMD) refs over four
small images and returns what a correct reader must find. Other tests (the eval runner's) reuse
it: keep the signature and the returned keys stable.

Layout written::

    root/images/train2014/                      images 101 (RGB PNG), 102 (grayscale PNG)
    root/images/mscoco/images/train2014/        images 103 (JPEG), 104 (RGBA PNG)
    root/refcocog/images/                       a different image 104 (dataset-local wins)
    root/refcoco/   instances.json, refs(unc).p     (refs(unc).p written as a Python 2 pickle)
    root/refcoco+/  instances.json, refs(unc).p     (includes a ref with split "testAB")
    root/refcocog/  instances.json, refs(google).p, refs(umd).p

Masks are rectangles and an L shape whose pixel sets are known by construction: a polygon with
integer corners (x0, y0)-(x1, y1) covers rows y0..y1-1 and columns x0..x1-1 (COCO's
rasterisation). The RLE strings are encoded here by an independent implementation.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# image_id -> (file name, width, height, kind, folder relative to root)
IMAGES: dict[int, tuple[str, int, int, str, str]] = {
    101: ("COCO_train2014_000000000101.png", 24, 16, "rgb", "images/train2014"),
    102: ("COCO_train2014_000000000102.png", 20, 20, "gray", "images/train2014"),
    103: ("COCO_train2014_000000000103.jpg", 16, 12, "jpeg", "images/mscoco/images/train2014"),
    104: ("COCO_train2014_000000000104.png", 18, 14, "rgba", "images/mscoco/images/train2014"),
}

# ann_id -> image_id, category_id
ANNOTATIONS: dict[int, tuple[int, int]] = {
    1001: (101, 1),
    1002: (101, 18),
    1003: (101, 62),
    2001: (102, 1),
    2002: (102, 3),
    3001: (103, 1),
    3002: (103, 44),  # never referred: background for peak tests
    4001: (104, 18),
}

WORDS = ["man", "dog", "chair", "left", "right", "red", "blue", "small", "big", "near", "cup"]


def _rect(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major runs, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts: list[int] = []
    current, run = 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(value), 1
    counts.append(run)
    return counts


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE string (the LEB128-like code of cocoapi's rleToString)."""
    chars: list[str] = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            chars.append(chr(chunk + 48))
    return "".join(chars)


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _annotations() -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """COCO annotations and, independently, the exact mask each must decode to."""
    masks: dict[int, np.ndarray] = {}
    segs: dict[int, Any] = {}
    # 1001: one rectangle polygon
    masks[1001] = _rect(16, 24, 2, 3, 10, 9)
    segs[1001] = [_rect_polygon(2, 3, 10, 9)]
    # 1002: two overlapping rectangle polygons -> union
    masks[1002] = _rect(16, 24, 12, 2, 20, 8) | _rect(16, 24, 16, 5, 23, 12)
    segs[1002] = [_rect_polygon(12, 2, 20, 8), _rect_polygon(16, 5, 23, 12)]
    # 1003: compressed RLE of an L shape
    masks[1003] = _rect(16, 24, 1, 10, 4, 15) | _rect(16, 24, 1, 13, 11, 15)
    segs[1003] = {"size": [16, 24], "counts": rle_string(rle_counts(masks[1003]))}
    # 2001: uncompressed RLE of a plus sign
    masks[2001] = _rect(20, 20, 8, 2, 12, 18) | _rect(20, 20, 2, 8, 18, 12)
    segs[2001] = {"size": [20, 20], "counts": rle_counts(masks[2001])}
    # 2002: non-convex L polygon
    masks[2002] = _rect(20, 20, 1, 1, 9, 4) | _rect(20, 20, 1, 4, 4, 12)
    segs[2002] = [[1.0, 1.0, 9.0, 1.0, 9.0, 4.0, 4.0, 4.0, 4.0, 12.0, 1.0, 12.0]]
    # 3001 and 3002: rectangles in the JPEG image
    masks[3001] = _rect(12, 16, 0, 0, 7, 6)
    segs[3001] = [_rect_polygon(0, 0, 7, 6)]
    masks[3002] = _rect(12, 16, 9, 4, 16, 12)
    segs[3002] = [_rect_polygon(9, 4, 16, 12)]
    # 4001: compressed RLE touching the image border
    masks[4001] = _rect(14, 18, 10, 0, 18, 14)
    segs[4001] = {"size": [14, 18], "counts": rle_string(rle_counts(masks[4001]))}

    annotations = []
    for ann_id, (image_id, category_id) in ANNOTATIONS.items():
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segs[ann_id],
                "area": float(masks[ann_id].sum()),
                "bbox": _bbox(masks[ann_id]),
                "iscrowd": 0 if isinstance(segs[ann_id], list) else 1,
            }
        )
    return annotations, masks


def _write_images(root: Path) -> dict[int, dict[str, Any]]:
    rng = np.random.default_rng(7)
    images: dict[int, dict[str, Any]] = {}
    for image_id, (file_name, width, height, kind, folder) in IMAGES.items():
        path = root / folder / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "gray":
            gray = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
            Image.fromarray(gray, mode="L").save(path)
            expected = np.repeat(gray[:, :, None], 3, axis=2)
        elif kind == "rgba":
            rgba = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
            Image.fromarray(rgba, mode="RGBA").save(path)
            expected = rgba[:, :, :3].copy()
        elif kind == "jpeg":
            # smooth content so JPEG error stays small
            yy, xx = np.mgrid[0:height, 0:width]
            rgb = np.stack([xx * 12, yy * 18, 255 - xx * 10], axis=2).astype(np.uint8)
            Image.fromarray(rgb, mode="RGB").save(path, quality=95)
            expected = rgb
        else:
            rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            Image.fromarray(rgb, mode="RGB").save(path)
            expected = rgb
        images[image_id] = {
            "file_name": file_name,
            "width": width,
            "height": height,
            "path": path,
            "pixels": expected,
            "lossless": kind != "jpeg",
        }
    return images


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes text as Python 2 byte strings (BINSTRING opcodes), as refer's pickles hold."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str) -> None:
        data = obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str


def _sentence(sent_id: int, text: str, **extra: Any) -> dict[str, Any]:
    return {"sent_id": sent_id, "sent": text, "raw": text.capitalize(), "tokens": text.split(), **extra}


# (dataset, split_by) -> list of (ref_id, ann_id, split, number of sentences), deliberately not in
# ref_id order inside the pickle
REFS: dict[tuple[str, str], list[tuple[int, int, str, int]]] = {
    ("refcoco", "unc"): [
        (7, 1003, "val", 2),
        (1, 1001, "train", 2),
        (2, 1002, "val", 1),
        (3, 2001, "testA", 3),
        (4, 2002, "testA", 1),
        (5, 3001, "testB", 2),
        (6, 4001, "val", 1),
    ],
    ("refcoco+", "unc"): [
        (11, 1001, "train", 1),
        (12, 1002, "val", 2),
        (13, 2001, "testA", 1),
        (15, 2002, "testAB", 2),
        (14, 3001, "testB", 1),
    ],
    ("refcocog", "google"): [
        (21, 1001, "train", 2),
        (24, 3001, "train", 1),
        (22, 2001, "val", 2),
        (23, 4001, "val", 1),
    ],
    ("refcocog", "umd"): [
        (31, 1001, "train", 1),
        (32, 1003, "val", 2),
        (33, 2002, "test", 1),
        (34, 4001, "test", 3),
    ],
}

# split id -> (dataset, split_by, which "split" values it holds)
SPLIT_MEMBERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "refcoco-train": ("refcoco", "unc", ("train",)),
    "refcoco-val": ("refcoco", "unc", ("val",)),
    "refcoco-testa": ("refcoco", "unc", ("testA",)),
    "refcoco-testb": ("refcoco", "unc", ("testB",)),
    "refcoco+-train": ("refcoco+", "unc", ("train",)),
    "refcoco+-val": ("refcoco+", "unc", ("val",)),
    "refcoco+-testa": ("refcoco+", "unc", ("testA", "testAB")),
    "refcoco+-testb": ("refcoco+", "unc", ("testB", "testAB")),
    "refcocog-train-g": ("refcocog", "google", ("train",)),
    "refcocog-val-g": ("refcocog", "google", ("val",)),
    "refcocog-train-u": ("refcocog", "umd", ("train",)),
    "refcocog-val-u": ("refcocog", "umd", ("val",)),
    "refcocog-test-u": ("refcocog", "umd", ("test",)),
}


def make_tiny_refer(root: Path) -> dict[str, Any]:
    """Write the tiny data set under `root` and return what a correct reader must find.

    Returns a dict with:
      root: Path, the data root.
      splits: split id -> {"ref_ids": [...] ascending, "image_ids": [...] ascending,
          "sentences": [(image_id, ref_id, sent_id, text), ...] in reader order (image, ref,
          sentence), "first": the same keeping each ref's first sentence only,
          "num_refs": int, "num_sentences": int}; one entry per RefCOCO-family split id.
      refs: (dataset, split_by) -> {ref_id: {"ann_id", "image_id", "category_id", "split",
          "sentences": [(sent_id, text, extra dict)]}}.
      masks: ann_id -> [H, W] bool, the exact mask. boxes: ann_id -> (x, y, w, h).
      images: image_id -> {"file_name", "width", "height", "path", "pixels" [H, W, 3] uint8 as
          a correct RGB decode gives (exact when "lossless", JPEG otherwise)}.
      refcocog_image_104: [H, W, 3] uint8, the dataset-local image 104 that refcocog must load.
      annotation_ids: image_id -> every annotation id in it, ascending.
      categories: category id -> name.
    """
    root = Path(root)
    images = _write_images(root)
    annotations, masks = _annotations()
    categories = {1: "person", 3: "car", 18: "dog", 44: "bottle", 62: "chair"}

    # refcocog keeps its own copy of image 104: the dataset-local folder is searched first
    local = root / "refcocog" / "images" / IMAGES[104][0]
    local.parent.mkdir(parents=True, exist_ok=True)
    local_pixels = np.full((14, 18, 3), (10, 200, 30), dtype=np.uint8)
    Image.fromarray(local_pixels, mode="RGB").save(local)

    instances = {
        "info": {"description": "refbench tiny refer fixture", "version": "1"},
        "images": [
            {"id": i, "file_name": v["file_name"], "height": v["height"], "width": v["width"]}
            for i, v in images.items()
        ],
        "annotations": annotations,
        "categories": [{"id": k, "name": v} for k, v in categories.items()],
    }

    refs_expect: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    sent_id = 500
    for (dataset, split_by), rows in REFS.items():
        folder = root / dataset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "instances.json").write_text(json.dumps(instances))
        records = []
        expect: dict[int, dict[str, Any]] = {}
        for ref_id, ann_id, split, num_sentences in rows:
            image_id, category_id = ANNOTATIONS[ann_id]
            sentences = []
            for k in range(num_sentences):
                sent_id += 1
                text = f"{WORDS[(ref_id + k) % len(WORDS)]} {WORDS[(ref_id * 3 + k) % len(WORDS)]} {dataset} {ref_id}.{k}"
                extra: dict[str, Any] = {}
                if dataset == "refcocog" and ref_id == 23:
                    extra = {"template": "the {color} {noun}", "cues": ["dog", "small dog"]}
                if dataset == "refcoco" and ref_id == 3 and k == 0:
                    text = "caf\xe9 table"  # non-ASCII byte in a Python 2 str
                sentences.append(_sentence(sent_id, text, **extra))
            records.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "category_id": category_id,
                    "split": split,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "sentences": sentences,
                    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                }
            )
            expect[ref_id] = {
                "ann_id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "split": split,
                "sentences": [
                    (s["sent_id"], s["sent"], {k: v for k, v in s.items() if k not in ("sent_id", "sent")})
                    for s in sentences
                ],
            }
        refs_path = folder / f"refs({split_by}).p"
        with refs_path.open("wb") as handle:
            if dataset == "refcoco":
                _Py2Pickler(handle, protocol=2).dump(records)
            elif dataset == "refcoco+":
                pickle.dump(records, handle, protocol=2)
            else:
                pickle.dump(records, handle)
        refs_expect[(dataset, split_by)] = expect

    splits: dict[str, dict[str, Any]] = {}
    for split_id, (dataset, split_by, members) in SPLIT_MEMBERS.items():
        chosen = {r: v for r, v in refs_expect[(dataset, split_by)].items() if v["split"] in members}
        order = sorted(chosen, key=lambda r: (chosen[r]["image_id"], r))
        sentences = [
            (chosen[r]["image_id"], r, s_id, text)
            for r in order
            for s_id, text, _ in chosen[r]["sentences"]
        ]
        first = [
            (chosen[r]["image_id"], r, chosen[r]["sentences"][0][0], chosen[r]["sentences"][0][1])
            for r in order
        ]
        splits[split_id] = {
            "ref_ids": sorted(chosen),
            "image_ids": sorted({v["image_id"] for v in chosen.values()}),
            "sentences": sentences,
            "first": first,
            "num_refs": len(chosen),
            "num_sentences": len(sentences),
        }

    annotation_ids: dict[int, list[int]] = {}
    for ann_id, (image_id, _) in sorted(ANNOTATIONS.items()):
        annotation_ids.setdefault(image_id, []).append(ann_id)
    return {
        "root": root,
        "splits": splits,
        "refs": refs_expect,
        "masks": masks,
        "boxes": {a["id"]: tuple(a["bbox"]) for a in annotations},
        "images": images,
        "refcocog_image_104": local_pixels,
        "annotation_ids": annotation_ids,
        "categories": categories,
    }
