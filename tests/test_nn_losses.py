"""TRIS pooling and L_cls against direct NumPy computations of the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refbench.nn import (
    background_softmax,
    classification_loss,
    focal_penalty,
    pool_response,
)


def _maps() -> torch.Tensor:
    # [B=2, T=2, h=2, w=2], written out by hand
    return torch.tensor(
        [
            [[[0.5, 2.0], [1.0, -1.0]], [[3.0, 0.0], [0.0, 0.0]]],
            [[[-2.0, -1.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]],
        ]
    )


def _np_tris_pool(maps: np.ndarray, temperature: float, p: float, c: float) -> np.ndarray:
    b, t = maps.shape[:2]
    out = np.zeros((b, t))
    for i in range(b):
        positions = maps[i].reshape(t, -1)  # [T, hw]
        logits = np.concatenate([np.ones((1, positions.shape[1])), positions]) * temperature
        soft = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)  # over 1 + T
        for j in range(t):
            x = soft[1 + j].mean()
            focal = (1 - x) ** p * math.log(c + x)
            out[i, j] = positions[j].mean() + positions[j].max() + focal
    return out


def test_simple_pooling_modes() -> None:
    maps = _maps()
    flat = maps.numpy().reshape(2, 2, -1)
    np.testing.assert_allclose(pool_response(maps, "mean").numpy(), flat.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(pool_response(maps, "max").numpy(), flat.max(-1), rtol=1e-6)
    np.testing.assert_allclose(
        pool_response(maps, "mean+max").numpy(), flat.mean(-1) + flat.max(-1), rtol=1e-6
    )
    # a hand value: image 0, text 0 has mean 0.625 and max 2
    assert pool_response(maps, "mean+max")[0, 0].item() == pytest.approx(2.625)


@pytest.mark.parametrize("temperature,p,c", [(1.0, 3.0, 0.01), (2.0, 1.0, 0.1)])
def test_tris_pooling_matches_the_formula(temperature: float, p: float, c: float) -> None:
    maps = _maps()
    got = pool_response(maps, "tris", softmax_temperature=temperature, focal_p=p, focal_c=c)
    expected = _np_tris_pool(maps.numpy().astype(np.float64), temperature, p, c)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_background_softmax_and_focal_term_by_hand() -> None:
    maps = torch.zeros(1, 1, 1, 1)  # logits [1 (background), 0]
    probability = background_softmax(maps)[0, :, 0, 0]
    e = math.e
    assert probability.tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])
    x = torch.tensor([0.25])
    assert focal_penalty(x, p=3, c=0.01).item() == pytest.approx(0.75**3 * math.log(0.26))


def test_unknown_pool_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="gap"):
        pool_response(_maps(), "gap")


def _np_mlsm(scores: np.ndarray, target: np.ndarray) -> float:
    # PCNet App. A.2: L_i = -(1/B) sum_j [y log sigmoid(x) + (1 - y) log(e^-x / (1 + e^-x))]
    sig = 1 / (1 + np.exp(-scores))
    per = -(target * np.log(sig) + (1 - target) * np.log(np.exp(-scores) / (1 + np.exp(-scores))))
    return float(per.mean(axis=1).mean())


def test_classification_loss_identity_matches_appendix_formula() -> None:
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.5, -2.0], [-0.5, 0.3, 3.0]])
    got = classification_loss(scores).item()
    assert got == pytest.approx(_np_mlsm(scores.numpy().astype(np.float64), np.eye(3)), rel=1e-6)
    torch_reference = torch.nn.MultiLabelSoftMarginLoss()(scores, torch.eye(3)).item()
    assert got == pytest.approx(torch_reference, rel=1e-6)


def test_classification_loss_with_positive_mask_and_ignored_pairs() -> None:
    scores = torch.tensor([[1.0, 2.0, -1.0, 0.0], [-3.0, 0.5, 0.5, 2.0]])
    positives = torch.tensor([[True, False, False, False], [False, False, True, True]])
    got = classification_loss(scores, positives).item()
    assert got == pytest.approx(_np_mlsm(scores.numpy(), positives.numpy().astype(float)), rel=1e-6)

    ignore = torch.tensor([[False, True, False, False], [True, True, False, False]])
    s, y = scores.numpy().astype(np.float64), positives.numpy().astype(float)
    rows = []
    for i in range(2):
        keep = ~ignore.numpy()[i]
        rows.append(_np_mlsm(s[i : i + 1, keep], y[i : i + 1, keep]))
    expected = float(np.mean(rows))
    assert classification_loss(scores, positives, ignore).item() == pytest.approx(expected, rel=1e-6)
    # ignoring a pair removes its gradient
    scores.requires_grad_(True)
    classification_loss(scores, positives, ignore).backward()
    assert scores.grad[ignore].abs().max().item() == 0.0
    assert scores.grad[~ignore].abs().min().item() > 0.0


def test_classification_loss_shape_errors() -> None:
    with pytest.raises(ValueError, match="B == T"):
        classification_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="positives"):
        classification_loss(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.bool))
