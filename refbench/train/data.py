"""Turn sampled images into `refbench.api.Batch` objects for training.

`TrainingData` is a map-style dataset indexed by `SampledImage` (the items `TrainingSampler`
yields), so a `DataLoader(batch_sampler=TrainingSampler(...), collate_fn=collate_training)`
produces ready `Batch` objects: images resized (``resize``: "torch" or "pil", as
`refbench.data.transforms.ModelImageTransform`) and normalised at the model's input size,
``expressions[i] = [positive, extra_1, ..., extra_Nd]`` with cues filled when the model reads
them, and extras:

- ``num_distinct``: [B] long, how many extras item i holds (0 when it has no other object);
- ``proposals``: [B, P, S, S] bool (S: ``proposal_size``, default the input size) and ``proposals_valid`` [B, P] bool when the model asks for
  P proposals (an image with fewer proposals is padded with empty, invalid masks);
- ``clip_scores``: [B, P] float32, the score of every proposal for item i's positive sentence,
  when the proposal store holds per-sentence scores (PCNet's imported SAM masks);
- ``false_negatives``: [B, B] bool when masking is on: entry [i, j] (j != i) says image i's
  positive expression also fits image j, so it should not serve as a negative for image j.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from refbench.api import Batch, Expression
from refbench.data.transforms import ModelImageTransform
from refbench.errors import DataError
from refbench.train.sampler import SampledImage

# (positive expressions [B], image ids [B]) -> bool [B, B]: expression i also fits image j.
FalseNegativeFn = Callable[[Sequence[Expression], Sequence[int]], Any]


def check_cues(expressions: Sequence[Expression], cues: Mapping[str, Sequence[str]]) -> None:
    """Raise a `DataError` naming the first expression that has no cues in `cues`."""
    for expression in expressions:
        if expression.key not in cues:
            raise DataError(
                f"no cues for expression {expression.key} ({expression.text!r}); rebuild the cue "
                "cache for this split (`refbench train ... --cues BACKEND` builds it)"
            )


class TrainingData(Dataset):
    """Loads one `SampledImage`: image tensor, expressions with cues, optional proposals.

    The image transform is `ModelImageTransform(input_size, mean, std, resize)`, the one
    evaluation builds from the same config keys.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: str = "torch",
        num_cues: int = 0,
        cues: Mapping[str, Sequence[str]] | None = None,
        num_proposals: int = 0,
        proposals: Any = None,
        proposal_size: int | None = None,
        false_negatives: FalseNegativeFn | None = None,
    ) -> None:
        self.dataset = dataset
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = ModelImageTransform(self.input_size, self.mean, self.std, resize)
        self.num_cues = int(num_cues)
        self.cues = cues
        self.num_proposals = int(num_proposals)
        self.proposals = proposals
        # the side proposals are loaded at (nearest from the original size); default: the input
        self.proposal_size = int(proposal_size) if proposal_size else self.input_size
        self.false_negatives = false_negatives
        if self.num_cues and cues is None:
            raise DataError("the model reads cues (num_cues > 0) but no cue cache was given")
        if self.num_proposals and proposals is None:
            raise DataError(
                "the model needs proposals (num_proposals > 0) but no proposal store was given"
            )

    def __len__(self) -> int:
        return len(self.dataset.image_ids)

    def _with_cues(self, expression: Expression) -> Expression:
        if not self.num_cues:
            return expression
        phrases = self.cues.get(expression.key) if self.cues is not None else None
        if phrases is None:
            check_cues([expression], self.cues or {})
        return dataclasses.replace(expression, cues=tuple(phrases)[: self.num_cues])

    def _proposals(self, image_id: int) -> tuple[Tensor, Tensor]:
        size = self.proposal_size
        masks = torch.as_tensor(self.proposals.load(image_id, (size, size))).bool()
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (size, size):
            raise DataError(
                f"proposals of image {image_id} have shape {tuple(masks.shape)}; expected "
                f"[P, {size}, {size}]"
            )
        count = min(int(masks.shape[0]), self.num_proposals)
        padded = torch.zeros(self.num_proposals, size, size, dtype=torch.bool)
        padded[:count] = masks[:count]
        valid = torch.zeros(self.num_proposals, dtype=torch.bool)
        valid[:count] = True
        return padded, valid

    def __getitem__(self, item: SampledImage) -> dict[str, Any]:
        image = self.dataset.load_image(item.image_id)
        sample: dict[str, Any] = {
            "item": item,
            "image": self.transform(image),
            "expressions": [self._with_cues(e) for e in item.expressions],
        }
        if self.num_proposals:
            sample["proposals"], sample["proposals_valid"] = self._proposals(item.image_id)
            has_scores = getattr(self.proposals, "has_sentence_scores", None)
            if has_scores is not None and has_scores():
                sample["clip_scores"] = self._clip_scores(item.positive)
        return sample

    def _clip_scores(self, expression: Expression) -> Tensor:
        """[P] scores of the proposals for `expression` (its row of the store's table)."""
        ref = self.dataset.ref(expression.ref_id)
        row = [s.sent_id for s in ref.sentences].index(expression.sent_id)
        scores = torch.zeros(self.num_proposals, dtype=torch.float32)
        table = self.proposals.clip_scores(expression.ref_id)[row]
        count = min(int(table.shape[0]), self.num_proposals)
        scores[:count] = table[:count]
        return scores

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        """Stack samples into a `Batch` (see the module docstring for its extras)."""
        return collate_training(samples, self.false_negatives)


def collate_training(
    samples: list[dict[str, Any]], false_negatives: FalseNegativeFn | None = None
) -> Batch:
    """Stack `TrainingData` samples into a `Batch`."""
    items: list[SampledImage] = [s["item"] for s in samples]
    extras: dict[str, Any] = {
        "num_distinct": torch.tensor([len(i.extras) for i in items], dtype=torch.long),
        "image_ids": [i.image_id for i in items],
    }
    if "proposals" in samples[0]:
        extras["proposals"] = torch.stack([s["proposals"] for s in samples])
        extras["proposals_valid"] = torch.stack([s["proposals_valid"] for s in samples])
    if "clip_scores" in samples[0]:
        extras["clip_scores"] = torch.stack([s["clip_scores"] for s in samples])
    if false_negatives is not None:
        fits = torch.as_tensor(
            np.asarray(false_negatives([i.positive for i in items], [i.image_id for i in items])),
            dtype=torch.bool,
        )
        if tuple(fits.shape) != (len(items), len(items)):
            raise DataError(f"false-negative mask has shape {tuple(fits.shape)}, not [B, B]")
        fits = fits.clone()
        fits.fill_diagonal_(False)
        extras["false_negatives"] = fits
    images = torch.stack([s["image"] for s in samples])
    return Batch(images, [s["expressions"] for s in samples], extras)
