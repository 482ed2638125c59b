"""PCNet's proposal-based losses: Region-aware Shrinking (Eq. 5-7) and Instance-aware
Disambiguation (Eq. 8-9). L_cls comes from `refbench.nn.classification_loss`.

Maps are the normalised response maps R_n in [0, 1] flattened to [..., hw]; proposals are
soft masks [..., P, hw] in [0, 1] at the map's resolution, with a `valid` flag per proposal
(PCNet pads to P = 40 with all-zero masks, App. D; those never take part).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from refbench_pcnet.config import ALIGNMENTS, IAD_FORMS


def proposals_to_map(proposals: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Area-average masks to the map grid: [B, P, S, S] bool -> ([B, P, h*w] float, [B, P] valid)."""
    if proposals.ndim != 4:
        raise ValueError(f"proposals must be [B, P, S, S], got {tuple(proposals.shape)}")
    valid = proposals.flatten(2).any(dim=-1)
    if proposals.shape[1] == 0:
        return proposals.new_zeros(
            (*proposals.shape[:2], size[0] * size[1]), dtype=torch.float
        ), valid
    soft = F.adaptive_avg_pool2d(proposals.float(), size)
    return soft.flatten(2), valid


def alignment_scores(maps: Tensor, proposals: Tensor, mode: str = "max") -> Tensor:
    """Eq. 5, s_p = max(R ⊙ m_p) ("max") or the mean of R over m_p ("avg", Tables 7-8).

    maps: [..., hw]; proposals: [..., P, hw] (the leading dims broadcast). Returns [..., P].
    """
    if mode not in ALIGNMENTS:
        raise ValueError(f"alignment {mode!r} is not one of {ALIGNMENTS}")
    weighted = maps[..., None, :] * proposals
    if mode == "max":
        return weighted.amax(dim=-1)
    return weighted.sum(-1) / proposals.sum(-1).clamp_min(1e-6)


def soft_iou(maps: Tensor, masks: Tensor) -> Tensor:
    """IoU of soft maps in [0, 1]: sum(R m) / sum(R + m - R m): [..., hw] x [..., hw] -> [...]."""
    intersection = (maps * masks).sum(-1)
    union = (maps + masks - maps * masks).sum(-1)
    return intersection / union.clamp_min(1e-6)


def localization_ambiguity(
    maps: Tensor, proposals: Tensor, valid: Tensor, mode: str = "max"
) -> Tensor:
    """Eq. 6, S_amb = 1 - (IoU(R, m_f) - IoU(R, m_b)) per map.

    maps: [B, hw]; proposals: [B, P, hw]; valid: [B, P]. m_f is the proposal with the highest
    alignment score, m_b the union (pixelwise max) of the other valid proposals. Returns [B].
    """
    scores = alignment_scores(maps, proposals, mode).masked_fill(~valid, float("-inf"))
    best = scores.argmax(dim=-1)  # [B]
    foreground = proposals[torch.arange(len(best), device=best.device), best]
    others = valid.clone()
    others[torch.arange(len(best), device=best.device), best] = False
    background = (proposals * others[..., None].to(proposals.dtype)).amax(dim=1)
    return 1 - (soft_iou(maps, foreground) - soft_iou(maps, background))


def ras_loss(
    stage_maps: Tensor, proposals: Tensor, valid: Tensor, mode: str = "max"
) -> tuple[Tensor, Tensor]:
    """Eq. 7, mean over n of max(0, S_{n+1} - S_n), averaged over images with proposals.

    stage_maps: [B, N, hw]; proposals: [B, P, hw]; valid: [B, P]. Returns (loss, S_amb
    [B, N]). With one stage, or no image holding a proposal, the loss is 0.
    """
    batch, stages, _ = stage_maps.shape
    ambiguity = torch.stack(
        [localization_ambiguity(stage_maps[:, n], proposals, valid, mode) for n in range(stages)],
        dim=1,
    )
    has_proposal = valid.any(dim=1)
    if stages < 2 or not bool(has_proposal.any()):
        return stage_maps.sum() * 0.0, ambiguity
    hinge = F.relu(ambiguity[:, 1:] - ambiguity[:, :-1]).mean(dim=1)  # [B]
    return hinge[has_proposal].mean(), ambiguity


