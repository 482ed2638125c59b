"""An offline proposal backend: Felzenszwalb graph segmentation (scikit-image) at several scales.

Needs no weights. Each scale gives a partition of the image; the segments of all scales,
coarse and fine, are the candidates of PCNet's post-processing, so nested object/part
proposals survive while identical segments found at two scales are de-duplicated.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from refbench.errors import ConfigError
from refbench.proposals.postprocess import (
    PAPER_MIN_AREA,
    Rle,
    encode_masks,
    postprocess_rles,
    resolve_min_area,
)
from refbench.proposals.rle import nearest_indices


class FelzenszwalbBackend:
    """Multi-scale Felzenszwalb segments as class-agnostic proposals (CPU, no weights)."""

    name = "felzenszwalb"

    def __init__(
        self,
        scales: tuple[float, ...] | list[float] = (100.0, 300.0, 1000.0),
        sigma: float = 0.8,
        min_size: int = 20,
        max_side: int | None = 320,
        max_proposals: int = 40,
        min_area: float = PAPER_MIN_AREA,
        dedup_iou: float = 0.8,
        workers: int | None = None,
        max_area: float | None = None,
    ) -> None:
        if not scales or any(float(s) <= 0 for s in scales):
            raise ConfigError(f"felzenszwalb scales must be positive numbers, got {scales!r}")
        if max_side is not None and int(max_side) < 8:
            raise ConfigError(f"felzenszwalb max_side must be >= 8 or None, got {max_side}")
        self.scales = tuple(float(s) for s in scales)
        self.sigma = float(sigma)
        self.min_size = int(min_size)
        self.max_side = None if max_side is None else int(max_side)
        self.max_proposals = int(max_proposals)
        self.min_area = float(min_area)
        self.dedup_iou = float(dedup_iou)
        self.max_area = None if max_area is None else float(max_area)
        if self.max_area is not None and self.max_area <= 0:
            raise ConfigError(f"felzenszwalb max_area must be > 0 (pixels, or a fraction <= 1), "
                              f"got {max_area}")
        # Processes that segment images in parallel (default: every core); the output does not
        # depend on it, so it is not part of the config.
        self.workers = max(1, int(workers) if workers is not None else (os.cpu_count() or 1))
        self.batch_size = 16 * self.workers if self.workers > 1 else 1

    def config(self) -> dict[str, Any]:
        """Everything that changes the output: hashed into the store's folder name."""
        return {"scales": list(self.scales), "sigma": self.sigma, "min_size": self.min_size,
                "max_side": self.max_side, "max_proposals": self.max_proposals,
                "min_area": self.min_area, "dedup_iou": self.dedup_iou,
                # only when set, so stores built before the option keep their folder
                **({"max_area": self.max_area} if self.max_area is not None else {})}

    def candidates(self, image: np.ndarray, min_pixels: int = 0) -> list[np.ndarray]:
        """Segments of every scale with >= `min_pixels` pixels, as bool masks [H, W] at full size."""
        from skimage.segmentation import felzenszwalb
        from skimage.transform import resize

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"felzenszwalb expects an RGB image [H, W, 3], got {image.shape}")
        height, width = image.shape[:2]
        work = image
        if self.max_side is not None and max(height, width) > self.max_side:
            factor = self.max_side / max(height, width)
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            work = resize(image, size, order=1, anti_aliasing=True, preserve_range=True)
            work = np.clip(np.rint(work), 0, 255).astype(np.uint8)
        # sigma and min_size are meant at the `max_side` working resolution; a smaller image
        # (SynthRef is 96x96) gets them scaled down, or the blur alone splits off shape outlines
        relative = max(work.shape[:2]) / self.max_side if self.max_side else 1.0
        sigma = self.sigma * min(1.0, relative)
        min_size = max(1, int(round(self.min_size * min(1.0, relative) ** 2)))
        rows = nearest_indices(work.shape[0], height)
        cols = nearest_indices(work.shape[1], width)
        masks: list[np.ndarray] = []
        for scale in self.scales:
            labels = felzenszwalb(work, scale=scale, sigma=sigma, min_size=min_size)
            labels = labels[rows][:, cols]  # back to the original size
            areas = np.bincount(labels.ravel())
            for label in np.flatnonzero(areas >= max(1, min_pixels)):
                masks.append(labels == label)
        return masks

    def propose(self, image: np.ndarray) -> list[Rle]:
        """Post-processed proposals of one RGB image [H, W, 3] as COCO RLEs, largest first."""
        height, width = np.asarray(image).shape[:2]
        threshold = resolve_min_area(self.min_area, height, width)
        # small segments go before encoding: most of a fine partition is tiny
        masks = self.candidates(image, threshold)
        return postprocess_rles(encode_masks(masks), self.max_proposals, self.min_area,
                                self.dedup_iou, self.max_area)

    def propose_batch(self, images: list[np.ndarray]) -> list[list[Rle]]:
        """`propose` for each image, spread over `workers` processes."""
        if self.workers == 1 or len(images) < 2:
            return [self.propose(image) for image in images]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(self.workers, len(images)), mp_context=context) as pool:
            return list(pool.map(self.propose, images, chunksize=4))
