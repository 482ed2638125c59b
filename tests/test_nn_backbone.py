"""ClipBackbone: shapes, the dense-embedding property, text encoding and weight loading."""

from __future__ import annotations

import hashlib
import pickle
from fractions import Fraction

import numpy as np
import open_clip
import pytest
import torch

from refbench.errors import CheckpointError
from refbench.nn import SMALL_CLIP_CONFIG, ClipBackbone


def _small(seed: int = 0) -> ClipBackbone:
    torch.manual_seed(seed)
    return ClipBackbone(small=True).eval()


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return _small(0)


@pytest.mark.parametrize("size", [96, 128])
def test_shapes_of_every_output(backbone: ClipBackbone, size: int) -> None:
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        c5 = backbone.encode_image_dense(images)
        dense = backbone.dense_embeddings(c5)
        pooled = backbone.global_embedding(images)
        text = backbone.encode_text(["the man in red", "a dog", "left"])
    side = size // 32
    assert backbone.feature_dim == SMALL_CLIP_CONFIG["vision_cfg"]["width"] * 32
    assert backbone.embed_dim == SMALL_CLIP_CONFIG["embed_dim"]
    assert c5.shape == (2, backbone.feature_dim, side, side)
    assert dense.shape == (2, backbone.embed_dim, side, side)
    assert pooled.shape == (2, backbone.embed_dim)
    assert text.shape == (3, backbone.embed_dim)
    assert backbone.tokenize(["a b c"]).shape == (1, SMALL_CLIP_CONFIG["text_cfg"]["context_length"])
    assert backbone.weights_description == "random init (small config)"


def test_global_embedding_is_open_clips_image_embedding(backbone: ClipBackbone) -> None:
    images = torch.randn(3, 3, 128, 128)  # the small config's native size
    with torch.no_grad():
        ours = backbone.global_embedding(images)
        theirs = backbone.model.encode_image(images)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_attention_pool_matches_open_clip_at_the_native_grid(backbone: ClipBackbone) -> None:
    c5 = torch.rand(2, backbone.feature_dim, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone.attention_pool(c5), backbone.model.visual.attnpool(c5), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("grid", [4, 3])
def test_dense_embedding_equals_global_embedding_of_a_constant_map(grid: int) -> None:
    model = _small(1)
    pool = model.model.visual.attnpool
    with torch.no_grad():
        pool.positional_embedding.zero_()
        feature = torch.rand(2, model.feature_dim)
        c5 = feature[:, :, None, None].expand(2, model.feature_dim, grid, grid).contiguous()
        dense = model.dense_embeddings(c5)
        # open_clip's own attention pool is the reference where its grid fits (native 4x4)
        reference = pool(c5) if grid == 4 else model.attention_pool(c5)
    for y in range(grid):
        for x in range(grid):
            torch.testing.assert_close(dense[:, :, y, x], reference, atol=1e-5, rtol=1e-5)


def test_dense_embedding_is_value_then_output_projection(backbone: ClipBackbone) -> None:
    pool = backbone.model.visual.attnpool
    c5 = torch.rand(1, backbone.feature_dim, 3, 3)
    with torch.no_grad():
        dense = backbone.dense_embeddings(c5).numpy()
    wv, bv = pool.v_proj.weight.detach().numpy(), pool.v_proj.bias.detach().numpy()
    wc, bc = pool.c_proj.weight.detach().numpy(), pool.c_proj.bias.detach().numpy()
    features = c5.numpy()[0].reshape(backbone.feature_dim, -1).T  # [9, C5]
    expected = ((features @ wv.T + bv) @ wc.T + bc).T.reshape(-1, 3, 3)
    np.testing.assert_allclose(dense[0], expected, atol=1e-4, rtol=1e-4)


def test_channels_last_gives_the_same_features(backbone: ClipBackbone) -> None:
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        reference = backbone.encode_image_dense(images)
        model = _small(0).to(memory_format=torch.channels_last)
        out = model.encode_image_dense(images.contiguous(memory_format=torch.channels_last))
        dense = model.dense_embeddings(out)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    assert dense.shape == (2, model.embed_dim, 3, 3)


def test_encode_text_is_the_projected_eot_token(backbone: ClipBackbone) -> None:
    texts = ["the catcher in blue and gray", "dog"]
    tokens = backbone.tokenize(texts)
    eot = open_clip.tokenizer._tokenizer.eot_token_id
    clip = backbone.model
    with torch.no_grad():
        x = clip.token_embedding(tokens) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        positions = [int((row == eot).nonzero()[0, 0]) for row in tokens]
        expected = torch.stack([x[i, p] for i, p in enumerate(positions)]) @ clip.text_projection
        got = backbone.encode_text(texts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_long_text_is_truncated_to_the_context_length(backbone: ClipBackbone) -> None:
    tokens = backbone.tokenize(["word " * 200])
    assert tokens.shape == (1, backbone.context_length)
    assert int(tokens[0, -1]) == open_clip.tokenizer._tokenizer.eot_token_id


def test_local_checkpoint_round_trip(tmp_path, backbone: ClipBackbone) -> None:
    path = tmp_path / "small_clip.pt"
    torch.save(backbone.model.state_dict(), path)
    torch.manual_seed(123)  # a different random init, overwritten by the file
    loaded = ClipBackbone(small=True, weights=path).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image_dense(images), backbone.encode_image_dense(images))
        assert torch.equal(loaded.encode_text(["a red car"]), backbone.encode_text(["a red car"]))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.weights_description == f"local file {path} sha256 {digest}"


def test_wrong_architecture_file_is_a_checkpoint_error(tmp_path) -> None:
    other = open_clip.CLIP(
        embed_dim=64,
        vision_cfg={"image_size": 128, "layers": [1, 1, 1, 1], "width": 8},
        text_cfg={"context_length": 32, "width": 64, "heads": 2, "layers": 2},
    )
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="other.pt.*small CLIP config"):
        ClipBackbone(small=True, weights=path)


