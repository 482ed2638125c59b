"""The training sampler: batches of items, one positive expression each, plus N extras.

A model's config picks the sampling unit (key ``sampling``, default ``"images"``):

- ``"images"``: each batch holds `batch_size` distinct images and an epoch visits every image
  with refs once. For every image one positive expression is drawn uniformly among all sentences
  of all its refs, and `num_distinct` (N_d) extra expressions are drawn about OTHER objects of the
  same image (PCNet's IaD loss, Sec. 3.3): each extra picks an object (ref with another ann_id)
  and one of its sentences. When the image has fewer other objects than N_d, objects are drawn
  with replacement, so extras repeat (the paper's "repeated sampling", Tab. 5); when it has no
  other object at all, it gets no extras (its expression list holds only the positive, and the
  collate function records the count in ``extras["num_distinct"]``).
- ``"refs"``: an epoch visits every ref with sentences once, so one image can appear twice in a
  batch (TRIS's released training). The positive is uniform over the ref's sentences; the
  `num_distinct` (N) extras are negatives drawn one by one with replacement: a uniform ref among
  the other refs (other ref_id) of the same image, then a uniform sentence of it. When the image
  has no other ref, each negative is a uniform ref of the whole split, then a uniform sentence of
  it, redrawn while its text equals the positive's. Every item has exactly N extras.

Everything is a pure function of (seed, epoch): every rank of a DDP run computes the same global
batches and keeps its own contiguous slice, so the union over ranks is the one-process batch.
With several processes the global batch size must be a multiple of the world size and the last,
smaller batch of an epoch is trimmed to a multiple of the world size (at most world_size - 1
items skipped, different ones each epoch); `drop_last` drops it instead. Both units behave alike
here: with one process and ``drop_last=False`` (the default) the last batch is kept whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from refbench.api import Expression
from refbench.errors import ConfigError, DataError

SAMPLING_UNITS = ("images", "refs")


@dataclass(frozen=True)
class SampledImage:
    """One item of a training batch: an image, its positive expression and the N extras.

    With ``unit="refs"`` the item stands for one ref (``positive.ref_id``) and its image; the
    extras are its negatives.
    """

    image_id: int
    positive: Expression
    extras: tuple[Expression, ...] = ()

    @property
    def expressions(self) -> list[Expression]:
        """[positive, extra_1, ..., extra_N]: the order `Batch.expressions[i]` uses."""
        return [self.positive, *self.extras]


@dataclass(frozen=True)
class _RefSentences:
    """One ref of the split with its sentences as expressions (the "refs" unit's population)."""

    image_id: int
    ref_id: int
    expressions: tuple[Expression, ...]


def _ref_expressions(ref: Any, image_id: int) -> list[Expression]:
    """The expressions of one ref, in sentence order."""
    return [
        Expression(
            text=sentence.text,
            image_id=int(image_id),
            ref_id=int(ref.ref_id),
            ann_id=int(ref.ann_id),
            sent_id=int(sentence.sent_id),
        )
        for sentence in ref.sentences
    ]


def _object_sentences(dataset: Any, image_id: int) -> list[tuple[int, list[Expression]]]:
    """(ann_id, expressions) for every referred object of `image_id` that has sentences."""
    by_object: dict[int, list[Expression]] = {}
    for ref in dataset.refs_of_image(image_id):
        for expression in _ref_expressions(ref, image_id):
            by_object.setdefault(int(ref.ann_id), []).append(expression)
    return sorted(by_object.items())


def _ref_sentences(dataset: Any) -> list[_RefSentences]:
    """Every ref of the split that has sentences, ordered by (image_id, ref_id)."""
    refs = [
        _RefSentences(int(image_id), int(ref.ref_id), tuple(_ref_expressions(ref, image_id)))
        for image_id in dataset.image_ids
        for ref in dataset.refs_of_image(image_id)
        if ref.sentences
    ]
    return sorted(refs, key=lambda r: (r.image_id, r.ref_id))


class TrainingSampler(Sampler):
    """Batches of `SampledImage`, deterministic given (seed, epoch); use as a `batch_sampler`.

    unit: ``"images"`` (distinct images per batch) or ``"refs"`` (one item per ref, TRIS's
    released sampling); see the module docstring. `num_distinct` is N, the extras per item.

    Call `set_epoch(epoch)` before iterating; `set_start(batch_index)` skips the batches an
    interrupted epoch already trained on (exact resumption).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        num_distinct: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        unit: str = "images",
    ) -> None:
        if unit not in SAMPLING_UNITS:
            raise ConfigError(
                f"unknown sampling unit {unit!r}; the model config key 'sampling' must be one of "
                f"{', '.join(repr(u) for u in SAMPLING_UNITS)}"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if num_distinct < 0:
            raise ConfigError(f"num_distinct must be at least 0, got {num_distinct}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        if batch_size % world_size:
            raise ConfigError(
                f"batch_size {batch_size} is not a multiple of the {world_size} processes; "
                f"choose --batch-size divisible by {world_size}"
            )
        self.unit = unit
        # "images": the referred objects of each image; "refs": every ref with its other refs.
        self.objects: dict[int, list[tuple[int, list[Expression]]]] = {}
        self.refs: list[_RefSentences] = []
        self._other_refs: list[tuple[int, ...]] = []
        if unit == "images":
            for image_id in dataset.image_ids:
                objects = _object_sentences(dataset, image_id)
                if objects:
                    self.objects[int(image_id)] = objects
            self.image_ids = sorted(self.objects)
            self.num_items = len(self.image_ids)
            population = "distinct images with referring expressions"
            reason = "a batch needs distinct images, so "
        else:
            self.refs = _ref_sentences(dataset)
            by_image: dict[int, list[int]] = {}
            for index, ref in enumerate(self.refs):
                by_image.setdefault(ref.image_id, []).append(index)
            self._other_refs = [
                tuple(i for i in by_image[ref.image_id] if i != index)
                for index, ref in enumerate(self.refs)
            ]
            self.image_ids = sorted(by_image)
            self.num_items = len(self.refs)
            population = "refs with referring expressions"
            reason = ""
        if not self.num_items:
            raise DataError(f"the training split has no {population}")
        if batch_size > self.num_items:
            raise ConfigError(
                f"batch_size {batch_size} is larger than the {self.num_items} {population} in "
                f"the training split; {reason}pass --batch-size {self.num_items} or less"
            )
        if unit == "refs" and num_distinct and not all(self._other_refs):
            texts = {e.text for ref in self.refs for e in ref.expressions}
            if len(texts) < 2:
                raise DataError(
                    "a ref alone in its image takes negatives of another text from the rest of "
                    f"the split, but every sentence of the training split reads {texts.pop()!r}"
                )
        self.batch_size = batch_size
        self.num_distinct = num_distinct
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    @classmethod
    def for_model(
        cls,
        dataset: Any,
        config: Mapping[str, Any],
        *,
        batch_size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> TrainingSampler:
        """The sampler a model's config asks for: keys ``sampling`` (default ``"images"``),
        ``num_distinct`` (default 0) and ``batch_size`` (unless `batch_size` is given)."""
        return cls(
            dataset,
            int(batch_size if batch_size is not None else config["batch_size"]),
            num_distinct=int(config.get("num_distinct", 0)),
            seed=seed,
            rank=rank,
            world_size=world_size,
            unit=str(config.get("sampling", "images")),
        )

    # --- epoch bookkeeping ----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (and restart at batch 0)."""
        self.epoch = int(epoch)
        self.start_batch = 0

    def set_start(self, batch_index: int) -> None:
        """Skip the first `batch_index` batches of the current epoch."""
        self.start_batch = int(batch_index)

    def __len__(self) -> int:
        """Batches per epoch (global batches; each rank yields its slice of every one)."""
        full, rest = divmod(self.num_items, self.batch_size)
        rest -= rest % self.world_size
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def num_images(self) -> int:
        """Images with at least one referring expression (the epoch's population for "images")."""
        return len(self.image_ids)

    def expressions(self) -> list[Expression]:
        """Every expression a batch can hold (to check a cue cache before training)."""
        if self.unit == "images":
            return [e for objects in self.objects.values() for _, es in objects for e in es]
        return [e for ref in self.refs for e in ref.expressions]

    # --- drawing --------------------------------------------------------------------------
    def _draw(self, image_id: int, rng: np.random.Generator) -> SampledImage:
        objects = self.objects[image_id]
        # The positive is uniform over the image's sentences, not over its objects.
        counts = np.array([len(sentences) for _, sentences in objects])
        flat = int(rng.integers(counts.sum()))
        owner = int(np.searchsorted(np.cumsum(counts), flat, side="right"))
        positive_ann, sentences = objects[owner]
        positive = sentences[flat - int(counts[:owner].sum())]
        others = [sentences for ann_id, sentences in objects if ann_id != positive_ann]
        extras: list[Expression] = []
        if self.num_distinct and others:
            replace = len(others) < self.num_distinct
            picks = rng.choice(len(others), size=self.num_distinct, replace=replace)
            for pick in picks:
                candidates = others[int(pick)]
                extras.append(candidates[int(rng.integers(len(candidates)))])
        return SampledImage(image_id, positive, tuple(extras))

    def _pick(self, ref_index: int, rng: np.random.Generator) -> Expression:
        """A uniform sentence of ref `ref_index`."""
        expressions = self.refs[ref_index].expressions
        return expressions[int(rng.integers(len(expressions)))]

    def _draw_ref(self, ref_index: int, rng: np.random.Generator) -> SampledImage:
        positive = self._pick(ref_index, rng)
        others = self._other_refs[ref_index]
        negatives: list[Expression] = []
        for _ in range(self.num_distinct):
            if others:
                negative = self._pick(others[int(rng.integers(len(others)))], rng)
            else:
                negative = positive
                while negative.text == positive.text:
                    negative = self._pick(int(rng.integers(len(self.refs))), rng)
            negatives.append(negative)
        return SampledImage(self.refs[ref_index].image_id, positive, tuple(negatives))

    def global_batches(self, epoch: int) -> list[list[SampledImage]]:
        """All batches of `epoch`, before the per-rank split; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_items)
        if self.unit == "images":
            drawn = [self._draw(self.image_ids[int(i)], rng) for i in order]
        else:
            drawn = [self._draw_ref(int(i), rng) for i in order]
        batches = [drawn[i : i + self.batch_size] for i in range(0, len(drawn), self.batch_size)]
        last = batches[-1]
        if len(last) < self.batch_size:
            keep = len(last) - len(last) % self.world_size
            if self.drop_last or keep == 0:
                batches.pop()
            else:
                batches[-1] = last[:keep]
        return batches

    def local_slice(self, batch: list[SampledImage]) -> list[SampledImage]:
        """This rank's contiguous share of a global batch."""
        share = len(batch) // self.world_size
        return batch[self.rank * share : (self.rank + 1) * share]

    def __iter__(self) -> Iterator[list[SampledImage]]:
        for batch in self.global_batches(self.epoch)[self.start_batch :]:
            yield self.local_slice(batch)
