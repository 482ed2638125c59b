"""Zero-shot CLIP baseline: dense CLIP ResNet embeddings (MaskCLIP) against the sentence."""

from __future__ import annotations

from refbench_clip_baseline.model import ClipBaseline

__all__ = ["ClipBaseline"]
