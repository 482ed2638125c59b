"""The training sampler: batches of distinct images, one positive expression each, plus N_d extras.

Each batch holds `batch_size` distinct images. For every image one positive expression is drawn
uniformly among all sentences of all its refs, and `num_distinct` (N_d) extra expressions are
drawn about OTHER objects of the same image (PCNet's IaD loss, Sec. 3.3): each extra picks an
object (ref with another ann_id) and one of its sentences. When the image has fewer other objects
than N_d, objects are drawn with replacement, so extras repeat (the paper's "repeated sampling",
Tab. 5); when it has no other object at all, it gets no extras (its expression list holds only
the positive, and the collate function records the count in ``extras["num_distinct"]``).

Everything is a pure function of (seed, epoch): every rank of a DDP run computes the same global
batches and keeps its own contiguous slice, so the union over ranks is the one-process batch.
An epoch visits every image with refs once. With several processes the global batch size must
be a multiple of the world size and the last, smaller batch of an epoch is trimmed to a
multiple of the world size (at most world_size - 1 images skipped, different ones each epoch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from refbench.api import Expression
from refbench.errors import ConfigError, DataError


@dataclass(frozen=True)
class SampledImage:
    """One image of a training batch: its positive expression and the N_d extras."""

    image_id: int
    positive: Expression
    extras: tuple[Expression, ...] = ()

    @property
    def expressions(self) -> list[Expression]:
        """[positive, extra_1, ..., extra_Nd]: the order `Batch.expressions[i]` uses."""
        return [self.positive, *self.extras]


def _object_sentences(dataset: Any, image_id: int) -> list[tuple[int, list[Expression]]]:
    """(ann_id, expressions) for every referred object of `image_id` that has sentences."""
    by_object: dict[int, list[Expression]] = {}
    for ref in dataset.refs_of_image(image_id):
        for sentence in ref.sentences:
            expression = Expression(
                text=sentence.text,
                image_id=int(image_id),
                ref_id=int(ref.ref_id),
                ann_id=int(ref.ann_id),
                sent_id=int(sentence.sent_id),
            )
            by_object.setdefault(int(ref.ann_id), []).append(expression)
    return sorted(by_object.items())


class TrainingSampler(Sampler):
    """Batches of `SampledImage`, deterministic given (seed, epoch); use as a `batch_sampler`.

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
    ) -> None:
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
        self.objects: dict[int, list[tuple[int, list[Expression]]]] = {}
        for image_id in dataset.image_ids:
            objects = _object_sentences(dataset, image_id)
            if objects:
                self.objects[int(image_id)] = objects
        self.image_ids = sorted(self.objects)
        if not self.image_ids:
            raise DataError("the training split has no image with a referring expression")
        if batch_size > len(self.image_ids):
            raise ConfigError(
                f"batch_size {batch_size} is larger than the {len(self.image_ids)} distinct "
                f"images with referring expressions in the training split; a batch needs distinct "
                f"images, so pass --batch-size {len(self.image_ids)} or less"
            )
        self.batch_size = batch_size
        self.num_distinct = num_distinct
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

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
        full, rest = divmod(len(self.image_ids), self.batch_size)
        rest -= rest % self.world_size
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def num_images(self) -> int:
        """Images with at least one referring expression: the epoch's population."""
        return len(self.image_ids)

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

    def global_batches(self, epoch: int) -> list[list[SampledImage]]:
        """All batches of `epoch`, before the per-rank split; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.image_ids))
        drawn = [self._draw(self.image_ids[int(i)], rng) for i in order]
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
