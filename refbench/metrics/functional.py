"""Batched plain functions behind every metric: resizing, peaks, hits, masks, IoU, proposals.

All functions work on torch tensors with E expressions of one image stacked on dim 0; none
loops over pixels. docs/metrics.md states each convention; the metric reductions at the bottom
(`fraction_true`, `mean_iou`, `overall_iou`) are what `refbench.metrics.records` applies to
the fields `refbench.metrics.table` names; `point_m` and `hit_rate` score peaks directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from refbench.metrics.protocols import BOX_RULES, Protocol, get_protocol

# IoU given to a sample whose prediction and ground truth are both empty (union 0).
EMPTY_UNION_IOU = 0.0


def resize_to(maps: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinearly resize maps [E, h, w] to [E, H, W] (float32)."""
    assert maps.dim() == 3, f"maps must be [E, h, w], got {tuple(maps.shape)}"
    height, width = int(size[0]), int(size[1])
    maps = maps.float()
    if tuple(maps.shape[-2:]) == (height, width):
        return maps.clone()
    resized = F.interpolate(
        maps[:, None], size=(height, width), mode="bilinear", align_corners=align_corners
    )
    return resized[:, 0]


def protocol_maps(maps: Tensor, size: tuple[int, int], protocol: Protocol | str) -> Tensor:
    """The protocol's map at the original size: maps [E, h, w] -> [E, H, W] float32.

    Clamp negatives (if the protocol says so), resize, normalise per expression.
    """
    protocol = get_protocol(protocol)
    maps = maps.float()
    if protocol.clamp_negative:
        maps = maps.clamp(min=0.0)
    resized = resize_to(maps, size, align_corners=protocol.align_corners)
    flat = resized.flatten(1)  # resized is a fresh tensor: normalise in place
    # Bilinear resizing of a constant map is that constant; float32 rounding of the weights
    # must not invent a peak or (after min-max) a mask, so constant maps stay exactly constant.
    small = maps.flatten(1)
    low, top = small.amin(dim=1), small.amax(dim=1)
    constant = low == top
    if bool(constant.any()):
        flat[constant] = low[constant, None]
    if protocol.normalisation == "max":
        top = flat.amax(dim=1, keepdim=True)
        flat.div_(top + protocol.epsilon)
    elif protocol.normalisation == "minmax":
        # amin and amax separately: aminmax is several times slower on CPU
        low, top = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
        flat.sub_(low).div_(top - low + protocol.epsilon)
    else:
        raise ValueError(f"protocol {protocol.name!r} has unknown normalisation")
    return resized


def binarise(maps: Tensor, protocol: Protocol | str) -> Tensor:
    """The protocol's binary mask from its normalised maps [E, H, W] (see `protocol_maps`)."""
    protocol = get_protocol(protocol)
    if protocol.inclusive:
        return maps >= protocol.threshold
    return maps > protocol.threshold


def peak_yx(maps: Tensor) -> Tensor:
    """The first maximum of each map [E, H, W] in row-major order, as LongTensor [E, 2] (y, x).

    Same as ``numpy.unravel_index(numpy.argmax(map), map.shape)``: ties go to the lowest
    flattened index, so a constant map peaks at (0, 0).
    """
    assert maps.dim() == 3, f"maps must be [E, H, W], got {tuple(maps.shape)}"
    # Two levels, because a full argmax is not vectorised on CPU while amax is: the first
    # row holding the global maximum, then the first maximum within that row. torch.argmax
    # returns the first maximal index (documented), like numpy.argmax. Maps hold no NaN.
    row_max = maps.amax(dim=2)  # [E, H]
    is_top_row = row_max == row_max.amax(dim=1, keepdim=True)
    row = is_top_row.to(torch.uint8).argmax(dim=1)
    column = maps[torch.arange(maps.shape[0], device=maps.device), row].argmax(dim=1)
    return torch.stack([row, column], dim=1)


