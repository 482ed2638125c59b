"""The rule-based cue chunker on real-style RefCOCO / RefCOCO+ / RefCOCOg expressions.

Every expected phrase list below was written by hand from the intended reading of the
expression: the head noun phrase first, then each modifier added cumulatively.
"""

from __future__ import annotations

import pytest

from refbench.cues import HeuristicBackend, get_backend, pad_cues
from refbench.cues.heuristic import normalize

EXPECTED: dict[str, list[str]] = {
    # RefCOCO: short, location-heavy
    "man on left": ["a man", "a man on left"],
    "left man": ["a man", "the left man"],
    "woman in red shirt": ["a woman", "a woman in red shirt"],
    "guy in white shirt holding a bat": [
        "a guy", "a guy in white shirt", "a guy in white shirt holding a bat"],
    "catcher in blue and gray": ["a catcher", "a catcher in blue and gray"],
    "bottom left pizza": ["a pizza", "the bottom left pizza"],
    "pizza bottom left": ["a pizza", "a pizza bottom left"],
    "far right person": ["a person", "the far right person"],
    "zebra in front": ["a zebra", "a zebra in front"],
    "elephant on right": ["an elephant", "an elephant on right"],
    "teddy bear on right": ["a teddy bear", "a teddy bear on right"],
    "hot dog closest to you": ["a hot dog", "a hot dog closest to you"],
    "white car": ["a car", "a white car"],
    "big elephant": ["an elephant", "a big elephant"],
    "person behind the net": ["a person", "a person behind the net"],
    "umbrella above the woman": ["an umbrella", "an umbrella above the woman"],
    "orange closest to the banana": ["an orange", "an orange closest to the banana"],
    "bus on the left side": ["a bus", "a bus on the left side"],
    "sheep on the far right": ["sheep", "sheep on the far right"],
    "baseball bat": ["a baseball bat"],
    "bowl of broccoli": ["a bowl of broccoli"],
    # no head noun: the expression itself is the only phrase
    "second from left": ["second from left"],
    "left": ["left"],
    "blue": ["blue"],
    "the one on the left": ["the one on the left"],
    # RefCOCO+: appearance, no location words
    "girl in pink dress": ["a girl", "a girl in pink dress"],
    "black dog laying on the bed": ["a dog", "a black dog", "a black dog laying on the bed"],
    "man with glasses who is reading a book": [
        "a man", "a man with glasses", "a man with glasses who is reading a book"],
    "the tall man in red": ["the man", "the tall man", "the tall man in red"],
    "pizza covered with cheese": ["a pizza", "a pizza covered with cheese"],
    "two people on the couch": ["people", "two people", "two people on the couch"],
    "man not wearing hat": ["a man", "a man not wearing hat"],
    "skier in red jacket going down the hill": [
        "a skier", "a skier in red jacket", "a skier in red jacket going down the hill"],
    "small child next to the woman": [
        "a child", "a small child", "a small child next to the woman"],
    "tennis player swinging racket": ["a tennis player", "a tennis player swinging racket"],
    "cow looking at camera": ["a cow", "a cow looking at camera"],
    "man in black shirt and jeans": ["a man", "a man in black shirt and jeans"],
    "lady with umbrella and purse": ["a lady", "a lady with umbrella and purse"],
    "kid eating a donut": ["a kid", "a kid eating a donut"],
    "chair with a jacket on it": ["a chair", "a chair with a jacket", "a chair with a jacket on it"],
    "the cake with a candle in it": [
        "the cake", "the cake with a candle", "the cake with a candle in it"],
    # RefCOCOg: long sentences with clauses and participles
    "a player in blue and gray uniform catching a ball": [
        "a player",
        "a player in blue and gray uniform",
        "a player in blue and gray uniform catching a ball",
    ],
    "the woman in white shirt looking down at laptop computer": [
        "the woman",
        "the woman in white shirt",
        "the woman in white shirt looking down at laptop computer",
    ],
    "a slice of pizza next to the fork": [
        "a slice of pizza", "a slice of pizza next to the fork"],
    "the back of the chair on the right": [
        "the back of the chair", "the back of the chair on the right"],
    "glass of wine in front of the woman": [
        "a glass of wine", "a glass of wine in front of the woman"],
    "a man wearing a white shirt and black pants is holding a frisbee": [
        "a man",
        "a man wearing a white shirt and black pants",
        "a man wearing a white shirt and black pants is holding a frisbee",
    ],
    "the woman in the red coat who is walking towards the camera": [
        "the woman",
        "the woman in the red coat",
        "the woman in the red coat who is walking towards the camera",
    ],
    "guy with hat sitting on the bench to the right of the tree": [
        "a guy",
        "a guy with hat",
        "a guy with hat sitting on the bench",
        "a guy with hat sitting on the bench to the right of the tree",
    ],
    "the giraffe that is eating leaves": ["the giraffe", "the giraffe that is eating leaves"],
    "the laptop that is open": ["the laptop", "the laptop that is open"],
    "the horse being ridden by the girl": ["the horse", "the horse being ridden by the girl"],
    "motorcycle parked next to the blue car": [
        "a motorcycle", "a motorcycle parked next to the blue car"],
    "the dog whose head is on the pillow": ["the dog", "the dog whose head is on the pillow"],
    "a woman with long blonde hair wearing a black dress and holding a glass of wine": [
        "a woman",
        "a woman with long blonde hair",
        "a woman with long blonde hair wearing a black dress",
        "a woman with long blonde hair wearing a black dress and holding a glass of wine",
    ],
    "a brown and white cat sleeping on a couch": [
        "a cat", "a brown and white cat", "a brown and white cat sleeping on a couch"],
    "man in blue shirt standing behind the counter with his arms crossed": [
        "a man",
        "a man in blue shirt",
        "a man in blue shirt standing behind the counter",
        "a man in blue shirt standing behind the counter with his arms crossed",
    ],
    "A Man, in a Red Shirt.": ["a man", "a man in a red shirt"],
}

