"""Projections, cosine response, learned temperature and the poly schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refbench.errors import ConfigError
from refbench.nn import (
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    cosine_response,
    diagonal_maps,
    poly_lr_lambda,
)


def test_projection_shapes() -> None:
    assert VisualProjection(512, 64)(torch.randn(2, 512, 3, 3)).shape == (2, 64, 3, 3)
    assert TextProjection(128, 64)(torch.randn(5, 128)).shape == (5, 64)
    assert TextProjection(128, 64)(torch.randn(2, 5, 128)).shape == (2, 5, 64)


def _np_cosine(visual: np.ndarray, text: np.ndarray) -> np.ndarray:
    v = visual / np.linalg.norm(visual, axis=1, keepdims=True)  # [B, C, h, w]
    t = text / np.linalg.norm(text, axis=-1, keepdims=True)
    b, c, h, w = v.shape
    out = np.zeros((b, t.shape[-2], h, w))
    for i in range(b):
        ti = t if t.ndim == 2 else t[i]
        for j in range(ti.shape[0]):
            for y in range(h):
                for x in range(w):
                    out[i, j, y, x] = v[i, :, y, x] @ ti[j]
    return out


def test_cosine_response_matches_numpy() -> None:
    generator = torch.Generator().manual_seed(0)
    visual = torch.randn(2, 8, 3, 4, generator=generator, dtype=torch.float64)
    shared = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    per_image = torch.randn(2, 3, 8, generator=generator, dtype=torch.float64)
    got = cosine_response(visual, shared, temperature=7.0)
    np.testing.assert_allclose(got.numpy(), 7.0 * _np_cosine(visual.numpy(), shared.numpy()))
    got = cosine_response(visual, per_image)
    np.testing.assert_allclose(got.numpy(), _np_cosine(visual.numpy(), per_image.numpy()))
    assert got.abs().max().item() <= 1.0 + 1e-12


def test_diagonal_maps_picks_each_images_own_text() -> None:
    maps = torch.arange(3 * 3 * 2 * 2, dtype=torch.float32).reshape(3, 3, 2, 2)
    diagonal = diagonal_maps(maps)
    assert diagonal.shape == (3, 2, 2)
    for i in range(3):
        assert torch.equal(diagonal[i], maps[i, i])


def test_learned_temperature() -> None:
    temperature = LearnedTemperature()
    assert temperature().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert LearnedTemperature(init=500.0, max_value=100.0)().item() == pytest.approx(100.0)
    (temperature() * 2).backward()
    assert temperature.log_scale.grad is not None


def test_poly_schedule_matches_closed_form() -> None:
    total, power = 100, 0.9
    factor = poly_lr_lambda(total, power=power)
    for t in [0, 1, 10, 50, 99, 100, 150]:
        assert factor(t) == pytest.approx(max(0.0, 1 - t / total) ** power)

    warm = poly_lr_lambda(110, power=2.0, warmup_steps=10, final_factor=0.2)
    assert warm(0) == pytest.approx(0.1)
    assert warm(9) == pytest.approx(1.0)
    assert warm(10) == pytest.approx(1.0)
    assert warm(60) == pytest.approx(0.2 + 0.8 * 0.5**2)
    assert warm(110) == pytest.approx(0.2)


def test_poly_schedule_drives_lambda_lr() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=5e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lr_lambda(10, power=0.9))
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [5e-5 * (1 - t / 10) ** 0.9 for t in range(10)]
    assert seen == pytest.approx(expected)
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.0, abs_tol=1e-12)


def test_poly_schedule_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="total_steps"):
        poly_lr_lambda(0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        poly_lr_lambda(10, warmup_steps=10)
    with pytest.raises(ConfigError, match="final_factor"):
        poly_lr_lambda(10, final_factor=1.5)
