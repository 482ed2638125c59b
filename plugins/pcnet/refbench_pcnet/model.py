"""PCNet (Yang et al., NeurIPS 2024) as a refbench model: CLIP ResNet + N CRMs, trained with
L_cls at every stage, L_RaS and L_IaD.

Training batch (built by refbench's trainer): B distinct images; ``expressions[i]`` = the
positive text of image i, then up to N_d texts about other objects of image i; the other
images' positive texts are image i's negatives (B = 1 + L, App. A.2);
``extras["proposals"]`` [B, P, S, S] bool; optionally ``extras["false_negatives"]`` [B, B]
bool (text j also fits image i; left out of L_cls).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from refbench.api import (
    Batch,
    Expression,
    Prediction,
    TrainableModel,
    merge_config,
)
from refbench.cues import pad_cues
from refbench.errors import ConfigError
from refbench.nn import (
    ClipBackbone,
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    WordGRUEncoder,
    classification_loss,
    contrastive_loss,
    pool_response,
)
from refbench_pcnet.config import ARCHITECTURE_KEYS, PAPER_CONFIG, preset_defaults, validate
from refbench_pcnet.crm import ConditionalReferringModule, normalise_response
from refbench_pcnet.losses import (
    background_share,
    iad_loss,
    proposals_to_map,
    ras_loss,
    region_pool,
)


class PositionLayerNorm(torch.nn.Module):
    """LayerNorm over the channels of each position: [B, C, H, W] -> same (no spatial mixing)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _replace_batch_norm(module: torch.nn.Module, kind: str) -> None:
    """Replace every BatchNorm2d under `module`: "group" (8 groups, or 1) or "layer"."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            channels = child.num_features
            if kind == "group":
                new: torch.nn.Module = torch.nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
            else:
                new = PositionLayerNorm(channels)
            setattr(module, name, new)
        else:
            _replace_batch_norm(child, kind)


class PCNet(TrainableModel):
    """Progressive Comprehension Network: per-stage response maps from cue-modulated queries."""

    name = "pcnet"
    architecture_keys = ARCHITECTURE_KEYS

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The paper's configuration (App. A.4); ``preset="small"`` switches to `small_config`."""
        config = super().default_config()
        config.update(PAPER_CONFIG)
        return config

    @classmethod
    def small_config(cls) -> dict[str, Any]:
        """The SynthRef/CPU preset: small CLIP config, random init, 96 px, stride 4, C = 64."""
        return preset_defaults(cls.default_config(), "small")

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)  # rejects unknown keys
        preset = self.config["preset"]
        self.config = merge_config(
            preset_defaults(self.default_config(), preset), config, f"model {self.name!r}"
        )
        validate(self.config)
        cfg = self.config
        self.backbone = ClipBackbone(
            arch=cfg["backbone"], weights=cfg["backbone_weights"], small=bool(cfg["small_backbone"])
        )
        self.feature_stage = int(cfg["feature_stage"])
        if cfg["backbone_norm"] != "batch":
            _replace_batch_norm(self.backbone.model.visual, cfg["backbone_norm"])
        self._freeze_unused_backbone()
        dim = int(cfg["hidden_dim"])
        in_channels = self.backbone.stage_channels(self.feature_stage)
        in_channels += 2 if cfg["coord_channels"] else 0
        self.visual_projection = VisualProjection(in_channels, dim)
        self.word_encoder: WordGRUEncoder | None = None
        text_dim = self.backbone.embed_dim
        if cfg["text_encoder"] == "words":
            self.word_encoder = WordGRUEncoder(dim)
            text_dim = dim
        self.text_projection = TextProjection(text_dim, dim)
        self.temperature = LearnedTemperature(float(cfg["temperature_init"]))
        self.crm = ConditionalReferringModule(
            dim, int(cfg["num_stages"]), cfg["modulation"], float(cfg["mlp_ratio"])
        )
        self._warned_missing_cues = False

    def _freeze_unused_backbone(self) -> None:
        """Parameters PCNet never uses get no gradient (DDP and the optimiser skip them)."""
        clip = self.backbone.model
        unused: list[torch.nn.Module] = [clip.visual.attnpool]
        unused += [getattr(clip.visual, f"layer{k}") for k in range(self.feature_stage + 1, 5)]
        if self.config["text_encoder"] != "clip":
            unused += [clip.token_embedding, clip.transformer, clip.ln_final]
            clip.positional_embedding.requires_grad_(False)
            clip.text_projection.requires_grad_(False)
        for module in unused:
            module.requires_grad_(False)
        clip.logit_scale.requires_grad_(False)

    @property
    def num_stages(self) -> int:
        """N, the number of CRM stages."""
        return int(self.config["num_stages"])

    @property
    def weights_description(self) -> str:
        """Where the backbone weights came from (and the checkpoint, once loaded)."""
        if self.checkpoint_path is None:
            return self.backbone.weights_description
        initial = self.config.get("backbone_weights") or "random init"
        return f"checkpoint {Path(self.checkpoint_path).name} (backbone initialised from {initial})"

    # --- encoders -------------------------------------------------------------------------
    def encode_visual(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """V_0: [B, 3, S, S] -> ([B, h*w, C], (h, w))."""
        features = self.backbone.encode_image_dense(images, stage=self.feature_stage)
        if self.config["coord_channels"]:
            batch, _, height, width = features.shape
            ys = torch.linspace(-1, 1, height, device=features.device, dtype=features.dtype)
            xs = torch.linspace(-1, 1, width, device=features.device, dtype=features.dtype)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            coords = torch.stack([grid_x, grid_y])[None].expand(batch, -1, -1, -1)
            features = torch.cat([features, coords], dim=1)
        visual = self.visual_projection(features)
        size = (visual.shape[2], visual.shape[3])
        return visual.flatten(2).transpose(1, 2), size

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Projected text embeddings, each distinct text encoded once: [T] -> [T, C]."""
        unique = list(dict.fromkeys(texts))
        if self.word_encoder is not None:
            embedded = self.text_projection(self.word_encoder(unique))
        else:
            embedded = self.text_projection(self.backbone.encode_text(unique))
        index = {text: i for i, text in enumerate(unique)}
        return embedded[torch.tensor([index[t] for t in texts], device=embedded.device)]

    def stage_phrases(self, expression: Expression) -> tuple[str, ...]:
        """The N phrases the stages read: cue n at stage n (Sec. 3.2), padded like Sec. 3.1."""
        if int(self.config["num_cues"]) == 0 or not expression.cues:
            if int(self.config["num_cues"]) > 0 and not self._warned_missing_cues:
                warnings.warn(
                    f"pcnet: expression {expression.key} ({expression.text!r}) has no cues; "
                    "every stage reads the full sentence (build cues with `refbench cues build` "
                    "for the paper's setting)",
                    stacklevel=3,
                )
                self._warned_missing_cues = True
            return (expression.text,) * self.num_stages
        return pad_cues(expression.cues, self.num_stages)

    def _cue_embeddings(self, expressions: Sequence[Expression]) -> Tensor:
        """[N, X, C] cue embeddings of each expression at each stage."""
        phrases = [self.stage_phrases(e) for e in expressions]
        flat = [phrase for stages in phrases for phrase in stages]
        return self.encode_texts(flat).view(len(expressions), self.num_stages, -1).transpose(0, 1)

    # --- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        """Every stage's normalised map R_n for every expression; the last stage's is the answer.

        Each image is encoded once. At inference there are no other images' cues, so q'_n is
        the expression's own cue (the result does not depend on the batch's composition).
        """
        visual, (height, width) = self.encode_visual(batch.images)
        expressions = batch.flat_expressions
        query = self.encode_texts([e.text for e in expressions])  # [E, C]
        cues = self._cue_embeddings(expressions)  # [N, E, C]
        per_expression = visual[batch.image_index()]  # [E, hw, C]
        logits = self.crm(per_expression, query[:, None], cues[:, :, None])  # [E, 1, N, hw]
        logits = self._smooth(logits, (height, width))
        maps = normalise_response(logits[:, 0].float())
        stage_maps = maps.view(len(expressions), self.num_stages, height, width)
        return Prediction(response_maps=stage_maps[:, -1].contiguous(), stage_maps=stage_maps)

    # --- training -------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Weighted losses: ``cls/stage1..N``, and ``ras``, ``iad``, ``background`` when on."""
        cfg = self.config
        images = batch.images
        num_images = images.shape[0]
        distinct_per_image = int(cfg["num_distinct"]) if cfg["iad"] else 0
        positives = [group[0] for group in batch.expressions]
        distinct = [list(group[1 : 1 + distinct_per_image]) for group in batch.expressions]
        device = images.device

        visual, (height, width) = self.encode_visual(images)
        dim = visual.shape[-1]
        # Slot j < B holds positive text j (the B x B grid of L_cls); slot B + d holds image
        # i's d-th text about another object (IaD). Missing distinct texts repeat the positive
        # and are masked out.
        distinct_valid = torch.zeros(num_images, distinct_per_image, dtype=torch.bool)
        filled = []
        for i, extra in enumerate(distinct):
            for d in range(distinct_per_image):
                if d < len(extra):
                    distinct_valid[i, d] = True
                    filled.append(extra[d])
                else:
                    filled.append(positives[i])
        distinct_valid = distinct_valid.to(device)
        all_texts = positives + filled
        query_all = self.encode_texts([e.text for e in all_texts])  # [B + B*D, C]
        cues_all = self._cue_embeddings(all_texts)  # [N, B + B*D, C]
        stages = self.num_stages

        query = torch.cat(
            [
                query_all[:num_images][None].expand(num_images, -1, -1),
                query_all[num_images:].view(num_images, distinct_per_image, dim),
            ],
            dim=1,
        )  # [B, slots, C]
        cues = torch.cat(
            [
                cues_all[:, :num_images][:, None].expand(-1, num_images, -1, -1),
                cues_all[:, num_images:].reshape(stages, num_images, distinct_per_image, dim),
            ],
            dim=2,
        )  # [N, B, slots, C]
        bank = bank_keep = None
        if cfg["negative_cues"]:
            bank = cues_all[:, :num_images]  # [N, K = B, C]
            # Slot e's own text's positive cue is already its first token; leave it out.
            owner = torch.cat(
                [
                    torch.arange(num_images, device=device)[None].expand(num_images, -1),
                    torch.arange(num_images, device=device)[:, None].expand(-1, distinct_per_image),
                ],
                dim=1,
            )  # [B, slots]: the image whose positive cue slot e must not see twice
            bank_keep = owner[..., None] != torch.arange(num_images, device=device)
        cosine = self.crm(visual, query, cues, bank, bank_keep)  # [B, slots, N, hw]
        cosine = self._smooth(cosine, (height, width))
        proposals = batch.extras.get("proposals")
        soft = valid = None
        if proposals is not None:
            soft, valid = proposals_to_map(proposals.to(device), (height, width))

        losses: dict[str, Tensor] = {}
        logits = cosine * self.temperature()
        ignore = batch.extras.get("false_negatives")
        if ignore is not None:
            ignore = ignore.to(device=device, dtype=torch.bool) & ~torch.eye(
                num_images, dtype=torch.bool, device=device
            )
        grid = logits[:, :num_images].float()  # [B, B, N, hw]
        use_ras = bool(cfg["ras"]) and stages > 1
        use_iad = distinct_per_image > 0
        use_background = float(cfg["background_weight"]) > 0
        if (use_ras or use_iad or use_background or cfg["region_pooling"]) and soft is None:
            raise ConfigError(
                "pcnet with ras, iad, region_pooling or background_weight needs "
                "batch.extras['proposals'] [B, P, S, S]; set num_proposals > 0 in the training "
                "config, or switch them off"
            )
        for n in range(stages):
            if cfg["region_pooling"]:
                scores = region_pool(grid[:, :, n], soft, valid)
            else:
                maps = grid[:, :, n].reshape(num_images, num_images, height, width)
                scores = pool_response(
                    maps,
                    cfg["pooling"],
                    float(cfg["softmax_temperature"]),
                    float(cfg["focal_p"]),
                    float(cfg["focal_c"]),
                )
            if cfg["cls_loss"] == "infonce":
                cls = contrastive_loss(scores, ignore)
            else:
                cls = classification_loss(scores, ignore=ignore)
            losses[f"cls/stage{n + 1}"] = float(cfg["cls_weight"]) * cls

        if use_ras or use_iad or use_background:
            responses = normalise_response(logits.float())  # [B, slots, N, hw]
            own = torch.arange(num_images, device=device)
            target = responses[own, own]  # [B, N, hw]
            if use_background:
                losses["background"] = float(cfg["background_weight"]) * background_share(
                    target, soft, valid
                )
            if use_ras:
                ras, _ = ras_loss(target, soft, valid, cfg["ras_alignment"])
                losses["ras"] = float(cfg["ras_weight"]) * ras
            if use_iad:
                distinct_maps = responses[:, num_images:]  # [B, D, N, hw]
                iad = iad_loss(
                    target,
                    distinct_maps,
                    distinct_valid,
                    soft,
                    valid,
                    cfg["iad_alignment"],
                    cfg["iad_form"],
                    float(cfg["iad_temperature"]),
                )
                losses["iad"] = float(cfg["iad_weight"]) * iad
        return losses

    def _smooth(self, maps: Tensor, size: tuple[int, int]) -> Tensor:
        """Average each map over k x k cells (``map_smoothing``): [..., hw] -> [..., hw]."""
        kernel = int(self.config["map_smoothing"])
        if kernel <= 1:
            return maps
        lead = maps.shape[:-1]
        grid = maps.reshape(-1, 1, *size)
        smoothed = torch.nn.functional.avg_pool2d(
            grid, kernel, stride=1, padding=kernel // 2, count_include_pad=False
        )[..., : size[0], : size[1]]
        return smoothed.reshape(*lead, -1)

    # --- checkpoints ----------------------------------------------------------------------
    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> PCNet:
        """Build without reading pretrained backbone weights: the checkpoint replaces them."""
        model = cls({**config, "backbone_weights": None})
        model.config["backbone_weights"] = config.get("backbone_weights")
        return model
