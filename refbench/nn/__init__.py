"""Model parts shared by the CLIP-based plugins (PCNet, TRIS, the zero-shot CLIP baseline).

The dense CLIP backbone (with the released code's 20-token text), a word-level text encoder for
training from scratch, the projections and cosine response, the released code's bilateral
attention block, the classification loss with TRIS's pooling, and the poly learning-rate
schedule live here once. See docs/nn.md.
"""

from __future__ import annotations

from refbench.nn.backbone import (
    SMALL_CLIP_CONFIG,
    ClipBackbone,
    encode_clip_tokens,
    released_tokens,
)
from refbench.nn.bilateral import BilateralAttention, fuse
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
    "BilateralAttention",
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
    "encode_clip_tokens",
    "focal_penalty",
    "fuse",
    "pool_response",
    "poly_lr_lambda",
    "released_tokens",
    "word_ids",
]
