"""TRIS on CPU with the small preset: shapes, config, loss equations, training, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from refbench_tris import TRIS

from refbench.api import Batch, Expression
from refbench.errors import CheckpointError, ConfigError

TEXTS = ["the red car on the left", "a tall man", "green bowl", "dog sleeping"]


def small_batch(count: int = 3, extras: int = 1, seed: int = 0, size: int = 96) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator)
    groups = []
    for i in range(count):
        group = [Expression(TEXTS[i % len(TEXTS)], image_id=i, ref_id=0, sent_id=0)]
        group += [
            Expression(f"object {k} next to {TEXTS[(i + 1) % len(TEXTS)]}", image_id=i, ref_id=k)
            for k in range(1, extras + 1)
        ]
        groups.append(group)
    return Batch(images, groups)


@pytest.fixture(scope="module")
def model() -> TRIS:
    torch.manual_seed(0)
    return TRIS({"preset": "small"}).eval()


@pytest.fixture(scope="module")
def bce_model() -> TRIS:
    """The small preset with TRIS's own L_cls (its pooling and multi-label soft margin)."""
    torch.manual_seed(0)
    return TRIS({"preset": "small", "cls_loss": "bce", "pooling": "tris"}).eval()


def test_paper_defaults_match_tris_release() -> None:
    config = TRIS.default_config()
    assert config["batch_size"] == 48 and config["input_size"] == 320 and config["epochs"] == 15
    assert config["lr"] == 5e-5 and config["lr"] * config["backbone_lr_scale"] == pytest.approx(5e-6)
    assert config["weight_decay"] == 0.01 and config["poly_power"] == 0.9
    assert config["num_distinct"] >= 1 and config["hidden_dim"] == 1024
    assert config["calibration_clip"] == "ViT-B-32"
    assert (config["feature_stage"], config["text_encoder"], config["cls_loss"]) == (4, "clip", "bce")


def test_small_preset_values_and_overrides(model: TRIS) -> None:
    assert model.config["input_size"] == 96 and model.backbone.small
    assert model.config["num_distinct"] >= 1
    assert model.calibration_weights == (0.0, 0.0)  # random calibration CLIP: losses off
    # stride 4 on 96 px: a 24x24 map; the word encoder instead of the CLIP text tower
    assert model.encode_images(torch.zeros(1, 3, 96, 96)).shape[-2:] == (24, 24)
    assert model.word_encoder is not None and model.config["cls_loss"] == "infonce"
    assert "calibration CLIP random init" in model.weights_description
    tuned = TRIS({"preset": "small", "hidden_dim": 32, "calibration_negative_weight": 0.5})
    assert tuned.visual_projection.proj.out_channels == 32
    assert tuned.calibration_weights == (0.0, 0.5)


def test_unknown_preset_and_key_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no preset 'tiny'.*paper, small"):
        TRIS({"preset": "tiny"})
    with pytest.raises(ConfigError, match="hidden_dim"):
        TRIS({"preset": "small", "hiden_dim": 3})
    with pytest.raises(ConfigError, match="calibration_clip 'ViT-X-99'"):
        TRIS({"preset": "small", "calibration_small": False, "calibration_clip": "ViT-X-99"})
    for key, value in (("feature_stage", 5), ("text_encoder", "bert"), ("cls_loss", "hinge")):
        with pytest.raises(ConfigError, match=f"tris config {key}={value!r}"):
            TRIS({"preset": "small", key: value})
    with pytest.raises(ConfigError, match="hidden_dim=33"):
        TRIS({"preset": "small", "hidden_dim": 33})


def test_prediction_shapes_and_relu(model: TRIS) -> None:
    batch = small_batch(count=2, extras=2)
    prediction = model.predict(batch)
    prediction.check(batch)
    assert prediction.response_maps.shape == (6, 96, 96)
    assert float(prediction.response_maps.min()) >= 0.0


