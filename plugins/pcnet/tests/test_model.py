"""PCNet end to end on the small configuration: shapes, losses, learning, checkpoints, packaging."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import tomllib
import torch
from refbench_pcnet.model import PCNet

from refbench.api import Batch, Expression
from refbench.errors import CheckpointError, ConfigError

TINY = {"preset": "small", "hidden_dim": 32, "input_size": 64, "num_proposals": 4}
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square")


def _expression(image: int, sent: int, colour: str, shape: str, cues: bool = True) -> Expression:
    text = f"the {colour} {shape}"
    phrases = (shape, f"{colour} {shape}", text) if cues else ()
    return Expression(text, image_id=image, ref_id=sent, sent_id=sent, cues=phrases)


def _batch(size: int = 4, seed: int = 0, input_size: int = 64) -> Batch:
    """Images with two coloured squares each; expression 0 the first, expression 1 the second."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, input_size, input_size, generator=generator) * 0.1
    proposals = torch.zeros(size, 4, input_size, input_size, dtype=torch.bool)
    expressions = []
    half = input_size // 2
    for i in range(size):
        first, second = COLOURS[i % 4], COLOURS[(i + 1) % 4]
        images[i, i % 3, 4 : half - 4, 4 : half - 4] += 1.0
        images[i, (i + 1) % 3, half + 4 : -4, half + 4 : -4] += 1.0
        proposals[i, 0, 4 : half - 4, 4 : half - 4] = True
        proposals[i, 1, half + 4 : -4, half + 4 : -4] = True
        expressions.append([_expression(i, 0, first, "square"), _expression(i, 1, second, "square")])
    return Batch(images, expressions, {"proposals": proposals})


@pytest.fixture(scope="module")
def model() -> PCNet:
    torch.manual_seed(0)
    return PCNet(TINY)


def test_presets_and_paper_defaults() -> None:
    paper = PCNet.default_config()
    assert (paper["backbone"], paper["input_size"], paper["hidden_dim"]) == ("RN50", 320, 1024)
    assert (paper["num_stages"], paper["num_cues"], paper["num_proposals"]) == (3, 3, 40)
    assert (paper["num_distinct"], paper["batch_size"], paper["epochs"]) == (1, 36, 15)
    assert paper["modulation"] == "VTA+TTA" and paper["lr"] == 5e-5
    small = PCNet.small_config()
    assert small["small_backbone"] and small["backbone_weights"] is None
    assert (small["input_size"], small["feature_stage"]) == (96, 1)
    assert (small["text_encoder"], small["cls_loss"], small["modulation"]) == ("words", "infonce", "ADD")
    assert paper["text_encoder"] == "clip" and paper["cls_loss"] == "bce"
    # the largest-first proposal list must reach the objects of a 96 px SynthRef scene
    assert small["num_proposals"] == 40
    # refbench's proposal-based options: off in the paper's config, the background term on in
    # the small preset
    assert paper["background_weight"] == 0 and not paper["region_pooling"]
    assert paper["map_smoothing"] == 0
    assert small["background_weight"] == 1.0


@pytest.mark.parametrize(("norm", "kind"), [("group", torch.nn.GroupNorm), ("layer", torch.nn.LayerNorm)])
def test_norm_option_leaves_no_batch_norm_and_answers_alone(norm: str, kind: type) -> None:
    torch.manual_seed(0)
    model = PCNet({**TINY, "backbone_norm": norm}).eval()
    norms = [m for m in model.backbone.model.visual.modules()]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    assert any(isinstance(m, kind) for m in norms)
    batch = _batch(2)
    # no batch statistics: an image's map is the same alone as within a batch, in train mode too
    model.train()
    together = model.predict(batch).response_maps  # image 0's two expressions come first
    alone = model.predict(Batch(batch.images[:1], batch.expressions[:1])).response_maps
    torch.testing.assert_close(together[:2], alone)


def test_layer_norm_normalises_each_position_alone() -> None:
    from refbench_pcnet.model import PositionLayerNorm

    x = torch.randn(2, 6, 3, 4)
    got = PositionLayerNorm(6)(x)
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    torch.testing.assert_close(got, (x - mean) / torch.sqrt(var + 1e-5))  # weight 1, bias 0


def test_small_preset_applies_under_user_overrides(model: PCNet) -> None:
    assert model.config["small_backbone"] is True and model.config["hidden_dim"] == 32
    assert model.config["feature_stage"] == 1 and model.config["input_size"] == 64
    assert "random init" in model.weights_description


