"""Time SynthRef generation: the default data set (or --images N), one worker per core; prints figures.

    PYTHONPATH=. python benchmarks/synth_generation.py [--images 10000] [--variant default]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from refbench.synth import generate, get_variant, stats, synth_info  # noqa: E402


def main() -> None:
    """Generate into a temp folder and print seconds, images per second and the test stats."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=None, help="training images")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    params = get_variant(args.variant)
    images = {"train": args.images} if args.images else None
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        root = generate(Path(folder), seed=args.seed, images=images, variant=args.variant)
        seconds = time.perf_counter() - start
        counts = synth_info(root, args.variant)["counts"]
        size_mb = sum(p.stat().st_size for p in (root / params.dataset).rglob("*") if p.is_file()) / 1e6
        print(f"variant {args.variant}: {counts['images']} images, {counts['refs']} refs, "
              f"{counts['sentences']} sentences in {seconds:.1f} s "
              f"({counts['images'] / seconds:.0f} images/s), {size_mb:.1f} MB on disk")
        for split in ("val", "test"):
            result = stats(root, f"{params.split_prefix}-{split}")
            print(f"{params.split_prefix}-{split}: {result['images']} images, "
                  f"{result['sentences']} sentences")
        print(json.dumps(stats(root, f"{params.split_prefix}-test"), indent=1))


if __name__ == "__main__":
    main()
