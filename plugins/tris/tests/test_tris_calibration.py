"""TRIS's calibration losses and masked foreground against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from refbench_tris.model import negative_sentences

from refbench.api import Batch, Expression
from refbench.nn.calibration import (
    foreground_images,
    negative_calibration_loss,
    positive_calibration_loss,
)


def test_positive_calibration_is_minus_log_cosine_by_hand() -> None:
    foreground = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    text = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    # cosines: 1/sqrt(2) and 1 -> mean(-log(0.7071), -log 1) = 0.5 * 0.5 * log 2
    expected = 0.5 * (0.5 * math.log(2.0) + 0.0)
    assert positive_calibration_loss(foreground, text).item() == pytest.approx(expected, rel=1e-6)


def test_positive_calibration_clamps_non_positive_cosines() -> None:
    foreground = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[-1.0, 0.0]])  # cosine -1: TRIS's unguarded log would be NaN
    value = positive_calibration_loss(foreground, text, eps=1e-4).item()
    assert value == pytest.approx(-math.log(1e-4), rel=1e-6)


def test_negative_calibration_by_hand_with_padding() -> None:
    foreground = torch.tensor([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    negatives = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 1.0]],  # cos 0 and 1/sqrt(2)
            [[0.0, -3.0], [9.0, 9.0]],  # cos -1; second is padding
            [[1.0, 0.0], [0.0, 1.0]],  # no valid negative at all: left out
        ]
    )
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    image0 = 0.5 * (-math.log(1.0) - math.log(1.0 - 1.0 / math.sqrt(2.0)))
    image1 = -math.log(2.0)
    expected = 0.5 * (image0 + image1)
    value = negative_calibration_loss(foreground, negatives, valid).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_negative_calibration_without_any_negative_is_zero_with_grad() -> None:
    foreground = torch.randn(2, 4, requires_grad=True)
    value = negative_calibration_loss(foreground, torch.randn(2, 1, 4), torch.zeros(2, 1).bool())
    assert value.item() == 0.0
    value.backward()
    assert foreground.grad is not None


def test_foreground_is_sigmoid_of_map_times_image() -> None:
    images = torch.randn(2, 3, 8, 8)
    maps = torch.stack([torch.full((2, 2), 0.0), torch.full((2, 2), 2.0)])  # constant maps
    out = foreground_images(maps, images, size=8)
    sigmoid = 1.0 / (1.0 + np.exp(-np.array([0.0, 2.0])))
    expected = images.numpy() * sigmoid[:, None, None, None]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_foreground_resizes_to_the_calibration_input() -> None:
    images = torch.ones(1, 3, 16, 16)
    maps = torch.zeros(1, 2, 2)
    out = foreground_images(maps, images, size=12)
    assert out.shape == (1, 3, 12, 12)
    np.testing.assert_allclose(out.numpy(), 0.5, rtol=1e-6)


def test_negative_sentences_use_other_objects_then_fall_back() -> None:
    batch = Batch(
        torch.zeros(3, 3, 8, 8),
        [
            [Expression("left man"), Expression("red cup"), Expression("left man")],
            [Expression("blue car")],
            [Expression("dog")],
        ],
        extras={"false_negatives": torch.tensor([[0, 0, 1], [0, 0, 0], [0, 0, 0]]).bool()},
    )
    negatives = negative_sentences(batch)
    assert negatives[0] == ["red cup"]  # its own extras, never its own positive
    # image 1 has no other object: other images' positives (TRIS's fallback)
    assert negatives[1] == ["left man", "dog"]
    # image 2: "left man" (image 0's positive) is marked as also fitting image 2
    assert negatives[2] == ["blue car"]