def test_proposal_options_need_proposals_and_valid_values() -> None:
    for bad, key in (
        ({"num_proposals": 0, "ras": False, "iad": False, "background_weight": 0.0,
          "region_pooling": True}, "num_proposals"),
        ({"num_proposals": 0, "ras": False, "iad": False, "background_weight": 1.0},
         "num_proposals"),
        ({"region_pooling": True, "pooling": "tris"}, "region_pooling"),
        ({"map_smoothing": -1}, "map_smoothing"),
        ({"background_weight": -0.5}, "background_weight"),
    ):
        with pytest.raises(ConfigError, match=key):
            PCNet({**TINY, **bad})


def test_bad_config_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="modulation"):
        PCNet({**TINY, "modulation": "CONCAT"})
    with pytest.raises(ConfigError, match="ras_alignment"):
        PCNet({**TINY, "ras_alignment": "median"})
    with pytest.raises(ConfigError, match="cls_loss"):
        PCNet({**TINY, "cls_loss": "hinge"})
    with pytest.raises(ConfigError, match="iad_form"):
        PCNet({**TINY, "iad_form": "kl"})
    with pytest.raises(ConfigError, match="backbone_norm"):
        PCNet({**TINY, "backbone_norm": "group", "backbone_weights": "openai"})
    with pytest.raises(ConfigError, match="num_stagse"):
        PCNet({**TINY, "num_stagse": 2})


def test_predict_gives_every_stage_map_per_expression(model: PCNet) -> None:
    batch = _batch()
    model.eval()
    prediction = model.predict(batch)
    prediction.check(batch)
    assert prediction.response_maps.shape == (8, 16, 16)  # 64 px / stride 4
    assert prediction.stage_maps.shape == (8, 3, 16, 16)
    torch.testing.assert_close(prediction.response_maps, prediction.stage_maps[:, -1])
    assert prediction.stage_maps.min() >= 0 and prediction.stage_maps.max() <= 1
    # One image's answer does not depend on what else is in the batch.
    alone = Batch(batch.images[:1], batch.expressions[:1])
    torch.testing.assert_close(
        model.predict(alone).stage_maps, prediction.stage_maps[:2], atol=1e-5, rtol=1e-4
    )


def test_missing_cues_fall_back_to_the_sentence_with_one_warning() -> None:
    torch.manual_seed(0)
    model = PCNet(TINY).eval()
    images = torch.randn(2, 3, 64, 64)
    no_cues = [[_expression(i, 0, "red", "circle", cues=False)] for i in range(2)]
    with pytest.warns(UserWarning, match="no cues") as record:
        model.predict(Batch(images, no_cues))
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(Batch(images, no_cues))  # warned once only
    full = [[Expression("the red circle", cues=("the red circle",) * 3)] for _ in range(2)]
    torch.testing.assert_close(
        model.predict(Batch(images, no_cues)).stage_maps,
        model.predict(Batch(images, full)).stage_maps,
    )


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        ({}, {"cls/stage1", "cls/stage2", "cls/stage3", "ras", "iad", "background"}),
        ({"ras": False}, {"cls/stage1", "cls/stage2", "cls/stage3", "iad", "background"}),
        ({"iad": False, "num_stages": 2}, {"cls/stage1", "cls/stage2", "ras", "background"}),
        ({"num_distinct": 0, "num_stages": 1, "background_weight": 0.0}, {"cls/stage1"}),
        ({"modulation": "ADD", "negative_cues": False}, None),
        ({"modulation": "TTA"}, None),
        ({"modulation": "VTA+ADD", "ras_alignment": "avg", "iad_alignment": "avg"}, None),
        ({"cls_loss": "infonce", "iad_form": "exclusive", "background_weight": 0.0},
         {"cls/stage1", "cls/stage2", "cls/stage3", "ras", "iad"}),
        ({"background_weight": 1.0, "map_smoothing": 3, "region_pooling": True},
         {"cls/stage1", "cls/stage2", "cls/stage3", "ras", "iad", "background"}),
        ({"num_stages": 1, "ras": False, "iad": False, "background_weight": 0.5},
         {"cls/stage1", "background"}),
        ({"num_stages": 1, "ras": False, "iad": False, "background_weight": 0.0,
          "num_proposals": 0}, {"cls/stage1"}),
    ],
)
def test_training_step_returns_the_switched_on_losses(overrides: dict, keys: set | None) -> None:
    torch.manual_seed(0)
    model = PCNet({**TINY, **overrides}).train()
    losses = model.training_step(_batch())
    if keys is not None:
        assert set(losses) == keys
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.crm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_loss_weights_scale_the_named_losses() -> None:
    batch = _batch()
    torch.manual_seed(0)
    plain = PCNet(TINY).train().training_step(batch)
    torch.manual_seed(0)
    weighted = PCNet({**TINY, "cls_weight": 2.0, "iad_weight": 0.5}).train().training_step(batch)
    assert weighted["cls/stage2"].item() == pytest.approx(2 * plain["cls/stage2"].item(), rel=1e-5)
    assert weighted["iad"].item() == pytest.approx(0.5 * plain["iad"].item(), rel=1e-5)


