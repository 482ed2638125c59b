"""The released code's shared parts: 20-token CLIP text and the bilateral attention block."""

from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from refbench.nn import SMALL_CLIP_CONFIG, BilateralAttention, ClipBackbone, fuse, released_tokens
from refbench.nn.bilateral import OFFICIAL_NAMES

START, END = 49406, 49407


def test_released_tokens_cut_long_sentences_before_their_end_token() -> None:
    short, long = "a cat", " ".join(["red"] * 30)
    tokens = released_tokens([short, long], 20)
    assert tokens.shape == (2, 20)
    full = open_clip.tokenize([short, long])
    assert torch.equal(tokens, full[:, :20])
    assert tokens[0, 0] == START and END in tokens[0].tolist()
    assert END not in tokens[1].tolist()  # 32 tokens: the end token is cut away
    # CLIP pools at the highest token id: the start token for a cut sentence
    assert int(tokens[1].argmax()) == 0 and int(tokens[0].argmax()) == 3
    with pytest.raises(TypeError):
        released_tokens("a cat", 20)


def test_short_context_text_equals_a_clip_built_with_that_context() -> None:
    """Encoding 20 tokens with a 32-token CLIP equals a CLIP whose context is 20, built with
    the same weights (positional embedding cut to 20 rows)."""
    torch.manual_seed(0)
    backbone = ClipBackbone(small=True).eval()
    config = copy.deepcopy(SMALL_CLIP_CONFIG)
    config["text_cfg"]["context_length"] = 20
    short = open_clip.CLIP(**config, quick_gelu=True).eval()
    state = dict(backbone.model.state_dict())
    state["positional_embedding"] = state["positional_embedding"][:20]
    short.load_state_dict(state)
    tokens = released_tokens(["the man on the left", " ".join(["blue"] * 25)], 20)
    with torch.no_grad():
        ours = backbone.encode_tokens(tokens)
        theirs = short.encode_text(tokens)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert backbone.encode_text(["a cat"], length=20).shape == (1, SMALL_CLIP_CONFIG["embed_dim"])


def block(channels: int = 8) -> BilateralAttention:
    torch.manual_seed(0)
    attention = BilateralAttention(channels, channels).eval()
    for parameter in attention.parameters():  # non-trivial norm affines
        if parameter.ndim == 1:
            parameter.data.normal_(0.5, 0.3)
    return attention


def test_one_text_gives_every_position_the_instance_norm_bias() -> None:
    """With one text, softmax over texts is 1: every position receives the same value vector,
    so the visual update is constant and its instance norm leaves only the affine bias."""
    attention = block()
    visual, text = torch.randn(2, 8, 5, 6), torch.randn(2, 1, 8)
    update, _ = attention(visual, text)
    bias = attention.vision_out[1].bias
    assert torch.allclose(update, bias.view(1, 8, 1, 1).expand_as(update), atol=1e-5)


def test_text_update_is_attention_over_positions_by_hand() -> None:
    attention = block()
    visual, text = torch.randn(1, 8, 3, 4), torch.randn(1, 2, 8)
    _, update = attention(visual, text)
    query = F.relu(attention.text_query[0](text))  # [1, 2, 8]
    key = attention.vision_key(visual).flatten(2)  # [1, 8, 12]
    value = attention.vision_value(visual).flatten(2).transpose(1, 2)  # [1, 12, 8]
    weights = torch.softmax(query @ key / math.sqrt(8), dim=-1)
    expected = attention.text_out[0](weights @ value)
    assert torch.allclose(update, expected, atol=1e-6)


def test_the_update_depends_on_the_other_texts_given() -> None:
    """Why refbench answers each (image, sentence) pair alone: a second text changes the first
    text's fused map."""
    attention = block()
    visual, texts = torch.randn(1, 8, 4, 4), torch.randn(1, 2, 8)
    alone, _ = fuse(visual, texts[:, :1], attention, 0.1)
    together, _ = fuse(visual, texts, attention, 0.1)
    assert not torch.allclose(alone, together, atol=1e-4)
    fused, fused_text = fuse(visual, texts, attention, 0.0)
    assert torch.equal(fused, visual) and torch.equal(fused_text, texts)


def test_released_names_map_onto_every_parameter() -> None:
    attention = block()
    heads = {name.split(".")[0] for name in attention.state_dict()}
    assert heads == set(OFFICIAL_NAMES.values())  # every submodule has a released name
    assert len(attention.state_dict()) == 24  # TRIS's attn_fusion.* tensors
    with pytest.raises(ValueError, match="same B"):
        attention(torch.randn(2, 8, 3, 3), torch.randn(1, 1, 8))
