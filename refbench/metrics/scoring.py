"""Per-expression records for one image: the lines of predictions.jsonl (docs/runs.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from refbench.errors import PredictionError
from refbench.metrics.functional import (
    binarise,
    box_hit,
    intersection_union,
    oracle_proposal,
    peak_yx,
    point_hit,
    protocol_maps,
    select_proposal,
)
from refbench.metrics.protocols import Protocol, get_protocol


def _check_inputs(
    maps: Tensor,
    height: int,
    width: int,
    gt_masks: Tensor,
    boxes: Tensor,
    proposals: Tensor | None,
    object_masks: Tensor | None,
) -> None:
    if maps.dim() != 3 or maps.shape[0] == 0 or min(maps.shape[1:]) == 0:
        raise PredictionError(
            f"response maps must be a non-empty [E, h, w] tensor, got shape {tuple(maps.shape)}"
        )
    if not maps.is_floating_point():
        raise PredictionError(f"response maps must be floating point, got {maps.dtype}")
    if not bool(torch.isfinite(maps).all()):
        raise PredictionError("response maps hold NaN or inf values; the model output is broken")
    count = maps.shape[0]
    size = (count, int(height), int(width))
    assert tuple(gt_masks.shape) == size, f"gt_masks {tuple(gt_masks.shape)} != {size}"
    assert gt_masks.dtype == torch.bool, f"gt_masks must be bool, got {gt_masks.dtype}"
    assert tuple(boxes.shape) == (count, 4), f"boxes {tuple(boxes.shape)} != ({count}, 4)"
    if proposals is not None:
        assert proposals.dim() == 3 and tuple(proposals.shape[1:]) == size[1:], (
            f"proposals {tuple(proposals.shape)} must be [P, {height}, {width}]"
        )
        assert proposals.shape[0] > 0, "proposals must hold at least one mask (pad with zeros)"
    if object_masks is not None:
        assert object_masks.dim() == 3 and tuple(object_masks.shape[1:]) == size[1:], (
            f"object_masks {tuple(object_masks.shape)} must be [A, {height}, {width}]"
        )


@torch.no_grad()
def score_batch(
    maps: Tensor,
    height: int,
    width: int,
    gt_masks: Tensor,
    boxes: Tensor,
    protocol: Protocol | str = "tris",
    proposals: Tensor | None = None,
    object_masks: Tensor | None = None,
    return_masks: bool = False,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], Tensor]:
    """Score the E expressions of one image; one record per expression (docs/runs.md keys).

    maps [E, h, w] float: the model's response maps; height, width: the original image size;
    gt_masks [E, H, W] bool, built by the protocol's ``gt_overlap`` rule
    (``ReferDataset.mask(ann_id, overlap=protocol.gt_overlap)``); boxes [E, 4] COCO xywh
    (float64, as read), tested by the protocol's ``box_rule``; proposals [P, H, W] bool or None;
    object_masks [A, H, W] bool (every annotated object of the image) or None.
    Each record holds peak [y, x], point_hit, box_hit, inter, union, on_background (None
    without object_masks) and, with proposals, "proposal": {index, inter, union, oracle_index,
    oracle_inter, oracle_union}. With return_masks=True, returns (records, masks [E, H, W] bool).
    """
    protocol = get_protocol(protocol)
    _check_inputs(maps, height, width, gt_masks, boxes, proposals, object_masks)
    device = maps.device
    gt_masks = gt_masks.to(device)
    normalised = protocol_maps(maps, (height, width), protocol)
    peaks = peak_yx(normalised)
    masks = binarise(normalised, protocol)
    inter, union = intersection_union(masks, gt_masks)
    point_hits = point_hit(peaks, gt_masks)
    box_hits = box_hit(peaks, boxes.to(device), protocol.box_rule)

    on_background: list[bool | None] = [None] * maps.shape[0]
    if object_masks is not None:
        # only the peak pixels matter: [A, E] -> [E]
        at_peaks = object_masks.to(device)[:, peaks[:, 0], peaks[:, 1]].bool()
        on_background = (~at_peaks.any(dim=0)).tolist()

    proposal_fields: list[dict[str, int]] | None = None
    if proposals is not None:
        proposals = proposals.to(device).bool()
        chosen = select_proposal(normalised, proposals)
        chosen_inter, chosen_union = intersection_union(proposals[chosen], gt_masks)
        oracle_index, oracle_inter, oracle_union = oracle_proposal(proposals, gt_masks)
        columns = zip(
            chosen.tolist(),
            chosen_inter.tolist(),
            chosen_union.tolist(),
            oracle_index.tolist(),
            oracle_inter.tolist(),
            oracle_union.tolist(),
        )
        names = ("index", "inter", "union", "oracle_index", "oracle_inter", "oracle_union")
        proposal_fields = [dict(zip(names, row)) for row in columns]

    records: list[dict[str, Any]] = []
    rows = zip(
        peaks.tolist(),
        point_hits.tolist(),
        box_hits.tolist(),
        inter.tolist(),
        union.tolist(),
        on_background,
    )
    for e, (peak, p_hit, b_hit, i, u, background) in enumerate(rows):
        record: dict[str, Any] = {
            "peak": peak,
            "point_hit": p_hit,
            "box_hit": b_hit,
            "inter": i,
            "union": u,
            "on_background": background,
        }
        if proposal_fields is not None:
            record["proposal"] = proposal_fields[e]
        records.append(record)
    if return_masks:
        return records, masks
    return records
