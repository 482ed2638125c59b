"""PCNet's configuration: the paper's defaults, the small preset, and their validation.

Every ablation of the paper is a key: ``num_stages`` (Table 3), ``modulation`` (Table 4),
``ras`` / ``iad`` (Table 2), ``num_distinct`` (N_d, Table 5), ``ras_alignment`` (Table 7) and
``iad_alignment`` (Table 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refbench.errors import ConfigError

MODULATIONS = ("ADD", "TTA", "VTA+ADD", "VTA+TTA")
ALIGNMENTS = ("max", "avg")
PRESETS = ("paper", "small")
VARIANTS = ("paper", "official")
CLS_LOSSES = ("bce", "infonce")
NORMS = ("batch", "group", "layer")
IAD_FORMS = ("paper", "exclusive")
TEXT_ENCODERS = ("clip", "words")

# Keys that change the shapes of the weights: a checkpoint only fits the values it was trained
# with, so `from_checkpoint` refuses overrides of these with a message naming the key.
ARCHITECTURE_KEYS = (
    "variant",
    "backbone",
    "small_backbone",
    "feature_stage",
    "coord_channels",
    "backbone_norm",
    "text_encoder",
    "hidden_dim",
    "num_stages",
    "modulation",
    "mlp_ratio",
)

# PCNet Sec. 4.1 and App. A.4: RN50 CLIP, 320 px, C = 1024, N = 3, P = 40, N_d = 1,
# AdamW lr 5e-5, weight decay 1e-2, batch 36, 15 epochs, poly decay; L = L_cls + L_RaS + L_IaD.
PAPER_CONFIG: dict[str, Any] = {
    # "paper": the paper's equations (this file's keys); "official": the authors' released
    # code, which reads their checkpoints as saved (refbench_pcnet.official, docs/models.md)
    "variant": "paper",
    "preset": "paper",
    "backbone": "RN50",
    "backbone_weights": "openai",
    "small_backbone": False,
    "feature_stage": 4,  # ResNet layer whose map is V_0: 4 = C5, stride 32 (App. A.4)
    # "group" / "layer" swap the ResNet's BatchNorm (random init only): a short run from scratch
    # leaves BatchNorm's running statistics behind its weights. "layer" normalises the channels
    # of each position alone; GroupNorm's per-image statistics tell every background position
    # which objects the image holds (on SynthRef its peaks went to the background).
    "backbone_norm": "batch",
    "coord_channels": False,  # append normalised (x, y) to V_0 before the projection
    # "clip": CLIP's text transformer (the paper's); "words": refbench's hashed-word BiGRU
    # (refbench.nn.WordGRUEncoder), for training from scratch, where a random-init CLIP text
    # tower is slow to fit
    "text_encoder": "clip",
    "hidden_dim": 1024,  # C
    "mlp_ratio": 1.0,  # hidden width of the CRM's MLPs, as a multiple of C
    "num_stages": 3,  # N
    # Stage n reads cue n (Sec. 3.2), so N of the K = 5 phrases are used: ask for N.
    "num_cues": 3,
    "modulation": "VTA+TTA",
    "negative_cues": True,  # Eq. 2: the other images' cues join q'_n during training
    "pooling": "tris",
    "softmax_temperature": 1.0,
    "focal_p": 3.0,
    "focal_c": 0.01,
    "temperature_init": 1 / 0.07,
    "cls_weight": 1.0,  # on L_cls of every stage
    # "bce": TRIS's multi-label soft margin (App. A.2); "infonce": symmetric InfoNCE over the
    # B x B pooled scores (refbench's option, not the paper's)
    "cls_loss": "bce",
    "ras": True,
    "ras_weight": 1.0,
    "ras_alignment": "max",
    "iad": True,
    "iad_weight": 1.0,
    "iad_alignment": "max",
    # "paper": Eq. 8-9; "exclusive": soft same-proposal probability (see losses.iad_loss)
    "iad_form": "paper",
    "iad_temperature": 0.1,
    "num_proposals": 40,  # P
    "num_distinct": 1,  # N_d
    "proposal_size": None,  # side the training batches' proposals are loaded at (null: input)
    "sampling": "images",  # the trainer's unit: distinct images per batch ("refs": one ref each)
    "selection_metric": "PointM",  # the validation metric that picks best.pt
    # refbench's options (not the paper's), off by default: "region_pooling" replaces the max
    # term of mean+max pooling by the best proposal's mean response (max_p avg_{m_p} R);
    # "map_smoothing" k > 1 averages every map over k x k cells (train and predict);
    # "background_weight" weighs the share of the positive map's mass outside every proposal.
    "region_pooling": False,
    "map_smoothing": 0,
    "background_weight": 0.0,
    "input_size": 320,
    # The official variant's keys (refbench_pcnet.official; unused by the paper variant):
    # stages run (the released --K_Iters), the released update weights, CLIP tokens kept per
    # text, the released code's batch > 1 behaviours, and whether logit_scale trains.
    "k_iters": 1,
    "attn_multi_text": 0.1,
    "attn_multi_vis": 0.1,
    "text_length": None,
    "official_reshape": True,
    "text_attention": "batch",
    "train_temperature": True,
    # The official variant's losses (train_prog.py: w1 fg, w2 shrink, w3 anchor, w4 = the
    # official cls_weight, w5 cbs, div_loc diversify) and its frozen calibration CLIP.
    "fg_weight": 1.0,
    "shrink_weight": 0.0,
    "anchor_weight": 0.0,
    "cbs_weight": 2.0,
    "diversify_weight": 0.0,
    "clip_fg": False,
    "clip_bg": False,
    "calibration_clip": "ViT-B-32-quickgelu",
    "calibration_clip_weights": "openai",
    # The training schedule (AdamW lr 5e-5, backbone x0.1, weight decay 1e-2, batch 36,
    # 15 epochs, poly 0.9, clipping 1.0) is the paper's and comes from TrainableModel.
}

# SynthRef / CPU: the same architecture with tiny widths, trained from scratch on 96 px scenes.
# Why each setting (the measurements: docs/reports/2026-12-01-synthref-pcnet-study.md):
# - stride 4 (ResNet layer 1, a 24x24 map): at stride 8 the peak lands beside a 13-28 px object;
#   coordinate channels let a map say where "left" is;
# - the hashed-word BiGRU text encoder: a random-init CLIP text tower can score every sentence
#   alike (L_cls stuck at ln B);
# - symmetric InfoNCE with mean+max pooling: the paper's BCE sits at the all-negative solution;
# - ADD modulation without other images' cues: a text-only query keeps peaks off the background;
# - the "exclusive" IaD: Eq. 9 has no gradient when both texts pick the same proposal;
# - lr 1e-3: at 3e-3 some seeds put most peaks on the background;
# - background_weight 1: without it some seeds put their peaks on the background.
SMALL_PRESET: dict[str, Any] = {
    "preset": "small",
    "backbone_weights": None,
    "small_backbone": True,
    "feature_stage": 1,
    "coord_channels": True,
    "text_encoder": "words",
    "hidden_dim": 64,
    "cls_loss": "infonce",
    "pooling": "mean+max",
    "modulation": "ADD",
    "negative_cues": False,
    "iad_form": "exclusive",
    "background_weight": 1.0,
    # Proposals are kept largest first and the largest are background pieces, so RaS/IaD need
    # all of them.
    "num_proposals": 40,
    "input_size": 96,
    "lr": 1e-3,
    "backbone_lr_scale": 1.0,
    "batch_size": 32,
    "epochs": 20,
    "warmup_steps": 20,
}


def preset_defaults(
    base: Mapping[str, Any], preset: str, variant: str = "paper"
) -> dict[str, Any]:
    """`base` with the variant's and the preset's values applied (``paper`` keeps `base`)."""
    if variant not in VARIANTS:
        raise ConfigError(
            f"model 'pcnet' has no variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    if preset not in PRESETS:
        raise ConfigError(f"pcnet preset {preset!r} is not one of {', '.join(PRESETS)}")
    merged = dict(base)
    if variant == "official":
        from refbench_pcnet.official import OFFICIAL

        if preset != "paper":
            raise ConfigError(
                f"preset {preset!r} belongs to the paper variant; the official variant is the "
                "authors' released model (drop --set preset or --set variant)"
            )
        merged.update(OFFICIAL)
        merged["variant"] = "official"
    if preset == "small":
        merged.update(SMALL_PRESET)
    return merged


def validate(config: Mapping[str, Any]) -> None:
    """Raise `ConfigError` naming the key when a PCNet config value is out of range."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"pcnet config {key}={config[key]!r}: {why}")

    _check_types(config, fail)

    if config["variant"] == "official":
        _validate_official(config, fail)
        return
    if config["modulation"] not in MODULATIONS:
        fail("modulation", f"choose one of {', '.join(MODULATIONS)} (PCNet Table 4)")
    if config["backbone_norm"] not in NORMS:
        fail("backbone_norm", f"choose one of {', '.join(NORMS)}")
    if config["backbone_norm"] != "batch" and config["backbone_weights"]:
        fail("backbone_norm", "group/layer norm only fits a randomly initialised backbone "
             "(backbone_weights=null); pretrained CLIP weights use BatchNorm")
    if config["text_encoder"] not in TEXT_ENCODERS:
        fail("text_encoder", f"choose one of {', '.join(TEXT_ENCODERS)}")
    if config["text_encoder"] == "words" and int(config["hidden_dim"]) % 2:
        fail("hidden_dim", "must be even with text_encoder=words (two GRU directions)")
    if config["cls_loss"] not in CLS_LOSSES:
        fail("cls_loss", f"choose one of {', '.join(CLS_LOSSES)}")
    if config["iad_form"] not in IAD_FORMS:
        fail("iad_form", f"choose one of {', '.join(IAD_FORMS)}")
    if float(config["iad_temperature"]) <= 0:
        fail("iad_temperature", "must be positive")
    for key in ("ras_alignment", "iad_alignment"):
        if config[key] not in ALIGNMENTS:
            fail(key, f"choose one of {', '.join(ALIGNMENTS)} (PCNet Tables 7-8)")
    if int(config["num_stages"]) < 1:
        fail("num_stages", "need at least one stage")
    if int(config["feature_stage"]) not in (1, 2, 3, 4):
        fail("feature_stage", "a ResNet layer: 1, 2, 3 or 4 (4 = C5, the paper's)")
    if int(config["hidden_dim"]) < 1:
        fail("hidden_dim", "must be positive")
    if int(config["num_cues"]) < 0:
        fail("num_cues", "must be 0 (full sentence at every stage) or more")
    if int(config["num_distinct"]) < 0:
        fail("num_distinct", "N_d must be 0 or more")
    if int(config["num_proposals"]) < 0:
        fail("num_proposals", "P must be 0 or more")
    if int(config["map_smoothing"]) < 0:
        fail("map_smoothing", "a kernel size: 0 or 1 (off) or more")
    if float(config["background_weight"]) < 0:
        fail("background_weight", "must be 0 (off) or positive")
    if config["region_pooling"] and config["pooling"] != "mean+max":
        fail("region_pooling", "replaces the max term of pooling=mean+max; set pooling=mean+max")
    if int(config["num_proposals"]) < 1 and (
        config["ras"]
        or (config["iad"] and int(config["num_distinct"]) > 0)
        or config["region_pooling"]
        or float(config["background_weight"]) > 0
    ):
        fail("num_proposals", "RaS, IaD, region_pooling and background_weight need mask "
             "proposals; switch them off or set P > 0")


