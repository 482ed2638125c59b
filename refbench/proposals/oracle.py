"""The Oracle of a proposal set: the best proposal by IoU for each referred object (upper bound)."""

from __future__ import annotations

from typing import Any

import numpy as np


def oracle_scores(dataset: Any, store: Any) -> dict[str, float]:
    """Oracle mIoU and oIoU (in %) over the referred objects of `dataset`, and their count n.

    For each ref (one referred object) the proposal with the highest IoU against its ground-truth
    mask [H, W] is taken; mIoU is the mean of those IoUs, oIoU is sum(I) / sum(U) over them.
    """
    iou_sum = 0.0
    inter_sum = 0
    union_sum = 0
    count = 0
    cache: dict[Any, np.ndarray] = {}
    for ref in dataset.refs:
        image_id = ref["image_id"] if isinstance(ref, dict) else ref.image_id
        ann_id = ref["ann_id"] if isinstance(ref, dict) else ref.ann_id
        target = np.asarray(dataset.mask(ann_id), dtype=bool)  # [H, W]
        if image_id not in cache:
            cache.clear()  # refs come grouped by image in practice; keep one image decoded
            cache[image_id] = store.load(image_id).numpy()  # [P, H, W] at the original size
        proposals = cache[image_id]
        assert proposals.shape[1:] == target.shape, (proposals.shape, target.shape, image_id)
        flat = proposals.reshape(len(proposals), -1)
        gt = target.reshape(-1)
        inter = (flat & gt).sum(axis=1)
        union = (flat | gt).sum(axis=1)
        ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        best = int(np.argmax(ious))
        iou_sum += float(ious[best])
        inter_sum += int(inter[best])
        union_sum += int(union[best]) if union[best] > 0 else int(gt.sum())
        count += 1
    return {
        "mIoU": 100.0 * iou_sum / count if count else 0.0,
        "oIoU": 100.0 * inter_sum / union_sum if union_sum else 0.0,
        "n": count,
    }
