"""Backbone + heads trained with L_cls and TRIS pooling: a few AdamW steps lower the loss."""

from __future__ import annotations

import torch

from refbench.nn import (
    ClipBackbone,
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    classification_loss,
    cosine_response,
    pool_response,
)


def test_a_few_adamw_steps_reduce_the_classification_loss() -> None:
    torch.manual_seed(0)
    backbone = ClipBackbone(small=True)
    dim = 64
    visual_proj = VisualProjection(backbone.feature_dim, dim)
    text_proj = TextProjection(backbone.embed_dim, dim)
    temperature = LearnedTemperature()
    modules = torch.nn.ModuleList([backbone, visual_proj, text_proj, temperature]).train()
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-3, weight_decay=1e-2)

    images = torch.randn(4, 3, 96, 96)
    texts = ["a red car on the left", "the tall man", "green bowl", "dog sleeping"]

    def loss() -> torch.Tensor:
        visual = visual_proj(backbone.encode_image_dense(images))
        text = text_proj(backbone.encode_text(texts))
        maps = cosine_response(visual, text, temperature())  # [B, T, h, w]
        return classification_loss(pool_response(maps, "tris"))

    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    with torch.no_grad():
        final = loss().item()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert final < losses[0] - 0.05, (losses, final)