def test_prediction_is_the_per_image_cosine_upsampled(model: TRIS) -> None:
    batch = small_batch(count=2, extras=1)
    with torch.no_grad():
        visual = model.encode_images(batch.images).numpy()  # [B, C, 24, 24]
        text = model.encode_texts(batch.texts()).numpy()  # [E, C]
        scale = float(model.temperature())
    maps = model.predict(batch).response_maps
    for e, image in enumerate([0, 0, 1, 1]):
        v = visual[image] / np.linalg.norm(visual[image], axis=0, keepdims=True)
        t = text[e] / np.linalg.norm(text[e])
        cosine = scale * np.einsum("chw,c->hw", v, t)
        up = torch.nn.functional.interpolate(
            torch.from_numpy(cosine)[None, None], size=(96, 96), mode="bilinear"
        )[0, 0].numpy()
        np.testing.assert_allclose(maps[e].numpy(), np.maximum(up, 0), rtol=1e-4, atol=1e-4)


def _reference_cls(maps: np.ndarray, ignore: np.ndarray | None) -> float:
    """TRIS's pooling and multilabel soft margin in NumPy: maps [B, B, h, w]."""
    count = maps.shape[0]
    flat = maps.reshape(count, count, -1)
    logits = np.concatenate([np.ones((count, 1, flat.shape[2])), flat], axis=1)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    soft = soft / soft.sum(axis=1, keepdims=True)
    x = soft.mean(-1)[:, 1:]
    scores = flat.mean(-1) + flat.max(-1) + (1 - x) ** 3 * np.log(0.01 + x)
    target = np.eye(count)
    per_pair = -(target * np.log(1 / (1 + np.exp(-scores))) + (1 - target) * np.log(
        1 / (1 + np.exp(scores))
    ))
    keep = np.ones_like(per_pair) if ignore is None else 1.0 - ignore
    return float(((per_pair * keep).sum(-1) / keep.sum(-1)).mean())


def _maps(model: TRIS, batch: Batch) -> np.ndarray:
    with torch.no_grad():
        visual = model.encode_images(batch.images).numpy()
        text = model.encode_texts([g[0].text for g in batch.expressions]).numpy()
        scale = float(model.temperature())
    visual = visual / np.linalg.norm(visual, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    return scale * np.einsum("bchw,tc->bthw", visual, text)


def test_classification_loss_matches_numpy_reference(bce_model: TRIS) -> None:
    model = bce_model
    batch = small_batch(count=4, extras=1)
    with torch.no_grad():
        losses = model.training_step(batch)
    assert set(losses) == {"classification"}  # calibration weights are 0 in the small preset
    expected = 5.0 * _reference_cls(_maps(model, batch), None)
    assert losses["classification"].item() == pytest.approx(expected, rel=1e-4)


def test_infonce_loss_matches_numpy_reference(model: TRIS) -> None:
    """The small preset's L_cls: symmetric InfoNCE over mean+max pooled scores."""
    batch = small_batch(count=4, extras=0)
    with torch.no_grad():
        value = model.training_step(batch)["classification"].item()
    flat = _maps(model, batch).reshape(4, 4, -1)
    scores = flat.mean(-1) + flat.max(-1)  # [image, text]

    def cross_entropy(logits: np.ndarray) -> float:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_soft = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-np.diag(log_soft).mean())

    expected = 5.0 * 0.5 * (cross_entropy(scores) + cross_entropy(scores.T))
    assert value == pytest.approx(expected, rel=1e-4)


def test_false_negatives_leave_the_pair_out(bce_model: TRIS) -> None:
    model = bce_model
    batch = small_batch(count=3, extras=0)
    fits = torch.zeros(3, 3, dtype=torch.bool)
    fits[0, 2] = True  # image 0's sentence also fits image 2: no negative for image 2
    batch.extras["false_negatives"] = fits
    with torch.no_grad():
        value = model.training_step(batch)["classification"].item()
    ignore = np.zeros((3, 3))
    ignore[2, 0] = 1.0  # row = image 2, column = text 0
    assert value == pytest.approx(5.0 * _reference_cls(_maps(model, batch), ignore), rel=1e-4)
    assert value != pytest.approx(5.0 * _reference_cls(_maps(model, batch), None), rel=1e-4)