ARTICLES = {"a", "an", "the"}


def test_at_least_fifty_expressions() -> None:
    assert len(EXPECTED) >= 50


@pytest.mark.parametrize("text", list(EXPECTED))
def test_phrases_match_hand_decomposition(text: str) -> None:
    backend = HeuristicBackend()
    assert backend.decompose([text]) == [EXPECTED[text]]


def _strip_article(phrase: str) -> list[str]:
    words = phrase.split()
    return words[1:] if words and words[0] in ARTICLES else words


@pytest.mark.parametrize("text", list(EXPECTED))
def test_phrases_are_cumulative_and_end_with_the_expression(text: str) -> None:
    phrases = HeuristicBackend().decompose([text])[0]
    words = " ".join(text.lower().replace(",", " ").replace(".", " ").split()).split()
    # the last phrase is the whole expression (an article may have been added in front)
    assert _strip_article(phrases[-1]) == _strip_article(" ".join(words))
    # from the second phrase on, each extends the one before it
    for shorter, longer in zip(phrases[1:], phrases[2:]):
        assert longer.startswith(shorter + " ")
    # the head phrase's words all occur in the expression
    assert set(_strip_article(phrases[0])) <= set(words)


def test_long_expressions_are_capped_keeping_head_and_full_description() -> None:
    text = "man in red shirt with a hat holding a bat near the fence behind the car"
    phrases = HeuristicBackend(max_phrases=5).decompose([text])[0]
    assert phrases == [
        "a man",
        "a man in red shirt with a hat",
        "a man in red shirt with a hat holding a bat",
        "a man in red shirt with a hat holding a bat near the fence",
        "a man in red shirt with a hat holding a bat near the fence behind the car",
    ]
    assert len(HeuristicBackend(max_phrases=2).decompose([text])[0]) == 2


def test_padding_repeats_the_last_phrase_up_to_k() -> None:
    phrases = HeuristicBackend().decompose(["man on left"])[0]
    assert pad_cues(phrases, 5) == ("a man", "a man on left", "a man on left", "a man on left",
                                    "a man on left")
    assert pad_cues(["a", "b", "c", "d", "e", "f"], 5) == ("a", "b", "c", "d", "e")
    assert pad_cues(["only"], 1) == ("only",)
    with pytest.raises(ValueError):
        pad_cues([], 5)
    with pytest.raises(ValueError):
        pad_cues(["x"], 0)


def test_config_and_auto_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFBENCH_LLM_BASE_URL", raising=False)
    backend = get_backend("auto")
    assert backend.name == "heuristic"
    assert backend.config() == {"backend": "heuristic", "version": 1, "max_phrases": 5}
    assert get_backend("heuristic", max_phrases=3).config()["max_phrases"] == 3


def test_empty_and_punctuation_only() -> None:
    assert normalize("  Man,  on LEFT! ") == ["man", "on", "left"]
    assert HeuristicBackend().decompose(["man"]) == [["a man"]]