def straight_through_index(scores: Tensor, valid: Tensor | None = None) -> Tensor:
    """Eq. 8, y = one-hot(argmax S) + S - sg(S): one-hot forward, identity gradient. [..., P]."""
    choose = scores if valid is None else scores.masked_fill(~valid, float("-inf"))
    hard = F.one_hot(choose.argmax(dim=-1), scores.shape[-1]).to(scores.dtype)
    return hard + scores - scores.detach()


def iad_loss(
    target_maps: Tensor,
    distinct_maps: Tensor,
    distinct_valid: Tensor,
    proposals: Tensor,
    valid: Tensor,
    mode: str = "max",
    form: str = "paper",
    temperature: float = 0.1,
) -> Tensor:
    """Eq. 9, mean over d of 1 - ||y_a - y_d||^2, at every stage, averaged over stages.

    form "paper" is Eq. 8-9. Its gradient is 2 (y_a - y_d), whose forward value is
    one-hot(a) - one-hot(d): exactly zero when both texts pick the same proposal, the case
    the loss is meant to fix. form "exclusive" is the probability that both texts pick the
    same proposal under softmax(S / temperature) over the valid proposals,
    sum_p P_a(p) P_d(p), in [0, 1]; it has a gradient when they coincide.

    target_maps: [B, N, hw] (R_a); distinct_maps: [B, D, N, hw] (R_d for texts about other
    objects of the same image); distinct_valid: [B, D] (image b has a d-th such text);
    proposals: [B, P, hw]; valid: [B, P]. Pairs whose image has no proposal are left out;
    with no pair left the loss is 0.
    """
    if form not in IAD_FORMS:
        raise ValueError(f"iad form {form!r} is not one of {IAD_FORMS}")
    keep = distinct_valid & valid.any(dim=1, keepdim=True)  # [B, D]
    if not bool(keep.any()):
        return target_maps.sum() * 0.0 + distinct_maps.sum() * 0.0
    props = proposals[:, None]  # [B, 1, P, hw] broadcasts over stages
    if form == "exclusive":
        mask = ~valid[:, None]  # [B, 1, P]
        p_target = (
            (alignment_scores(target_maps, props, mode) / temperature)
            .masked_fill(mask, float("-inf"))
            .softmax(-1)
            .nan_to_num(0.0)
        )  # [B, N, P]
        p_distinct = (
            (alignment_scores(distinct_maps, props[:, None], mode) / temperature)
            .masked_fill(mask[:, None], float("-inf"))
            .softmax(-1)
            .nan_to_num(0.0)
        )  # [B, D, N, P]
        overlap = (p_target[:, None] * p_distinct).sum(-1).mean(dim=-1)  # [B, D]
        return overlap[keep].mean()
    y_target = straight_through_index(
        alignment_scores(target_maps, props, mode), valid[:, None]
    )  # [B, N, P]
    y_distinct = straight_through_index(
        alignment_scores(distinct_maps, props[:, None], mode), valid[:, None, None]
    )  # [B, D, N, P]
    distance = (y_target[:, None] - y_distinct).pow(2).sum(-1)  # [B, D, N]
    per_pair = (1 - distance).mean(dim=-1)  # averaged over stages
    return per_pair[keep].mean()


def region_pool(maps: Tensor, proposals: Tensor, valid: Tensor) -> Tensor:
    """Image-text scores mean(R) + max_p avg_{m_p}(R): maps [B, T, hw] -> [B, T].

    proposals: [B, P, hw] soft masks of image b; valid: [B, P]. An image without a valid
    proposal falls back to the pixel max.
    """
    mean = maps.mean(-1)
    area = proposals.sum(-1).clamp_min(1e-6)  # [B, P]
    region = torch.einsum("btx,bpx->btp", maps, proposals) / area[:, None]
    region = region.masked_fill(~valid[:, None], float("-inf")).amax(-1)
    has = valid.any(dim=1, keepdim=True)
    return mean + torch.where(has, region, maps.amax(-1))


def background_share(maps: Tensor, proposals: Tensor, valid: Tensor) -> Tensor:
    """Share of each map's mass outside every valid proposal, averaged: [B, N, hw] -> scalar.

    Images without a valid proposal are left out (0 when none has one).
    """
    union = (proposals * valid[..., None].to(proposals.dtype)).amax(dim=1)  # [B, hw]
    outside = (maps * (1 - union[:, None])).sum(-1) / maps.sum(-1).clamp_min(1e-6)  # [B, N]
    has = valid.any(dim=1)
    if not bool(has.any()):
        return maps.sum() * 0.0
    return outside[has].mean()
