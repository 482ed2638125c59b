"""Throughput of evaluation: the metric pipeline, and grouped vs per-sentence encoding.

1. Metric pipeline: a null model returning random maps [E, 10, 10]; each image's maps are
   scored at the 640x480 original size (resize, normalise, peak, mask, I/U, hits, background
   peak) and written to predictions.jsonl. Target: >= 500 expressions/s on 2 CPU cores.
2. An image encoder that dominates the cost: open_clip's RN50 visual trunk with random weights
   at 320x320 (dense features [2048, 10, 10], a random 1x1 projection to 1024) against a text
   side that is only the mean of a random embedding table over hashed words. The same images
   and sentences are evaluated (a) by the grouped runner, each image encoded once per batch,
   and (b) by a per-sentence loop (batch 1, the image encoded for every sentence, as TRIS's
   validate.py does). Target: grouped / per-sentence >= 0.8 x sentences per image.

Data are synthetic and held in memory: 640x480 images, 5 rectangular objects each, 3
sentences per image. Run: PYTHONPATH=. python benchmarks/bench_eval.py [--images N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from refbench.api import Batch, Expression, Prediction, RISModel
from refbench.data.splits import get_split
from refbench.data.transforms import ModelImageTransform
from refbench.eval.runner import ImageGroups, Scorer, collate_groups, evaluate
from refbench.io import append_jsonl

HEIGHT, WIDTH = 480, 640
OBJECTS_PER_IMAGE = 5
SENTENCES_PER_IMAGE = 3


class MemoryReferData:
    """In-memory stand-in for a refer split: the methods the runner reads, nothing more."""

    def __init__(self, num_images: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.info = get_split("refcocog-val-g")
        self.data_root = Path("<memory>")
        self.image_ids = list(range(1, num_images + 1))
        self._images: dict[int, np.ndarray] = {}
        self._boxes: dict[int, tuple[float, float, float, float]] = {}
        self._anns: dict[int, list[int]] = {}
        self._groups: dict[int, list[Expression]] = {}
        words = ["left", "right", "red", "blue", "big", "small", "dog", "man", "cup", "car"]
        for image_id in self.image_ids:
            self._images[image_id] = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            ann_ids = []
            for k in range(OBJECTS_PER_IMAGE):
                ann_id = image_id * 100 + k
                x, y = int(rng.integers(0, WIDTH // 2)), int(rng.integers(0, HEIGHT // 2))
                w, h = int(rng.integers(20, WIDTH // 2)), int(rng.integers(20, HEIGHT // 2))
                self._boxes[ann_id] = (x, y, w, h)
                ann_ids.append(ann_id)
            self._anns[image_id] = ann_ids
            self._groups[image_id] = [
                Expression(" ".join(rng.choice(words, 3)), image_id, ann_ids[s % 2] // 1,
                           ann_ids[s % 2], image_id * 10 + s)
                for s in range(SENTENCES_PER_IMAGE)
            ]

    def expressions_by_image(self, sentences: str = "all") -> dict[int, list[Expression]]:
        return {i: list(g[:1] if sentences == "first" else g) for i, g in self._groups.items()}

    def load_image(self, image_id: int) -> np.ndarray:
        return self._images[image_id]

    def annotation_ids(self, image_id: int) -> list[int]:
        return list(self._anns[image_id])

    def mask(self, ann_id: int, overlap: str = "union") -> np.ndarray:
        """One rectangle per annotation: "union" and "once" give the same mask."""
        x, y, w, h = self._boxes[ann_id]
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        mask[y : y + h, x : x + w] = True
        return mask

    def box(self, ann_id: int) -> tuple[float, float, float, float]:
        return tuple(float(v) for v in self._boxes[ann_id])

    def sentence(self, key: str) -> Any:
        return None

    def metadata(self) -> dict[str, Any]:
        return {"synthetic": "in-memory benchmark data", "num_images": len(self.image_ids)}


class NullModel(RISModel):
    """Random response maps [E, 10, 10]; costs nothing, so only the harness is measured."""

    name = "bench-null"

    def predict(self, batch: Batch) -> Prediction:
        return Prediction(torch.rand(batch.num_expressions, 10, 10))


class RN50DenseModel(RISModel):
    """open_clip RN50 visual trunk (random weights) -> [E, 10, 10] maps at 320x320 input."""

    name = "bench-rn50"

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        import open_clip

        visual = open_clip.create_model("RN50", pretrained=None).visual
        self.trunk = nn.Sequential(
            visual.conv1, visual.bn1, visual.act1, visual.conv2, visual.bn2, visual.act2,
            visual.conv3, visual.bn3, visual.act3, visual.avgpool,
            visual.layer1, visual.layer2, visual.layer3, visual.layer4,
        )
        self.project = nn.Conv2d(2048, 1024, 1)
        self.words = nn.Embedding(4096, 1024)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """[E, 1024]: mean of random word embeddings (hashed ids): deliberately cheap."""
        rows = []
        for text in texts:
            ids = torch.tensor([zlib.crc32(w.encode()) % 4096 for w in text.split()] or [0])
            rows.append(self.words(ids).mean(dim=0))
        return torch.stack(rows)

    def predict(self, batch: Batch) -> Prediction:
        features = self.project(self.trunk(batch.images))  # [B, 1024, 10, 10]
        text = self.encode_text(batch.texts())  # [E, 1024]
        per_expression = features[batch.image_index()]  # [E, 1024, 10, 10]
        return Prediction(torch.einsum("echw,ec->ehw", per_expression, text).relu())


def bench_metric_pipeline(
    data: MemoryReferData, batch_size: int = 8
) -> tuple[float, float, int]:
    """Expressions per wall second and per CPU second of scoring + writing records (640x480).

    The CPU-second figure shows what the wall figure would be on an otherwise idle machine.
    """
    items = ImageGroups(data, list(data.expressions_by_image().items()),
                        ModelImageTransform(32, (0.5,) * 3, (0.5,) * 3))
    batches = [collate_groups([items[i] for i in range(s, min(s + batch_size, len(items)))])
               for s in range(0, len(items), batch_size)]
    scorer = Scorer("tris", save_masks=False)
    model = NullModel()
    count = 0
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "p.jsonl", "a") as handle:
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch, metas in batches:
            prediction = model.predict(batch)
            prediction.check(batch)
            records = scorer(prediction, metas)
            append_jsonl(handle, records)
            count += len(records)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    return count / elapsed, count / cpu, count


def bench_end_to_end_null(data: MemoryReferData) -> float:
    """Expressions/s of the whole runner (image resize included) with the null model."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = evaluate(NullModel(), data, batch_size=8, out_dir=tmp, progress=False)
        return result["n"] / (time.perf_counter() - start)


