"""Image transforms shared by evaluation and training: square resize and normalisation.

A model declares its transform in its config: ``input_size``, ``mean``, ``std`` and ``resize``,
one of `RESIZE_MODES`:

- ``"torch"`` (default): the uint8 image becomes float in [0, 1], then a bilinear,
  antialiased torch resize;
- ``"pil"``: Pillow's bilinear resize of the uint8 image, then float in [0, 1] (what
  torchvision's ``transforms.functional.resize`` does to a PIL image, as TRIS and PCNet's
  released code do). The two differ by up to about one grey level before normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

RESIZE_MODES = ("torch", "pil")


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


def resize_square_pil(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [size, size, 3] uint8 with Pillow's bilinear filter (aspect not kept)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[3, H, W] float in [0, 1] -> (image - mean) / std per channel."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - mean_t) / std_t


class ModelImageTransform:
    """What a model expects: [H, W, 3] uint8 -> [3, S, S] float, resized and normalised."""

    def __init__(
        self, size: int, mean: Sequence[float], std: Sequence[float], resize: str = "torch"
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize = resize

    @classmethod
    def for_model(cls, config: dict) -> ModelImageTransform:
        """The transform a model's config asks for (``input_size``, ``mean``, ``std``,
        ``resize``; a config without ``resize`` gets ``"torch"``)."""
        return cls(
            config["input_size"], config["mean"], config["std"], config.get("resize", "torch")
        )

    def __call__(self, image: np.ndarray) -> Tensor:
        if self.resize == "pil":
            return normalize(to_tensor(resize_square_pil(image, self.size)), self.mean, self.std)
        return normalize(resize_square(to_tensor(image), self.size), self.mean, self.std)
