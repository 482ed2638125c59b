"""Image transforms shared by evaluation and training: square resize and normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


def to_tensor(image: np.ndarray) -> Tensor:
    """[H, W, 3] uint8 array -> [3, H, W] float tensor in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
    if not image.flags.writeable:
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def resize_square(image: Tensor, size: int) -> Tensor:
    """[3, H, W] float -> [3, size, size], bilinear with antialiasing (aspect ratio not kept)."""
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(
        image.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False,
        antialias=True,
    )
    return resized.squeeze(0)


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[3, H, W] float in [0, 1] -> (image - mean) / std per channel."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - mean_t) / std_t


class ModelImageTransform:
    """What a model expects: [H, W, 3] uint8 -> [3, S, S] float, resized and normalised."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def for_model(cls, config: dict) -> ModelImageTransform:
        """The transform a model's config asks for (``input_size``, ``mean``, ``std``)."""
        return cls(config["input_size"], config["mean"], config["std"])

    def __call__(self, image: np.ndarray) -> Tensor:
        return normalize(resize_square(to_tensor(image), self.size), self.mean, self.std)
