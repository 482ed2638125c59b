"""Throughput of proposals: the felzenszwalb backend, and loading cache -> [40, 320, 320] tensor.

Run: PYTHONPATH=$PWD python benchmarks/bench_proposals.py [--images 8] [--loads 400] [--threads 2]
Images are scikit-image sample photos resized to 640x480 (COCO's typical size). Loading must not
be the training bottleneck: the target is >= 200 images/s on 2 cores at 320x320.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

TARGET_LOADS_PER_S = 200.0


@dataclass
class _Info:
    id: str = "bench"
    dataset: str = "bench"
    split_by: str = "photos"


@dataclass
class _Photos:
    images: dict
    info: _Info = field(default_factory=_Info)

    @property
    def image_ids(self) -> list:
        return sorted(self.images)

    def image_info(self, image_id):
        h, w = self.images[image_id].shape[:2]
        return {"file_name": f"{image_id}.png", "height": h, "width": w, "path": f"{image_id}.png"}

    def load_image(self, image_id):
        return self.images[image_id]


def sample_photos(count: int) -> dict:
    """`count` 640x480 RGB photos from skimage.data (repeated, mirrored when more are asked)."""
    from skimage import data
    from skimage.transform import resize

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina"]
    base = []
    for name in names:
        image = getattr(data, name)()
        image = resize(image, (480, 640), anti_aliasing=True, preserve_range=True)
        base.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return {i: (base[i % len(base)] if (i // len(base)) % 2 == 0 else base[i % len(base)][:, ::-1])
            for i in range(count)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images to segment")
    parser.add_argument("--loads", type=int, default=400, help="proposal loads to time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (cores)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["REFBENCH_CACHE"] = cache
        from refbench.proposals import ProposalStore, get_backend

        dataset = _Photos(sample_photos(args.images))
        backend = get_backend("felzenszwalb")
        store = ProposalStore(dataset, "felzenszwalb", backend.config())
        start = time.perf_counter()
        store.build(dataset, backend, progress=False)
        build_s = time.perf_counter() - start
        counts = [int(store.load(i).reshape(40, -1).any(1).sum()) for i in dataset.image_ids]

        ids = dataset.image_ids
        store.load(ids[0], size=(320, 320))  # warm the read handle
        start, cpu_start = time.perf_counter(), time.process_time()
        for n in range(args.loads):
            masks = store.load(ids[n % len(ids)], size=(320, 320))
        load_s = time.perf_counter() - start
        load_cpu_s = time.process_time() - cpu_start
        assert masks.shape == (40, 320, 320) and masks.dtype == torch.bool

        build_rate = len(ids) / build_s
        load_rate = args.loads / load_s
        print(f"felzenszwalb build: {len(ids)} images of 640x480 in {build_s:.2f} s "
              f"= {build_rate:.2f} images/s ({np.mean(counts):.1f} non-empty proposals/image)")
        print(f"store size: {store.bytes_per_image() / 1024:.1f} KiB per image (COCO RLE, JSONL)")
        cpu_rate = args.loads / load_cpu_s  # per CPU-second: robust to a busy machine
        two_core_rate = 2 * cpu_rate  # two loader workers, one image each at a time
        print(f"load cache -> [40, 320, 320] bool: {load_rate:.0f} images/s wall "
              f"({1000 / load_rate:.2f} ms/image), {cpu_rate:.0f} images per CPU-second "
              f"({1000 / cpu_rate:.2f} CPU-ms/image)")
        print(f"2 cores (2 loader workers): ~{two_core_rate:.0f} images/s; target >= "
              f"{TARGET_LOADS_PER_S:.0f}: ratio {two_core_rate / TARGET_LOADS_PER_S:.2f}x -> "
              f"{'OK' if two_core_rate >= TARGET_LOADS_PER_S else 'BELOW TARGET'}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
