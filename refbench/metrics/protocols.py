"""Evaluation protocols: how a response map becomes a peak point and a binary mask, and which
box-hit rule and ground-truth mask it is scored against.

Published WRIS numbers were produced by different evaluation code; a protocol names one of
them exactly, and every run records the protocol it used (docs/metrics.md).

This module imports neither torch nor numpy: `refbench list` reads it and must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from refbench.errors import UnknownNameError, did_you_mean

# Which sentences of a referred object are scored: every one, or only the first one
# ("first" is what PCNet's released evaluation does: it stops after one sentence per object).
SENTENCE_MODES = ("all", "first")

# How a peak is tested against a COCO box [x, y, w, h] (`refbench.metrics.functional.box_hit`):
# "centre": the pixel centre (x + 0.5, y + 0.5) in the float box, edges included;
# "integer": x, y, w, h truncated to integers each, then x <= col <= x + w (TRIS's isCorrectHit).
BOX_RULES = ("centre", "integer")

# Which pixels of an annotation made of several polygons are ground truth
# (`refbench.data.refer.ReferDataset.mask`): "union": covered by any polygon;
# "once": covered by exactly one (the refer API sums the polygons, TRIS keeps the 1s).
GT_OVERLAPS = ("union", "once")


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: response map -> protocol map -> (peak, binary mask).

    The steps, in order, on a map [h, w] at the model's resolution:
    1. ``clamp_negative``: values below 0 become 0 (TRIS's model ends in a ReLU).
    2. bilinear resize to the original image size [H, W] with ``align_corners``.
    3. ``normalisation``: ``"max"`` divides by (max + ``epsilon``);
       ``"minmax"`` maps to (map - min) / (max - min + ``epsilon``).
    4. mask = map > ``threshold`` (``inclusive=False``) or map >= ``threshold`` (``inclusive=True``).
    The peak is the first maximum of the step-3 map in row-major order (NumPy argmax).
    It is scored against the box by ``box_rule`` (one of `BOX_RULES`) and against the
    ground-truth mask built by ``gt_overlap`` (one of `GT_OVERLAPS`).
    """

    name: str
    description: str
    clamp_negative: bool
    align_corners: bool
    normalisation: str  # "max" or "minmax"
    epsilon: float
    threshold: float
    inclusive: bool
    box_rule: str  # one of BOX_RULES
    gt_overlap: str  # one of GT_OVERLAPS
    source: str


PROTOCOLS: dict[str, Protocol] = {
    "tris": Protocol(
        name="tris",
        description=(
            "TRIS/PCNet released evaluation (default): ReLU, bilinear resize to the image "
            "(align_corners=True), divide by max + 1e-5, mask = map > 1e-9; box hit: "
            "x, y, w, h truncated to integers, x <= col <= x + w and y <= row <= y + h "
            "(validate.py isCorrectHit, dataset/ReferDataset.py); ground truth: pixels "
            "covered by exactly one polygon of the annotation (refer.py getMask sums the "
            "polygons, ReferDataset.py keeps mask == 1)"
        ),
        clamp_negative=True,
        align_corners=True,
        normalisation="max",
        epsilon=1e-5,
        threshold=1e-9,
        inclusive=False,
        box_rule="integer",
        gt_overlap="once",
        source=(
            "fawnliu/TRIS validate.py, dataset/ReferDataset.py, dataset/refer.py; "
            "zaiquanyang/Boosting_WRIS validate.py"
        ),
    ),
    "sag": Protocol(
        name="sag",
        description=(
            "SaG released evaluation: bilinear resize to the image (align_corners=False), "
            "min-max normalise (constant map -> zeros), mask = map >= 0.5; ground truth: "
            "union of the annotation's polygons (build_batches.py: max over polygons); "
            "box hit: pixel centre (col + 0.5, row + 0.5) in the float box, edges included "
            "(refbench's rule: SaG's evaluation reports no box hit)"
        ),
        clamp_negative=False,
        align_corners=False,
        normalisation="minmax",
        epsilon=1e-9,
        threshold=0.5,
        inclusive=True,
        box_rule="centre",
        gt_overlap="union",
        source=(
            "kdwonn/SaG eval_cma_recon.py (get_IoU_map, pseudo_threshold 0.5), "
            "build_batches.py (ground-truth masks)"
        ),
    ),
}

PROTOCOL_DESCRIPTIONS: dict[str, str] = {name: p.description for name, p in PROTOCOLS.items()}

DEFAULT_PROTOCOL = "tris"


def get_protocol(name: str | Protocol) -> Protocol:
    """The protocol called `name` (a `Protocol` passes through), or an `UnknownNameError`."""
    if isinstance(name, Protocol):
        return name
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    hint = did_you_mean(str(name), PROTOCOLS, n=2)
    raise UnknownNameError(
        f"unknown protocol {name!r}.{hint} Valid protocols: {', '.join(PROTOCOLS)}"
    )


def check_sentence_mode(mode: str) -> str:
    """`mode` if it is one of `SENTENCE_MODES`, else an `UnknownNameError` listing them."""
    if mode not in SENTENCE_MODES:
        raise UnknownNameError(
            f"unknown sentence mode {mode!r}. Valid modes: {', '.join(SENTENCE_MODES)}"
        )
    return mode
