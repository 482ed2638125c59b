"""Training throughput: samples/s and peak memory of the generic trainer for one model.

    PYTHONPATH=. python benchmarks/bench_train.py --model pcnet --set input_size=320 \
        --batch-size 36 --steps 20 --device cuda
    PYTHONPATH=. python benchmarks/bench_train.py --model tests.test_train_trainer:TinyModel

`--model` is a registered name or ``module:Class``. The data are random images in memory (no
data set needed), each with `--objects` referred objects of two sentences, so the figure is
the model's and the trainer's cost, not the disk's. Peak memory: max RSS of the process on
CPU (includes the interpreter and torch), `torch.cuda.max_memory_allocated` on CUDA.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import tempfile

import numpy as np
import torch

from refbench.data.refer import Ref, Sentence


class RandomImages:
    """An in-memory stand-in for a refer split: random images, `objects` refs per image.

    It also stands in for the cue cache (each sentence's cumulative word prefixes) and the
    proposal store (`load` gives P random rectangles), so models that read cues and proposals,
    such as PCNet, are measured too.
    """

    WORDS = ("red", "blue", "left", "right", "man", "dog", "chair", "small", "big", "near")

    def __init__(self, num_images: int, objects: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.image_ids = list(range(num_images))
        self._images = {i: rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                        for i in self.image_ids}
        self._refs = {}
        self.cues: dict[str, tuple[str, ...]] = {}
        self.num_proposals = 40
        sent = 0
        for i in self.image_ids:
            refs = []
            for j in range(objects):
                words = rng.choice(self.WORDS, size=(2, 4))
                sentences = tuple(
                    Sentence(sent + k, " ".join(w), {}) for k, w in enumerate(words)
                )
                sent += 2
                refs.append(Ref(i * 100 + j, i * 100 + j, i, 1, "train", sentences))
                for sentence in sentences:
                    words_of = sentence.text.split()
                    key = f"{i}:{i * 100 + j}:{sentence.sent_id}"
                    self.cues[key] = tuple(" ".join(words_of[: n + 1]) for n in range(4))
            self._refs[i] = refs

    def refs_of_image(self, image_id: int) -> list:
        return self._refs[image_id]

    def load_image(self, image_id: int) -> np.ndarray:
        return self._images[image_id]

    def load(self, image_id: int, size: tuple[int, int]) -> torch.Tensor:
        """P random rectangles [P, H, W] bool, as a proposal store returns them."""
        generator = torch.Generator().manual_seed(image_id)
        height, width = size
        corners = torch.rand(self.num_proposals, 4, generator=generator)
        ys, xs = torch.arange(height)[:, None] / height, torch.arange(width)[None, :] / width
        top, bottom = corners[:, 0].minimum(corners[:, 1]), corners[:, 0].maximum(corners[:, 1])
        left, right = corners[:, 2].minimum(corners[:, 3]), corners[:, 2].maximum(corners[:, 3])
        return ((ys >= top[:, None, None]) & (ys <= bottom[:, None, None])
                & (xs >= left[:, None, None]) & (xs <= right[:, None, None]))


def model_class(name: str) -> type:
    """A registered model's class, or ``module:Class``."""
    if ":" in name:
        module, attribute = name.split(":")
        return getattr(importlib.import_module(module), attribute)
    from refbench.registry import get_model_class

    return get_model_class(name)


def main() -> None:
    """Train `--steps` steps after `--warmup` and print samples/s and peak memory."""
    from refbench.train.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", default=None, help="JSON file of config overrides")
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()

    overrides = json.load(open(args.config)) if args.config else {}
    for pair in args.pairs:
        key, _, raw = pair.partition("=")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    cls = model_class(args.model)
    if "warmup_steps" in cls.default_config():
        overrides.setdefault("warmup_steps", 0)  # a short timed run is shorter than a warm-up
    torch.manual_seed(0)
    model = cls.from_config(overrides)
    batch = int(model.config["batch_size"])
    steps = args.warmup + args.steps
    dataset = RandomImages(batch * steps, args.objects, args.image_size)
    dataset.num_proposals = max(1, int(model.config.get("num_proposals", 0)))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, dataset, out_dir=out, device=args.device, epochs=1,
                          max_steps=steps, num_workers=args.num_workers, progress=False,
                          checkpoint_every=None, cues=dataset.cues if model.num_cues else None,
                          proposals=dataset if model.config.get("num_proposals") else None)
        trainer._save = lambda name: None  # checkpoint writing is not what is measured
        trainer.fit()
        from refbench.io import read_jsonl

        records, _ = read_jsonl(f"{out}/train_log.jsonl")
    rates = [r["samples_per_s"] for r in records if r["kind"] == "train"][args.warmup :]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        where = f"GPU {torch.cuda.get_device_name()}"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        where = "CPU (process max RSS)"
    print(f"model {model.name}  batch {batch}  input {model.input_size}  "
          f"N_d {model.config.get('num_distinct', 0)}  device {args.device}  amp {trainer.amp}")
    print(f"steps timed: {len(rates)} (after {args.warmup} warm-up)")
    print(f"samples/s: median {statistics.median(rates):.1f}  mean {statistics.mean(rates):.1f}  "
          f"min {min(rates):.1f}  max {max(rates):.1f}")
    print(f"peak memory: {peak:.1f} MiB on {where}")


if __name__ == "__main__":
    main()
