"""The helpers several parts of refbench share: close-name hints, stable hashes, COCO RLE."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refbench.errors import did_you_mean
from refbench.io import canonical_json, encode_masks, encode_rle, stable_hash
from refbench.proposals.postprocess import decode_masks


def test_did_you_mean_names_the_closest_choices_or_nothing() -> None:
    assert did_you_mean("heuristc", ["heuristic", "llm"]) == " Did you mean 'heuristic'?"
    assert did_you_mean("abcd", ["abce", "abxx", "xyz"], n=2) == " Did you mean 'abce' or 'abxx'?"
    assert did_you_mean("zzz", ["heuristic", "llm"]) == ""
    assert did_you_mean("map_sise", ["map_size", "lr"], quote=False) == " Did you mean map_size?"


# Hashes that caches, run folders and checkpoints are stored under: each pinned to its value
# before the one implementation replaced the copies, so a change here would orphan them.
_CONFIG = {"model": "x", "b": [1, 2.5, None], "a": {"z": True, "é": "ü"}}


def test_cue_cache_keys_are_unchanged() -> None:
    from refbench.cues.base import config_hash, sentence_hash

    assert config_hash(_CONFIG) == "7c82ed84e750"
    assert sentence_hash("the man in blue", _CONFIG) == (
        "1c4ecb9fb1e8c7230673adac1ca10b7cdc0668b347994703e5f83f7d7fbc8189"
    )
    with pytest.raises(TypeError):  # a cue config must be plain JSON
        config_hash({"path": Path("/tmp")})


def test_proposal_cache_keys_and_checksums_are_unchanged() -> None:
    from refbench.proposals.store import config_hash, record_checksum

    assert config_hash({**_CONFIG, "path": Path("/tmp/x")}) == "f7b1db73be"
    assert record_checksum("img-1", 20, 30, ["abc", "d"]) == (
        "813c4a20e7ff928813f172548adc4150d75a919a51703ae007801bb7e4cd081b"
    )


def test_stable_hash_matches_each_serialisation_in_use() -> None:
    value = ["refs", [{"id": 1, "p": Path("/a")}]]
    assert stable_hash(value) == "464c67c51d109eb1d5e038bb9ecb65a1ef8c792bdf82922b5665a6ebe16bae1d"
    for compact, separators in ((True, (",", ":")), (False, None)):
        text = json.dumps(_CONFIG, sort_keys=True, separators=separators, default=str)
        assert canonical_json(_CONFIG, compact=compact) == text
        assert stable_hash(_CONFIG, 8, compact=compact) == (
            hashlib.sha256(text.encode()).hexdigest()[:8]
        )


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (24, 36)])
def test_encode_rle_round_trips_and_matches_pycocotools(shape: tuple[int, int]) -> None:
    from pycocotools import mask as mask_utils

    masks = np.random.default_rng(0).random((3, *shape)) > 0.5
    rles = encode_masks(list(masks))
    for mask, rle in zip(masks, rles):
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle == {"size": list(shape), "counts": reference["counts"].decode("ascii")}
        assert encode_rle(torch.from_numpy(mask)) == rle
        assert np.array_equal(decode_masks([rle], *shape)[0], mask)
    assert encode_masks([]) == []
