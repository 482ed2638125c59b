"""A rule-based English chunker for referring expressions: cues without any language model.

An expression is split into its head noun phrase and the modifiers that follow it
(prepositional phrases, "with"/"wearing"/"holding" phrases, relative clauses, participles).
The phrases are cumulative: the bare head ("a player"), the head with its pre-modifiers, then
each further modifier added in turn, ending with the whole expression, e.g.

    a player -> a player in blue and gray uniform -> a player in blue and gray uniform catching
    a ball

Expressions with no usable head noun ("left", "second from right") give one phrase: the
expression itself. This is the default backend when no LLM endpoint is configured.
"""

from __future__ import annotations

import re
from typing import Any

from refbench.cues.base import CueBackend, CueResult

DETERMINERS = frozenset(
    "a an the this that these those his her their its my your our some another both all".split()
)
SPATIAL = frozenset(
    """left right middle center centre front back top bottom upper lower far near closest nearest
    farthest furthest leftmost rightmost side corner edge background foreground""".split()
)
ORDINALS = frozenset(
    """first second third fourth fifth sixth last 1st 2nd 3rd 4th 5th next other""".split()
)
COLORS = frozenset(
    """white black red blue green yellow orange purple pink brown gray grey tan beige silver
    gold dark light navy maroon teal striped plaid checkered colored""".split()
)
ADJECTIVES = frozenset(
    """big small large little tall short long old young tiny huge half full empty whole
    partial visible hidden biggest smallest largest tallest shortest longest bald blond blonde
    cut sliced wooden wood metal glass plastic open closed bright shiny clear dirty clean
    same only single double main entire baby adult older younger elderly giant mini
    """.split()
)
NUMBERS = frozenset("two three four five six 2 3 4 5 6 many several".split())
MODIFIERS = SPATIAL | ORDINALS | COLORS | ADJECTIVES | NUMBERS | frozenset({"very", "most"})
WEAK_HEADS = MODIFIERS | frozenset({"one", "ones", "part", "piece", "thing", "object", "stuff"})

PREPOSITIONS = frozenset(
    """in on at with near by behind under underneath beneath beside besides between from above
    below over across along against inside outside around into onto toward towards to without
    among atop through past like except facing""".split()
)
NEEDS_TO = frozenset({"next", "closest", "nearest", "close", "closer"})  # boundary only before "to"
RELATIVES = frozenset({"that", "which", "who", "whose", "whom", "where"})
AUXILIARIES = frozenset({"is", "are", "was", "were", "has", "have", "being", "can"})
CONJUNCTIONS = frozenset({"and", "but", "or"})
PARTICLES = frozenset({"down", "up", "out", "away", "back", "over", "off", "forward", "around"})
IRREGULAR_PARTICIPLES = frozenset(
    """made worn held hung laid built sat lit ridden taken eaten seen driven shown written broken
    fallen""".split()
)
ING_NOUNS = frozenset(
    """building buildings ceiling clothing railing railings thing things ring rings king wing
    wings string strings icing frosting topping toppings filling stuffing bedding siding pudding
    dumpling awning evening morning earring earrings wedding painting paintings drawing sibling
    spring swing sling lighting seating parking living dining something anything nothing
    everything bowling sing ping""".split()
)
COMPOUND_FIRST = frozenset(
    """tennis baseball soccer football basketball frisbee teddy hot fire stop traffic parking
    wine cell dining potted coffee police stuffed ski skate surf snow motor computer
    laptop toilet bus train pizza cake hair bath tooth water""".split()
)
IRREGULAR_PLURALS = frozenset(
    "people men women children kids feet teeth mice geese police sheep".split()
)
NOT_PLURAL_S = ("ss", "us", "is", "ous")


def normalize(text: str) -> list[str]:
    """Lower-case words of `text`, punctuation other than apostrophes and hyphens dropped."""
    cleaned = re.sub(r"[^a-z0-9'\- ]+", " ", text.lower())
    return [w.strip("'-") for w in cleaned.split() if w.strip("'-")]


def _is_ing_verb(word: str) -> bool:
    return word.endswith("ing") and len(word) > 4 and word not in ING_NOUNS


def _is_participle(word: str) -> bool:
    return (word.endswith("ed") and len(word) > 3 and word not in COLORS | ADJECTIVES) or (
        word in IRREGULAR_PARTICIPLES
    )


def _is_verbish(word: str) -> bool:
    return _is_ing_verb(word) or _is_participle(word) or word in AUXILIARIES


