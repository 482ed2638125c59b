"""PCNet's training losses as the authors' released code computes them (not the paper's).

Source: github.com/zaiquanyang/Boosting_WRIS at 752868b (model/model_prog_v5.py:
``compute_cam_loss``, ``cbs_loss``, ``c4_foward``; model/utils.py: ``SAM_shrink_loss``,
``SAM_diversify_loss``; train_prog.py's weighted sum with args.py's defaults). The paper's
equations are in `refbench_pcnet.losses`. Each function here reproduces the released
arithmetic and is checked against the released code's own outputs on fixed inputs
(tests/golden/pcnet/README.md, section "Losses", lists the quirks kept and the few inputs
where the released code cannot run but these functions do).

One training step with K stages collects, per stage, a `StageTerms`; `official_losses` turns
them into the weighted terms refbench's trainer sums.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from refbench.nn.calibration import (
    foreground_images,
    negative_calibration_loss,
    positive_calibration_loss,
)
from refbench.nn.losses import TRIS_FOCAL_C, TRIS_FOCAL_P, classification_loss, pool_response

# args.py's defaults: --w1 (fg), --w2 (shrink), --w3 (anchor), --w4 (cls), --w5 (cbs),
# --div_loc (diversify). With these only cls and cbs train (fg is 0 unless --clip_fg/--clip_bg).
OFFICIAL_LOSS_WEIGHTS: dict[str, float] = {
    "fg": 1.0,
    "shrink": 0.0,
    "anchor": 0.0,
    "cls": 5.0,
    "cbs": 2.0,
    "diversify": 0.0,
}

PROPOSAL_GRID = 32  # the released training resizes SAM masks to 32x32 (nearest)
CALIBRATION_SIZE = 224  # ViT-B/32's input side
_PEAK_EPS = 1e-5  # map / (peak + eps)
_FLOOR = 1e-5  # relu(map - floor): a zero map stays exactly zero
_OVERLAP_EPS = 1e-5  # added twice to the overlap's denominator
_BINARY_THRESHOLD = 1e-9  # the binary map of the confidence masks
_MEAN_EPS = 1e-4  # masked means over images
_POSITIVE_CLAMP = (1e-4, 0.9999)  # MaxLoss


def official_classification_loss(
    scores: Tensor,
    softmax_temperature: float = 1.0,
    focal_p: float = TRIS_FOCAL_P,
    focal_c: float = TRIS_FOCAL_C,
) -> Tensor:
    """L_cls of the released training from fused scores [B, hw, B] (image, position, sentence).

    The released ``TRIS_Loss`` + ``multilabel_soft_margin_loss(cls_out, eye(B))`` is exactly
    the core's TRIS pooling (`refbench.nn.pool_response`, mode "tris") followed by
    `refbench.nn.classification_loss` with the diagonal as positives, so both are reused.
    """
    if scores.ndim != 3 or scores.shape[0] != scores.shape[2]:
        raise ValueError(f"scores must be [B, hw, B], got {tuple(scores.shape)}")
    maps = scores.transpose(1, 2).unsqueeze(-1)  # [B, B, hw, 1]: pooling is over positions
    pooled = pool_response(
        maps, "tris", softmax_temperature=softmax_temperature, focal_p=focal_p, focal_c=focal_c
    )
    return classification_loss(pooled)


def proposal_grid_prediction(relu_map: Tensor, size: int = PROPOSAL_GRID) -> Tensor:
    """The soft prediction the proposal losses compare: [B, 1, S, S] -> [B, 1, size, size].

    Each ReLU'd map divided by its peak (+1e-5), lowered by 1e-5 and ReLU'd again, then resized
    bilinearly with align_corners=True.
    """
    if relu_map.ndim != 4 or relu_map.shape[1] != 1:
        raise ValueError(f"relu_map must be [B, 1, S, S], got {tuple(relu_map.shape)}")
    peak = F.adaptive_max_pool2d(relu_map, 1)
    prediction = F.relu(relu_map / (peak + _PEAK_EPS) - _FLOOR)
    return F.interpolate(prediction, size=(size, size), mode="bilinear", align_corners=True)


def _soft_overlap(prediction: Tensor, masks: Tensor) -> Tensor:
    """The released code's "IoU", I / (sum pred + sum mask + 2e-5): [B, 1, hw], [B, N, hw] -> [B, N].

    It is half a Dice coefficient, so never above 0.5.
    """
    intersection = (masks * prediction).sum(-1)
    total = (masks + prediction).sum(-1) + _OVERLAP_EPS
    return intersection / (total + _OVERLAP_EPS)


def _check_proposals(relu_map: Tensor, proposals: Tensor) -> None:
    if proposals.ndim != 4 or proposals.shape[0] != relu_map.shape[0]:
        raise ValueError(
            f"proposals must be [B, N, h, w] with B = {relu_map.shape[0]}, got "
            f"{tuple(proposals.shape)}"
        )


def proposal_matches(
    relu_map: Tensor, proposals: Tensor, clip_scores: Tensor
) -> tuple[Tensor, Tensor]:
    """One stage's (left, right) match with the SAM proposals (released ``SAM_shrink_loss``).

    relu_map: [B, 1, S, S] ReLU'd response at the input size; proposals: [B, N, h, w] float
    masks (32x32 in training; empty padding allowed), N >= 2; clip_scores: [B, N] of the
    chosen sentence. The best-scored proposal is "left", the others "right" (ties: the first).
    left = mean soft overlap with it over images whose binary map (> 1e-9) touches it;
    right = mean of the largest soft overlap with any other proposal, over images whose
    binary overlap with them is below 1 (every image: the overlap is at most 0.5). Scalars.
    """
    _check_proposals(relu_map, proposals)
    batch, count, height, width = proposals.shape
    if count < 2:
        raise ValueError(f"need at least two proposal slots (left and right), got {count}")
    if clip_scores.shape != (batch, count):
        raise ValueError(f"clip_scores {tuple(clip_scores.shape)} != [B, N] {(batch, count)}")
    if height != width:
        raise ValueError(f"proposals must be square, got {height}x{width}")
    prediction = proposal_grid_prediction(relu_map, height).flatten(2)  # [B, 1, hw]
    masks = proposals.flatten(2).to(prediction.dtype)
    soft = _soft_overlap(prediction, masks)  # [B, N]
    binary = _soft_overlap((prediction > _BINARY_THRESHOLD).to(masks.dtype), masks).detach()
    best = clip_scores.argmax(dim=1, keepdim=True)  # [B, 1]
    is_best = torch.zeros_like(soft, dtype=torch.bool).scatter(1, best, True)
    left = soft.gather(1, best)[:, 0]
    right = soft.masked_fill(is_best, float("-inf")).amax(dim=1)
    left_confident = (binary.gather(1, best)[:, 0] > 0).to(soft.dtype)
    right_confident = (binary.masked_fill(is_best, float("-inf")).amax(dim=1) < 1).to(soft.dtype)
    return (
        (left * left_confident).sum() / (left_confident.sum() + _MEAN_EPS),
        (right * right_confident).sum() / (right_confident.sum() + _MEAN_EPS),
    )


def shrink_and_anchor(
    left: Sequence[Tensor],
    right: Sequence[Tensor],
    pair: int | None = None,
    rng: random.Random | None = None,
) -> tuple[Tensor, Tensor, int | None]:
    """The released combination of K stages' matches: (shrink, anchor, the pair used).

    shrink = 1 - (right[o] - right[o + 1]) for one stage pair o (0 when K = 2; for K >= 3
    `pair`, else drawn as ``rng.choice(range(K - 1))``, Python's global generator by default,
    as the released code draws it); anchor = mean over stages of 1 - left. K = 1: shrink 0
    and no pair. (The released code stops at K = 4; this accepts any K.)
    """
    stages = len(left)
    if stages == 0 or len(right) != stages:
        raise ValueError(f"need one left and one right per stage, got {len(left)}, {len(right)}")
    anchor = 1.0 - left[0]
    for value in left[1:]:
        anchor = anchor + (1.0 - value)
    if stages == 1:
        return torch.zeros_like(right[0]), anchor, None
    anchor = anchor / stages
    if stages == 2:
        chosen = 0
    elif pair is not None:
        chosen = pair
    else:
        chosen = (rng if rng is not None else random).choice(range(stages - 1))
    if not 0 <= chosen < stages - 1:
        raise ValueError(f"pair {chosen} is not a stage pair of {stages} stages")
    if stages == 2 and pair not in (None, 0):
        raise ValueError(f"two stages have only pair 0, got {pair}")
    shrink = 1.0 - (right[chosen] - right[chosen + 1])
    return shrink, anchor, chosen


def straight_through_one_hot(logits: Tensor) -> Tensor:
    """One-hot of the argmax forward, the softmax's gradient backward: [..., N] -> [..., N].

    The released ``Strainght_through_Gumbel`` (no Gumbel noise is added). The forward value
    is (one-hot - softmax) + softmax, equal to the one-hot up to rounding.
    """
    soft = logits.softmax(dim=-1)
    hard = torch.zeros_like(logits).scatter(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    return (hard - soft).detach() + soft


def diversify_loss(
    relu_map: Tensor, other_relu_map: Tensor, proposals: Tensor, same_image: Tensor
) -> Tensor:
    """One stage's released ``SAM_diversify_loss``: two sentences should pick different masks.

    relu_map, other_relu_map: [B, 1, S, S] ReLU'd responses of the sentence and of another
    sentence; proposals: [B, N, h, w] float; same_image: [B] bool, the other sentence is about
    another object of the same image. Each map's peak inside each proposal picks one
    proposal (straight-through one-hot); the loss is
    1 - sum_i same_i * |pick_i - other_pick_i|_1 / (2 * sum_i same_i + 1e-4), a scalar.
    """
    _check_proposals(relu_map, proposals)
    if other_relu_map.shape != relu_map.shape:
        raise ValueError(f"maps differ: {tuple(relu_map.shape)} vs {tuple(other_relu_map.shape)}")
    if same_image.shape != (relu_map.shape[0],):
        raise ValueError(f"same_image must be [B], got {tuple(same_image.shape)}")
    masks = proposals.flatten(2)
    picks = []
    for response in (relu_map, other_relu_map):
        prediction = proposal_grid_prediction(response, proposals.shape[-1]).flatten(2)
        peaks = (prediction * masks).max(dim=-1).values  # [B, N]
        picks.append(straight_through_one_hot(peaks))
    weight = same_image.to(picks[0].dtype)
    distance = (picks[0] - picks[1]).abs().sum(-1)
    return 1.0 - (distance * weight).sum() / (2 * weight.sum() + _MEAN_EPS)


def official_calibration_losses(
    maps: Tensor,
    images: Tensor,
    encode_image: Callable[[Tensor], Tensor],
    negative_text: Tensor | None,
    positive_text: Tensor | None = None,
    clip_fg: bool = False,
    clip_bg: bool = False,
    size: int = CALIBRATION_SIZE,
) -> dict[str, Tensor]:
    """One stage's released ``cbs_loss``: "cbs" (negative phrases) and, if asked, "fg".

    maps: [B, h, w] each image's response for its own sentence, before any sigmoid;
    images: [B, 3, S, S]; encode_image: the frozen CLIP's image tower, [B, 3, size, size] ->
    [B, D]; negative_text: [B, K, D] CLIP embeddings of each image's negative sentences
    (None: no "cbs"); positive_text: [B, D], needed by clip_fg / clip_bg.
    cbs = mean_i mean_k -log(1 - cos(f_i, n_ik)), unclamped; fg = MaxLoss(fg) - MaxLoss(bg)
    with clip_fg and clip_bg, MaxLoss(fg) or -MaxLoss(bg) with one, absent with neither
    (the released code then returns a zero). The masked images are the core's
    `foreground_images`; the two losses the core's calibration losses.
    """
    losses: dict[str, Tensor] = {}
    foreground = encode_image(foreground_images(maps, images, size))
    if clip_fg or clip_bg:
        if positive_text is None:
            raise ValueError("clip_fg / clip_bg need positive_text, [B, D]")
        low, high = _POSITIVE_CLAMP
        fg = positive_calibration_loss(foreground, positive_text, eps=low, upper=high)
        if clip_bg:
            background = encode_image(foreground_images(maps, images, size, background=True))
            bg = positive_calibration_loss(background, positive_text, eps=low, upper=high)
            losses["fg"] = fg - bg if clip_fg else -bg
        else:
            losses["fg"] = fg
    if negative_text is not None:
        valid = torch.ones(negative_text.shape[:2], dtype=torch.bool, device=negative_text.device)
        losses["cbs"] = negative_calibration_loss(foreground, negative_text, valid, eps=None)
    return losses


@dataclass(frozen=True)
class StageTerms:
    """One stage's terms, as the released stage loop collects them (scalars).

    cls: `official_classification_loss`; left, right: `proposal_matches`; cbs, fg: from
    `official_calibration_losses`; diversify: `diversify_loss`. None: not computed.
    """

    cls: Tensor
    left: Tensor
    right: Tensor
    cbs: Tensor | None = None
    fg: Tensor | None = None
    diversify: Tensor | None = None


def combine_stages(
    stages: Sequence[StageTerms], pair: int | None = None, rng: random.Random | None = None
) -> dict[str, Tensor]:
    """The released end of ``c4_foward``: unweighted "cls", "fg", "cbs", "diversify" (each
    summed over the K stages and divided by K, present when every stage has it), "shrink"
    and "anchor" (`shrink_and_anchor`, with `pair` / `rng`)."""
    if not stages:
        raise ValueError("need at least one stage")
    count = len(stages)
    terms: dict[str, Tensor] = {}
    for name in ("cls", "fg", "cbs", "diversify"):
        values = [getattr(stage, name) for stage in stages]
        if any(value is None for value in values):
            continue
        total = values[0]
        for value in values[1:]:
            total = total + value
        terms[name] = total / count
    shrink, anchor, _ = shrink_and_anchor(
        [s.left for s in stages], [s.right for s in stages], pair=pair, rng=rng
    )
    terms["shrink"] = shrink
    terms["anchor"] = anchor
    return terms


def weighted_losses(
    terms: Mapping[str, Tensor], weights: Mapping[str, float] = OFFICIAL_LOSS_WEIGHTS
) -> dict[str, Tensor]:
    """train_prog.py's weighting: {name: weight * term}, terms of weight 0 left out.

    The trainer sums the values: w1 fg + w2 shrink + w3 anchor + w4 cls + w5 cbs +
    div_loc diversify.
    """
    unknown = sorted(set(weights) - set(OFFICIAL_LOSS_WEIGHTS))
    if unknown:
        raise ValueError(f"unknown loss weights {unknown}; known: {sorted(OFFICIAL_LOSS_WEIGHTS)}")
    return {
        name: float(weights[name]) * value
        for name, value in terms.items()
        if float(weights.get(name, 0.0)) != 0.0
    }


def official_losses(
    stages: Sequence[StageTerms],
    weights: Mapping[str, float] = OFFICIAL_LOSS_WEIGHTS,
    pair: int | None = None,
    rng: random.Random | None = None,
) -> dict[str, Tensor]:
    """The weighted losses of one released training step from its K stages' terms."""
    return weighted_losses(combine_stages(stages, pair=pair, rng=rng), weights)
