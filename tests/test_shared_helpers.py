"""The helpers several parts of refbench share: close-name hints, stable hashes, COCO RLE."""

from __future__ import annotations

from refbench.errors import did_you_mean


def test_did_you_mean_names_the_closest_choices_or_nothing() -> None:
    assert did_you_mean("heuristc", ["heuristic", "llm"]) == " Did you mean 'heuristic'?"
    assert did_you_mean("abcd", ["abce", "abxx", "xyz"], n=2) == " Did you mean 'abce' or 'abxx'?"
    assert did_you_mean("zzz", ["heuristic", "llm"]) == ""
    assert did_you_mean("map_sise", ["map_size", "lr"], quote=False) == " Did you mean map_size?"
