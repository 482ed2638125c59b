"""PCNet's released training losses against the released code's own outputs.

tests/golden/pcnet/pcnet_losses_golden.json (and .npz, gradients) hold what
zaiquanyang/Boosting_WRIS computed on the inputs of tests/golden/pcnet/loss_inputs.py
(README.md there says how). Here the same inputs are regenerated from their seed and passed
through `refbench_pcnet.official_losses`. Values agree to 1e-5 relative (1e-7 absolute for
zeros), gradients to 1e-5 of their largest magnitude. The fast tests take the frozen CLIP's
features from the golden run (after checking the masked images match); the slow one builds
refbench's ViT-B/32 with the same seeded weights.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from refbench_pcnet.official_losses import (
    OFFICIAL_LOSS_WEIGHTS,
    StageTerms,
    combine_stages,
    diversify_loss,
    official_calibration_losses,
    official_classification_loss,
    official_losses,
    proposal_matches,
    shrink_and_anchor,
    straight_through_one_hot,
    weighted_losses,
)

from refbench.api import load_state_exactly
from refbench.nn import encode_clip_tokens, released_tokens
from tests.golden.pcnet import loss_inputs
from tests.reference_weights import seeded_state_dict

GOLDEN = Path(__file__).resolve().parents[3] / "tests" / "golden" / "pcnet"
RELATIVE = 1e-5
ABSOLUTE = 1e-7


def close(actual: torch.Tensor | float, expected: float) -> None:
    value = float(actual)
    assert abs(value - expected) <= RELATIVE * abs(expected) + ABSOLUTE, (value, expected)


@pytest.fixture(scope="module")
def golden() -> dict:
    record = json.loads((GOLDEN / "pcnet_losses_golden.json").read_text())
    with np.load(GOLDEN / "pcnet_losses_golden.npz") as arrays:
        record["arrays"] = {name: arrays[name] for name in arrays.files}
    return record


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return loss_inputs.make_inputs()


class RecordedTower:
    """Stands in for the frozen CLIP's image tower with the golden run's features: it checks
    that the masked images it is given are the official ones, then returns their features."""

    def __init__(self, golden: dict, stage: int) -> None:
        self.golden = golden
        self.stage = stage

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        row = self.golden["calibration"][self.stage]
        arrays = self.golden["arrays"]
        for label in ("foreground", "background"):
            every16 = arrays[f"stage{self.stage}_{label}_every16"]
            if np.abs(images[..., ::16, ::16].numpy() - every16).max() <= 1e-5:
                close(images.double().sum(), row[f"{label}_sum"])
                close(images.double().abs().sum(), row[f"{label}_abs_sum"])
                return torch.from_numpy(arrays[f"stage{self.stage}_{label}_features"])
        raise AssertionError(f"stage {self.stage}: not an image the official code encoded")


@pytest.fixture(scope="module")
def text(golden) -> dict[str, torch.Tensor]:
    """The official CLIP's text features (the slow test checks refbench's CLIP gives them)."""
    return {
        "positive": torch.from_numpy(golden["arrays"]["positive_text_features"]),
        "negative": torch.from_numpy(golden["arrays"]["negative_text_features"]),
    }


@pytest.fixture(scope="module")
def stage_cbs(golden, text, inputs) -> list[torch.Tensor]:
    return [
        official_calibration_losses(
            inputs["fields"][k, :, 0], inputs["images"], RecordedTower(golden, k), text["negative"]
        )["cbs"]
        for k in range(loss_inputs.STAGES)
    ]


def test_weights_are_args_py_defaults(golden) -> None:
    args = golden["args"]
    assert OFFICIAL_LOSS_WEIGHTS == {
        "fg": args["w1"], "shrink": args["w2"], "anchor": args["w3"], "cls": args["w4"],
        "cbs": args["w5"], "diversify": args["div_loc"],
    }
    assert (args["softmax_T"], args["FOCAL_P"], args["FOCAL_LAMBDA"]) == (1.0, 3.0, 0.01)
    assert not args["clip_fg"] and not args["clip_bg"]


def test_classification_equals_tris_loss_and_multilabel_margin(golden, inputs) -> None:
    for scores, expected in zip(inputs["scores"], golden["cls"], strict=True):
        close(official_classification_loss(scores), expected)


def test_proposal_matches_equal_sam_shrink_loss(golden, inputs) -> None:
    maps = loss_inputs.relu_maps(inputs["fields"])
    for k in range(loss_inputs.STAGES):
        left, right = proposal_matches(maps[k], inputs["proposals"], inputs["clip_scores"])
        close(left, golden["left"][k])
        close(right, golden["right"][k])
    # the inputs reach both sides of the left confidence mask (image 0's map misses its
    # best proposal at stages 0 and 2), and some left value is not a plain mean
    assert len(set(golden["left"])) == loss_inputs.STAGES


def test_diversify_equals_sam_diversify_loss(golden, inputs) -> None:
    maps = loss_inputs.relu_maps(inputs["fields"])
    others = loss_inputs.relu_maps(inputs["other_fields"])
    for k in range(loss_inputs.STAGES):
        value = diversify_loss(maps[k], others[k], inputs["proposals"], inputs["same_image"])
        close(value, golden["diversify"][k])


def check_calibration(golden, inputs, encoders, text) -> None:
    """Every stage's cbs and, at stages 0 and 1, fg for each clip_fg / clip_bg case."""
    for k, row in enumerate(golden["calibration"]):
        maps = inputs["fields"][k, :, 0]
        with torch.no_grad():
            losses = official_calibration_losses(
                maps, inputs["images"], encoders[k], text["negative"]
            )
        assert set(losses) == {"cbs"}
        close(losses["cbs"], row["cbs"])
        assert row["clip_loss_fg0_bg0"] == 0.0  # both flags off: the released zero
        for clip_fg, clip_bg in [(True, False), (False, True), (True, True)] if k < 2 else []:
            with torch.no_grad():
                losses = official_calibration_losses(
                    maps, inputs["images"], encoders[k], None, text["positive"],
                    clip_fg=clip_fg, clip_bg=clip_bg,
                )
            assert set(losses) == {"fg"}
            close(losses["fg"], row[f"clip_loss_fg{int(clip_fg)}_bg{int(clip_bg)}"])


