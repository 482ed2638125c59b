"""TRIS's first stage as a refbench model: text-supervised response maps from CLIP RN50.

Liu et al., "Referring Image Segmentation Using Text Supervision", ICCV 2023 (code:
github.com/fawnliu/TRIS). The CLIP RN50 C5 map is projected by a 1x1 convolution and the text
embedding by a linear layer to 1024-d; the response is a temperature times their cosine,
upsampled to the input size (ReLU at inference). Training uses L_cls with TRIS's pooling over
the batch's positive sentences and the two calibration losses of a second, frozen CLIP (see
`refbench.nn.calibration`).

Two variants (config ``variant``), described point by point in docs/models.md:
- ``"refbench"`` (default): refbench's reading, with its presets and options;
- ``"released"``: the authors' released code, which loads their published stage-1
  checkpoints as they are (`TRIS.import_checkpoint`): ImageNet normalisation after a Pillow
  resize, 20-token CLIP text, the bilateral attention block, a frozen temperature, and the
  released training recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbench.api import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    Prediction,
    RISModel,
    TrainableModel,
    build_from_foreign,
    foreign_state_dict,
)
from refbench.errors import CheckpointError, ConfigError
from refbench.nn import (
    BilateralAttention,
    ClipBackbone,
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    WordGRUEncoder,
    classification_loss,
    contrastive_loss,
    diagonal_maps,
    encode_clip_tokens,
    fuse,
    pool_response,
    released_tokens,
)
from refbench.nn.bilateral import OFFICIAL_NAMES
from refbench.nn.calibration import (
    build_calibration_clip,
    clip_image_side,
    foreground_images,
    negative_calibration_loss,
    positive_calibration_loss,
)

# The released training script's loss weights (args.py: w4 = 5 on L_cls, w1 = 1 on the
# positive calibration term, w5 = 2 on the negative "cbs" term).
PAPER_CLS_WEIGHT = 5.0
PAPER_CALIBRATION_POSITIVE_WEIGHT = 1.0
PAPER_CALIBRATION_NEGATIVE_WEIGHT = 2.0

VARIANTS = ("refbench", "released")

# What ``variant="released"`` sets before the user's overrides: the official stage-1 model
# (model/model_stage1.py with args.py's defaults) and recipe (train_stage1.py,
# scripts/train_stage1.sh).
RELEASED: dict[str, Any] = {
    "input_size": 320,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "resize": "pil",
    "backbone": "RN50",
    "backbone_weights": "openai",
    "small_backbone": False,
    "hidden_dim": 1024,
    "feature_stage": 4,
    "text_encoder": "clip",
    "text_length": 20,
    "attn_multi": 0.1,
    "train_temperature": False,
    "batch_size": 48,
    "epochs": 15,
    "lr": 5e-5,
    "backbone_lr_scale": 0.1,
    "weight_decay": 1e-2,
    "poly_power": 0.9,
    "warmup_steps": 0,
    "grad_clip": 0.0,
    "num_distinct": 3,
    "sampling": "refs",
    "selection_metric": "mIoU",
    "pooling": "tris",
    "softmax_temperature": 1.0,
    "focal_p": 3.0,
    "focal_c": 0.01,
    "cls_loss": "bce",
    "cls_weight": PAPER_CLS_WEIGHT,
    "calibration_clip": "ViT-B-32-quickgelu",
    "calibration_clip_weights": "openai",
    "calibration_small": False,
    "positive_clamp": [1e-4, 0.9999],
    "negative_clamp": None,
}

# Values a preset of the refbench variant sets before the user's overrides; "paper" is
# `TRIS.default_config` itself.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {
        "input_size": 96,
        "backbone_weights": None,
        "small_backbone": True,
        "hidden_dim": 64,
        "num_distinct": 2,
        "calibration_clip_weights": None,
        "calibration_small": True,
        # Trained from scratch on 96 px SynthRef scenes, the paper's recipe does not localise
        # (stride 32 gives a 3x3 map; BCE sits at the all-negative solution; a random-init CLIP
        # text tower is slow to fit). These are refbench's options, not TRIS's:
        "feature_stage": 1,  # stride 4: a 24x24 map
        "text_encoder": "words",
        "cls_loss": "infonce",
        "pooling": "mean+max",
        "batch_size": 32,
        "lr": 3e-3,
        "warmup_steps": 20,
    },
}

FEATURE_STAGES = (1, 2, 3, 4)
TEXT_ENCODERS = ("clip", "words")
CLS_LOSSES = ("bce", "infonce")
ARCHITECTURE_KEYS = (
    "variant", "backbone", "small_backbone", "hidden_dim", "feature_stage", "text_encoder",
)


class TRIS(TrainableModel):
    """TRIS stage 1: CLIP RN50, projections, cosine x temperature; L_cls and calibration."""

    name: ClassVar[str] = "tris"
    architecture_keys = ARCHITECTURE_KEYS

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The refbench variant's paper setting (TRIS scripts/train_stage1.sh and args.py)."""
        config = super().default_config()
        config.update(
            {
                "variant": "refbench",
                "preset": "paper",
                "input_size": 320,
                "batch_size": 48,
                "epochs": 15,
                "lr": 5e-5,
                "backbone_lr_scale": 0.1,  # TRIS's --lr_multi: backbone at 5e-6
                "weight_decay": 1e-2,
                "poly_power": 0.9,
                "grad_clip": 0.0,  # TRIS does not clip gradients
                "num_distinct": 3,  # scripts/train_stage1.sh --negative_samples 3
                "sampling": "images",  # the trainer's unit: distinct images per batch
                "selection_metric": "PointM",  # the validation metric that picks best.pt
                "backbone": "RN50",
                "backbone_weights": "openai",
                "small_backbone": False,
                "hidden_dim": 1024,
                "temperature_init": 1 / 0.07,
                "train_temperature": True,
                "pooling": "tris",
                "softmax_temperature": 1.0,
                "focal_p": 3.0,
                "focal_c": 0.01,
                "cls_weight": PAPER_CLS_WEIGHT,
                # null: 1.0 / 2.0 when the calibration CLIP has weights, 0 when it is random.
                "calibration_positive_weight": None,
                "calibration_negative_weight": None,
                "calibration_clip": "ViT-B-32",
                "calibration_clip_weights": "openai",
                "calibration_small": False,
                # [low, high] clamp of the positive cosine and the low clamp of 1 - cosine in
                # the negative term before their logs (null: none)
                "positive_clamp": [1e-6, None],
                "negative_clamp": 1e-6,
                # refbench's options (the paper's values by default): the ResNet layer whose
                # map is projected (4 = C5, stride 32), the text tower ("clip" or "words", the
                # hashed-word BiGRU of refbench.nn.WordGRUEncoder) and L_cls ("bce": TRIS's
                # multi-label soft margin; "infonce": symmetric InfoNCE over the pooled scores)
                "feature_stage": 4,
                "text_encoder": "clip",
                "cls_loss": "bce",
                # the released code's options: tokens kept per sentence (null: CLIP's 77,
                # end token kept) and the weight of the bilateral attention update (0: none)
                "text_length": None,
                "attn_multi": 0.0,
            }
        )
        return config

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The variant's and preset's values, then `overrides`, checked; nothing is built."""
        config = super().resolve_config(resolve_variant(dict(overrides or {})))
        check_config(config)
        return config

    def __init__(
        self, config: Mapping[str, Any] | None = None, *, load_pretrained: bool = True
    ) -> None:
        overrides = dict(config or {})
        super().__init__(resolve_variant(overrides))
        cfg = self.config
        check_config(cfg)
        if cfg["calibration_clip"] is not None and not cfg["calibration_small"]:
            import open_clip

            if open_clip.get_model_config(cfg["calibration_clip"]) is None:
                raise ConfigError(
                    f"calibration_clip {cfg['calibration_clip']!r} is not an open_clip model; "
                    "use a name from open_clip.list_models(), e.g. ViT-B-32-quickgelu"
                )
        self.backbone = ClipBackbone(
            arch=cfg["backbone"],
            weights=cfg["backbone_weights"] if load_pretrained else None,
            small=bool(cfg["small_backbone"]),
        )
        dim = int(cfg["hidden_dim"])
        self.feature_stage = int(cfg["feature_stage"])
        self.text_length = None if cfg["text_length"] is None else int(cfg["text_length"])
        self.attn_multi = float(cfg["attn_multi"])
        self.visual_projection = VisualProjection(
            self.backbone.stage_channels(self.feature_stage), dim
        )
        self.word_encoder: WordGRUEncoder | None = None
        text_dim = self.backbone.embed_dim
        if cfg["text_encoder"] == "words":
            self.word_encoder = WordGRUEncoder(dim)
            text_dim = dim
        self.text_projection = TextProjection(text_dim, dim)
        self.fusion: BilateralAttention | None = None
        if self.attn_multi > 0:
            self.fusion = BilateralAttention(dim, dim)
        self.temperature = LearnedTemperature(float(cfg["temperature_init"]))
        self.temperature.log_scale.requires_grad_(bool(cfg["train_temperature"]))
        # Set by `import_checkpoint`: the published file's name and hash, said in every run.
        self.imported_from: str | None = None
        # The frozen calibration CLIP is built on first use and kept out of the state dict:
        # evaluation never needs it and checkpoints stay the size of the trained model.
        self._calibration: dict[str, nn.Module] = {}

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> TRIS:
        """Build without loading pretrained backbone weights: the checkpoint replaces them."""
        return cls(config, load_pretrained=False)

    @classmethod
    def import_checkpoint(
        cls, state: Any, path: Path, overrides: dict[str, Any]
    ) -> RISModel | None:
        """The authors' stage-1 checkpoint (train_stage1.py's save_checkpoint) as it is published.

        Recognised: a dict whose ``model`` entry (or the dict itself) holds TRIS's parameter
        names. Another TRIS backbone, TRIS's second stage and PCNet's released checkpoints are
        named in the error.
        """
        weights = released_weights(state)
        if weights is None:
            return None
        describe_official(weights, path)
        variant = overrides.get("variant", "released")
        if variant != "released":
            raise CheckpointError(
                f"checkpoint {path} is the authors' TRIS stage-1 checkpoint, which the released "
                f"variant reads; drop --set variant={variant}"
            )
        hidden = int(weights["vis_project.weight"].shape[0])
        has_fusion = any(k.startswith("attn_fusion.") for k in weights)
        config = {"variant": "released", "hidden_dim": hidden,
                  "attn_multi": RELEASED["attn_multi"] if has_fusion else 0.0, **overrides}
        model = build_from_foreign(cls, config, weights, path, official_name)
        model.imported_from = path.name  # its sha256 is in every run's config.json
        return model

    def export_official(self) -> dict[str, Tensor]:
        """This model's weights under the released code's names (the reverse of import):
        the ``model`` entry of a checkpoint the authors' validate.py loads."""
        if self.config["variant"] != "released":
            raise ConfigError(
                "only the released variant has the authors' architecture; this model is "
                f"variant {self.config['variant']!r}"
            )
        return {official_name(k): v for k, v in self.state_dict().items()}

    # --- descriptions ---------------------------------------------------------------------
    @property
    def calibration_weights(self) -> tuple[float, float]:
        """(positive, negative) calibration weights after resolving null (see default_config)."""
        has_weights = self.config["calibration_clip_weights"] is not None
        resolved = []
        for key, paper in (
            ("calibration_positive_weight", PAPER_CALIBRATION_POSITIVE_WEIGHT),
            ("calibration_negative_weight", PAPER_CALIBRATION_NEGATIVE_WEIGHT),
        ):
            value = self.config[key]
            resolved.append(float(value) if value is not None else (paper if has_weights else 0.0))
        return resolved[0], resolved[1]

    @property
    def weights_description(self) -> str:
        """Backbone weights and what the calibration CLIP is, said in every run."""
        init = self.backbone.weights_description
        if self.imported_from is not None:
            init = f"the authors' TRIS stage-1 checkpoint {self.imported_from}"
        elif self.checkpoint_path is not None:
            initial = self.config["backbone_weights"] or "random init"
            init = f"checkpoint {Path(self.checkpoint_path).name} (backbone initialised from {initial})"
        positive, negative = self.calibration_weights
        if self.config["calibration_clip_weights"] is None:
            calibration = (
                "calibration CLIP random init (small)" if self.config["calibration_small"]
                else f"calibration CLIP {self.config['calibration_clip']} random init"
            )
        else:
            calibration = (
                f"calibration CLIP {self.config['calibration_clip']} "
                f"{self.config['calibration_clip_weights']}"
            )
        return (
            f"{init}; variant {self.config['variant']}; {calibration}, calibration weights "
            f"{positive:g}/{negative:g}"
        )

    # --- the response -----------------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        """Projected map of ResNet layer `feature_stage` (C5, S/32, by default): [B, 3, S, S] ->
        [B, hidden_dim, S/s, S/s]."""
        return self.visual_projection(
            self.backbone.encode_image_dense(images, stage=self.feature_stage)
        )

    def tokenize(self, texts: list[str]) -> Tensor:
        """CLIP tokens of `texts` as this variant cuts them: [T] -> [T, L]."""
        return self.backbone.tokenize(texts, self.text_length)

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Projected text embeddings: [T] texts -> [T, hidden_dim]."""
        if self.word_encoder is not None:
            return self.text_projection(self.word_encoder(texts))
        return self.text_projection(self.backbone.encode_tokens(self.tokenize(texts)))

    def response(self, visual: Tensor, text: Tensor) -> Tensor:
        """Temperature x cosine of every position with every text of its image.

        visual [N, C, h, w], text [N, T, C] -> [N, T, h, w]. With the bilateral block, both
        sides are normalised, fused over the T texts of each image (the update scaled by
        `attn_multi` and added, not normalised again), then multiplied, as the released code.
        """
        if visual.ndim != 4 or text.ndim != 3 or text.shape[0] != visual.shape[0]:
            raise ValueError(
                f"visual must be [N, C, h, w] and text [N, T, C], got {tuple(visual.shape)} "
                f"and {tuple(text.shape)}"
            )
        visual = visual / visual.norm(dim=1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        if self.fusion is not None:
            visual, text = fuse(visual, text, self.fusion, self.attn_multi)
        batch, _, height, width = visual.shape
        scores = torch.bmm(visual.flatten(2).transpose(1, 2), text.transpose(1, 2))  # [N, hw, T]
        scores = scores * self.temperature()
        return scores.transpose(1, 2).reshape(batch, -1, height, width)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        """ReLU of the upsampled response of each expression on its image: [E, S, S].

        Each (image, expression) pair is answered on its own, so an answer never depends on
        which other expressions share the batch (the bilateral block attends over every text
        it is given; the released evaluation gives it one). The released variant also runs
        the backbone and the text tower on one image and one text at a time, as the released
        evaluation does: products over a batch round differently in the last bits, which is
        enough to move a peak between two pixels that tie to 1e-7.
        """
        size = batch.images.shape[-2:]
        if self.config["variant"] == "released":
            # one image and one sentence per forward, as the released evaluation (bit for bit)
            maps = []
            for image, group in zip(batch.images, batch.expressions):
                visual = self.encode_images(image[None])
                for item in group:
                    text = self.encode_texts([item.text])
                    maps.append(_upsample(self.response(visual, text[:, None, :]), size))
            return Prediction(response_maps=F.relu(torch.cat(maps)))
        visual = self.encode_images(batch.images)  # [B, C, h, w]
        text = self.encode_texts(batch.texts())  # [E, C]
        maps = self.response(visual[batch.image_index()], text[:, None, :])  # [E, 1, h, w]
        maps = _upsample(maps, size)
        return Prediction(response_maps=F.relu(maps))

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Weighted losses: ``classification`` and, when weighted, the two calibration terms.

        Every image is scored against every positive sentence of the batch in one fused
        response (as the released training does), [B, B, h, w].
        """
        cfg = self.config
        positives = [group[0].text for group in batch.expressions]
        count = len(positives)
        visual = self.encode_images(batch.images)
        text = self.encode_texts(positives)
        maps = self.response(visual, text[None].expand(count, -1, -1))  # [B, B, h, w]
        scores = pool_response(
            maps,
            cfg["pooling"],
            softmax_temperature=float(cfg["softmax_temperature"]),
            focal_p=float(cfg["focal_p"]),
            focal_c=float(cfg["focal_c"]),
        )
        false_negatives = batch.extras.get("false_negatives")
        ignore = None
        if false_negatives is not None:
            # Entry [i, j]: image i's sentence also fits image j, so it is no negative there.
            eye = torch.eye(count, dtype=torch.bool, device=scores.device)
            ignore = false_negatives.to(scores.device).bool().T & ~eye
        if cfg["cls_loss"] == "infonce":
            cls = contrastive_loss(scores, ignore)
        else:
            cls = classification_loss(scores, ignore=ignore)
        losses = {"classification": float(cfg["cls_weight"]) * cls}

        positive_weight, negative_weight = self.calibration_weights
        if positive_weight <= 0 and negative_weight <= 0:
            return losses
        clip = self.calibration_clip(batch.images.device)
        foreground = foreground_images(diagonal_maps(maps), batch.images, clip_image_side(clip))
        image_embedding = clip.encode_image(foreground)
        if positive_weight > 0:
            low, high = cfg["positive_clamp"]
            text_embedding = encode_clip_tokens(
                clip, self._calibration_tokens(positives, batch.images)
            )
            losses["calibration_positive"] = positive_weight * positive_calibration_loss(
                image_embedding, text_embedding, eps=low, upper=high
            )
        if negative_weight > 0:
            negatives = negative_sentences(batch, keep_duplicates=cfg["variant"] == "released")
            unique = sorted({t for group in negatives for t in group})
            width = max((len(g) for g in negatives), default=0)
            if not unique or width == 0:
                return losses
            embedded = encode_clip_tokens(clip, self._calibration_tokens(unique, batch.images))
            row = {t: i for i, t in enumerate(unique)}
            index = torch.zeros(count, width, dtype=torch.long, device=embedded.device)
            valid = torch.zeros(count, width, dtype=torch.bool, device=embedded.device)
            for i, group in enumerate(negatives):
                for k, sentence in enumerate(group):
                    index[i, k] = row[sentence]
                    valid[i, k] = True
            losses["calibration_negative"] = negative_weight * negative_calibration_loss(
                image_embedding, embedded[index], valid, eps=cfg["negative_clamp"]
            )
        return losses

    def calibration_clip(self, device: torch.device | str = "cpu") -> nn.Module:
        """The frozen calibration CLIP (open_clip), built on first use, in eval mode."""
        if "model" not in self._calibration:
            self._calibration["model"] = build_calibration_clip(
                self.config["calibration_clip"],
                self.config["calibration_clip_weights"],
                bool(self.config["calibration_small"]),
            )
        model = self._calibration["model"].to(device)
        self._calibration["model"] = model
        return model.eval()

    def _calibration_tokens(self, texts: list[str], like: Tensor) -> Tensor:
        """Tokens for the calibration CLIP's text tower: [T] -> [T, L]; with `text_length`,
        the same tokens the backbone reads (the released code feeds both its 20 tokens)."""
        import open_clip

        model = self._calibration["model"]
        if self.text_length is not None:
            tokens = released_tokens(texts, self.text_length)
        elif self.config["calibration_small"]:
            tokens = open_clip.tokenize(texts, context_length=model.context_length)
        else:
            tokens = open_clip.get_tokenizer(self.config["calibration_clip"])(texts)
        return tokens.to(like.device)


def resolve_variant(overrides: dict[str, Any]) -> dict[str, Any]:
    """The config values of the chosen variant and preset, then the user's `overrides`."""
    variant = overrides.get("variant", "refbench")
    if variant not in VARIANTS:
        raise ConfigError(
            f"model 'tris' has no variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    preset = overrides.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(
            f"model 'tris' has no preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    if variant == "released":
        if preset != "paper":
            raise ConfigError(
                f"preset {preset!r} belongs to the refbench variant; the released variant is "
                "the authors' model as published (drop --set preset or --set variant)"
            )
        return {**copy.deepcopy(RELEASED), **overrides}
    return {**copy.deepcopy(PRESETS[preset]), **overrides}


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise a one-line `ConfigError` for a value the model cannot be built with."""
    for key, allowed in (
        ("feature_stage", FEATURE_STAGES),
        ("text_encoder", TEXT_ENCODERS),
        ("cls_loss", CLS_LOSSES),
    ):
        if cfg[key] not in allowed:
            raise ConfigError(
                f"tris config {key}={cfg[key]!r}: choose one of "
                f"{', '.join(str(v) for v in allowed)}"
            )
    if cfg["text_encoder"] == "words" and int(cfg["hidden_dim"]) % 2:
        raise ConfigError(
            f"tris config hidden_dim={cfg['hidden_dim']!r}: must be even with "
            "text_encoder=words (two GRU directions)"
        )
    length = cfg["text_length"]
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                               or not 2 <= length <= 77):
        raise ConfigError(
            f"tris config text_length={length!r}: an integer from 2 to 77, or null for CLIP's "
            "full context"
        )
    if isinstance(cfg["attn_multi"], bool) or not isinstance(cfg["attn_multi"], int | float) \
            or cfg["attn_multi"] < 0:
        raise ConfigError(
            f"tris config attn_multi={cfg['attn_multi']!r}: a number >= 0 (0 leaves out the "
            "bilateral attention block)"
        )
    clamp = cfg["positive_clamp"]
    if not (isinstance(clamp, list | tuple) and len(clamp) == 2):
        raise ConfigError(
            f"tris config positive_clamp={clamp!r}: a pair [low, high] (either may be null)"
        )
    if cfg["variant"] == "released":
        fixed = {"backbone": "RN50", "small_backbone": False, "feature_stage": 4,
                 "text_encoder": "clip"}
        for key, value in fixed.items():
            if cfg[key] != value:
                raise ConfigError(
                    f"tris config {key}={cfg[key]!r}: the released variant is the authors' "
                    f"architecture ({key}={value!r}); use variant=refbench to change it"
                )


# --- the authors' checkpoints ---------------------------------------------------------------
_OFFICIAL_PREFIXES = {
    "vis_project.": "visual_projection.proj.",
    "lan_project.": "text_projection.proj.",
    "backbone.": "backbone.model.",
}
_FUSION_OFFICIAL = {ours: theirs for theirs, ours in OFFICIAL_NAMES.items()}


def released_weights(state: Any) -> dict[str, Tensor] | None:
    """The released model's weights in a loaded file, or None when it is not TRIS-shaped
    (see `refbench.api.foreign_state_dict`)."""
    return foreign_state_dict(state, ("backbone.visual.", "vis_project.", "attn_fusion_vl."))


def describe_official(weights: Mapping[str, Tensor], path: Path) -> None:
    """Raise a one-line `CheckpointError` when the file is a released model TRIS cannot read."""
    if any(k.startswith("attn_fusion_vl.") for k in weights):
        raise CheckpointError(
            f"checkpoint {path} is a PCNet checkpoint of the authors' code (Boosting_WRIS: "
            "attn_fusion_vl blocks), not TRIS; evaluate it with --model pcnet"
        )
    if any(k.startswith(("attention2.", "reduced_c1.", "final_seg1.")) for k in weights):
        raise CheckpointError(
            f"checkpoint {path} is TRIS's second stage (the segmentation network trained on "
            "stage-1 pseudo labels, model_stage2.py); refbench's tris is the first stage, "
            "evaluate a stage-1 checkpoint (ckpt_320_epoch_*_best.pth of train_stage1.py)"
        )
    layer3 = {k.split(".")[3] for k in weights if k.startswith("backbone.visual.layer3.")}
    text_dim = weights.get("lan_project.weight")
    width = int(text_dim.shape[-1]) if text_dim is not None and text_dim.ndim == 2 else None
    if len(layer3) != 6 or width != 1024:
        blocks = f"{len(layer3)} layer3 blocks" if layer3 else "no CLIP ResNet"
        name = "CLIP RN101" if len(layer3) == 23 else "another backbone"
        raise CheckpointError(
            f"checkpoint {path} is a TRIS stage-1 checkpoint with {name} ({blocks}, text width "
            f"{width}); the released variant reads the RN50 checkpoints (6 layer3 blocks, text "
            "width 1024)"
        )


def official_name(key: str) -> str:
    """A released-variant parameter name under the released code's names (`import_checkpoint`
    and `export_official` both use this one mapping)."""
    if key == "temperature.log_scale":
        return "logit_scale"
    if key.startswith("fusion."):
        head, _, rest = key.removeprefix("fusion.").partition(".")
        return f"attn_fusion.{_FUSION_OFFICIAL[head]}.{rest}"
    for official, ours in _OFFICIAL_PREFIXES.items():
        if key.startswith(ours):
            return official + key.removeprefix(ours)
    raise KeyError(key)


def negative_sentences(batch: Batch, keep_duplicates: bool = False) -> list[list[str]]:
    """Per image, the sentences its calibration negative loss pushes the foreground away from.

    The image's extra expressions (other objects of the same image, or what the sampler drew);
    when it has none, TRIS's fallback: other images' positive sentences, except those marked
    as also fitting it in ``extras["false_negatives"]`` and any identical to its own positive.
    keep_duplicates (the released code): extras are kept as drawn, even a text equal to the
    positive.
    """
    positives = [group[0].text for group in batch.expressions]
    fits = batch.extras.get("false_negatives")
    result = []
    for i, group in enumerate(batch.expressions):
        own = [e.text for e in group[1:] if keep_duplicates or e.text != positives[i]]
        if not own:
            own = [
                positives[j]
                for j in range(len(positives))
                if j != i
                and positives[j] != positives[i]
                and not (fits is not None and bool(fits[j, i]))
            ]
        result.append(own)
    return result


def _upsample(maps: Tensor, size: Any) -> Tensor:
    """[N, 1, h, w] -> [N, S, S]: bilinear, align_corners=False, as the released model ends."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]
