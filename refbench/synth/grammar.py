"""SynthRef referring expressions: their meaning, how a meaning resolves in a scene, and words.

A `Meaning` is what a sentence says, independent of its wording. `resolve` is the one rule
deciding which object a meaning picks out in a scene (or none); the generator only writes
meanings that resolve to their target, and the false-negative resolver asks the same rule
whether a meaning also fits another image. With m = margin x image side, the rule is:

- attribute "the [size] colour shape": exactly one object has those attributes.
- position "the D on the left" (right/top/bottom): exactly two objects match D and their
  centres differ by at least m along that axis; the one on that side.
- superlative "the leftmost D": at least two objects match D and the most extreme one's centre
  is at least m beyond the runner-up's.
- relation "the D1 below the D2" (left of/right of/above): exactly one object matches D2 (the
  anchor). Among the other objects matching D1, exactly one lies clearly that way (offset d
  along the direction with d >= m and d >= the perpendicular offset p) and none of the others
  lies even loosely that way (d > 0 and 2d >= p).
- relation "the D1 closest to the D2": a unique anchor, at least two other objects match D1,
  and the nearest centre is at least m nearer than the second nearest.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refbench.synth.scene import SceneObject

TEMPLATES = ("attribute", "position", "superlative", "relation")

# Unit vectors (x, y) with y pointing down the image.
_AXIS = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "top": (0.0, -1.0),
    "bottom": (0.0, 1.0),
    "left of": (-1.0, 0.0),
    "right of": (1.0, 0.0),
    "above": (0.0, -1.0),
    "below": (0.0, 1.0),
}


@dataclass(frozen=True)
class Descriptor:
    """An attribute phrase: a shape, optionally a colour and a size ("large red circle")."""

    shape: str
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            obj.shape == self.shape
            and (self.colour is None or obj.colour == self.colour)
            and (self.size is None or obj.size == self.size)
        )

    @property
    def words(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape) if w)

    def key(self) -> str:
        return f"{self.size or '-'},{self.colour or '-'},{self.shape}"

    def as_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size}


@dataclass(frozen=True)
class Meaning:
    """What a referring sentence says; `template` is its kind, `word` its direction/relation."""

    template: str  # attribute | position | superlative | relation
    target: Descriptor
    word: str | None = None  # left/right/top/bottom, or a relation ("below", "closest to")
    anchor: Descriptor | None = None

    def key(self) -> str:
        """A canonical string: equal keys mean equal meanings."""
        anchor = self.anchor.key() if self.anchor else "-"
        return f"{self.template}|{self.target.key()}|{self.word or '-'}|{anchor}"

    def as_dict(self) -> dict:
        return {
            "template": self.template,
            "target": self.target.as_dict(),
            "word": self.word,
            "anchor": self.anchor.as_dict() if self.anchor else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Meaning:
        anchor = Descriptor(**data["anchor"]) if data.get("anchor") else None
        return cls(data["template"], Descriptor(**data["target"]), data.get("word"), anchor)


def resolve(
    meaning: Meaning,
    objects: Sequence[SceneObject],
    margin_px: float,
    _matches: dict[Descriptor, list[int]] | None = None,
) -> int | None:
    """The index of the one object `meaning` picks out in `objects`, or None (see module doc)."""
    cache = {} if _matches is None else _matches

    def match(d: Descriptor) -> list[int]:
        if d not in cache:
            cache[d] = [i for i, o in enumerate(objects) if d.matches(o)]
        return cache[d]

    matching = match(meaning.target)
    kind = meaning.template
    if kind == "attribute":
        return matching[0] if len(matching) == 1 else None
    if kind in ("position", "superlative"):
        if len(matching) < 2 or (kind == "position" and len(matching) != 2):
            return None
        ux, uy = _AXIS[meaning.word]
        score = sorted(((objects[i].cx * ux + objects[i].cy * uy, i) for i in matching), reverse=True)
        return score[0][1] if score[0][0] - score[1][0] >= margin_px else None
    if kind == "relation":
        anchors = match(meaning.anchor)
        if len(anchors) != 1:
            return None
        a = objects[anchors[0]]
        candidates = [i for i in matching if i != anchors[0]]
        if meaning.word == "closest to":
            if len(candidates) < 2:
                return None
            dist = sorted((np.hypot(objects[i].cx - a.cx, objects[i].cy - a.cy), i) for i in candidates)
            return dist[0][1] if dist[1][0] - dist[0][0] >= margin_px else None
        ux, uy = _AXIS[meaning.word]
        clear, loose = [], 0
        for i in candidates:
            ox, oy = objects[i].cx - a.cx, objects[i].cy - a.cy
            d = ox * ux + oy * uy
            p = abs(ox * uy - oy * ux)
            if d >= margin_px and d >= p:
                clear.append(i)
            elif d > 0 and 2 * d >= p:
                loose += 1
        return clear[0] if len(clear) == 1 and loose == 0 else None
    raise ValueError(f"unknown template {kind!r}")


def candidate_meanings(objects: Sequence[SceneObject], relations: Sequence[str]) -> list[Meaning]:
    """Every meaning that could resolve in this scene (it names only attributes present).

    Relations are listed only with anchors that are unique here, since no other can resolve.
    """
    shapes = sorted({o.shape for o in objects})
    pairs = sorted({(o.shape, o.colour) for o in objects})
    triples = sorted({(o.shape, o.colour, o.size) for o in objects})
    by_shape = [Descriptor(s) for s in shapes]
    by_colour = [Descriptor(s, c) for s, c in pairs]
    full = [Descriptor(s, c, z) for s, c, z in triples]
    out = [Meaning("attribute", d) for d in by_colour + full]
    for d, word in itertools.product(by_colour + full, ("left", "right", "top", "bottom")):
        out.append(Meaning("position", d, word))
    for d, word in itertools.product(by_shape + by_colour, ("left", "right", "top", "bottom")):
        out.append(Meaning("superlative", d, word))
    unique = [d for d in by_colour if sum(d.matches(o) for o in objects) == 1]
    for d1, word, d2 in itertools.product(by_shape + by_colour, relations, unique):
        if d1 != d2:
            out.append(Meaning("relation", d1, word, d2))
    return out


def fitting_meanings(
    objects: Sequence[SceneObject], relations: Sequence[str], margin_px: float
) -> dict[Meaning, int]:
    """Every meaning that resolves in this scene, with the object it picks out."""
    found = {}
    cache: dict[Descriptor, list[int]] = {}
    for meaning in candidate_meanings(objects, relations):
        index = resolve(meaning, objects, margin_px, cache)
        if index is not None:
            found[meaning] = index
    return found


def is_natural(meaning: Meaning, objects: Sequence[SceneObject]) -> bool:
    """Whether the generator may write `meaning`: every word of it is needed in this scene.

    Attribute: size only when colour and shape are not enough. Position: size only when colour
    and shape match more than two objects. Superlative: colour only when the shape alone matches
    more objects. Relation: at least two objects (besides the anchor) match the target phrase.
    """
    def count(d: Descriptor) -> int:
        return sum(d.matches(o) for o in objects)

    t = meaning.target
    if meaning.template == "attribute":
        return t.size is None or count(Descriptor(t.shape, t.colour)) > 1
    if meaning.template == "position":
        return t.size is None or count(Descriptor(t.shape, t.colour)) > 2
    if meaning.template == "superlative":
        return t.colour is None or count(Descriptor(t.shape)) > count(t)
    if meaning.template == "relation":
        return sum(t.matches(o) and not meaning.anchor.matches(o) for o in objects) >= 2
    return False


_POSITION = {
    "left": ("the {d} on the left", "the left {d}", "{d} at left"),
    "right": ("the {d} on the right", "the right {d}", "{d} at right"),
    "top": ("the {d} at the top", "the top {d}", "{d} on top"),
    "bottom": ("the {d} at the bottom", "the bottom {d}", "{d} at bottom"),
}
_SUPERLATIVE = {
    "left": ("the leftmost {d}", "the {d} furthest to the left", "leftmost {d}"),
    "right": ("the rightmost {d}", "the {d} furthest to the right", "rightmost {d}"),
    "top": ("the topmost {d}", "the highest {d}", "the {d} nearest the top"),
    "bottom": ("the bottommost {d}", "the lowest {d}", "the {d} nearest the bottom"),
}
_RELATION = {
    "left of": ("the {d} left of the {a}", "the {d} to the left of the {a}", "{d} left of {a}"),
    "right of": ("the {d} right of the {a}", "the {d} to the right of the {a}", "{d} right of {a}"),
    "above": ("the {d} above the {a}", "the {d} over the {a}", "{d} above {a}"),
    "below": ("the {d} below the {a}", "the {d} under the {a}", "{d} beneath {a}"),
    "closest to": ("the {d} closest to the {a}", "the {d} nearest to the {a}", "{d} closest to {a}"),
}


def paraphrases(meaning: Meaning) -> list[str]:
    """Every wording of `meaning` the grammar knows (at least three)."""
    t = meaning.target
    if meaning.template == "attribute":
        if t.size:
            tail = f"the {t.colour} {t.shape} that is {t.size}"
        else:
            tail = f"the {t.shape} that is {t.colour}"
        return [f"the {t.words}", t.words, tail]
    if meaning.template == "position":
        forms = _POSITION[meaning.word]
    elif meaning.template == "superlative":
        forms = _SUPERLATIVE[meaning.word]
    else:
        forms = _RELATION[meaning.word]
    return [f.format(d=t.words, a=meaning.anchor.words if meaning.anchor else "") for f in forms]


def cues(meaning: Meaning, sentence: str) -> list[str]:
    """Target-related cues from the head noun to the full description (the sentence itself)."""
    t = meaning.target
    phrases = [t.shape]
    if t.colour:
        phrases.append(f"{t.colour} {t.shape}")
    if t.size:
        phrases.append(f"{t.size} {t.colour} {t.shape}")
    if phrases[-1] != sentence:
        phrases.append(sentence)
    return phrases
