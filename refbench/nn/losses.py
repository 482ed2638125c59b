"""The text-to-image classification loss L_cls and TRIS's pooling (PCNet App. A.2; TRIS).

Response maps of B images against T texts ([B, T, h, w]) are pooled into scores ([B, T]);
L_cls is a multi-label soft-margin loss whose positives are, by default, the diagonal (text i
describes image i; the other texts of the batch are its negatives, B = 1 + L).
`contrastive_loss` is the symmetric InfoNCE alternative (refbench's option, not the papers').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

POOL_MODES = ("tris", "mean", "max", "mean+max")

# TRIS's defaults for the focal term (its --FOCAL_P and --FOCAL_LAMBDA options).
TRIS_FOCAL_P = 3.0
TRIS_FOCAL_C = 0.01


def background_softmax(maps: Tensor, temperature: float = 1.0) -> Tensor:
    """Softmax over texts with a constant background logit 1 prepended: [B, T, h, w] -> [B, 1+T, h, w].

    TRIS concatenates a channel of ones (the background) to the scaled cosine maps and takes a
    softmax over channels, multiplied by `temperature` (its softmax_T, 1 in the released TRIS).
    """
    background = torch.ones_like(maps[:, :1])
    return F.softmax(torch.cat([background, maps], dim=1) * temperature, dim=1)


def focal_penalty(probability: Tensor, p: float = TRIS_FOCAL_P, c: float = TRIS_FOCAL_C) -> Tensor:
    """TRIS's focal term (1 - x)^p * log(c + x) of a mean softmax probability x (elementwise).

    It is at most log(1 + c) and very negative when x is small, so it lowers the score of a
    text that wins few positions of the background-augmented softmax.
    """
    return (1 - probability).pow(p) * torch.log(c + probability)


def pool_response(
    maps: Tensor,
    mode: str = "tris",
    softmax_temperature: float = 1.0,
    focal_p: float = TRIS_FOCAL_P,
    focal_c: float = TRIS_FOCAL_C,
) -> Tensor:
    """Pool response maps into image-text scores: [B, T, h, w] -> [B, T].

    mode "mean", "max", "mean+max": spatial mean, max, or their sum of each map.
    mode "tris" (TRIS's released loss, used by PCNet): mean + max of each map, plus
    `focal_penalty` of the map's mean probability under `background_softmax`.
    """
    if maps.ndim != 4:
        raise ValueError(f"maps must be [B, T, h, w], got {tuple(maps.shape)}")
    if mode not in POOL_MODES:
        raise ValueError(f"pool mode {mode!r} is not one of {', '.join(POOL_MODES)}")
    flat = maps.flatten(2)
    if mode == "mean":
        return flat.mean(-1)
    if mode == "max":
        return flat.amax(-1)
    scores = flat.mean(-1) + flat.amax(-1)
    if mode == "tris":
        probability = background_softmax(maps, softmax_temperature).flatten(2).mean(-1)[:, 1:]
        scores = scores + focal_penalty(probability, focal_p, focal_c)
    return scores


def classification_loss(
    scores: Tensor, positives: Tensor | None = None, ignore: Tensor | None = None
) -> Tensor:
    """L_cls (PCNet App. A.2; TRIS's MultiLabelSoftMarginLoss): scores [B, T] -> scalar.

    L = mean_i mean_j -[y_ij log s(x_ij) + (1 - y_ij) log s(-x_ij)], s the sigmoid.
    positives: [B, T] bool; None means the identity (B == T, text i belongs to image i).
    ignore: optional [B, T] bool of pairs left out of the loss (e.g. a known false negative,
    another expression of the same image); each row is averaged over its kept pairs.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, T], got {tuple(scores.shape)}")
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError(f"identity positives need B == T, got scores {tuple(scores.shape)}")
        positives = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape:
        raise ValueError(f"positives {tuple(positives.shape)} != scores {tuple(scores.shape)}")
    target = positives.to(scores.dtype)
    per_pair = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
    if ignore is None:
        return per_pair.mean()
    if ignore.shape != scores.shape:
        raise ValueError(f"ignore {tuple(ignore.shape)} != scores {tuple(scores.shape)}")
    keep = (~ignore).to(scores.dtype)
    per_row = (per_pair * keep).sum(-1) / keep.sum(-1).clamp(min=1)
    return per_row.mean()


def contrastive_loss(scores: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE over pooled image-text scores [B, B] (text i belongs to image i).

    Cross-entropy of each image over the texts and of each text over the images, averaged;
    `ignore` [B, B] bool (off-diagonal false negatives) removes pairs from both softmaxes.
    """
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be [B, B], got {tuple(scores.shape)}")
    if ignore is not None:
        eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        scores = scores.masked_fill(ignore & ~eye, float("-inf"))
    target = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target))
