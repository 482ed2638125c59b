"""Calibration losses of TRIS and PCNet: a frozen CLIP scores the foreground a map keeps.

In TRIS's released training script (fawnliu/TRIS, ``train_stage1.py``) and PCNet's
(zaiquanyang/Boosting_WRIS, ``model_prog_v5.TRIS.cbs_loss``), which share this code path,
the response map of each image for its own sentence is upsampled to the input size, passed
through a sigmoid, resized with the image to the calibration CLIP's input size (224 for
ViT-B/32) and multiplied into the normalised image. A second CLIP, frozen, embeds that
foreground; two losses follow (TRIS's ``l1``, weight ``w1 = 1``, and ``l5`` or "cbs",
weight ``w5 = 2``; PCNet's positive term is off unless ``--clip_fg``):

- positive: ``mean_i -log clamp(cos(f_i, t_i), 1e-4, 0.9999)``, the foreground should match
  its own sentence;
- negative: ``mean_i mean_k -log(1 - cos(f_i, n_ik))``, it should not match sentences about
  other objects of the same image (TRIS's scripts/train_stage1.sh draws 3, with replacement;
  when the image has no other object they are sentences of other images).

The clamps are arguments: the released code's are above (the negative term unclamped), the
TRIS refbench variant's defaults clamp both at 1e-6 from below only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbench.api import load_state_exactly
from refbench.errors import CheckpointError
from refbench.nn.backbone import ClipBackbone, read_clip_state_dict

CALIBRATION_EPS = 1e-6


def foreground_images(
    maps: Tensor, images: Tensor, size: int, background: bool = False
) -> Tensor:
    """TRIS's masked foreground at the calibration CLIP's input size.

    maps: [B, h, w] response of each image for its own sentence (temperature x cosine);
    images: [B, 3, S, S] normalised. Returns [B, 3, size, size]:
    resize(sigmoid(upsample_S(map))) * resize(image), bilinear as in TRIS (align_corners=False
    to the input size, then align_corners=True to `size`). background: the complement
    (1 - cam) * image instead, the input of PCNet's optional ``--clip_bg`` term.
    """
    if maps.ndim != 3 or images.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"maps must be [B, h, w] and images [B, 3, S, S], got {tuple(maps.shape)} and "
            f"{tuple(images.shape)}"
        )
    side = images.shape[-2:]
    cam = torch.sigmoid(
        F.interpolate(maps[:, None], size=side, mode="bilinear", align_corners=False)
    )
    if tuple(side) != (size, size):
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=True)
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=True)
    return (1 - cam) * images if background else cam * images


def positive_calibration_loss(
    foreground: Tensor,
    positive_text: Tensor,
    eps: float = CALIBRATION_EPS,
    upper: float | None = None,
) -> Tensor:
    """TRIS's ``l1``: mean_i -log(clamp(cos(f_i, t_i), eps, upper)); [B, D], [B, D] -> scalar."""
    if foreground.shape != positive_text.shape or foreground.ndim != 2:
        raise ValueError(
            f"foreground and positive_text must both be [B, D], got {tuple(foreground.shape)} "
            f"and {tuple(positive_text.shape)}"
        )
    cosine = _cosine(foreground, positive_text)
    return -torch.log(cosine.clamp(min=eps, max=upper)).mean()


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last dim after dividing each side by its norm, as the released code."""
    return (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)


def negative_calibration_loss(
    foreground: Tensor,
    negative_text: Tensor,
    valid: Tensor,
    eps: float | None = CALIBRATION_EPS,
) -> Tensor:
    """TRIS's "cbs" term: mean over images of mean_k -log(max(eps, 1 - cos(f_i, n_ik)));
    eps None leaves ``1 - cos`` unclamped, as the released code does.

    foreground: [B, D]; negative_text: [B, K, D] padded; valid: [B, K] bool marks real
    negatives. Images without any negative are left out of the mean (0 if none has one).
    """
    if negative_text.ndim != 3 or negative_text.shape[0] != foreground.shape[0]:
        raise ValueError(
            f"negative_text must be [B, K, D] with B = {foreground.shape[0]}, got "
            f"{tuple(negative_text.shape)}"
        )
    if valid.shape != negative_text.shape[:2]:
        raise ValueError(f"valid {tuple(valid.shape)} != [B, K] {tuple(negative_text.shape[:2])}")
    cosine = _cosine(foreground[:, None, :], negative_text)  # [B, K]
    per_pair = -torch.log((1 - cosine).clamp(min=eps) if eps is not None else 1 - cosine)
    keep = valid.to(per_pair.dtype)
    counts = keep.sum(-1)
    has_any = counts > 0
    if not bool(has_any.any()):
        return foreground.sum() * 0.0
    per_image = (per_pair * keep).sum(-1) / counts.clamp(min=1)
    return per_image[has_any].mean()


def build_calibration_clip(arch: str, weights: str | None, small: bool) -> nn.Module:
    """A frozen open_clip CLIP for the calibration losses (any open_clip model).

    small: the tiny `refbench.nn.SMALL_CLIP_CONFIG` CLIP (CPU tests, SynthRef); `weights`
    is then None (random) or a local file. Otherwise `weights` is an open_clip pretrained tag
    (downloaded once) or a local checkpoint (OpenAI's TorchScript release or a state dict).
    """
    if small:
        model: nn.Module = ClipBackbone(weights=weights, small=True).model
    else:
        import open_clip

        local = weights is not None and not open_clip.get_pretrained_cfg(arch, str(weights))
        try:
            model = open_clip.create_model(arch, pretrained=None if local else weights)
        except Exception as error:  # noqa: BLE001 - offline, missing file, wrong architecture
            first = str(error).splitlines()[0] if str(error) else ""
            raise CheckpointError(
                f"calibration CLIP {arch} weights {weights!r} cannot be loaded "
                f"({type(error).__name__}: {first}); offline, pass a local CLIP checkpoint "
                "with --set calibration_clip_weights=PATH, or set the calibration losses' "
                "weights to 0 (the model's docs name them)"
            ) from None
        if local:
            path = Path(str(weights)).expanduser()
            state = read_clip_state_dict(path, f"open_clip {arch}")
            load_state_exactly(model, state, f"calibration CLIP weights {path}")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def clip_image_side(clip: nn.Module) -> int:
    """The calibration CLIP's native input side (224 for ViT-B/32)."""
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
