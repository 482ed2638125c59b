"""A small RefCOCOg (UMD) data set for golden-output tests against reference implementations.

`write_reference_refer(root)` writes refcocog/refs(umd).p, refcocog/instances.json and PNG
images under images/train2014/ (refbench's data-root layout), deterministically. The reference
run reads the same files through `official_layout`, which links them where the refer API
readers of TRIS and PCNet look (``<root>/refer/refcocog/`` and ``<root>/train2014/``).

What it holds, chosen to exercise the parts a reference comparison must get right:
- images of different, non-square sizes (the resize to the input size and back);
- polygons with fractional corners, one annotation made of two polygons that overlap, and
  fractional COCO boxes (mask rasterisation, the box-hit rule);
- sentences of 21, 25 and over 30 CLIP tokens besides short ones (20-token truncation);
- a val split (4 images, 6 refs, 11 sentences) and a train split (3 images, 5 refs), where one
  train image has a single ref (the negative-sampling fallback).

Only numpy, Pillow and the standard library are used: the reference venv imports this file by
path.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPLIT_BY = "umd"
DATASET = "refcocog"

# image_id -> (width, height)
IMAGES: dict[int, tuple[int, int]] = {
    201: (64, 48),
    202: (50, 70),
    203: (80, 60),
    204: (45, 45),
    205: (72, 54),
    206: (40, 56),
    207: (60, 60),
}

CATEGORIES = {1: "person", 18: "dog", 47: "cup", 3: "car", 2: "bicycle", 17: "cat", 62: "chair"}

# ann_id -> (image_id, category_id, polygons as fractional (x, y) corner lists)
ANNOTATIONS: dict[int, tuple[int, int, list[list[tuple[float, float]]]]] = {
    2011: (201, 1, [[(3.4, 5.2), (21.7, 4.1), (24.3, 40.6), (6.1, 44.8)]]),
    2012: (201, 18, [[(30.5, 20.25), (58.2, 18.9), (61.7, 41.3), (33.1, 46.0), (28.4, 33.3)]]),
    # two polygons that overlap: the refer API sums them, TRIS keeps pixels equal to 1
    2021: (202, 47, [[(8.6, 10.2), (36.4, 9.7), (37.9, 40.1), (9.3, 41.4)],
                     [(20.2, 30.5), (45.8, 31.2), (44.1, 62.7), (21.6, 63.3)]]),
    2031: (203, 3, [[(5.5, 30.5), (40.25, 28.75), (41.5, 55.5), (6.75, 57.25)]]),
    2032: (203, 2, [[(50.2, 10.6), (76.9, 12.4), (78.3, 50.8), (48.7, 49.1)]]),
    2033: (203, 62, [[(44.0, 2.0), (52.5, 2.0), (52.5, 8.5), (44.0, 8.5)]]),  # never referred
    2041: (204, 17, [[(10.3, 12.6), (35.2, 11.4), (33.8, 36.9), (12.1, 38.7)]]),
    2051: (205, 1, [[(4.2, 6.6), (30.4, 5.1), (31.9, 48.2), (5.7, 50.3)]]),
    2052: (205, 18, [[(38.6, 20.2), (68.1, 22.7), (66.4, 51.9), (40.3, 49.5)]]),
    2061: (206, 47, [[(6.5, 8.5), (33.5, 9.5), (32.5, 47.5), (7.5, 46.5)]]),
    2071: (207, 3, [[(2.6, 30.4), (28.8, 29.3), (29.5, 57.7), (3.3, 58.1)]]),
    2072: (207, 2, [[(33.3, 4.4), (57.2, 5.8), (56.6, 33.9), (34.7, 32.2)]]),
}

# (ref_id, ann_id, split, sentences)
REFS: list[tuple[int, int, str, list[str]]] = [
    (11, 2011, "val", ["man in a red shirt on the left",
                       "the person standing near the window"]),
    (12, 2012, "val", ["brown dog lying on the floor next to the sofa while a small child in a "
                       "striped shirt looks at it from behind the old wooden chair"]),
    (13, 2021, "val", ["white cup",
                       "a white coffee cup with a blue handle sitting on a wooden table beside a "
                       "plate of fresh cookies"]),
    (14, 2031, "val", ["the green car", "green car parked in front of the tall brick building "
                                        "on the corner of the busy street near the old train "
                                        "station today"]),
    (15, 2032, "val", ["bicycle parked on the right side of the street"]),
    (16, 2041, "val", ["a cat", "small grey cat sleeping"]),
    (21, 2051, "train", ["woman holding an umbrella", "person on the left"]),
    (22, 2052, "train", ["black dog", "dog sitting on the right"]),
    (23, 2061, "train", ["a glass of water"]),
    (24, 2071, "train", ["red car on the left"]),
    (25, 2072, "train", ["bike leaning against the wall", "the bicycle"]),
]


def _image(image_id: int, width: int, height: int) -> np.ndarray:
    """Smooth random colour fields with two flat rectangles: [H, W, 3] uint8."""
    rng = np.random.default_rng(image_id)
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    pixels = field.astype(np.int16) + rng.integers(-12, 13, size=(height, width, 3))
    for _ in range(2):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(5, width // 2)), y0 + int(rng.integers(5, height // 2))
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=3)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _file_name(image_id: int, suffix: str = ".png") -> str:
    return f"COCO_train2014_{image_id:012d}{suffix}"


def write_reference_refer(root: str | Path, image_format: str = "png") -> dict[str, Any]:
    """Write the data set under `root` (refbench layout); returns {"root", "refs", "images"}.

    ``image_format="jpg"`` writes the images as JPEG (quality 95) named ``.jpg``, as COCO's
    are: PCNet's loader derives its mask file names from ``.jpg`` names.
    """
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', not {image_format!r}")
    suffix = f".{image_format}"
    root = Path(root)
    data = root / DATASET
    images_dir = root / "images" / "train2014"
    data.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for image_id, (width, height) in IMAGES.items():
        name = _file_name(image_id, suffix)
        save = {"quality": 95} if image_format == "jpg" else {}
        Image.fromarray(_image(image_id, width, height)).save(images_dir / name, **save)
        images.append({"id": image_id, "file_name": name, "width": width,
                       "height": height})
    annotations = []
    for ann_id, (image_id, category_id, polygons) in ANNOTATIONS.items():
        flat = [[float(v) for corner in polygon for v in corner] for polygon in polygons]
        xs = [x for polygon in polygons for x, _ in polygon]
        ys = [y for polygon in polygons for _, y in polygon]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id,
                            "segmentation": flat, "bbox": [round(v, 2) for v in box],
                            "area": round(box[2] * box[3] * 0.8, 2), "iscrowd": 0})
    categories = [{"id": cid, "name": name, "supercategory": name}
                  for cid, name in CATEGORIES.items()]
    (data / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    refs = []
    sent_id = 900
    for ref_id, ann_id, split, sentences in REFS:
        image_id, category_id, _ = ANNOTATIONS[ann_id]
        rows = []
        for text in sentences:
            sent_id += 1
            rows.append({"sent_id": sent_id, "sent": text, "raw": text, "tokens": text.split()})
        refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id,
                     "category_id": category_id, "split": split, "sentences": rows,
                     "sent_ids": [r["sent_id"] for r in rows],
                     "file_name": _file_name(image_id, suffix)})
    with open(data / f"refs({SPLIT_BY}).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return {"root": root, "refs": refs, "images": images}


def official_layout(root: str | Path, dest: str | Path) -> Path:
    """Link `root`'s files where the refer API of TRIS/PCNet reads them; returns `dest`."""
    root, dest = Path(root).resolve(), Path(dest)
    (dest / "refer").mkdir(parents=True, exist_ok=True)
    for link, target in ((dest / "refer" / DATASET, root / DATASET),
                         (dest / "train2014", root / "images" / "train2014")):
        if not link.exists():
            os.symlink(target, link)
    return dest