def _validate_official(config: Mapping[str, Any], fail: Any) -> None:
    """The official variant's keys; its architecture is the authors' (RN50 C5, CLIP text)."""
    from refbench_pcnet.official import NUM_BLOCKS, TEXT_ATTENTIONS

    fixed = {"backbone": "RN50", "small_backbone": False, "feature_stage": 4,
             "text_encoder": "clip", "coord_channels": False, "backbone_norm": "batch"}
    for key, value in fixed.items():
        if config[key] != value:
            fail(key, f"the official variant is the authors' architecture ({key}={value!r}); "
                 "use variant=paper to change it")
    k_iters = config["k_iters"]
    if isinstance(k_iters, bool) or not isinstance(k_iters, int) or not 1 <= k_iters <= NUM_BLOCKS:
        fail("k_iters", f"the released --K_Iters: an integer from 1 to {NUM_BLOCKS} (the "
             "released model has four blocks; its README evaluates with 1)")
    for key in ("attn_multi_text", "attn_multi_vis"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            fail(key, "a number >= 0 (the released default is 0.1)")
    length = config["text_length"]
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= 77:
        fail("text_length", "an integer from 2 to 77 (the released code keeps 20 tokens)")
    if config["text_attention"] not in TEXT_ATTENTIONS:
        fail("text_attention", f"choose one of {', '.join(TEXT_ATTENTIONS)} (the released "
             "code's is 'batch')")
    if int(config["hidden_dim"]) < 1:
        fail("hidden_dim", "must be positive")


def _check_types(config: Mapping[str, Any], fail: Any) -> None:
    """Each key whose default is a bool, an int or a float holds a value of that kind."""
    for key, default in PAPER_CONFIG.items():
        value = config.get(key, default)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                fail(key, "true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                fail(key, "an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                fail(key, "a number")
