"""TRIS, "Referring Image Segmentation Using Text Supervision" (ICCV 2023), first stage."""

from __future__ import annotations

from refbench.nn.calibration import (
    foreground_images,
    negative_calibration_loss,
    positive_calibration_loss,
)
from refbench_tris.model import TRIS

__all__ = ["TRIS", "foreground_images", "negative_calibration_loss", "positive_calibration_loss"]
