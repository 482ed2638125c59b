"""Which other images a SynthRef expression also fits: false negatives for contrastive training.

An expression fits an image when its meaning resolves to exactly one object there (the rule in
`refbench.synth.grammar`). A batch of image-text pairs treats every other image as a negative
for a text; where the text also fits that image, a training option may mask the pair out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from refbench.errors import DataError
from refbench.io import read_json
from refbench.synth.grammar import Meaning, fitting_meanings
from refbench.synth.scene import SceneObject
from refbench.synth.variants import get_variant


class Resolver:
    """The scene descriptions and sentence meanings of one SynthRef data set."""

    def __init__(self, scenes: dict) -> None:
        self.margin_px = float(scenes["margin_px"])
        self.relations = tuple(scenes["relations"])
        self._objects = scenes["objects"]
        self._meanings = scenes["meanings"]
        self._fits: dict[int, frozenset[str]] = {}
        self._keys: dict[int, str] = {}

    @property
    def scene_records(self) -> dict[str, list[dict]]:
        """Image id (as str) -> its objects as stored: ann_id, shape, colour, size, cx, cy, ..."""
        return self._objects

    def objects(self, image_id: int) -> list[SceneObject]:
        """The objects of image `image_id`, in drawing order."""
        try:
            records = self._objects[str(image_id)]
        except KeyError:
            raise DataError(f"SynthRef has no image with id {image_id}") from None
        return [
            SceneObject(o["shape"], o["colour"], o["size"], o["cx"], o["cy"], o["r"], tuple(o["rgb"]))
            for o in records
        ]

    def meaning(self, sent_id: int) -> Meaning:
        """The meaning of sentence `sent_id`."""
        try:
            return Meaning.from_dict(self._meanings[str(sent_id)])
        except KeyError:
            raise DataError(f"SynthRef has no sentence with id {sent_id}") from None

    def _meaning_key(self, sent_id: int) -> str:
        key = self._keys.get(sent_id)
        if key is None:
            key = self._keys[sent_id] = self.meaning(sent_id).key()
        return key

    def fitting_keys(self, image_id: int) -> frozenset[str]:
        """Keys of every meaning that resolves in image `image_id` (computed once per image)."""
        found = self._fits.get(image_id)
        if found is None:
            meanings = fitting_meanings(self.objects(image_id), self.relations, self.margin_px)
            found = self._fits[image_id] = frozenset(m.key() for m in meanings)
        return found

    def fits(self, sent_id: int, image_id: int) -> bool:
        """Whether sentence `sent_id` picks out exactly one object in image `image_id`."""
        return self._meaning_key(sent_id) in self.fitting_keys(image_id)

    def matrix(self, sent_ids: Sequence[int], image_ids: Sequence[int]) -> np.ndarray:
        """[E, I] bool: entry (e, i) says whether sentence e fits image i."""
        keys = [self._meaning_key(int(s)) for s in sent_ids]
        fits = [self.fitting_keys(int(i)) for i in image_ids]
        out = np.zeros((len(keys), len(fits)), dtype=bool)
        for col, found in enumerate(fits):
            out[:, col] = [key in found for key in keys]
        return out


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> Resolver:
    return Resolver(read_json(path, "SynthRef scene file"))


def load_resolver(data_root: Path, variant: str = "default") -> Resolver:
    """The (cached) resolver of the SynthRef data set under `data_root`."""
    path = Path(data_root) / get_variant(variant).dataset / "scenes.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; generate SynthRef with `refbench data synth`")
    return _load(str(path.resolve()), path.stat().st_mtime_ns)


def sent_id_of(key: str | int) -> int:
    """The sentence id in an expression key ``image:ref:sent`` (or a bare sentence id)."""
    if isinstance(key, int):
        return key
    try:
        return int(str(key).rsplit(":", 1)[-1])
    except ValueError:
        raise DataError(f"{key!r} is not an expression key of the form image:ref:sent") from None


def compatibility(
    data_root: Path,
    keys: Sequence[str | int],
    image_ids: Sequence[int],
    variant: str = "default",
) -> np.ndarray:
    """[E, I] bool: whether expression `keys[e]` (``image:ref:sent``) also fits `image_ids[i]`.

    An expression always fits its own image. Training may treat a True off-image entry as a
    false negative and mask it; that option stays off by default and is recorded when used.
    """
    resolver = load_resolver(data_root, variant)
    return resolver.matrix([sent_id_of(k) for k in keys], image_ids)
