"""Throughput of refbench.metrics.scoring.score_batch on CPU (prints expressions/s).

Setting: 640x480 originals, response maps of 32x32 and 40x40, 3 expressions per image,
no proposals (the brief's target is >= 500 expressions/s on 2 CPU cores); then the same
with 40 proposals per image for information.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from refbench.metrics.scoring import score_batch


def make_images(count: int, map_size: int, expressions: int, height: int, width: int, seed: int):
    """Random inputs for `count` images: maps, gt masks, boxes, object masks."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        maps = torch.randn(expressions, map_size, map_size, generator=generator)
        gt = torch.zeros(expressions, height, width, dtype=torch.bool)
        boxes = torch.zeros(expressions, 4)
        for e in range(expressions):
            y0, x0 = torch.randint(0, height // 2, (1,)).item(), torch.randint(0, width // 2, (1,)).item()
            h, w = height // 3, width // 3
            gt[e, y0 : y0 + h, x0 : x0 + w] = True
            boxes[e] = torch.tensor([x0, y0, w, h], dtype=torch.float32)
        images.append((maps, gt, boxes, gt.clone()))
    return images


def run(images, height, width, protocol, proposals=None) -> tuple[float, float]:
    """Expressions per wall-clock second and per CPU second (all threads) over `images`."""
    wall, cpu = time.perf_counter(), time.process_time()
    total = 0
    for maps, gt, boxes, objects in images:
        score_batch(maps, height, width, gt, boxes, protocol, proposals=proposals, object_masks=objects)
        total += maps.shape[0]
    return total / (time.perf_counter() - wall), total / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width, expressions = 480, 640, 3
    target = 500.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {height}x{width} images")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall rates need an idle machine)")
    for protocol in ("tris", "sag"):
        for map_size in (32, 40):
            images = make_images(args.images, map_size, expressions, height, width, seed=map_size)
            run(images[:5], height, width, protocol)  # warm-up
            rate, cpu_rate = run(images, height, width, protocol)
            print(
                f"protocol={protocol} maps={map_size}x{map_size} no proposals: "
                f"{rate:8.1f} expressions/s wall ({rate / target:.2f}x the 500/s target), "
                f"{cpu_rate:8.1f} per CPU-second"
            )
    proposals = torch.rand(40, height, width, generator=torch.Generator().manual_seed(0)) > 0.9
    images = make_images(max(args.images // 10, 5), 32, expressions, height, width, seed=1)
    rate, cpu_rate = run(images, height, width, "tris", proposals=proposals)
    print(
        f"protocol=tris maps=32x32 with 40 proposals: {rate:8.1f} expressions/s wall, "
        f"{cpu_rate:8.1f} per CPU-second"
    )


if __name__ == "__main__":
    main()