def test_false_negatives_are_left_out_of_l_cls() -> None:
    torch.manual_seed(0)
    model = PCNet({**TINY, "ras": False, "iad": False}).train()
    batch = _batch()
    base = model.training_step(batch)["cls/stage1"].item()
    everything = torch.ones(4, 4, dtype=torch.bool)  # every off-diagonal pair ignored
    batch.extras["false_negatives"] = everything
    only_positives = model.training_step(batch)["cls/stage1"].item()
    assert only_positives != pytest.approx(base)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"ras": False, "iad": False, "background_weight": 0.0, "region_pooling": True},
     {"ras": False, "iad": False, "background_weight": 1.0}],
)
def test_training_needs_proposals_when_a_proposal_loss_is_on(overrides: dict) -> None:
    model = PCNet({**TINY, **overrides}).train()
    batch = _batch()
    batch.extras.pop("proposals")
    with pytest.raises(ConfigError, match="proposals"):
        model.training_step(batch)


def test_map_smoothing_averages_each_map_over_k_by_k_cells() -> None:
    torch.manual_seed(0)
    plain = PCNet({**TINY, "ras": False, "iad": False})
    smoothed = PCNet({**TINY, "ras": False, "iad": False, "map_smoothing": 3})
    smoothed.load_state_dict(plain.state_dict())
    maps = torch.rand(2, 3, 5 * 4)
    got = smoothed._smooth(maps, (5, 4)).view(2, 3, 5, 4)
    grid = maps.view(2, 3, 5, 4)
    # a cell's mean over the cells of its 3 x 3 neighbourhood that lie inside the map
    y, x = 0, 2
    assert got[1, 2, y, x] == pytest.approx(grid[1, 2, 0:2, 1:4].mean().item(), rel=1e-5)
    y, x = 2, 1
    assert got[0, 1, y, x] == pytest.approx(grid[0, 1, 1:4, 0:3].mean().item(), rel=1e-5)
    assert torch.equal(plain._smooth(maps, (5, 4)), maps)
    # predict goes through the smoothing too: same weights, another answer
    plain.eval()
    smoothed.eval()
    batch = _batch(1)
    a = plain.predict(Batch(batch.images, batch.expressions)).response_maps
    b = smoothed.predict(Batch(batch.images, batch.expressions)).response_maps
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_a_few_adamw_steps_reduce_the_total_loss() -> None:
    torch.manual_seed(0)
    model = PCNet({**TINY, "iad": False}).train()
    batch = _batch()
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=2e-3, weight_decay=1e-2)
    history = []
    for _ in range(8):
        total = sum(model.training_step(batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    with torch.no_grad():
        final = sum(model.training_step(batch).values()).item()
    assert final < history[0] - 0.1, (history, final)


def test_the_background_term_moves_response_onto_the_proposals() -> None:
    batch = _batch()
    positives = [[group[0]] for group in batch.expressions]
    touched = torch.nn.functional.adaptive_max_pool2d(
        batch.extras["proposals"].any(dim=1, keepdim=True).float(), (16, 16)
    )[:, 0]  # [B, h, w]: map cells that some proposal touches

    def share_off_proposals(model: PCNet) -> float:
        """The positive maps' mass on cells that no proposal touches, from predict's maps.

        In train mode: after 10 steps on one batch, BatchNorm's running statistics are still
        far from the batch's, and eval-mode maps are all zero for either weight.
        """
        maps = model.predict(Batch(batch.images, positives)).response_maps  # [B, h, w]
        assert maps.shape[-2:] == touched.shape[-2:] and maps.sum() > 0
        return float((maps * (1 - touched)).sum() / maps.sum())

    shares = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = PCNet({**TINY, "ras": False, "iad": False, "background_weight": weight}).train()
        before = share_off_proposals(model)
        optimizer = torch.optim.AdamW(model.parameter_groups(), lr=3e-3, weight_decay=0.0)
        for _ in range(10):
            total = sum(model.training_step(batch).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        shares[weight] = share_off_proposals(model)
    assert shares[1.0] < before and shares[1.0] < 0.7 * shares[0.0], (before, shares)


def test_unused_backbone_parts_get_no_gradient(model: PCNet) -> None:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(".attnpool." in n or ".layer2." in n or ".layer4." in n for n in trainable)
    assert any(n.startswith("backbone.model.visual.layer1.") for n in trainable)
    # the small preset reads texts with the word encoder: CLIP's text tower is left untouched
    assert any(n.startswith("word_encoder.") for n in trainable)
    assert not any(n.startswith(("backbone.model.transformer.", "backbone.model.token_embedding"))
                   for n in trainable)
    groups = {g["name"] for g in model.parameter_groups()}
    assert groups == {"head", "backbone"}


def test_checkpoint_round_trip(tmp_path: Path, model: PCNet) -> None:
    path = tmp_path / "pcnet.pt"
    torch.save(model.checkpoint_state(), path)
    loaded = PCNet.from_checkpoint(path).eval()
    batch = _batch()
    model.eval()
    torch.testing.assert_close(loaded.predict(batch).stage_maps, model.predict(batch).stage_maps)
    assert loaded.config == model.config
    assert "pcnet.pt" in loaded.weights_description


def test_checkpoint_of_another_config_or_model_is_refused(tmp_path: Path, model: PCNet) -> None:
    path = tmp_path / "pcnet.pt"
    state = model.checkpoint_state()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="num_stages=3"):
        PCNet.from_checkpoint(path, num_stages=2)
    # A config edited after training no longer fits the stored weights.
    edited = tmp_path / "edited.pt"
    torch.save({**state, "config": {**state["config"], "num_stages": 2}}, edited)
    with pytest.raises(CheckpointError, match="does not fit"):
        PCNet.from_checkpoint(edited)
    other = tmp_path / "tris.pt"
    torch.save({**state, "model": "tris"}, other)
    with pytest.raises(CheckpointError, match="--model tris"):
        PCNet.from_checkpoint(other)
    foreign = tmp_path / "foreign.pt"
    torch.save({**state, "config": {**state["config"], "decoder_layers": 2}}, foreign)
    with pytest.raises(CheckpointError, match="decoder_layers"):
        PCNet.from_checkpoint(foreign)


def test_entry_point_names_the_model_class() -> None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    meta = tomllib.loads(pyproject.read_text())
    assert meta["project"]["name"] == "refbench-pcnet"
    assert "refbench" in meta["project"]["dependencies"]
    target = meta["project"]["entry-points"]["refbench.models"]["pcnet"]
    module, _, attribute = target.partition(":")
    imported = __import__(module, fromlist=[attribute])
    assert getattr(imported, attribute) is PCNet and PCNet.name == "pcnet"


@pytest.mark.gpu
def test_one_bf16_training_step_on_cuda() -> None:
    assert torch.cuda.is_available(), "the gpu marker needs a CUDA device"
    torch.manual_seed(0)
    model = PCNet(TINY).cuda().train()
    batch = _batch().to("cuda")
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model.training_step(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    optimizer.zero_grad()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    optimizer.step()
    model.eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        prediction = model.predict(batch)
    prediction.check(batch)


@pytest.mark.slow
def test_paper_configuration_gives_10x10_maps_at_320_px() -> None:
    torch.manual_seed(0)
    model = PCNet({"backbone_weights": None}).eval()  # RN50, C = 1024, random init offline
    assert model.visual_projection.proj.out_channels == 1024
    assert model.backbone.stage_channels(4) == 2048 and model.backbone.embed_dim == 1024
    batch = _batch(size=1, input_size=320)
    prediction = model.predict(batch)
    assert prediction.stage_maps.shape == (2, 3, 10, 10)  # App. A.4: s = 32


@pytest.mark.parametrize("key, value, kind", [
    ("hidden_dim", "abc", "an integer"), ("num_stages", 2.5, "an integer"),
    ("ras", "yes", "true or false"), ("iad_temperature", "x", "a number"),
    ("k_iters", True, "an integer"),
])
def test_pcnet_keys_of_the_wrong_kind_are_one_line_errors(key, value, kind) -> None:
    """Checked before anything is built (resolve_config builds nothing)."""
    from refbench.errors import ConfigError

    with pytest.raises(ConfigError, match=f"pcnet config {key}=.*: {kind}"):
        PCNet.resolve_config({key: value})
