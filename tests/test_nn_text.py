"""The hashed-word BiGRU text encoder used by the small presets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from refbench.nn import WordGRUEncoder, word_ids


def test_word_ids_ignore_case_and_punctuation_and_stay_in_range() -> None:
    assert word_ids("The RED, circle!", 512) == word_ids("the red circle", 512)
    ids = word_ids("the red circle left of the blue square", 512)
    assert len(ids) == 8 and ids[0] == ids[5]  # "the" twice, one id
    assert all(1 <= i <= 511 for i in ids)
    assert len(word_ids("", 512)) == 1 and len(word_ids("?!", 512)) == 1


def test_word_ids_are_the_same_in_another_process() -> None:
    """Python's str hash is salted per process; the ids must not be."""
    code = "from refbench.nn import word_ids; print(word_ids('the leftmost green cross', 4096))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert other.stdout.strip() == str(word_ids("the leftmost green cross", 4096))


def test_encoder_shapes_and_padding_does_not_change_a_text() -> None:
    torch.manual_seed(0)
    encoder = WordGRUEncoder(16, buckets=256).eval()
    texts = ["red circle", "the small blue square left of the green cross", "cross"]
    together = encoder(texts)
    assert together.shape == (3, 16)
    for i, text in enumerate(texts):
        torch.testing.assert_close(encoder([text])[0], together[i])
    assert not torch.allclose(together[0], together[2])
    # word order matters (a bag of words could not tell these apart)
    a, b = encoder(["red circle left of blue square", "blue square left of red circle"])
    assert not torch.allclose(a, b)


def test_encoder_learns_and_rejects_bad_arguments() -> None:
    torch.manual_seed(0)
    encoder = WordGRUEncoder(8, buckets=64)
    encoder(["red circle"]).sum().backward()
    assert encoder.embedding.weight.grad is not None
    assert encoder.embedding.weight.grad[word_ids("red", 64)[0]].abs().sum() > 0
    with pytest.raises(ValueError, match="even"):
        WordGRUEncoder(7)
    with pytest.raises(TypeError, match="list of texts"):
        encoder("red circle")