def _starts_modifier(words: list[str], i: int) -> bool:
    """Whether a new modifier (segment) starts at `words[i]`."""
    word = words[i]
    prev = words[i - 1] if i > 0 else ""
    prev2 = words[i - 2] if i > 1 else ""
    nxt = words[i + 1] if i + 1 < len(words) else ""
    if i == 0:
        return word in PREPOSITIONS
    if prev in CONJUNCTIONS or prev in {"not", "while"}:
        return False  # "and holding ...": the conjunction already opened this modifier
    after_verb = _is_verbish(prev) or (prev in PARTICLES and _is_verbish(prev2))
    if word == "of":
        return False  # "the back of the chair", "a slice of pizza": binds to the noun before it
    if word in NEEDS_TO:
        return nxt == "to" and not after_verb
    if word == "to" and prev in NEEDS_TO:
        return False
    if word in PREPOSITIONS:
        return not after_verb and prev not in RELATIVES
    if word in RELATIVES:
        return True
    if word in AUXILIARIES:  # "who is", "whose head is": the verb of a relative clause
        return not any(w in RELATIVES | AUXILIARIES for w in words[max(0, i - 3) : i])
    if word == "while":
        return True
    if word == "not":
        return nxt != "" and _is_verbish(nxt)
    if word in CONJUNCTIONS:
        return nxt != "" and (
            nxt in PREPOSITIONS or nxt in RELATIVES or _is_verbish(nxt) or nxt == "not"
        )
    blockers = DETERMINERS | MODIFIERS | PREPOSITIONS | AUXILIARIES | RELATIVES | {"not"}
    if _is_ing_verb(word):
        return prev not in blockers
    if _is_participle(word) and (nxt in PREPOSITIONS or nxt in NEEDS_TO):
        return prev not in blockers
    return False


def _is_plural(word: str) -> bool:
    if word in IRREGULAR_PLURALS:
        return True
    return word.endswith("s") and not word.endswith(NOT_PLURAL_S) and len(word) > 3


def _article(first_word: str) -> str:
    return "an" if first_word[:1] in "aeio" or first_word.startswith("umb") else "a"


def chunk(text: str, max_phrases: int = 5) -> list[str]:
    """Cumulative phrases for `text`: head noun phrase first, the whole expression last."""
    words = normalize(text)
    full = " ".join(words)
    if not words:
        return [text.strip()] if text.strip() else []
    boundaries = [i for i in range(len(words)) if _starts_modifier(words, i)]
    head_end = boundaries[0] if boundaries else len(words)
    if head_end == 0:
        return [full]
    noun_phrase = words[:head_end]
    of_at = noun_phrase.index("of") if "of" in noun_phrase[1:] else len(noun_phrase)
    core, of_tail = noun_phrase[:of_at], noun_phrase[of_at:]
    determiner = core[0] if core[0] in DETERMINERS and len(core) > 1 else ""
    body = core[1:] if determiner else core
    # A location after the noun ("pizza bottom left") is a modifier of its own.
    trailing = 0
    while trailing < len(body) - 1 and body[len(body) - 1 - trailing] in SPATIAL | ORDINALS:
        trailing += 1
    if trailing and not of_tail:
        body = body[: len(body) - trailing]
        head_end -= trailing
        boundaries = [head_end, *boundaries]
    head = body[-1] if body else ""
    # A colour followed by modifiers is a noun ("orange closest to the banana").
    weak = head in WEAK_HEADS and not (head in COLORS and head_end < len(words))
    if not head or head in DETERMINERS or (weak and not of_tail):
        return [full]
    head_words = body[-2:] if len(body) > 1 and body[-2] in COMPOUND_FIRST else body[-1:]
    premodifiers = body[: len(body) - len(head_words)]

    if determiner:
        article = determiner
    elif premodifiers and premodifiers[0] in SPATIAL | ORDINALS | {"most"}:
        article = "the"
    elif _is_plural(head):
        article = ""
    else:
        article = _article((premodifiers or head_words)[0])
    bare_article = determiner or ("" if _is_plural(head) else _article(head_words[0]))

    def join(*parts: list[str] | str) -> str:
        out: list[str] = []
        for part in parts:
            out.extend([part] if isinstance(part, str) else part)
        return " ".join(w for w in out if w)

    phrases = [join(bare_article, head_words, of_tail)]
    if premodifiers:
        phrases.append(join(article, premodifiers, head_words, of_tail))
    prefix = join(article, body, of_tail)
    cuts = [*boundaries, len(words)]
    for start, end in zip(cuts, cuts[1:]):
        if end > start:
            phrases.append(join(prefix, words[head_end:end]))
    deduped = [p for i, p in enumerate(phrases) if i == 0 or p != phrases[i - 1]]
    if len(deduped) > max_phrases:
        deduped = deduped[:1] + deduped[len(deduped) - (max_phrases - 1) :]
    return deduped


class HeuristicBackend(CueBackend):
    """Cues from the rule-based chunker (`chunk`); no model, deterministic, fast."""

    name = "heuristic"
    VERSION = 1  # bump when the rules change, so old caches are not reused

    def __init__(self, max_phrases: int = 5) -> None:
        if max_phrases < 1:
            raise ValueError("max_phrases must be at least 1")
        self.max_phrases = int(max_phrases)

    def config(self) -> dict[str, Any]:
        """Rules version and phrase cap."""
        return {"backend": self.name, "version": self.VERSION, "max_phrases": self.max_phrases}

    def decompose_one(self, text: str) -> CueResult:
        """Cumulative phrases for one expression."""
        return CueResult(tuple(chunk(text, self.max_phrases)))
