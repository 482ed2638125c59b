"""Model parts shared by the CLIP-based plugins (PCNet, TRIS, the zero-shot CLIP baseline).

The dense CLIP backbone, a word-level text encoder for training from scratch, the projections and cosine response, the classification loss with
TRIS's pooling, and the poly learning-rate schedule live here once. See docs/nn.md.
"""

from __future__ import annotations

from refbench.nn.backbone import SMALL_CLIP_CONFIG, ClipBackbone
from refbench.nn.heads import (
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    cosine_response,
    diagonal_maps,
)
from refbench.nn.losses import (
    POOL_MODES,
    background_softmax,
    classification_loss,
    contrastive_loss,
    focal_penalty,
    pool_response,
)
from refbench.nn.schedule import poly_lr_lambda
from refbench.nn.text import WordGRUEncoder, word_ids

__all__ = [
    "POOL_MODES",
    "SMALL_CLIP_CONFIG",
    "ClipBackbone",
    "LearnedTemperature",
    "TextProjection",
    "VisualProjection",
    "WordGRUEncoder",
    "background_softmax",
    "classification_loss",
    "contrastive_loss",
    "cosine_response",
    "diagonal_maps",
    "focal_penalty",
    "pool_response",
    "poly_lr_lambda",
    "word_ids",
]