def test_missing_and_unreadable_files_are_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        ClipBackbone(small=True, weights=tmp_path / "nowhere.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        ClipBackbone(small=True, weights=garbage)
    unsafe = tmp_path / "unsafe.pt"
    with unsafe.open("wb") as handle:
        pickle.dump({"visual.x": Fraction(1, 3)}, handle, protocol=2)  # refused by weights_only=True
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        ClipBackbone(small=True, weights=unsafe)


def test_pretrained_tag_offline_fails_fast_with_a_hint(monkeypatch) -> None:
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(CheckpointError, match="RN50.*openai.*local file path"):
        ClipBackbone("RN50", weights="openai")
    assert calls, "the download was never attempted"


def test_unknown_tag_or_architecture_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="not-a-tag.*openai"):
        ClipBackbone("RN50", weights="not-a-tag")
    with pytest.raises(CheckpointError, match="ViT-B-32.*ResNet"):
        ClipBackbone("ViT-B-32")


@pytest.mark.slow
def test_rn50_shapes_match_the_paper() -> None:
    # PCNet App. A.4: stride 32, C_v = 2048, C_l = 1024 at 320x320 input
    model = ClipBackbone("RN50").eval()
    with torch.no_grad():
        c5 = model.encode_image_dense(torch.randn(1, 3, 320, 320))
        text = model.encode_text(["the catcher in blue and gray"])
        pooled = model.attention_pool(c5)
    assert (model.feature_dim, model.embed_dim) == (2048, 1024)
    assert c5.shape == (1, 2048, 10, 10)
    assert model.dense_embeddings(c5).shape == (1, 1024, 10, 10)
    assert text.shape == pooled.shape == (1, 1024)
    assert model.weights_description == "random init (open_clip RN50)"
