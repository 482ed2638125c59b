"""The zero-shot CLIP baseline: refusal without weights, dense == global, prompt ensembling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from refbench_clip_baseline import ClipBaseline

from refbench.api import Batch, Expression
from refbench.errors import CheckpointError, ConfigError

SMALL = {"small_backbone": True, "allow_random_weights": True, "input_size": 128}


@pytest.fixture(scope="module")
def model() -> ClipBaseline:
    torch.manual_seed(0)
    return ClipBaseline(SMALL).eval()


def test_refuses_random_weights_with_instructions() -> None:
    with pytest.raises(ConfigError) as caught:
        ClipBaseline({"small_backbone": True})
    message = str(caught.value)
    assert "--set weights=openai" in message
    assert "--set weights=/path/to/RN50.pt" in message
    assert "--allow-random-weights" in message
    assert "\n" not in message


def test_allow_random_weights_builds_and_says_so(model: ClipBaseline) -> None:
    assert "random init" in model.weights_description


def test_a_missing_weights_file_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="/nowhere/RN50.pt"):
        ClipBaseline({"small_backbone": True, "weights": "/nowhere/RN50.pt"})


def test_bad_prompt_templates_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="prompt_templates"):
        ClipBaseline({**SMALL, "prompt_templates": ["a photo"]})
    with pytest.raises(ConfigError, match="prompt_templates"):
        ClipBaseline({**SMALL, "prompt_templates": []})


def test_prediction_shapes(model: ClipBaseline) -> None:
    batch = Batch(
        torch.randn(2, 3, 128, 128),
        [[Expression("a man"), Expression("the dog")], [Expression("left cup")]],
    )
    prediction = model.predict(batch)
    prediction.check(batch)
    assert prediction.response_maps.shape == (3, 4, 4)
    assert float(prediction.response_maps.abs().max()) <= 1.0 + 1e-6


def test_constant_features_give_the_global_cosine_everywhere() -> None:
    """With every position equal (and no positional embedding), dense == global embedding."""
    torch.manual_seed(3)
    model = ClipBaseline(SMALL).eval()
    pool = model.backbone.model.visual.attnpool
    with torch.no_grad():
        pool.positional_embedding.zero_()
        feature = torch.randn(2, model.backbone.feature_dim, 1, 1)
        c5 = feature.expand(-1, -1, 4, 4).contiguous()  # the native 4x4 grid of the small CLIP
        texts = ["a red car", "the tall man", "green bowl"]
        text = model.text_embeddings(texts)
        index = torch.tensor([0, 1, 1])
        response = model.response_from_features(c5, text, index)  # [3, 4, 4]
        global_embedding = pool(c5)  # open_clip's own AttentionPool2d: [2, D]
    g = global_embedding.numpy()
    t = text.numpy()
    for e, image in enumerate(index.tolist()):
        cosine = g[image] @ t[e] / (np.linalg.norm(g[image]) * np.linalg.norm(t[e]))
        np.testing.assert_allclose(response[e].numpy(), cosine, rtol=1e-4, atol=1e-5)


def test_prompt_templates_are_averaged_after_normalising(model: ClipBaseline) -> None:
    templates = ["a photo of {}.", "{} in the picture", "there is {}"]
    ensemble = ClipBaseline({**SMALL, "prompt_templates": templates})
    ensemble.load_state_dict(model.state_dict())
    texts = ["a man", "the red cup"]
    with torch.no_grad():
        got = ensemble.text_embeddings(texts).numpy()
        single = ensemble.backbone.encode_text([tpl.format(t) for t in texts for tpl in templates])
    single = single.numpy().reshape(2, 3, -1)
    single = single / np.linalg.norm(single, axis=-1, keepdims=True)
    mean = single.mean(axis=1)
    expected = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # ... and the map of a sentence is the cosine with that averaged embedding.
    images = torch.randn(1, 3, 128, 128)
    batch = Batch(images, [[Expression("a man")]])
    with torch.no_grad():
        dense = ensemble.backbone.dense_embeddings(ensemble.backbone.encode_image_dense(images))
    dense = dense[0].numpy()
    dense = dense / np.linalg.norm(dense, axis=0, keepdims=True)
    np.testing.assert_allclose(
        ensemble.predict(batch).response_maps[0].numpy(),
        np.einsum("dhw,d->hw", dense, expected[0]),
        rtol=1e-4,
        atol=1e-5,
    )