def per_sentence_loop(model: RISModel, data: MemoryReferData) -> int:
    """TRIS validate.py style: batch 1, the image loaded and encoded for every sentence."""
    from refbench.metrics.scoring import score_batch

    transform = ModelImageTransform.for_model(model.config)
    count = 0
    for image_id, expressions in data.expressions_by_image().items():
        for expression in expressions:
            image = data.load_image(image_id)
            batch = Batch(transform(image)[None], [[expression]])
            with torch.inference_mode():
                prediction = model.predict(batch)
            prediction.check(batch)
            gt = torch.from_numpy(data.mask(expression.ann_id))[None]
            box = torch.tensor([data.box(expression.ann_id)], dtype=torch.float64)
            score_batch(prediction.response_maps, HEIGHT, WIDTH, gt, box, "tris")
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images for the RN50 comparison")
    parser.add_argument("--metric-images", type=int, default=100, help="images for part 1")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch threads: {torch.get_num_threads()}; original size {WIDTH}x{HEIGHT}; "
          f"{SENTENCES_PER_IMAGE} sentences per image")
    data = MemoryReferData(args.metric_images)
    bench_metric_pipeline(MemoryReferData(16, seed=2))  # warm-up: first calls allocate
    runs = [bench_metric_pipeline(data) for _ in range(3)]
    rate, cpu_rate, count = max(runs)
    print(f"[1] metric pipeline (null model, random 10x10 maps, scored at 640x480, jsonl): "
          f"{rate:.0f} expressions/s, best of 3 over {count} expressions (all: "
          f"{', '.join(f'{r[0]:.0f}' for r in runs)}; target >= 500); "
          f"{cpu_rate:.0f} expressions per CPU-second")
    e2e = bench_end_to_end_null(data)
    print(f"    whole runner with the null model (image resize to 320 included): "
          f"{e2e:.0f} expressions/s")

    small = MemoryReferData(args.images, seed=1)
    model = RN50DenseModel().eval()
    print("[2] RN50 visual trunk, random weights, 320x320; text = mean of a random embedding "
          "table (cheap on purpose)")
    with torch.inference_mode():  # warm-up
        model.predict(Batch(torch.zeros(1, 3, 320, 320), [[Expression("warm up")]]))
    # (wall, CPU) expressions per second; CPU seconds are less disturbed by other processes.
    grouped: dict[int, tuple[float, float]] = {}
    for batch_size in (1, 8):
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu_start = time.perf_counter(), time.process_time()
            result = evaluate(model, small, batch_size=batch_size, out_dir=tmp, progress=False)
            grouped[batch_size] = (result["n"] / (time.perf_counter() - start),
                                   result["n"] / (time.process_time() - cpu_start))
    start, cpu_start = time.perf_counter(), time.process_time()
    count = per_sentence_loop(model, small)
    looped = (count / (time.perf_counter() - start), count / (time.process_time() - cpu_start))
    target = 0.8 * SENTENCES_PER_IMAGE
    print(f"    per-sentence loop (batch 1, one encode per sentence): {looped[0]:.2f} "
          f"expressions/s ({looped[1]:.2f} per CPU-second)")
    for batch_size, rate in grouped.items():
        ratio, cpu_ratio = rate[0] / looped[0], rate[1] / looped[1]
        print(f"    grouped runner (batch {batch_size}, one encode per image): {rate[0]:.2f} "
              f"expressions/s ({rate[1]:.2f} per CPU-second); ratio {ratio:.2f}x wall, "
              f"{cpu_ratio:.2f}x CPU vs target >= {target:.2f}x (0.8 x {SENTENCES_PER_IMAGE} "
              f"sentences per image) -> {'met' if ratio >= target else 'NOT met'}")
    print("    (figures on a shared machine vary with its load; rerun on an idle one)")


if __name__ == "__main__":
    main()
