"""The zero-shot CLIP baseline: no training, a dense CLIP response map per sentence.

Per-position embeddings in CLIP's joint space come from applying the attention pool's value
and output projections at every position of the C5 map (MaskCLIP, Zhou et al., ECCV 2022;
`refbench.nn.ClipBackbone.dense_embeddings`); the response is their cosine with the sentence's
text embedding, averaged over prompt templates as in CLIP's zero-shot prompt ensembling.
With random weights the map means nothing, so construction without weights is refused unless
``allow_random_weights`` is set (``--allow-random-weights``, for smoke tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from refbench.api import Batch, Prediction, RISModel
from refbench.errors import ConfigError
from refbench.nn import ClipBackbone, cosine_response


class ClipBaseline(RISModel):
    """Zero-shot dense CLIP: cosine of MaskCLIP dense embeddings with the prompt-averaged text."""

    name: ClassVar[str] = "clip"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """RN50, no weights until given, one prompt template, 320x320 input."""
        config = super().default_config()
        config.update(
            {
                "input_size": 320,
                "arch": "RN50",
                "weights": None,
                "small_backbone": False,
                "prompt_templates": ["a photo of {}."],
                "allow_random_weights": False,
            }
        )
        return config

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        if cfg["weights"] is None and not cfg["allow_random_weights"]:
            raise ConfigError(
                f"model 'clip' is zero-shot and meaningless with random weights; supply CLIP "
                f"{cfg['arch']} weights with --set weights=openai (open_clip pretrained tag, "
                f"downloaded once, needs internet) or --set weights=/path/to/{cfg['arch']}.pt "
                "(a local checkpoint), or pass --allow-random-weights for a smoke test"
            )
        templates = cfg["prompt_templates"]
        if (
            not isinstance(templates, (list, tuple))
            or not templates
            or not all(isinstance(t, str) and "{}" in t for t in templates)
        ):
            raise ConfigError(
                f"prompt_templates must be a non-empty list of strings each holding '{{}}' "
                f"(e.g. [\"a photo of {{}}.\"]), got {templates!r}"
            )
        self.backbone = ClipBackbone(
            arch=cfg["arch"], weights=cfg["weights"], small=bool(cfg["small_backbone"])
        )

    @property
    def weights_description(self) -> str:
        """The CLIP weights in use, said in every run."""
        return f"zero-shot CLIP {self.backbone.weights_description}"

    def text_embeddings(self, texts: list[str]) -> Tensor:
        """Prompt-ensembled text embeddings: [T] texts -> [T, D], unit norm.

        Each template's embedding is L2-normalised, the templates are averaged and the mean
        is normalised again (CLIP's zero-shot prompt ensembling).
        """
        templates = list(self.config["prompt_templates"])
        prompts = [template.format(text) for text in texts for template in templates]
        embedded = F.normalize(self.backbone.encode_text(prompts), dim=-1)
        embedded = embedded.reshape(len(texts), len(templates), -1).mean(dim=1)
        return F.normalize(embedded, dim=-1)

    def response_from_features(self, c5: Tensor, text: Tensor, image_index: Tensor) -> Tensor:
        """Cosine of the dense embeddings with each text on its image.

        c5: [B, C5, h, w]; text: [E, D]; image_index: [E] long. Returns [E, h, w].
        """
        dense = self.backbone.dense_embeddings(c5)  # [B, D, h, w]
        return cosine_response(dense[image_index], text[:, None, :])[:, 0]

    @torch.no_grad()
    def predict(self, batch: Batch) -> Prediction:
        """One cosine map per expression at the C5 resolution: [E, S/32, S/32]."""
        c5 = self.backbone.encode_image_dense(batch.images)
        text = self.text_embeddings(batch.texts())
        maps = self.response_from_features(c5, text, batch.image_index())
        return Prediction(response_maps=maps)
