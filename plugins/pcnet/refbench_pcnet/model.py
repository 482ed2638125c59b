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
import torch.nn.functional as F
from torch import Tensor

from refbench.api import (
    Batch,
    Expression,
    Prediction,
    RISModel,
    TrainableModel,
    build_from_foreign,
    foreign_state_dict,
    merge_config,
)
from refbench.cues import pad_cues
from refbench.errors import CheckpointError, ConfigError
from refbench.nn import (
    ClipBackbone,
    LearnedTemperature,
    TextProjection,
    VisualProjection,
    WordGRUEncoder,
    classification_loss,
    contrastive_loss,
    encode_clip_tokens,
    pool_response,
    released_tokens,
)
from refbench.nn.bilateral import OFFICIAL_NAMES
from refbench.nn.calibration import build_calibration_clip
from refbench.nn.calibration import clip_image_side as _image_side
from refbench_pcnet.config import ARCHITECTURE_KEYS, PAPER_CONFIG, preset_defaults, validate
from refbench_pcnet.crm import ConditionalReferringModule, normalise_response
from refbench_pcnet.losses import (
    background_share,
    iad_loss,
    proposals_to_map,
    ras_loss,
    region_pool,
)
from refbench_pcnet.official import NUM_BLOCKS, OfficialStages, upsample
from refbench_pcnet.official_losses import (
    OFFICIAL_LOSS_WEIGHTS,
    PROPOSAL_GRID,
    StageTerms,
    diversify_loss,
    official_calibration_losses,
    official_classification_loss,
    official_losses,
    proposal_matches,
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

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The variant's and preset's values, then `overrides`, checked; nothing is built."""
        chosen = super().resolve_config(overrides)  # rejects unknown keys and bad types
        defaults = preset_defaults(cls.default_config(), chosen["preset"], chosen["variant"])
        config = merge_config(defaults, overrides, f"model {cls.name!r}")
        cls.validate_config(config)
        validate(config)
        return config

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)  # rejects unknown keys
        defaults = preset_defaults(
            self.default_config(), self.config["preset"], self.config["variant"]
        )
        self.config = merge_config(defaults, config, f"model {self.name!r}")
        validate(self.config)
        cfg = self.config
        self.backbone = ClipBackbone(
            arch=cfg["backbone"], weights=cfg["backbone_weights"], small=bool(cfg["small_backbone"])
        )
        # Set by `import_checkpoint`: the authors' file's name (its sha256 is in every run).
        self.imported_from: str | None = None
        if cfg["variant"] == "official":
            self._build_official()
            return
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

    def _build_official(self) -> None:
        """The released model: projections, a fixed temperature and four attention blocks."""
        cfg = self.config
        dim = int(cfg["hidden_dim"])
        self.feature_stage = 4
        clip = self.backbone.model
        for module in (clip.visual.attnpool,):
            module.requires_grad_(False)  # computed by the released code, never used
        clip.logit_scale.requires_grad_(False)
        self.visual_projection = VisualProjection(self.backbone.stage_channels(4), dim)
        self.text_projection = TextProjection(self.backbone.embed_dim, dim)
        self.temperature = LearnedTemperature(float(cfg["temperature_init"]))
        # The released optimiser leaves logit_scale out: exp(logit_scale) stays fixed.
        self.temperature.log_scale.requires_grad_(bool(cfg["train_temperature"]))
        self.stages = OfficialStages(dim)

    @property
    def reference_evaluation(self) -> dict[str, str]:
        """The official variant: the authors' validate.py answers each ref's first sentence."""
        return {"sentences": "first"} if self.config["variant"] == "official" else {}

    @property
    def num_cues(self) -> int:
        """Cues each expression needs: the paper's N, or the official variant's K - 1."""
        if self.config["variant"] == "official":
            return int(self.config["k_iters"]) - 1
        return int(self.config["num_cues"])

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
        """Where the weights came from (and the checkpoint, once loaded), and the variant."""
        if self.imported_from is not None:
            init = f"the authors' PCNet checkpoint {self.imported_from}"
        elif self.checkpoint_path is None:
            init = self.backbone.weights_description
        else:
            initial = self.config.get("backbone_weights") or "random init"
            init = f"checkpoint {Path(self.checkpoint_path).name} (backbone initialised from {initial})"
        if self.config["variant"] == "official":
            return f"{init}; variant official, k_iters {self.config['k_iters']}"
        return init

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
        The official variant answers as the released evaluation: `predict_official`.
        """
        if self.config["variant"] == "official":
            return self.predict_official(batch)
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

    def official_texts(self, texts: Sequence[str]) -> Tensor:
        """Projected CLIP embeddings of texts cut to `text_length` tokens: [T] -> [T, C]."""
        tokens = self.backbone.tokenize(list(texts), int(self.config["text_length"]))
        return self.text_projection(self.backbone.encode_tokens(tokens))

    def official_cues(self, expressions: Sequence[Expression]) -> Tensor:
        """[E, 3, C]: the first three cues of each expression, encoded as the released code
        encodes them (all of a batch's cue rows at once); [E, 0, C] when K = 1 needs none."""
        needed = int(self.config["k_iters"]) - 1
        dim = int(self.config["hidden_dim"])
        if needed == 0:
            return torch.zeros(len(expressions), 0, dim, device=self.temperature.log_scale.device)
        rows = []
        for expression in expressions:
            if len(expression.cues) < needed:
                raise ConfigError(
                    f"pcnet official variant with k_iters={self.config['k_iters']} reads "
                    f"{needed} cue(s) per expression, but {expression.key} "
                    f"({expression.text!r}) has {len(expression.cues)}; import the authors' "
                    "phrases with `refbench cues import --format pcnet` and pass --cues, or "
                    "use --set k_iters=1"
                )
            rows.append(list(expression.cues[:3]))
        width = min(len(r) for r in rows)
        flat = [phrase for row in rows for phrase in row[:width]]
        return self.official_texts(flat).view(len(expressions), width, -1)

    def official_scores(
        self, visual: Tensor, size: tuple[int, int], sentences: Tensor, cues: Tensor
    ) -> list[Tensor]:
        """Every stage's [B, T, h, w] scores of the released forward (see `official`)."""
        cfg = self.config
        return self.stages(
            visual, size, sentences, cues, int(cfg["k_iters"]), self.temperature(),
            float(cfg["attn_multi_text"]), float(cfg["attn_multi_vis"]),
            bool(cfg["official_reshape"]), str(cfg["text_attention"]),
        )

    @torch.no_grad()
    def predict_official(self, batch: Batch) -> Prediction:
        """The released evaluation: one image and one sentence per forward (batch size 1),
        every stage's map upsampled to the input size (align_corners=False) and ReLU'd; the
        last stage's is the answer. [E, S, S]; stage maps [E, K, S, S]."""
        side = int(batch.images.shape[-1])
        stage_maps = []
        for image, group in zip(batch.images, batch.expressions):
            features = self.visual_projection(
                self.backbone.encode_image_dense(image[None], stage=4)
            )  # [1, C, h, w]
            size = (int(features.shape[2]), int(features.shape[3]))
            visual = features.flatten(2).transpose(1, 2)
            for expression in group:
                sentence = self.official_texts([expression.text])
                cues = self.official_cues([expression])
                scores = self.official_scores(visual, size, sentence, cues)
                maps = [F.relu(upsample(s[:, :1], side)) for s in scores]
                stage_maps.append(torch.cat(maps, dim=1))  # [1, K, S, S]
        stacked = torch.cat(stage_maps)
        return Prediction(response_maps=stacked[:, -1].contiguous(), stage_maps=stacked)

    # --- training -------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Weighted losses: ``cls/stage1..N``, and ``ras``, ``iad``, ``background`` when on.

        The official variant trains as train_prog.py: `training_step_official`.
        """
        if self.config["variant"] == "official":
            return self.training_step_official(batch)
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

    def training_step_official(self, batch: Batch) -> dict[str, Tensor]:
        """The released training step (train_prog.py, model_prog_v5.TRIS.c4_foward).

        Item i of the batch is one ref: its sentence, then sentences about other objects of
        its image (the released ``--negative_samples``; the first is the released "diff ref"
        sentence). Every forward carries 2B texts, the B sentences then the B other sentences
        (the first extra of each item; an item without one borrows the next item's sentence);
        an other sentence about another image is left out of the diversify term, as the
        released ``same_img_mark``. The released script always calls with ``div_loc=True``.
        Per stage: L_cls over the B x B grid, the negative-phrase calibration ("cbs") and,
        when weighted, the SAM proposal terms; averaged over stages and weighted with the
        ``*_weight`` keys (args.py: cls 5, cbs 2, the rest 0).
        """
        cfg = self.config
        images = batch.images
        count = images.shape[0]
        positives = [group[0] for group in batch.expressions]
        others, same_image = [], []
        for i, group in enumerate(batch.expressions):
            other = group[1] if len(group) > 1 else positives[(i + 1) % count]
            others.append(other)
            same_image.append(len(group) > 1 and other.image_id == group[0].image_id)
        texts = positives + others
        features = self.visual_projection(self.backbone.encode_image_dense(images, stage=4))
        size = (int(features.shape[2]), int(features.shape[3]))
        visual = features.flatten(2).transpose(1, 2)
        sentences = self.official_texts([e.text for e in texts])
        stages = self.official_scores(visual, size, sentences, self.official_cues(texts))

        weights = {name: float(cfg[f"{name}_weight"]) for name in OFFICIAL_LOSS_WEIGHTS}
        side = int(images.shape[-1])
        wants_proposals = any(weights[k] > 0 for k in ("shrink", "anchor", "diversify"))
        proposals = clip_scores = None
        if wants_proposals:
            stored = batch.extras.get("proposals")
            if stored is None:
                raise ConfigError(
                    "pcnet official variant with shrink_weight, anchor_weight or "
                    "diversify_weight > 0 needs SAM proposals: set num_proposals=40 and train "
                    "with --proposals (PCNet's imported SAM masks)"
                )
            proposals = F.interpolate(stored.to(images.device).float(),
                                      size=(PROPOSAL_GRID, PROPOSAL_GRID), mode="nearest")
            clip_scores = batch.extras.get("clip_scores")
            if clip_scores is None and (weights["shrink"] > 0 or weights["anchor"] > 0):
                raise ConfigError(
                    "pcnet official shrink/anchor losses pick the target's proposal by its CLIP "
                    "score; import PCNet's SAM masks with their candidate file (`refbench "
                    "proposals import --format pcnet`) and train with those proposals"
                )
        calibrate = weights["cbs"] > 0 or (weights["fg"] > 0 and (cfg["clip_fg"] or cfg["clip_bg"]))
        clip = negative_text = positive_text = None
        if calibrate:
            clip = self.calibration_clip(images.device)
            tokens = released_tokens([e.text for e in positives], int(cfg["text_length"]))
            positive_text = encode_clip_tokens(clip, tokens.to(images.device))
            negatives = official_negatives(batch, int(cfg["num_distinct"]))
            flat = [t for row in negatives for t in row]
            embedded = encode_clip_tokens(
                clip, released_tokens(flat, int(cfg["text_length"])).to(images.device))
            negative_text = embedded.view(count, -1, embedded.shape[-1])
        same = torch.tensor(same_image, device=images.device)
        terms = []
        for scores in stages:  # [B, 2B, h, w]
            grid = scores[:, :count].flatten(2).transpose(1, 2)  # [B, hw, B]
            own = torch.stack([scores[i, i] for i in range(count)])  # [B, h, w]
            relu = F.relu(upsample(own[:, None], side))
            cls = official_classification_loss(
                grid, float(cfg["softmax_temperature"]), float(cfg["focal_p"]),
                float(cfg["focal_c"]))
            calibration: dict[str, Tensor] = {}
            if calibrate:
                calibration = official_calibration_losses(
                    own, images, clip.encode_image, negative_text, positive_text,
                    bool(cfg["clip_fg"]), bool(cfg["clip_bg"]), size=_image_side(clip))
            zero = cls.new_zeros(())
            left = right = zero
            if clip_scores is not None:
                left, right = proposal_matches(relu, proposals, clip_scores.to(images.device))
            diversify = None
            if weights["diversify"] > 0:
                other = torch.stack([scores[i, count + i] for i in range(count)])
                diversify = diversify_loss(relu, F.relu(upsample(other[:, None], side)),
                                           proposals, same)
            terms.append(StageTerms(cls=cls, left=left, right=right,
                                    cbs=calibration.get("cbs"), fg=calibration.get("fg"),
                                    diversify=diversify))
        return official_losses(terms, weights)

    def calibration_clip(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The frozen CLIP of the calibration losses, built on first use, kept out of the
        state dict (checkpoints stay the size of the trained model)."""
        if not hasattr(self, "_calibration"):
            self._calibration: dict[str, torch.nn.Module] = {}
        if "model" not in self._calibration:
            self._calibration["model"] = build_calibration_clip(
                self.config["calibration_clip"], self.config["calibration_clip_weights"], False)
        model = self._calibration["model"].to(device)
        self._calibration["model"] = model
        return model.eval()

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

    @classmethod
    def import_checkpoint(
        cls, state: Any, path: Path, overrides: dict[str, Any]
    ) -> RISModel | None:
        """A checkpoint of the authors' code (train_prog.py's save_checkpoint) as it is saved.

        Recognised: a dict whose ``model`` entry (or the dict itself) holds the released
        model's parameter names (``c4_vis_project``, ``attn_fusion_vl.{0..3}``, ...). The
        hidden size is read off the file; another backbone, a file without the four attention
        blocks and TRIS's checkpoints are named in the error.
        """
        weights = official_weights(state)
        if weights is None:
            return None
        describe_official(weights, path)
        variant = overrides.get("variant", "official")
        if variant != "official":
            raise CheckpointError(
                f"checkpoint {path} is the authors' PCNet checkpoint, which the official "
                f"variant reads; drop --set variant={variant}"
            )
        hidden = int(weights["c4_vis_project.weight"].shape[0])
        if "hidden_dim" in overrides and int(overrides["hidden_dim"]) != hidden:
            raise CheckpointError(
                f"checkpoint {path} was trained with hidden_dim={hidden}; drop --set "
                f"hidden_dim={overrides['hidden_dim']}"
            )
        config = {"variant": "official", "hidden_dim": hidden, **overrides}
        model = build_from_foreign(cls, config, weights, path, official_name)
        model.imported_from = path.name  # its sha256 is in every run's config.json
        return model

    def export_official(self) -> dict[str, Tensor]:
        """This model's weights under the released code's names: the ``model`` entry of a
        checkpoint the authors' validate.py loads (the reverse of `import_checkpoint`)."""
        if self.config["variant"] != "official":
            raise ConfigError(
                "only the official variant has the authors' architecture; this model is "
                f"variant {self.config['variant']!r}"
            )
        return {official_name(k): v for k, v in self.state_dict().items()}


# --- the authors' checkpoints ---------------------------------------------------------------
_OFFICIAL_PREFIXES = {
    "c4_vis_project.": "visual_projection.proj.",
    "global_lan_project.": "text_projection.proj.",
    "backbone.": "backbone.model.",
}
_BLOCK_OFFICIAL = {ours: theirs for theirs, ours in OFFICIAL_NAMES.items()}


def official_negatives(batch: Batch, count: int) -> list[list[str]]:
    """Per image, `count` sentences the calibration pushes its foreground away from: its
    other-object sentences, repeated in turn to `count`, or (an image with one object) other
    items' sentences, as the released sampler falls back to random refs."""
    positives = [group[0].text for group in batch.expressions]
    rows = []
    for i, group in enumerate(batch.expressions):
        own = [e.text for e in group[1:]] or [
            positives[j] for j in range(len(positives)) if j != i] or [positives[i]]
        rows.append([own[k % len(own)] for k in range(max(count, 1))])
    return rows


def official_name(key: str) -> str:
    """An official-variant parameter name under the released code's names (import and
    export both use this one mapping)."""
    if key == "temperature.log_scale":
        return "logit_scale"
    if key.startswith("stages.blocks."):
        index, head, rest = key.removeprefix("stages.blocks.").split(".", 2)
        return f"attn_fusion_vl.{index}.{_BLOCK_OFFICIAL[head]}.{rest}"
    for official, ours in _OFFICIAL_PREFIXES.items():
        if key.startswith(ours):
            return official + key.removeprefix(ours)
    raise KeyError(key)


def official_weights(state: Any) -> dict[str, Tensor] | None:
    """The released PCNet weights in a loaded file, or None when it is not PCNet-shaped
    (see `refbench.api.foreign_state_dict`)."""
    return foreign_state_dict(
        state, ("c4_vis_project.", "attn_fusion_vl.", "global_lan_project.", "vis_project.")
    )


def describe_official(weights: Mapping[str, Tensor], path: Path) -> None:
    """Raise a one-line `CheckpointError` when the file is a released model PCNet cannot read."""
    if "vis_project.weight" in weights and "c4_vis_project.weight" not in weights:
        raise CheckpointError(
            f"checkpoint {path} is a TRIS checkpoint of the authors' code (vis_project, "
            "lan_project), not PCNet; evaluate it with --model tris"
        )
    blocks = {k.split(".")[1] for k in weights if k.startswith("attn_fusion_vl.")}
    if blocks != {str(i) for i in range(NUM_BLOCKS)}:
        raise CheckpointError(
            f"checkpoint {path} has {len(blocks)} attention blocks (attn_fusion_vl), the "
            f"released PCNet has {NUM_BLOCKS} (trained with --attn_multi > 0); it cannot be "
            "evaluated as the authors' model"
        )
    layer3 = {k.split(".")[3] for k in weights if k.startswith("backbone.visual.layer3.")}
    text = weights.get("global_lan_project.weight")
    width = int(text.shape[-1]) if text is not None and text.ndim == 2 else None
    if len(layer3) != 6 or width != 1024:
        name = "CLIP RN101" if len(layer3) == 23 else "another backbone"
        raise CheckpointError(
            f"checkpoint {path} is a PCNet checkpoint with {name} ({len(layer3)} layer3 "
            f"blocks, text width {width}); the official variant reads the RN50 checkpoints "
            "(6 layer3 blocks, text width 1024)"
        )