# --- PCNet's own files: LLM phrases and SAM masks, in the layout its released loader reads ---

# umd ref id -> the google-split ref id its phrase file is named by (refcocog/umd_2_google_ref.npy)
GOOGLE_REF_IDS: dict[int, int] = {ref_id: 7000 + 3 * ref_id for ref_id, *_ in REFS}
# Refs whose phrase file lists its sentences in the reverse order of the refs file: the
# released loader pairs phrases with sentences by position, not by the sentence-id keys.
REVERSED_PHRASE_FILES = (13,)
NUM_PHRASES = 5
NUM_MASKS = 40
CANDIDATE_FILE = f"{SPLIT_BY}_candidate_2_4_6_8.npy"


def phrases_of(sentence: str, index: int) -> list[str]:
    """Five deterministic phrases of a sentence (short spans of its words, then the sentence)."""
    words = sentence.split()
    spans = [" ".join(words[: 1 + k]) for k in range(NUM_PHRASES - 1)]
    spans = [f"{span} ({index})" for span in spans]
    return [*spans, sentence][:NUM_PHRASES]


def _polygon_mask(width: int, height: int, polygons: list[list[tuple[float, float]]]) -> np.ndarray:
    from PIL import ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon([(float(x), float(y)) for x, y in polygon], fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def sam_masks_of(image_id: int) -> np.ndarray:
    """[40, H, W] uint8 masks of one image: its objects, random boxes, an empty mask at index 5
    and empty padding from index 30 (the released files are zero-padded to 40)."""
    width, height = IMAGES[image_id]
    rng = np.random.default_rng(1000 + image_id)
    masks = np.zeros((NUM_MASKS, height, width), dtype=np.uint8)
    objects = [_polygon_mask(width, height, polys)
               for ann_id, (img, _, polys) in ANNOTATIONS.items() if img == image_id]
    k = 0
    for index in range(30):
        if index == 5:
            continue  # an empty mask inside the list: indices after it must not shift
        if k < len(objects) and index in (1, 3, 8):
            masks[index] = objects[k]
            k += 1
            continue
        x0, y0 = int(rng.integers(0, width - 4)), int(rng.integers(0, height - 4))
        x1 = x0 + int(rng.integers(3, max(4, width - x0)))
        y1 = y0 + int(rng.integers(3, max(4, height - y0)))
        masks[index, y0:y1, x0:x1] = 1
    return masks


def write_pcnet_files(root: str | Path) -> dict[str, Any]:
    """PCNet's phrase and SAM files for the data set `write_reference_refer(root, "jpg")` wrote.

    Under ``<root>/refcocog/`` (``refer/refcocog/`` in PCNet's layout):
    - ``Mistral_7B_Ref_Sents/<google ref id>.json``: {sent id: five phrases}, one per ref, and
      ``<umd ref id>.json`` decoys with other phrases (the released loader opens both);
    - ``umd_2_google_ref.npy``: the pickled {umd ref id: google ref id} dict;
    - ``SAM_Mask/SAM_out/<image stem>.npy``: [40, H, W] uint8 masks per image;
    - ``SAM_Mask/umd_candidate_2_4_6_8.npy``: the pickled {ref id: {"sam_mask_path",
      "clip_score" [n_sentences, 40] float32, "candidate_2" [n_sentences, 40] float32}} dict.
    Returns {"phrases": {(ref_id, sentence index): phrases}, "clip_scores": {ref_id: array}}.
    """
    data = Path(root) / DATASET
    phrase_dir = data / "Mistral_7B_Ref_Sents"
    sam_dir = data / "SAM_Mask"
    (sam_dir / "SAM_out").mkdir(parents=True, exist_ok=True)
    phrase_dir.mkdir(parents=True, exist_ok=True)
    paired: dict[tuple[int, int], list[str]] = {}
    candidates: dict[int, dict[str, Any]] = {}
    sent_id = 900
    for ref_id, ann_id, _, sentences in REFS:
        image_id = ANNOTATIONS[ann_id][0]
        entries = []
        for index, text in enumerate(sentences):
            sent_id += 1
            entries.append((str(sent_id), phrases_of(text, index)))
        ordered = entries[::-1] if ref_id in REVERSED_PHRASE_FILES else entries
        for index, (_, phrases) in enumerate(ordered):
            paired[(ref_id, index)] = phrases  # the released loader's pairing: by position
        (phrase_dir / f"{GOOGLE_REF_IDS[ref_id]}.json").write_text(json.dumps(dict(ordered)))
        # The released loader opens <umd ref id>.json too before it applies the map (in the
        # real folder that name belongs to another google ref): a decoy with other phrases.
        decoy = {key: [f"decoy {n} of {ref_id}" for n in range(NUM_PHRASES)]
                 for key, _ in entries}
        (phrase_dir / f"{ref_id}.json").write_text(json.dumps(decoy))
        rng = np.random.default_rng(ref_id)
        scores = rng.uniform(0.05, 0.35, size=(len(sentences), NUM_MASKS)).astype(np.float32)
        stem = Path(_file_name(image_id)).stem
        candidates[ref_id] = {
            "sam_mask_path": f"/data/coco/refer/{DATASET}/SAM_Mask/SAM_out/{stem}.npy",
            "clip_score": scores,
            "candidate_2": (scores >= np.sort(scores, axis=1)[:, -2:-1]).astype(np.float32),
        }
    for image_id in IMAGES:
        np.save(sam_dir / "SAM_out" / f"{Path(_file_name(image_id)).stem}.npy",
                sam_masks_of(image_id))
    np.save(sam_dir / CANDIDATE_FILE, candidates, allow_pickle=True)
    np.save(data / "umd_2_google_ref.npy", GOOGLE_REF_IDS, allow_pickle=True)
    return {"phrases": paired, "clip_scores": {r: c["clip_score"] for r, c in candidates.items()}}
