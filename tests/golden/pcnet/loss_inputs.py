"""The fixed inputs of PCNet's loss golden outputs, regenerated from one seed.

Imported by `make_loss_golden.py` (in the reference venv, by path) and by
plugins/pcnet/tests/test_official_losses.py, so both sides see the same tensors. Only torch
is used. Shapes follow the official training: batch B = 3, a 10x10 response per stage,
320x320 images and maps, SAM proposals at 32x32 padded to 40.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SEED = 20240611
BATCH = 3
STAGES = 4
GRID = 10  # the response grid (RN50 C4 at 320)
IMAGE_SIZE = 320
PROPOSALS = 40
PROPOSAL_SIZE = 32
REAL_PROPOSALS = (9, 23, 40)  # the rest of each image's 40 slots are empty padding
SAME_IMAGE = (True, False, True)  # the diversify sentence is about the same image
TEMPERATURE = 1 / 0.07  # exp(logit_scale) at CLIP's initial value
POSITIVE_SENTENCES = (
    "the man on the left holding a red umbrella",
    "small brown dog",
    "a white car parked behind the bus on the right side of the street",
)
NEGATIVE_SENTENCES = (  # three per image, as --negative_samples 3
    ("woman in blue", "the umbrella", "man on the right"),
    ("cat on the sofa", "big dog", "the brown dog lying in the grass next to the fence"),
    ("red bus", "car in front", "white car"),
)
TEXT_LENGTH = 20


def _generator() -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(SEED)
    return generator


def make_inputs() -> dict[str, Tensor]:
    """Every input tensor, in a fixed draw order (do not reorder: the golden depends on it).

    scores: [STAGES, B, 100, B] image i, position p, sentence j (temperature included);
    fields: [STAGES, B, 1, 10, 10], each image's own-sentence response, the diagonal of scores;
    other_fields: [STAGES, B, 1, 10, 10], a second sentence's response (diversify);
    images: [B, 3, 320, 320]; proposals: [B, 40, 32, 32] float 0/1 (empty padding);
    clip_scores: [B, 40]; same_image: [B] bool.
    """
    generator = _generator()
    scores = TEMPERATURE * 0.2 * torch.randn(
        STAGES, BATCH, GRID * GRID, BATCH, generator=generator
    )
    # Zero regions after the ReLU: image 0's own map is negative everywhere at stage 0 and
    # on its top half at stage 2; image 2's is negative on its left half at stage 1.
    field_view = scores.view(STAGES, BATCH, GRID, GRID, BATCH)
    field_view[0, 0, :, :, 0] = -field_view[0, 0, :, :, 0].abs() - 0.5
    field_view[2, 0, : GRID // 2, :, 0] = -field_view[2, 0, : GRID // 2, :, 0].abs() - 3.0
    field_view[1, 2, :, : GRID // 2, 2] = -field_view[1, 2, :, : GRID // 2, 2].abs() - 3.0
    fields = torch.stack(
        [scores[:, i, :, i].reshape(STAGES, 1, GRID, GRID) for i in range(BATCH)], dim=1
    )
    other_fields = TEMPERATURE * 0.2 * torch.randn(
        STAGES, BATCH, 1, GRID, GRID, generator=generator
    )
    coarse_images = torch.randn(BATCH, 3, 40, 40, generator=generator)
    images = F.interpolate(coarse_images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                           align_corners=False)
    proposals = torch.zeros(BATCH, PROPOSALS, PROPOSAL_SIZE, PROPOSAL_SIZE)
    for i, count in enumerate(REAL_PROPOSALS):
        corners = torch.randint(0, PROPOSAL_SIZE - 4, (count, 2), generator=generator)
        sides = torch.randint(3, 17, (count, 2), generator=generator)
        for n in range(count):
            (y, x), (h, w) = corners[n].tolist(), sides[n].tolist()
            proposals[i, n, y : y + h, x : x + w] = 1.0
    # Image 0's best-scored proposal lies in the top rows, where its stage-2 map is zero.
    proposals[0, 0] = 0.0
    proposals[0, 0, 0:9, 4:20] = 1.0
    clip_scores = torch.zeros(BATCH, PROPOSALS)
    for i, count in enumerate(REAL_PROPOSALS):
        clip_scores[i, :count] = 0.15 + 0.2 * torch.rand(count, generator=generator)
    clip_scores[0, 0] = 0.4
    same_image = torch.tensor(SAME_IMAGE)
    return {
        "scores": scores,
        "fields": fields,
        "other_fields": other_fields,
        "images": images,
        "proposals": proposals,
        "clip_scores": clip_scores,
        "same_image": same_image,
    }


def relu_maps(fields: Tensor) -> Tensor:
    """The official model's ReLU'd map: [..., 1, 10, 10] -> [..., 1, 320, 320].

    Bilinear upsampling to the input size with align_corners=False (model/utils.Upsample),
    then a ReLU.
    """
    lead = fields.shape[:-3]
    flat = fields.reshape(-1, 1, GRID, GRID)
    upsampled = F.interpolate(flat, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                              align_corners=False)
    return F.relu(upsampled).reshape(*lead, 1, IMAGE_SIZE, IMAGE_SIZE)