def point_hit(peaks: Tensor, gt_masks: Tensor) -> Tensor:
    """Whether each peak [E, 2] (y, x) lies in its ground-truth mask [E, H, W]: BoolTensor [E]."""
    rows = torch.arange(peaks.shape[0], device=peaks.device)
    return gt_masks[rows, peaks[:, 0], peaks[:, 1]].bool()


def box_hit(peaks: Tensor, boxes: Tensor, rule: str = "centre") -> Tensor:
    """Whether each peak [E, 2] (y, x) lies in its COCO box [E, 4] (x, y, w, h): BoolTensor [E].

    rule="centre": pixel (y, x) covers [x, x+1) x [y, y+1) in COCO's continuous coordinates, so
    its centre (x + 0.5, y + 0.5) is tested in the closed box x0 <= x + 0.5 <= x0 + w, likewise
    for y. rule="integer" (TRIS's isCorrectHit): x0, y0, w, h are each truncated toward zero
    (NumPy's int cast), and the peak's indices are tested in the closed integer box
    x0 <= x <= x0 + w, y0 <= y <= y0 + h. Pass boxes as float64, as the annotation file holds
    them: float32 rounding can move a value across an integer and change its truncation.
    """
    if rule not in BOX_RULES:
        raise ValueError(f"unknown box rule {rule!r}; use one of {', '.join(BOX_RULES)}")
    assert boxes.dim() == 2 and boxes.shape[1] == 4, f"boxes {tuple(boxes.shape)} != [E, 4]"
    if rule == "integer":
        x0, y0, w, h = torch.trunc(boxes.to(torch.float64)).to(torch.int64).unbind(dim=1)
        row, column = peaks[:, 0].to(torch.int64), peaks[:, 1].to(torch.int64)
        return (x0 <= column) & (column <= x0 + w) & (y0 <= row) & (row <= y0 + h)
    boxes = boxes.to(torch.float64)
    centre_y = peaks[:, 0].to(torch.float64) + 0.5
    centre_x = peaks[:, 1].to(torch.float64) + 0.5
    x0, y0, w, h = boxes.unbind(dim=1)
    return (x0 <= centre_x) & (centre_x <= x0 + w) & (y0 <= centre_y) & (centre_y <= y0 + h)