def test_calibration_terms_use_a_frozen_clip_outside_the_state_dict() -> None:
    torch.manual_seed(1)
    model = TRIS(
        {"preset": "small", "calibration_positive_weight": 2.0, "calibration_negative_weight": 1.0}
    ).train()
    losses = model.training_step(small_batch(count=3, extras=2, size=64))
    assert set(losses) == {"classification", "calibration_positive", "calibration_negative"}
    sum(losses.values()).backward()
    clip = model.calibration_clip()
    assert all(not p.requires_grad and p.grad is None for p in clip.parameters())
    assert not clip.training
    assert not any(k.startswith("_calibration") for k in model.state_dict())
    assert model.temperature.log_scale.grad is not None
    # The calibration losses reach the model: the projection gets their gradient.
    model.zero_grad()
    losses = model.training_step(small_batch(count=3, extras=2, size=64))
    losses["calibration_negative"].backward()
    assert float(model.visual_projection.proj.weight.grad.abs().sum()) > 0


def test_missing_calibration_weights_file_is_a_checkpoint_error() -> None:
    model = TRIS(
        {
            "preset": "small",
            "calibration_clip_weights": "/nonexistent/calib.pt",
        }
    )
    # weights given: the released script's w1 = 1 (positive) and w5 = 2 (negative)
    assert model.calibration_weights == (1.0, 2.0)
    with pytest.raises(CheckpointError, match="/nonexistent/calib.pt"):
        model.training_step(small_batch(count=2))


def test_a_few_adamw_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = TRIS(
        {"preset": "small", "calibration_positive_weight": 2.0, "calibration_negative_weight": 1.0}
    ).train()
    optimizer = torch.optim.AdamW(
        model.parameter_groups(), lr=1e-3, weight_decay=model.config["weight_decay"]
    )
    batch = small_batch(count=3, extras=1, size=64)

    def total() -> torch.Tensor:
        return sum(model.training_step(batch).values())

    first = None
    for _ in range(5):
        optimizer.zero_grad()
        value = total()
        value.backward()
        optimizer.step()
        first = value.item() if first is None else first
    with torch.no_grad():
        final = total().item()
    assert np.isfinite(final) and final < first - 0.05, (first, final)


def test_parameter_groups_put_the_backbone_at_a_tenth(model: TRIS) -> None:
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert groups["backbone"]["lr"] == pytest.approx(groups["head"]["lr"] * 0.1)
    head_ids = {id(p) for p in groups["head"]["params"]}
    assert id(model.temperature.log_scale) in head_ids
    assert id(model.visual_projection.proj.weight) in head_ids


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path, model: TRIS) -> None:
    path = tmp_path / "tris.pt"
    with torch.no_grad():
        model.temperature.log_scale.add_(0.3)  # differ from the init
    torch.save(model.checkpoint_state(), path)
    restored = TRIS.from_checkpoint(path).eval()
    batch = small_batch(count=2, extras=1, seed=5)
    assert torch.equal(model.predict(batch).response_maps, restored.predict(batch).response_maps)
    assert restored.weights_description.startswith("checkpoint ")
    assert restored.config == model.config


def test_loading_a_checkpoint_never_reads_the_pretrained_backbone(tmp_path, model: TRIS) -> None:
    state = model.checkpoint_state()
    # A config naming weights that are not here: building from it directly fails ...
    state["config"]["backbone_weights"] = "/nonexistent/RN50.pt"
    with pytest.raises(CheckpointError, match="/nonexistent/RN50.pt"):
        TRIS(state["config"])
    # ... but the checkpoint holds every parameter, so loading it does not need them.
    path = tmp_path / "tris.pt"
    torch.save(state, path)
    restored = TRIS.from_checkpoint(path)
    assert "/nonexistent/RN50.pt" in restored.weights_description
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name


@pytest.mark.slow
def test_paper_architecture_shapes_with_random_weights() -> None:
    """RN50 at 320 and a ViT-B/32 calibration CLIP: the paper's shapes (random init, offline)."""
    torch.manual_seed(0)
    model = TRIS(
        {
            "backbone_weights": None,
            "calibration_clip_weights": None,
            "calibration_positive_weight": 2.0,
            "calibration_negative_weight": 1.0,
        }
    )
    assert model.backbone.feature_dim == 2048 and model.backbone.embed_dim == 1024
    assert model.visual_projection.proj.out_channels == 1024
    batch = small_batch(count=2, extras=2, size=320)
    assert model.encode_images(batch.images).shape == (2, 1024, 10, 10)
    losses = model.training_step(batch)
    assert set(losses) == {"classification", "calibration_positive", "calibration_negative"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.calibration_clip().visual.image_size in (224, (224, 224))
    assert model.eval().predict(batch).response_maps.shape == (6, 320, 320)
