"""Projections into the shared space and the cosine response map (TRIS; PCNet Sec. 3.2, A.4).

TRIS projects the CLIP C5 map with a 1x1 convolution and the text embedding with a linear layer
to a common width (C = 1024 for RN50), L2-normalises both, and takes the cosine times a learned
temperature as the response of every position to every text.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VisualProjection(nn.Module):
    """1x1 convolution of the visual map to the shared width: [B, in_ch, h, w] -> [B, dim, h, w]."""

    def __init__(self, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=1, bias=True)

    def forward(self, visual: Tensor) -> Tensor:
        """[B, in_ch, h, w] -> [B, dim, h, w]."""
        return self.proj(visual)


class TextProjection(nn.Module):
    """Linear map of the text embedding to the shared width: [..., in_dim] -> [..., dim]."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, text: Tensor) -> Tensor:
        """[..., in_dim] -> [..., dim]."""
        return self.proj(text)


class LearnedTemperature(nn.Module):
    """A learned positive scale kept as a log, initialised like CLIP's (1 / 0.07).

    max_value: optional clamp of the scale (CLIP training clamps at 100; TRIS does not clamp).
    """

    def __init__(self, init: float = 1 / 0.07, max_value: float | None = None) -> None:
        super().__init__()
        if init <= 0:
            raise ValueError(f"temperature init must be positive, got {init}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))
        self.max_value = max_value

    def forward(self) -> Tensor:
        """The scale exp(log_scale), a 0-d tensor."""
        scale = self.log_scale.exp()
        if self.max_value is not None:
            scale = scale.clamp(max=self.max_value)
        return scale


def cosine_response(visual: Tensor, text: Tensor, temperature: Tensor | float = 1.0) -> Tensor:
    """Temperature x cosine between every position and every text.

    visual: [B, C, h, w]; text: [T, C] (the same texts for every image) or [B, T, C]
    (per-image texts, e.g. PCNet's modulated queries). Returns [B, T, h, w].
    """
    if visual.ndim != 4:
        raise ValueError(f"visual must be [B, C, h, w], got {tuple(visual.shape)}")
    visual = F.normalize(visual, dim=1)
    text = F.normalize(text, dim=-1)
    if text.ndim == 2:
        response = torch.einsum("bchw,tc->bthw", visual, text)
    elif text.ndim == 3 and text.shape[0] == visual.shape[0]:
        response = torch.einsum("bchw,btc->bthw", visual, text)
    else:
        raise ValueError(
            f"text must be [T, C] or [B, T, C] with B = {visual.shape[0]}, got {tuple(text.shape)}"
        )
    return response * temperature


def diagonal_maps(maps: Tensor) -> Tensor:
    """The map of each image for its own text: [B, B, h, w] -> [B, h, w] (maps[i, i])."""
    if maps.ndim != 4 or maps.shape[0] != maps.shape[1]:
        raise ValueError(f"maps must be [B, B, h, w], got {tuple(maps.shape)}")
    return maps.diagonal(dim1=0, dim2=1).permute(2, 0, 1)
