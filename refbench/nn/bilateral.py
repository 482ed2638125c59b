"""Bilateral attention between a visual map and text embeddings (TRIS and PCNet's released code).

Both released code bases fuse the projected visual map and the projected sentence with one
block (``bilateral_prompt`` in their ``model/attn.py``; TRIS uses one, PCNet four): every
position attends over the texts, every text attends over the positions, and each side gets the
attended values of the other back. The caller adds the result, scaled (0.1 in both code bases),
to its unchanged inputs. The names here are refbench's; `OFFICIAL_NAMES` maps the released
block's submodule names onto them (checkpoint import and export).

Attention runs over every text given for an image, so a map depends on which other texts were
fused with it: give one text per image to get answers that do not depend on grouping.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

# Released parameter prefix -> refbench's (within one block).
OFFICIAL_NAMES: dict[str, str] = {
    "v_proj1": "vision_query",
    "v_proj2": "vision_key",
    "v_proj3": "vision_value",
    "t_proj1": "text_query",
    "t_proj2": "text_key",
    "t_proj3": "text_value",
    "v_output": "vision_out",
    "t_output": "text_out",
}


def _visual_branch(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.ReLU(),
    )


def _text_branch(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU())


class BilateralAttention(nn.Module):
    """Cross attention both ways between a map [B, C_v, h, w] and texts [B, T, C_t].

    Queries, keys and values: 1x1 convolution + instance norm + ReLU on the visual side, linear
    + ReLU on the text side, all of width `hidden` (default C_v). Position p gets
    softmax_t(q_p . k_t / sqrt(C_t)) weighted text values; text t gets softmax_p(q_t . k_p /
    sqrt(C_t)) weighted visual values. Outputs go through a 1x1 convolution + instance norm
    (visual) and a linear layer (text) back to the input widths.
    """

    def __init__(self, visual_channels: int, text_channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = int(hidden or visual_channels)
        self.text_channels = int(text_channels)
        self.vision_query = _visual_branch(visual_channels, hidden)
        self.vision_key = _visual_branch(visual_channels, hidden)
        self.vision_value = _visual_branch(visual_channels, hidden)
        self.text_query = _text_branch(text_channels, hidden)
        self.text_key = _text_branch(text_channels, hidden)
        self.text_value = _text_branch(text_channels, hidden)
        self.vision_out = nn.Sequential(
            nn.Conv2d(hidden, visual_channels, 1), nn.InstanceNorm2d(visual_channels, affine=True)
        )
        self.text_out = nn.Sequential(nn.Linear(hidden, text_channels))

    def forward(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """(visual [B, C_v, h, w], text [B, T, C_t]) -> (update of visual, update of text)."""
        if visual.ndim != 4 or text.ndim != 3 or text.shape[0] != visual.shape[0]:
            raise ValueError(
                f"visual must be [B, C, h, w] and text [B, T, C] with the same B, got "
                f"{tuple(visual.shape)} and {tuple(text.shape)}"
            )
        batch, _, height, width = visual.shape
        scale = math.sqrt(self.text_channels)
        vision_query = self.vision_query(visual).flatten(2).transpose(1, 2)  # [B, hw, m]
        vision_key = self.vision_key(visual).flatten(2)  # [B, m, hw]
        vision_value = self.vision_value(visual).flatten(2).transpose(1, 2)  # [B, hw, m]
        text_query, text_key, text_value = (
            self.text_query(text), self.text_key(text), self.text_value(text)  # [B, T, m]
        )
        to_text = F.softmax(vision_query @ text_key.transpose(1, 2) / scale, dim=2)  # [B, hw, T]
        to_positions = F.softmax(text_query @ vision_key / scale, dim=2)  # [B, T, hw]
        visual_update = (to_text @ text_value).transpose(1, 2)  # [B, m, hw]
        visual_update = visual_update.reshape(batch, -1, height, width)
        text_update = to_positions @ vision_value  # [B, T, m]
        return self.vision_out(visual_update), self.text_out(text_update)


def fuse(
    visual: Tensor, text: Tensor, block: BilateralAttention, scale: float
) -> tuple[Tensor, Tensor]:
    """The released code's residual fusion: inputs plus `scale` x the block's updates."""
    visual_update, text_update = block(visual, text)
    return visual + scale * visual_update, text + scale * text_update