def intersection_union(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel counts of pred & gt and pred | gt for masks [E, H, W]: two LongTensors [E]."""
    assert pred.shape == gt.shape, f"pred {tuple(pred.shape)} vs gt {tuple(gt.shape)}"
    pred = pred.bool().flatten(1)
    gt = gt.bool().flatten(1)
    # summing uint8 views is ~2x faster than summing bools; int32 holds any image's count
    inter = (pred & gt).view(torch.uint8).sum(dim=1, dtype=torch.int32)
    union = (pred | gt).view(torch.uint8).sum(dim=1, dtype=torch.int32)
    return inter.long(), union.long()


def select_proposal(maps: Tensor, proposals: Tensor) -> Tensor:
    """The proposal holding each map's peak: argmax_p max_pixels(map * proposal_p), LongTensor [E].

    maps [E, H, W] (the protocol's normalised maps), proposals [P, H, W] bool. Ties go to the
    lowest index; if every proposal is empty the index is 0 (PCNet's "Segmentor" rows).
    """
    assert maps.shape[-2:] == proposals.shape[-2:], "maps and proposals differ in size"
    if proposals.shape[0] == 0:
        raise ValueError("select_proposal needs at least one proposal")
    flat_proposals = proposals.flatten(1)  # [P, N]
    if bool((maps < 0).any()):  # general case: score every proposal, O(E * P * N)
        weights = flat_proposals.to(maps.dtype)
        scores = torch.stack([(weights * response).amax(dim=1) for response in maps.flatten(1)])
        return scores.argmax(dim=1)
    # Non-negative maps (every protocol's normalised map): proposal p scores the largest map
    # value it covers, so the winner is the lowest-index proposal covering a pixel that holds
    # the largest covered value; O(E * N) instead of O(E * P * N).
    covered = flat_proposals.any(dim=0)  # [N]
    chosen = torch.zeros(maps.shape[0], dtype=torch.long)
    for e, response in enumerate(maps.flatten(1)):
        best = torch.where(covered, response, torch.zeros((), dtype=response.dtype)).max()
        if best <= 0:  # every score is 0: argmax of equal scores is index 0
            continue
        pixels = (covered & (response == best)).nonzero()[:, 0]  # usually one pixel
        holders = flat_proposals[:, pixels].any(dim=1)  # [P]
        chosen[e] = int(holders.nonzero()[0, 0])
    return chosen


def pairwise_intersection_union(masks: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Intersection and union of every gt [E, H, W] with every mask [P, H, W]: LongTensors [E, P]."""
    masks_flat = masks.flatten(1).to(torch.float32)
    gt_flat = gt.flatten(1).to(torch.float32)
    # Sums of 0/1 in float32 are exact below 2**24 pixels (a 4096 x 4096 image).
    inter = (gt_flat @ masks_flat.T).round().to(torch.int64)
    area_masks = torch.count_nonzero(masks.flatten(1), dim=1)
    area_gt = torch.count_nonzero(gt.flatten(1), dim=1)
    union = area_gt[:, None] + area_masks[None, :] - inter
    return inter, union


def iou_values(inter: Tensor, union: Tensor) -> Tensor:
    """Per-sample IoU inter / union as float64; an empty union gives `EMPTY_UNION_IOU`."""
    inter = torch.as_tensor(inter, dtype=torch.float64)
    union = torch.as_tensor(union, dtype=torch.float64)
    safe = torch.where(union > 0, union, torch.ones_like(union))
    return torch.where(union > 0, inter / safe, torch.full_like(inter, EMPTY_UNION_IOU))


def oracle_proposal(proposals: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The proposal [P, H, W] with the best IoU against each gt [E, H, W]: (index, inter, union) [E].

    Ties go to the lowest index.
    """
    if proposals.shape[0] == 0:
        raise ValueError("oracle_proposal needs at least one proposal")
    inter, union = pairwise_intersection_union(proposals, gt)
    best = iou_values(inter, union).argmax(dim=1)
    rows = torch.arange(gt.shape[0])
    return best, inter[rows, best], union[rows, best]


# ---- metric reductions (refbench.metrics.table's aggregates) --------------------------------


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def point_m(peaks: Tensor, gt_masks: Tensor) -> float:
    """PointM: the fraction of peaks [E, 2] inside their ground-truth masks [E, H, W]."""
    return _ratio(float(point_hit(peaks, gt_masks).sum()), peaks.shape[0])


def hit_rate(peaks: Tensor, boxes: Tensor, rule: str = "centre") -> float:
    """Hit: the fraction of peaks [E, 2] inside their box [E, 4] (xywh) by `box_hit`'s `rule`."""
    return _ratio(float(box_hit(peaks, boxes, rule).sum()), peaks.shape[0])


def fraction_true(flags: Sequence[bool] | Tensor) -> float:
    """The fraction of true flags (e.g. BackgroundPeaks over on_background); NaN when empty."""
    values = [bool(flag) for flag in flags]
    return _ratio(sum(values), len(values))


def mean_iou(inter: Sequence[int] | Tensor, union: Sequence[int] | Tensor) -> float:
    """mIoU: the mean of per-sample inter / union (empty union counts `EMPTY_UNION_IOU`).

    Summed with math.fsum, so the value does not depend on the order of the samples.
    """
    ious = iou_values(torch.as_tensor(inter), torch.as_tensor(union)).tolist()
    return _ratio(math.fsum(ious), len(ious))


def overall_iou(inter: Sequence[int] | Tensor, union: Sequence[int] | Tensor) -> float:
    """oIoU: total intersection over total union; `EMPTY_UNION_IOU` if every union is empty."""
    inter = torch.as_tensor(inter, dtype=torch.int64)
    union = torch.as_tensor(union, dtype=torch.int64)
    if union.numel() == 0:
        return float("nan")
    total_union = int(union.sum())
    return int(inter.sum()) / total_union if total_union else EMPTY_UNION_IOU
