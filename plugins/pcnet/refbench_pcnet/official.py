"""PCNet as the authors' released code computes it (``variant="official"``).

The released code (github.com/zaiquanyang/Boosting_WRIS, ``model/model_prog_v5.py`` and
``model/attn.py``) differs from the paper's equations; docs/models.md compares them point by
point. What this module reproduces:

- four bilateral attention blocks (``attn_fusion_vl``), one per stage, always built; ``k_iters``
  (the released ``--K_Iters``, 1 in its README's evaluation) says how many run;
- stage k < K - 1 reads cue k, the LAST stage reads the full sentence;
- each stage (``refer_core``): L2-normalise the visual map, the query and the stage's text; the
  stage text attends over the positions (``forward_Qt``); the query attends over those
  contextual texts (``forward_Qt_Kt``) and adds the result x ``text_scale``; the normalised
  query attends over the positions again (``forward_Qt``) and every position over the queries
  (``forward_Qv``), each added x ``text_scale`` / ``vision_scale`` (0.1 and 0.1);
- the response is the un-normalised dot product of the updated map and updated query times a
  fixed exp(logit_scale), upsampled to the input size (bilinear, align_corners=False) and, at
  inference, ReLU'd.

Two behaviours of the released code only show when a batch holds more than one text; both are
reproduced by default and each has a key:
- ``official_reshape`` (default true): the query-over-context attention reshapes the context
  keys [B, T, C] to [T, C, B] where a transpose was meant; false uses the transpose (each query
  attends over the T contextual texts);
- ``text_attention`` (default "batch"): every image's queries and positions attend over the
  texts of the whole batch; "own" restricts each text to its own image and context.
At batch size 1 (the released evaluation) all choices give the same maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbench.api import IMAGENET_MEAN, IMAGENET_STD
from refbench.nn import BilateralAttention

NUM_BLOCKS = 4  # the released model always builds four blocks (K_Iters <= 4)
TEXT_ATTENTIONS = ("batch", "own")

# What ``variant="official"`` sets before the user's overrides, where the released code
# (model_prog_v5.TRIS with args.py's defaults, the README's evaluation, train_prog.py) differs
# from the paper config's defaults. The rest is shared: RN50 CLIP C5, 1024-d, 320 px, TRIS's
# pooling, N_d = 1 (--negative_samples), AdamW 5e-5 with the backbone at x0.1, weight decay
# 1e-2, poly 0.9, no warm-up, the paper's batch 36 and 15 epochs, and the official keys'
# defaults (k_iters 1, update weights 0.1, the loss weights of args.py but cls);
# `config._validate_official` pins the architecture.
OFFICIAL: dict[str, Any] = {
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "resize": "pil",
    "text_length": 20,
    "train_temperature": False,  # logit_scale is not in the released optimiser
    "cls_weight": 5.0,  # args.py --w4
    "num_proposals": 0,  # 40 when a SAM-proposal term is weighted
    "proposal_size": 32,  # SAM masks resized (nearest) to 32x32 for the proposal terms
    "sampling": "refs",  # one ref and one of its sentences per item
    "selection_metric": "mIoU",  # train_prog.py keeps the best val mIoU
    "grad_clip": 0.0,
}


def _normalise(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def texts_over_positions(block: BilateralAttention, visual: Tensor, text: Tensor) -> Tensor:
    """Each text attends over the positions of its image (``forward_Qt``).

    visual [B, C, h, w], text [T, N, C] with T = B, or T = 2B (the released code then repeats
    the images once) -> [T, N, C].
    """
    count, _, channels = text.shape
    if count > visual.shape[0]:
        visual = visual.repeat(count // visual.shape[0], 1, 1, 1)
    query = block.text_query(text)  # [T, N, C]
    key = block.vision_key(visual).reshape(count, channels, -1)  # [T, C, hw]
    value = block.vision_value(visual).reshape(count, channels, -1).transpose(1, 2)
    weights = F.softmax(query @ key / math.sqrt(channels), dim=2)
    return block.text_out(weights @ value)


def query_over_context(
    block: BilateralAttention, query: Tensor, context: Tensor, official_reshape: bool
) -> Tensor:
    """The query attends over the contextual texts (``forward_Qt_Kt``).

    query [T, 1, C], context [B, T, C] (the same T contextual texts for every image) ->
    [T, 1, C]. official_reshape: the released code's reshape of the keys [B, T, C] ->
    [T, C, B] (a transpose was meant; the two agree when B = T = 1).
    """
    count, _, channels = query.shape
    q = block.text_query(query)
    if official_reshape:
        key = block.text_key(context).reshape(count, channels, -1)
        value = block.text_value(context).reshape(count, channels, -1).transpose(1, 2)
    else:
        shared = context[0]  # [T, C]
        key = block.text_key(shared).transpose(0, 1)[None].expand(count, -1, -1)
        value = block.text_value(shared)[None].expand(count, -1, -1)
    weights = F.softmax(q @ key / math.sqrt(channels), dim=2)
    return block.text_out(weights @ value)


def positions_over_texts(block: BilateralAttention, visual: Tensor, text: Tensor) -> Tensor:
    """Each position attends over its image's texts (``forward_Qv``): visual [B, C, h, w],
    text [B, N, C] -> update [B, C, h, w]."""
    batch, channels, height, width = visual.shape
    query = block.vision_query(visual).reshape(batch, channels, -1).transpose(1, 2)
    key, value = block.text_key(text), block.text_value(text)
    weights = F.softmax(query @ key.transpose(1, 2) / math.sqrt(channels), dim=2)
    update = (weights @ value).permute(0, 2, 1).reshape(batch, channels, height, width)
    return block.vision_out(update)


def refer_stage(
    block: BilateralAttention,
    visual: Tensor,
    query: Tensor,
    stage_text: Tensor,
    size: tuple[int, int],
    text_scale: float,
    vision_scale: float,
    official_reshape: bool = True,
    text_attention: str = "batch",
) -> tuple[Tensor, Tensor, Tensor]:
    """One released CRM stage (``refer_core``).

    visual [B, hw, C] (the previous stage's map), query [T, C] (the previous query), stage_text
    [T, C] (cue or sentence); text t belongs to image t mod B. Returns (query [T, C], not
    normalised: the next stage's query; visual [B, hw, C]; texts [B, T, C]: the queries as
    image i sees them, to be scored against its map).
    """
    batch = visual.shape[0]
    count = query.shape[0]
    height, width = size
    visual = _normalise(visual)
    query = _normalise(query)
    stage_text = _normalise(stage_text)
    grid = visual.transpose(1, 2).reshape(batch, -1, height, width)
    context = texts_over_positions(block, grid, stage_text[:, None, :])  # [T, 1, C]
    if text_attention == "batch":
        every = context.transpose(0, 1).repeat(batch, 1, 1)  # [B, T, C]
        update = query_over_context(block, query[:, None, :], every, official_reshape)
    else:  # a softmax over its own context alone
        update = block.text_out(block.text_value(context))
    query = query + update[:, 0] * text_scale
    scored = _normalise(query)[None].repeat(batch, 1, 1)  # [B, T, C]
    texts = scored + texts_over_positions(block, grid, scored) * text_scale
    attended = scored
    if text_attention == "own":
        own = torch.arange(count, device=visual.device).view(-1, batch).T  # [B, T / B]
        attended = scored[torch.arange(batch, device=visual.device)[:, None], own]
    update_visual = positions_over_texts(block, grid, attended)
    visual = visual + update_visual.flatten(2).transpose(1, 2) * vision_scale
    return query, visual, texts


def stage_scores(visual: Tensor, texts: Tensor, scale: Tensor, size: tuple[int, int]) -> Tensor:
    """exp(logit_scale) x dot product: visual [B, hw, C], texts [B, T, C] -> [B, T, h, w]."""
    scores = torch.bmm(visual, texts.transpose(1, 2)) * scale  # [B, hw, T]
    return scores.transpose(1, 2).reshape(visual.shape[0], texts.shape[1], *size)


def upsample(maps: Tensor, size: int) -> Tensor:
    """[N, 1, h, w] -> [N, 1, S, S]: bilinear, align_corners=False (the released ``Upsample``)."""
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


class OfficialStages(nn.Module):
    """The four bilateral attention blocks of the released model (``attn_fusion_vl``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(BilateralAttention(dim, dim) for _ in range(NUM_BLOCKS))

    def forward(
        self,
        visual: Tensor,
        size: tuple[int, int],
        sentence: Tensor,
        cues: Tensor,
        k_iters: int,
        scale: Tensor,
        text_scale: float,
        vision_scale: float,
        official_reshape: bool = True,
        text_attention: str = "batch",
    ) -> list[Tensor]:
        """Every stage's scores, [B, T', h, w] each.

        visual [B, hw, C] projected; sentence [T, C] projected; cues [T, >= k_iters - 1, C]
        projected (stage k < K - 1 reads cue k; the last stage reads the sentence).
        """
        visual = _normalise(visual)
        query = _normalise(sentence)
        out = []
        for k in range(k_iters):
            stage_text = _normalise(sentence if k == k_iters - 1 else cues[:, k])
            query, visual, texts = refer_stage(
                self.blocks[k], visual, query, stage_text, size, text_scale, vision_scale,
                official_reshape, text_attention,
            )
            out.append(stage_scores(visual, texts, scale, size))
        return out
