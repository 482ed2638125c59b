"""Train PCNet (small preset) on SynthRef on CPU and print PointM overall, per template and the
share of peaks on the background (the figures of docs/reports/2026-12-01-synthref-pcnet-study.md).

    PYTHONPATH=$PWD:$PWD/plugins/pcnet python plugins/pcnet/benchmarks/synthref_learning.py \
        --seed 0 --epochs 3 --train-images 4000 --set num_stages=1 ras=false iad=false

Needs template cues and felzenszwalb proposals (P = 40, SynthRef's default min_area) built for
synth-train and the evaluated split. Appends one JSON line per run to --results.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from refbench_pcnet.model import PCNet

from refbench.api import Batch
from refbench.cues import load_cues
from refbench.data.refer import ReferDataset
from refbench.data.transforms import ModelImageTransform
from refbench.metrics.scoring import score_batch
from refbench.proposals import ProposalStore, default_options, get_backend
from refbench.synth import compatibility, ensure_synthref
from refbench.train import Trainer

TEMPLATES = ("attribute", "position", "superlative", "relation")


def parse_value(text: str) -> object:
    """JSON for numbers, booleans and null; the plain string otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class ObjectMasks:
    """Proposals that are exactly the image's object masks (for the --proposals objects run)."""

    def __init__(self, dataset: ReferDataset) -> None:
        self.dataset = dataset

    def load(self, image_id: int, size: tuple[int, int]) -> torch.Tensor:
        masks = torch.stack([torch.as_tensor(self.dataset.mask(a)).bool()
                             for a in self.dataset.annotation_ids(image_id)])
        resized = torch.nn.functional.interpolate(masks[:, None].float(), size=size,
                                                  mode="nearest")[:, 0]
        return resized > 0.5


def peak_object(scene: list[dict], masks: list[np.ndarray], peak: list[int]) -> dict | None:
    """The scene object whose mask holds the peak [y, x], or None (background)."""
    for obj, mask in zip(scene, masks):
        if mask[peak[0], peak[1]]:
            return obj
    return None


def matches(obj: dict, descriptor: dict | None) -> bool:
    """Whether a scene object has every attribute the descriptor names."""
    return descriptor is not None and all(
        obj[key] == value for key, value in descriptor.items() if value is not None
    )


def where_peaks_land(records: list[dict]) -> dict[str, float]:
    """Shares of sentences whose peak is on the target, on another object that the target
    phrase also describes (a look-alike), on the relation's anchor, elsewhere, or on the
    background."""
    counts = {"target": 0, "lookalike": 0, "anchor": 0, "other": 0, "background": 0}
    for r in records:
        obj, meaning = r["peak_object"], r["meaning"]
        if obj is None:
            counts["background"] += 1
        elif obj["ann_id"] == r["ann_id"]:
            counts["target"] += 1
        elif matches(obj, meaning["target"]):
            counts["lookalike"] += 1
        elif matches(obj, meaning.get("anchor")):
            counts["anchor"] += 1
        else:
            counts["other"] += 1
    return {k: round(v / max(1, len(records)), 3) for k, v in counts.items()}


def evaluate(model: PCNet, dataset: ReferDataset) -> dict[str, float]:
    """PointM overall and per template, the share of peaks off every object, and where the
    peaks of each template land (target, look-alike, anchor, other object, background)."""
    scenes = json.loads((dataset.instances_path.parent / "scenes.json").read_text())
    model.eval()
    transform = ModelImageTransform.for_model(model.config)
    records = []
    for image_id, expressions in dataset.expressions_by_image("all").items():
        image = dataset.load_image(image_id)
        height, width = image.shape[:2]
        pixels = transform(image)[None]
        maps = model.predict(Batch(pixels, [expressions])).response_maps
        gt = torch.stack([torch.as_tensor(dataset.mask(e.ann_id)).bool() for e in expressions])
        boxes = torch.tensor([dataset.box(e.ann_id) for e in expressions], dtype=torch.float)
        objects = torch.stack(
            [torch.as_tensor(dataset.mask(a)).bool() for a in dataset.annotation_ids(image_id)]
        )
        scored = score_batch(maps, height, width, gt, boxes, "tris", object_masks=objects)
        ann_ids = dataset.annotation_ids(image_id)
        by_ann = {o["ann_id"]: o for o in scenes["objects"][str(image_id)]}
        scene = [by_ann[a] for a in ann_ids]
        masks = [m.numpy() for m in objects]
        for expression, record in zip(expressions, scored):
            record["template"] = dataset.sentence(expression.key).extra.get("template")
            record["meaning"] = scenes["meanings"][str(expression.sent_id)]
            record["ann_id"] = expression.ann_id
            record["peak_object"] = peak_object(scene, masks, record["peak"])
            records.append(record)

    def point_m(rows: list[dict]) -> float:
        return round(float(np.mean([r["point_hit"] for r in rows])), 3) if rows else float("nan")

    result = {"n": len(records), "PointM": point_m(records),
              "background": round(float(np.mean([r["on_background"] for r in records])), 3)}
    for template in TEMPLATES:
        result[template] = point_m([r for r in records if r["template"] == template])
    result["peaks"] = {t: where_peaks_land([r for r in records if r["template"] == t])
                       for t in TEMPLATES}
    return result


def main() -> None:
    """Parse options, train, evaluate, print and append one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--eval-split", default="synth-val")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--false-negatives", action="store_true")
    parser.add_argument(
        "--proposals", choices=("felzenszwalb", "objects"), default="felzenszwalb",
        help="objects: every object's ground-truth mask, class-agnostic (a perfect-SAM stand-in "
        "that shows how much RaS/IaD depend on proposal quality; not weak supervision)",
    )
    parser.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    parser.add_argument("--out", default="/tmp/pcnet-synthref")
    parser.add_argument("--results", default="/tmp/pcnet-synthref/results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}

    root = ensure_synthref()
    train = ReferDataset(root, "synth-train")
    train.image_ids = train.image_ids[: args.train_images]
    torch.manual_seed(args.seed)
    model = PCNet({"preset": "small", **overrides})
    proposals = None
    if int(model.config["num_proposals"]):
        if args.proposals == "objects":
            proposals = ObjectMasks(train)
        else:
            engine = get_backend("felzenszwalb", max_proposals=40,
                                 **default_options("felzenszwalb", True))
            proposals = ProposalStore(train, "felzenszwalb", engine.config())
    false_negatives = None
    if args.false_negatives:
        def false_negatives(expressions, image_ids):  # noqa: ANN001, ANN202
            return compatibility(root, [e.key for e in expressions], list(image_ids))
    out = os.path.join(args.out, f"seed{args.seed}")
    trainer = Trainer(model, train, out_dir=out, epochs=args.epochs, seed=args.seed,
                      cues=load_cues(train, "template", 5), proposals=proposals,
                      false_negatives=false_negatives, progress=False, log_every=10)
    start = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "train_log.jsonl")) as handle:
        rates = [r for r in (json.loads(line).get("samples_per_s") for line in handle) if r]
    result = {"set": overrides, "seed": args.seed, "proposals": args.proposals, "steps": summary["step"],
              "train_s": round(seconds, 1),
              "samples_per_s": round(float(np.mean(rates)), 1) if rates else None,
              "split": args.eval_split,
              **evaluate(model, ReferDataset(root, args.eval_split))}
    print(json.dumps(result))
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
