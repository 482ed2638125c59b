"""Did a model learn which way a direction word points? Per run on a SynthRef split, for every
position, superlative and relation word: of the sentences whose peak lands on an object the
target phrase describes (the target or its look-alike), the share on the target.

    PYTHONPATH=$PWD python plugins/pcnet/benchmarks/synthref_directions.py \
        runs/ablations/eval/*/synth-test/*/*/*/predictions.jsonl

A model that reads colour and shape but no direction scores about 50% on position words (two
look-alikes) and less on superlatives; one that learned a direction scores high on both words
of a pair ("left" and "right"), and one that learned it mirrored scores low on both. A high
share on one word and a low one on its opposite is a side bias, not a direction.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from synthref_learning import matches

from refbench.data.refer import ReferDataset
from refbench.data.splits import get_split
from refbench.synth import ensure_synthref

WORDS = {"position": ("left", "right", "top", "bottom"),
         "superlative": ("left", "right", "top", "bottom"),
         "relation": ("left of", "right of", "above", "below")}


def direction_shares(records: list[dict], dataset: ReferDataset, scenes: dict,
                     masks: dict[int, dict[int, object]]
                     ) -> dict[tuple[str, str], tuple[int, int]]:
    """(template, word) -> (peaks on the target, peaks on a described object).

    `masks` caches each image's object masks across calls (image id -> ann id -> mask).
    """
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for record in records:
        meaning = scenes["meanings"][str(record["sent_id"])]
        if meaning["template"] not in WORDS:
            continue
        image_id = int(record["image_id"])
        if image_id not in masks:
            masks[image_id] = {a: dataset.mask(a) for a in dataset.annotation_ids(image_id)}
        y, x = record["peak"]
        under = [a for a, mask in masks[image_id].items() if mask[y, x]]
        objects = {o["ann_id"]: o for o in scenes["objects"][str(image_id)]}
        key = (meaning["template"], meaning["word"])
        if under and under[0] == record["ann_id"]:
            counts[key]["target"] += 1
        elif under and matches(objects[under[0]], meaning["target"]):
            counts[key]["lookalike"] += 1
    return {k: (c["target"], c["target"] + c["lookalike"]) for k, c in counts.items()}


def main() -> None:
    """Print one line per predictions file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="predictions.jsonl files")
    parser.add_argument("--split", default="synth-test")
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    root = ensure_synthref(args.data_root)
    dataset = ReferDataset(root, get_split(args.split))
    scenes = json.loads((dataset.instances_path.parent / "scenes.json").read_text())
    masks: dict[int, dict[int, object]] = {}
    for path in args.predictions:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        shares = direction_shares(records, dataset, scenes, masks)
        cells = []
        for template, words in WORDS.items():
            for word in words:
                hit, seen = shares.get((template, word), (0, 0))
                cells.append(f"{template[:3]} {word}: {100 * hit / max(1, seen):.0f}% of {seen}")
        print(f"{path}\n  " + " | ".join(cells))


if __name__ == "__main__":
    main()
