"""The paper's proposal backend: segment-anything's automatic mask generator (appendix D).

PCNet's settings: ViT-H, points_per_side 8, predicted-IoU and stability thresholds 0.7, then
refbench's shared post-processing (min area, de-duplication at IoU 0.8, the 40 largest).
Images are encoded in batches (one forward of the image encoder for `batch_size` images);
the prompt decoding then runs per image on the cached embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from refbench.api import file_sha256
from refbench.errors import CheckpointError, ConfigError
from refbench.proposals.postprocess import PAPER_MIN_AREA, Rle, postprocess_rles

MODEL_TYPES = ("vit_h", "vit_l", "vit_b")


def read_sam_checkpoint(path: str | Path, model_type: str) -> dict[str, torch.Tensor]:
    """The state dict of a SAM checkpoint, read with ``weights_only=True``; clear errors if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"SAM checkpoint {path} does not exist; download sam_{model_type}_*.pth from the "
            "segment-anything release and pass it with --checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a user-facing error
        first = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"SAM checkpoint {path} cannot be read safely ({type(error).__name__}: {first}); "
            "is it a segment-anything .pth file?"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"SAM checkpoint {path} is not a state dict of tensors; "
                              "pass an original segment-anything .pth file")
    return state


def build_sam_model(checkpoint: str | Path, model_type: str = "vit_h", device: str = "cpu"):
    """A segment-anything `Sam` of `model_type` with the weights of `checkpoint`, in eval mode."""
    from segment_anything import sam_model_registry

    if model_type not in MODEL_TYPES:
        raise ConfigError(f"unknown SAM model type {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    state = read_sam_checkpoint(checkpoint, model_type)
    model = sam_model_registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        missing = len(model.state_dict().keys() - state.keys())
        unexpected = len(state.keys() - model.state_dict().keys())
        shapes = "shapes differ" if "size mismatch" in str(error) else "keys differ"
        raise CheckpointError(
            f"SAM checkpoint {checkpoint} does not fit model type {model_type} ({shapes}: "
            f"{missing} missing, {unexpected} unexpected keys); pass --model-type matching the "
            "file (vit_h, vit_l or vit_b)"
        ) from None
    return model.to(device).eval()


def _cached_embedding_predictor(model):
    """A SamPredictor whose `set_image` takes a precomputed embedding when one is queued."""
    from segment_anything import SamPredictor

    class CachedEmbeddingPredictor(SamPredictor):
        queued: tuple | None = None  # (features [1, C, h, w], original (H, W), input (h, w))

        def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
            if self.queued is None:
                return super().set_image(image, image_format)
            features, original_size, input_size = self.queued
            self.queued = None
            self.reset_image()
            self.original_size, self.input_size = original_size, input_size
            self.features = features
            self.is_image_set = True

    return CachedEmbeddingPredictor(model)


class SamBackend:
    """segment-anything's automatic masks, post-processed as PCNet does (GPU or CPU)."""

    name = "sam"

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model_type: str = "vit_h",
        device: str = "cpu",
        batch_size: int = 4,
        points_per_side: int = 8,
        pred_iou_thresh: float = 0.7,
        stability_score_thresh: float = 0.7,
        points_per_batch: int = 64,
        max_proposals: int = 40,
        min_area: float = PAPER_MIN_AREA,
        dedup_iou: float = 0.8,
        model: Any = None,
    ) -> None:
        if model is None:
            if checkpoint is None:
                raise ConfigError("the sam backend needs --checkpoint (a segment-anything .pth)")
            model = build_sam_model(checkpoint, model_type, device)
            self.checkpoint_sha256 = file_sha256(checkpoint)
        else:  # an already built Sam (tests, notebooks); its weights are not identified
            self.checkpoint_sha256 = None
        from segment_anything import SamAutomaticMaskGenerator

        self.model = model.to(device).eval()
        self.model_type = model_type
        self.device = device
        self.batch_size = int(batch_size)
        self.generator_options = {
            "points_per_side": int(points_per_side),
            "pred_iou_thresh": float(pred_iou_thresh),
            "stability_score_thresh": float(stability_score_thresh),
            "points_per_batch": int(points_per_batch),
        }
        self.generator = SamAutomaticMaskGenerator(self.model, output_mode="coco_rle",
                                                   **self.generator_options)
        self.generator.predictor = _cached_embedding_predictor(self.model)
        self.max_proposals = int(max_proposals)
        self.min_area = float(min_area)
        self.dedup_iou = float(dedup_iou)

    def config(self) -> dict[str, Any]:
        """Everything that changes the output (checkpoint by sha256): hashed into the store."""
        return {"model_type": self.model_type, "checkpoint_sha256": self.checkpoint_sha256,
                **self.generator_options, "max_proposals": self.max_proposals,
                "min_area": self.min_area, "dedup_iou": self.dedup_iou}

    @torch.no_grad()
    def _embed(self, images: list[np.ndarray]) -> list[tuple]:
        """Image-encoder features of each image [1, C, h, w], in one forward pass."""
        predictor = self.generator.predictor
        inputs, sizes = [], []
        for image in images:
            resized = predictor.transform.apply_image(np.asarray(image))
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
            sizes.append((tuple(image.shape[:2]), tuple(tensor.shape[-2:])))
            inputs.append(self.model.preprocess(tensor[None]))  # normalised and padded square
        features = self.model.image_encoder(torch.cat(inputs))
        return [(features[i:i + 1], *sizes[i]) for i in range(len(images))]

    def propose_batch(self, images: list[np.ndarray]) -> list[list[Rle]]:
        """Post-processed proposals (COCO RLE, largest first) of each RGB image [H, W, 3]."""
        results = []
        for image, queued in zip(images, self._embed(images)):
            self.generator.predictor.queued = queued
            annotations = self.generator.generate(np.asarray(image))
            rles = [a["segmentation"] for a in annotations]
            results.append(postprocess_rles(rles, self.max_proposals, self.min_area,
                                            self.dedup_iou))
        return results

    def propose(self, image: np.ndarray) -> list[Rle]:
        """Post-processed proposals of one RGB image [H, W, 3]."""
        return self.propose_batch([image])[0]