def test_calibration_equals_cbs_loss_on_the_official_features(golden, inputs, text) -> None:
    encoders = [RecordedTower(golden, k) for k in range(loss_inputs.STAGES)]
    check_calibration(golden, inputs, encoders, text)


@pytest.mark.slow
def test_calibration_with_refbench_clip_equals_cbs_loss(golden, inputs) -> None:
    """open_clip's ViT-B/32 (QuickGELU) with the golden run's seeded weights and 20 tokens."""
    import open_clip

    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    state = seeded_state_dict(golden["clip_manifest"], golden["inputs"]["clip_seed"])
    load_state_exactly(model, state, "seeded ViT-B/32")
    model.eval()
    positive = released_tokens(list(loss_inputs.POSITIVE_SENTENCES), loss_inputs.TEXT_LENGTH)
    negatives = [s for group in loss_inputs.NEGATIVE_SENTENCES for s in group]
    negative = released_tokens(negatives, loss_inputs.TEXT_LENGTH)
    assert positive.tolist() == golden["inputs"]["positive_tokens"]
    assert negative.tolist() == [t for g in golden["inputs"]["negative_tokens"] for t in g]
    with torch.no_grad():
        text = {
            "positive": encode_clip_tokens(model, positive),
            "negative": encode_clip_tokens(model, negative).reshape(loss_inputs.BATCH, -1, 512),
        }
    arrays = golden["arrays"]
    for name in ("positive", "negative"):
        expected = arrays[f"{name}_text_features"]
        assert np.abs(text[name].numpy() - expected).max() <= 1e-4 * np.abs(expected).max()
    check_calibration(golden, inputs, [model.encode_image] * loss_inputs.STAGES, text)


def stage_terms(inputs, stage_cbs, fields, other_fields, stages: int) -> list[StageTerms]:
    maps = loss_inputs.relu_maps(fields)
    others = loss_inputs.relu_maps(other_fields)
    terms = []
    for k in range(stages):
        left, right = proposal_matches(maps[k], inputs["proposals"], inputs["clip_scores"])
        terms.append(StageTerms(
            cls=official_classification_loss(inputs["scores"][k]), left=left, right=right,
            cbs=stage_cbs[k],
            diversify=diversify_loss(maps[k], others[k], inputs["proposals"],
                                     inputs["same_image"]),
        ))
    return terms


