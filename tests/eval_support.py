"""Test helpers for the evaluation runner: a tiny refer data set and test-only model plugins.

The models are registered the way a third-party plugin is: a package plus a ``.dist-info``
folder with an entry point, put on ``sys.path`` (in-process) or ``PYTHONPATH`` (subprocess).
"""

from __future__ import annotations

import json
import os
import pickle
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.plugin_fixture import write_plugin

SPLIT = "refcocog-val-g"
REPO = Path(__file__).resolve().parents[1]


def subprocess_env(plugin_dir: Path) -> dict[str, str]:
    """The environment of a refbench subprocess that sees this checkout and a test plugin:
    one torch thread, no progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(plugin_dir)])
    env["REFBENCH_NO_PROGRESS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env

MODEL_SOURCE = '''
import time
import zlib

import torch

from refbench.api import Batch, Prediction, RISModel


class KeySeededModel(RISModel):
    """A random [grid, grid] map per expression, seeded by its key: independent of batching."""

    name = "evaltest"

    @classmethod
    def default_config(cls):
        config = super().default_config()
        config.update({"input_size": 32, "grid": 8, "sleep": 0.0, "nan_word": "",
                       "stages": 0, "allow_random_weights": False})
        return config

    def __init__(self, config=None):
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.images_encoded = 0
        self.predict_calls = 0

    def predict(self, batch: Batch) -> Prediction:
        assert batch.images.shape[1:] == (3, self.input_size, self.input_size)
        self.images_encoded += batch.images.shape[0]
        self.predict_calls += 1
        grid = int(self.config["grid"])
        maps = []
        for expression in batch.flat_expressions:
            generator = torch.Generator().manual_seed(zlib.crc32(expression.key.encode()))
            response = torch.randn(grid, grid, generator=generator)
            word = self.config["nan_word"]
            if word and word in expression.text:
                response[0, 0] = float("nan")
            maps.append(response)
        if self.config["sleep"]:
            time.sleep(float(self.config["sleep"]))
        response_maps = torch.stack(maps).to(batch.images.device) * self.scale
        stage_maps = None
        if self.config["stages"]:
            stage_maps = torch.stack(
                [response_maps.roll(s, dims=-1) for s in range(int(self.config["stages"]))], dim=1
            )
        return Prediction(response_maps=response_maps, stage_maps=stage_maps)


class OtherModel(KeySeededModel):
    name = "evalother"
'''

ENTRY_POINTS = {
    "evaltest": "evaltest_plugin:KeySeededModel",
    "evalother": "evaltest_plugin:OtherModel",
}


def write_model_plugin(root: Path) -> Path:
    """Write the test-only plugin distribution ``evaltest-plugin`` under `root`."""
    return write_plugin(root, "evaltest-plugin", "0.0.1", "evaltest_plugin", ENTRY_POINTS,
                        MODEL_SOURCE)


def expression_map(key: str, grid: int = 8) -> torch.Tensor:
    """The test model's response map for `key` [grid, grid], computed independently."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.randn(grid, grid, generator=generator)


def write_refer(root: Path, num_images: int = 6, seed: int = 0) -> dict:
    """A tiny refcocog (google) data set in refer format: rectangles, 1-3 sentences per ref.

    Images are 40-64 px, each with 3 rectangular objects of which 2 are referred to in the
    val split (plus one train ref that val must not include).
    """
    rng = np.random.default_rng(seed)
    folder = root / "refcocog"
    image_dir = root / "images" / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    ann_id, ref_id, sent_id = 100, 0, 1000
    words = ["left", "right", "red", "blue", "big", "small", "dog", "man", "cup", "car"]
    for index in range(num_images):
        image_id = 10 + index
        height, width = int(rng.integers(40, 64)), int(rng.integers(40, 64))
        file_name = f"COCO_train2014_{image_id:012d}.png"
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for obj in range(3):
            x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            w, h = int(rng.integers(5, width // 2)), int(rng.integers(5, height // 2))
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append(
                {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h],
                 "segmentation": [polygon], "area": w * h, "iscrowd": 0}
            )
            split = "val" if obj < 2 else "train"
            sentences = []
            for _ in range(int(rng.integers(1, 4))):
                text = " ".join(rng.choice(words, size=3))
                sentences.append({"sent_id": sent_id, "sent": text, "raw": text})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id,
                         "category_id": 1, "split": split, "sentences": sentences,
                         "sent_ids": [s["sent_id"] for s in sentences]})
            ann_id += 1
            ref_id += 1
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": 1, "name": "thing"}]}
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(google).p", "wb") as handle:
        pickle.dump(refs, handle)
    return {"images": images, "annotations": annotations, "refs": refs}


def reference_records(data: dict, sentences: str = "all", grid: int = 8) -> list[dict]:
    """Per-sentence reference (TRIS protocol) with NumPy: peak, hits, I and U per expression.

    TRIS's validate.py: ReLU'd map, bilinear resize with align_corners=True, divided by
    max + 1e-5, mask = map > 1e-9, peak = first argmax, Box Hit on the integer box. Every
    annotation here is one polygon, so the union and "covered once" ground truths agree.
    """
    from pycocotools import mask as mask_utils

    images = {image["id"]: image for image in data["images"]}
    anns = {ann["id"]: ann for ann in data["annotations"]}
    out = []
    for ref in data["refs"]:
        if ref["split"] != "val":
            continue
        image = images[ref["image_id"]]
        height, width = image["height"], image["width"]
        ann = anns[ref["ann_id"]]
        rle = mask_utils.frPyObjects(ann["segmentation"], height, width)
        gt = mask_utils.decode(mask_utils.merge(rle)).astype(bool)
        chosen = ref["sentences"][:1] if sentences == "first" else ref["sentences"]
        for sentence in chosen:
            key = f"{ref['image_id']}:{ref['ref_id']}:{sentence['sent_id']}"
            response = expression_map(key, grid).clamp(min=0)[None, None]
            resized = torch.nn.functional.interpolate(
                response, size=(height, width), mode="bilinear", align_corners=True
            )[0, 0].numpy().astype(np.float64)
            normalised = resized / (resized.max() + 1e-5)
            predicted = normalised > 1e-9
            y, x = np.unravel_index(int(np.argmax(normalised)), normalised.shape)
            # TRIS's box: x, y, w, h each cast to int, the edges included (isCorrectHit)
            x1, y1, iw, ih = np.array(ann["bbox"], dtype=int)
            on_any = False
            for other in data["annotations"]:
                if other["image_id"] == ref["image_id"]:
                    poly = mask_utils.frPyObjects(other["segmentation"], height, width)
                    on_any |= bool(mask_utils.decode(mask_utils.merge(poly))[y, x])
            out.append({
                "key": key, "peak": [int(y), int(x)], "point_hit": bool(gt[y, x]),
                "box_hit": bool(x1 <= x <= x1 + iw and y1 <= y <= y1 + ih),
                "inter": int((predicted & gt).sum()), "union": int((predicted | gt).sum()),
                "on_background": not on_any,
                "mask": predicted,
            })
    return out
