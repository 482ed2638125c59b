"""TRIS's first stage as a refbench model: text-supervised response maps from CLIP RN50.

Liu et al., "Referring Image Segmentation Using Text Supervision", ICCV 2023 (code:
github.com/fawnliu/TRIS). The CLIP RN50 C5 map is projected by a 1x1 convolution and the text
embedding by a linear layer to 1024-d; the response is a learned temperature times their
cosine, upsampled to the input size (ReLU at inference). Training uses L_cls with TRIS's pooling
over the batch's positive sentences and the two calibration losses of a second, frozen CLIP
(see `refbench_tris.calibration`). The released code also fuses the two modalities with a
small bilateral attention block (``--attn_multi 0.1``); this plugin follows the issue's model
without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbench.api import Batch, Prediction, TrainableModel
from refbench.errors import CheckpointError, ConfigError
from refbench.nn import (
    ClipBackbone,
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    WordGRUEncoder,
    classification_loss,
    contrastive_loss,
    cosine_response,
    diagonal_maps,
    pool_response,
)
from refbench_tris.calibration import (
    foreground_images,
    negative_calibration_loss,
    positive_calibration_loss,
)

# TRIS's loss weights (its --w3, --w1, --w2 defaults).
PAPER_CLS_WEIGHT = 5.0
PAPER_CALIBRATION_POSITIVE_WEIGHT = 2.0
PAPER_CALIBRATION_NEGATIVE_WEIGHT = 1.0

# Values a preset sets before the user's overrides; "paper" is `TRIS.default_config` itself.
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
ARCHITECTURE_KEYS = ("backbone", "small_backbone", "hidden_dim", "feature_stage", "text_encoder")


class TRIS(TrainableModel):
    """TRIS stage 1: CLIP RN50, projections, cosine x temperature; L_cls and calibration."""

    name: ClassVar[str] = "tris"
    architecture_keys = ARCHITECTURE_KEYS

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The paper's setting (TRIS scripts/train_stage1.sh and args.py)."""
        config = super().default_config()
        config.update(
            {
                "preset": "paper",
                "input_size": 320,
                "batch_size": 48,
                "epochs": 15,
                "lr": 5e-5,
                "backbone_lr_scale": 0.1,  # TRIS's --lr_multi: backbone at 5e-6
                "weight_decay": 1e-2,
                "poly_power": 0.9,
                "grad_clip": 0.0,  # TRIS does not clip gradients
                "num_distinct": 6,  # TRIS's --negative_samples: calibration negatives per image
                "backbone": "RN50",
                "backbone_weights": "openai",
                "small_backbone": False,
                "hidden_dim": 1024,
                "temperature_init": 1 / 0.07,
                "pooling": "tris",
                "softmax_temperature": 1.0,
                "focal_p": 3.0,
                "focal_c": 0.01,
                "cls_weight": PAPER_CLS_WEIGHT,
                # null: 2.0 / 1.0 when the calibration CLIP has weights, 0 when it is random.
                "calibration_positive_weight": None,
                "calibration_negative_weight": None,
                "calibration_clip": "ViT-B-32",
                "calibration_clip_weights": "openai",
                "calibration_small": False,
                # refbench's options (the paper's values by default): the ResNet layer whose
                # map is projected (4 = C5, stride 32), the text tower ("clip" or "words", the
                # hashed-word BiGRU of refbench.nn.WordGRUEncoder) and L_cls ("bce": TRIS's
                # multi-label soft margin; "infonce": symmetric InfoNCE over the pooled scores)
                "feature_stage": 4,
                "text_encoder": "clip",
                "cls_loss": "bce",
            }
        )
        return config

    def __init__(
        self, config: Mapping[str, Any] | None = None, *, load_pretrained: bool = True
    ) -> None:
        overrides = dict(config or {})
        preset = overrides.get("preset", "paper")
        if preset not in PRESETS:
            raise ConfigError(
                f"model 'tris' has no preset {preset!r}; choose one of {', '.join(PRESETS)}"
            )
        super().__init__({**PRESETS[preset], **overrides})
        cfg = self.config
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
        if cfg["calibration_clip"] is not None and not cfg["calibration_small"]:
            import open_clip

            if open_clip.get_model_config(cfg["calibration_clip"]) is None:
                raise ConfigError(
                    f"calibration_clip {cfg['calibration_clip']!r} is not an open_clip model; "
                    "use a name from open_clip.list_models(), e.g. ViT-B-32"
                )
        self.backbone = ClipBackbone(
            arch=cfg["backbone"],
            weights=cfg["backbone_weights"] if load_pretrained else None,
            small=bool(cfg["small_backbone"]),
        )
        dim = int(cfg["hidden_dim"])
        self.feature_stage = int(cfg["feature_stage"])
        self.visual_projection = VisualProjection(
            self.backbone.stage_channels(self.feature_stage), dim
        )
        self.word_encoder: WordGRUEncoder | None = None
        text_dim = self.backbone.embed_dim
        if cfg["text_encoder"] == "words":
            self.word_encoder = WordGRUEncoder(dim)
            text_dim = dim
        self.text_projection = TextProjection(text_dim, dim)
        self.temperature = LearnedTemperature(float(cfg["temperature_init"]))
        # The frozen calibration CLIP is built on first use and kept out of the state dict:
        # evaluation never needs it and checkpoints stay the size of the trained model.
        self._calibration: dict[str, nn.Module] = {}

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> TRIS:
        """Build without loading pretrained backbone weights: the checkpoint replaces them."""
        return cls(config, load_pretrained=False)

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
        if self.checkpoint_path is not None:
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
        return f"{init}; {calibration}, calibration weights {positive:g}/{negative:g}"

    # --- the response -----------------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        """Projected map of ResNet layer `feature_stage` (C5, S/32, by default): [B, 3, S, S] ->
        [B, hidden_dim, S/s, S/s]."""
        return self.visual_projection(
            self.backbone.encode_image_dense(images, stage=self.feature_stage)
        )

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Projected text embeddings: [T] texts -> [T, hidden_dim]."""
        if self.word_encoder is not None:
            return self.text_projection(self.word_encoder(texts))
        return self.text_projection(self.backbone.encode_text(texts))

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        """ReLU of the upsampled response of each expression on its image: [E, S, S]."""
        visual = self.encode_images(batch.images)  # [B, C, h, w]
        text = self.encode_texts(batch.texts())  # [E, C]
        index = batch.image_index()
        maps = cosine_response(visual[index], text[:, None, :], self.temperature())[:, 0]
        maps = F.interpolate(
            maps[:, None], size=batch.images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
        return Prediction(response_maps=F.relu(maps))

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Weighted losses: ``classification`` and, when weighted, the two calibration terms."""
        cfg = self.config
        positives = [group[0].text for group in batch.expressions]
        count = len(positives)
        visual = self.encode_images(batch.images)
        text = self.encode_texts(positives)
        maps = cosine_response(visual, text, self.temperature())  # [B, B, h, w]
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
        foreground = foreground_images(diagonal_maps(maps), batch.images, _image_side(clip))
        image_embedding = clip.encode_image(foreground)
        if positive_weight > 0:
            text_embedding = clip.encode_text(self._calibration_tokens(positives, batch.images))
            losses["calibration_positive"] = positive_weight * positive_calibration_loss(
                image_embedding, text_embedding
            )
        if negative_weight > 0:
            negatives = negative_sentences(batch)
            unique = sorted({t for group in negatives for t in group})
            width = max((len(g) for g in negatives), default=0)
            if not unique or width == 0:
                return losses
            embedded = clip.encode_text(self._calibration_tokens(unique, batch.images))
            row = {t: i for i, t in enumerate(unique)}
            index = torch.zeros(count, width, dtype=torch.long, device=embedded.device)
            valid = torch.zeros(count, width, dtype=torch.bool, device=embedded.device)
            for i, group in enumerate(negatives):
                for k, sentence in enumerate(group):
                    index[i, k] = row[sentence]
                    valid[i, k] = True
            losses["calibration_negative"] = negative_weight * negative_calibration_loss(
                image_embedding, embedded[index], valid
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
        """Tokens for the calibration CLIP's text tower: [T] -> [T, L]."""
        import open_clip

        model = self._calibration["model"]
        if self.config["calibration_small"]:
            tokens = open_clip.tokenize(texts, context_length=model.context_length)
        else:
            tokens = open_clip.get_tokenizer(self.config["calibration_clip"])(texts)
        return tokens.to(like.device)


def negative_sentences(batch: Batch) -> list[list[str]]:
    """Per image, the sentences its calibration negative loss pushes the foreground away from.

    The image's extra expressions (other objects of the same image); when it has none, TRIS's
    fallback: other images' positive sentences, except those marked as also fitting it in
    ``extras["false_negatives"]`` and any identical to its own positive.
    """
    positives = [group[0].text for group in batch.expressions]
    fits = batch.extras.get("false_negatives")
    result = []
    for i, group in enumerate(batch.expressions):
        own = [e.text for e in group[1:] if e.text != positives[i]]
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


def build_calibration_clip(arch: str, weights: str | None, small: bool) -> nn.Module:
    """A frozen open_clip CLIP for the calibration losses (any open_clip model).

    small: the tiny `refbench.nn.SMALL_CLIP_CONFIG` CLIP (CPU tests, SynthRef); `weights`
    is then None (random) or a local file. Otherwise `weights` is an open_clip pretrained tag
    (downloaded once) or a local checkpoint path.
    """
    if small:
        model: nn.Module = ClipBackbone(weights=weights, small=True).model
    else:
        import open_clip

        try:
            model = open_clip.create_model(arch, pretrained=weights)
        except Exception as error:  # noqa: BLE001 - offline, missing file, wrong architecture
            first = str(error).splitlines()[0] if str(error) else ""
            raise CheckpointError(
                f"calibration CLIP {arch} weights {weights!r} cannot be loaded "
                f"({type(error).__name__}: {first}); offline, pass a local open_clip checkpoint "
                "with --set calibration_clip_weights=PATH, or turn the calibration losses off "
                "with --set calibration_positive_weight=0 --set calibration_negative_weight=0"
            ) from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _image_side(clip: nn.Module) -> int:
    """The calibration CLIP's native input side (224 for ViT-B/32)."""
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