def test_combination_equals_c4_foward_for_one_to_four_stages(golden, inputs, stage_cbs) -> None:
    every_stage = stage_terms(inputs, stage_cbs, inputs["fields"], inputs["other_fields"],
                              loss_inputs.STAGES)
    seen = set()
    for case in golden["combinations"]:
        stages, pair = case["stages"], case["pair"]
        combined = combine_stages(every_stage[:stages], pair=pair)
        assert set(combined) == {"cls", "cbs", "diversify", "shrink", "anchor"}
        for name in combined:
            close(combined[name], case[name])
        assert case["fg"] == 0.0  # flags off: a zero, which refbench leaves out
        # the released code draws the pair from range(K - 1) only for K >= 3
        assert case["asked"] == ([list(range(stages - 1))] if stages >= 3 else [])
        seen.add((stages, pair))
    assert seen == {(1, None), (2, None), (3, 0), (3, 1), (4, 0), (4, 1), (4, 2)}


def test_gradients_equal_the_released_ones(golden, inputs, stage_cbs) -> None:
    case = golden["gradient_case"]
    arrays = golden["arrays"]
    fields = inputs["fields"].clone().requires_grad_(True)
    other_fields = inputs["other_fields"].clone().requires_grad_(True)
    terms = stage_terms(inputs, stage_cbs, fields, other_fields, case["stages"])
    combined = combine_stages(terms, pair=case["pair"])
    for name in ("shrink", "anchor", "diversify"):
        grads = torch.autograd.grad(combined[name], [fields, other_fields], retain_graph=True,
                                    allow_unused=True)
        for label, grad in zip(("fields", "other_fields"), grads, strict=True):
            key = f"grad_{name}_{label}"
            expected = arrays.get(key)
            flows = grad is not None and bool(grad.abs().sum() > 0)
            assert flows == (expected is not None and bool(np.abs(expected).sum() > 0)), key
            if expected is not None:
                scale = float(np.abs(expected).max())
                difference = float(np.abs(grad.numpy() - expected).max())
                assert difference <= RELATIVE * scale, (key, difference, scale)


def test_weighted_losses_keep_only_weighted_terms(inputs, stage_cbs) -> None:
    terms = stage_terms(inputs, stage_cbs, inputs["fields"], inputs["other_fields"], 3)
    losses = official_losses(terms, pair=1)
    assert set(losses) == {"cls", "cbs"}
    combined = combine_stages(terms, pair=1)
    assert float(losses["cls"]) == pytest.approx(5.0 * float(combined["cls"]), rel=1e-6)
    assert float(losses["cbs"]) == pytest.approx(2.0 * float(combined["cbs"]), rel=1e-6)
    everything = weighted_losses(combined, {**OFFICIAL_LOSS_WEIGHTS, "shrink": 1.0,
                                            "anchor": 0.5, "diversify": 0.1})
    assert set(everything) == {"cls", "cbs", "shrink", "anchor", "diversify"}
    with pytest.raises(ValueError, match="unknown loss weights"):
        weighted_losses(combined, {"match": 1.0})


def test_pair_is_drawn_like_the_released_code() -> None:
    left = [torch.tensor(0.1 * k) for k in range(4)]
    right = [torch.tensor(0.2 * k) for k in range(4)]
    for seed in range(5):
        _, _, pair = shrink_and_anchor(left, right, rng=random.Random(seed))
        assert pair == random.Random(seed).choice(range(3))
    rng = random.Random(3)
    state = rng.getstate()
    shrink, anchor, pair = shrink_and_anchor(left[:2], right[:2], rng=rng)
    assert pair == 0 and rng.getstate() == state  # two stages: nothing drawn
    shrink, anchor, pair = shrink_and_anchor(left[:1], right[:1])
    assert pair is None and float(shrink) == 0.0 and float(anchor) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pair 3"):
        shrink_and_anchor(left, right, pair=3)


def test_straight_through_one_hot_is_hard_forward_and_soft_backward() -> None:
    logits = torch.tensor([[0.2, 1.5, -0.3], [2.0, 2.0, 0.0]], requires_grad=True)
    picked = straight_through_one_hot(logits)
    assert picked.detach().tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    weights = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, 1.0]])
    (picked * weights).sum().backward()
    reference = logits.detach().clone().requires_grad_(True)
    (reference.softmax(-1) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, reference.grad)


def test_a_single_image_batch_runs(inputs) -> None:
    # the released SAM_shrink_loss squeezes the batch dimension away at B = 1 and fails there
    maps = loss_inputs.relu_maps(inputs["fields"])[1, :1]
    left, right = proposal_matches(maps, inputs["proposals"][:1], inputs["clip_scores"][:1])
    assert 0.0 <= float(left) <= 0.5 and 0.0 <= float(right) <= 0.5
    with pytest.raises(ValueError, match="two proposal slots"):
        proposal_matches(maps, inputs["proposals"][:1, :1], inputs["clip_scores"][:1, :1])
