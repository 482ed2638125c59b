"""The dense CLIP ResNet backbone shared by PCNet, TRIS and the zero-shot CLIP baseline.

One `ClipBackbone` wraps an open_clip CLIP model with a ModifiedResNet image tower and exposes
what the plugins need: the stride-32 C5 map before attention pooling (PCNet App. A.4: RN50,
s = 32, C_v = 2048), the EOT text embedding (C_l = 1024 for RN50), the model's own global
image embedding and MaskCLIP-style dense embeddings in the joint space.

Weights come from open_clip by tag ("openai"), from a local file, or nowhere (random init);
the "small" configuration is the same architecture with tiny widths for CPU tests and SynthRef.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refbench.api import file_sha256
from refbench.errors import CheckpointError

# The same CLIP architecture as RN50 (ModifiedResNet image tower + causal text transformer),
# with tiny widths: C5 = 16 * 32 = 512 channels, 4x4 C5 grid at its native 128x128 input.
SMALL_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Keys in OpenAI's TorchScript checkpoints that are not parameters of the model.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def released_tokens(texts: Sequence[str], length: int) -> Tensor:
    """TRIS's and PCNet's released tokenisation: [T] texts -> [T, length] long.

    CLIP's BPE with start and end tokens in CLIP's 77-token context, then only the first
    `length` tokens are kept (their ``clip.tokenize(sentence)[:max_query_len]``). A sentence of
    more than `length` tokens loses its end token, so the text tower, which reads the
    highest-numbered token, pools it at the start token (docs/models.md, `tris`).
    """
    if isinstance(texts, str):
        raise TypeError("released_tokens takes a list of texts, not a single string")
    if length < 2:
        raise ValueError(f"length must be at least 2, got {length}")
    return _open_clip().tokenize(list(texts))[:, :length]


def encode_clip_tokens(model: nn.Module, tokens: Tensor) -> Tensor:
    """An open_clip CLIP's projected text embedding of token rows: [T, L] -> [T, D].

    L may be shorter than the model's context (77): the text transformer then runs on the
    first L positions only, with the causal mask and positional embedding cut to L, as a CLIP
    built with a context of L does (TRIS and PCNet build theirs with 20). Not normalised.
    """
    length = int(tokens.shape[1])
    context = int(model.context_length)
    if length == context:
        return model.encode_text(tokens, normalize=False)
    if length > context:
        raise ValueError(f"{length} tokens exceed the text context of {context}")
    from open_clip.transformer import text_global_pool

    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(
        model.ln_final(x), tokens, model.text_pool_type,
        eos_token_id=getattr(model, "text_eos_id", None),
    )
    projection = model.text_projection
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def _open_clip() -> Any:
    """Import open_clip on first use, so importing refbench.nn stays cheap."""
    import open_clip

    return open_clip


def _architecture_config(arch: str, small: bool) -> dict[str, Any]:
    """The open_clip model config dict for `arch` (or the small config); ResNet towers only."""
    if small:
        import copy

        return copy.deepcopy(SMALL_CLIP_CONFIG)
    config = _open_clip().get_model_config(arch)
    if config is None:
        names = [n for n in _open_clip().list_models() if n.startswith("RN")]
        raise CheckpointError(
            f"open_clip has no model architecture {arch!r}; CLIP ResNet architectures: "
            f"{', '.join(names)}"
        )
    layers = config.get("vision_cfg", {}).get("layers")
    if not isinstance(layers, (list, tuple)):
        raise CheckpointError(
            f"open_clip architecture {arch!r} is not a CLIP ResNet (ModifiedResNet); the dense "
            "backbone needs a ResNet image tower such as RN50 or RN101"
        )
    return config


def _describe_architecture(arch: str, small: bool, config: Mapping[str, Any]) -> str:
    """A short human description of the architecture, for error messages."""
    vision = config["vision_cfg"]
    layers = tuple(vision["layers"])
    label = "small CLIP config" if small else f"open_clip {arch}"
    return (
        f"{label} (ModifiedResNet layers {layers}, width {vision['width']}, "
        f"embed_dim {config['embed_dim']}, text width {config['text_cfg']['width']})"
    )


def read_clip_state_dict(path: Path, expected: str) -> dict[str, Tensor]:
    """Read a CLIP state dict safely: weights-only pickle, safetensors or a TorchScript archive."""
    if not path.is_file():
        raise CheckpointError(
            f"backbone weights file {path} does not exist; pass the path of a CLIP checkpoint "
            f"for {expected}"
        )
    try:
        if zipfile.is_zipfile(path) and any(
            name.endswith("constants.pkl") for name in zipfile.ZipFile(path).namelist()
        ):
            # OpenAI's released RN50.pt is a TorchScript archive; it holds no pickled Python code.
            state: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = _open_clip().factory.load_state_dict(str(path), device="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - any unreadable file is a user-facing error
        first = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"backbone weights file {path} cannot be read safely ({type(error).__name__}: "
            f"{first}); expected a CLIP checkpoint for {expected}"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"backbone weights file {path} does not hold a state dict of tensors; expected a "
            f"CLIP checkpoint for {expected}"
        )
    return {k: v for k, v in state.items() if k not in _NON_PARAMETER_KEYS}


def _load_into(model: nn.Module, state: dict[str, Tensor], source: str, expected: str) -> None:
    """Load `state` strictly into `model`; a mismatch is a CheckpointError naming `source`."""
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
                f"vs model {tuple(own[k].shape)})"
            )
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"backbone weights {source} do not fit {expected}: {'; '.join(details)}; pass a "
            "checkpoint of that architecture or choose the matching architecture"
        )
    model.load_state_dict(state, strict=True)


class ClipBackbone(nn.Module):
    """A CLIP ResNet (open_clip) used densely: C5 maps, dense joint-space embeddings, text.

    arch: an open_clip ResNet architecture name ("RN50", "RN101", ...); ignored when `small`.
    weights: None (random init), an open_clip pretrained tag ("openai") or a local file path.
    small: build the tiny configuration `SMALL_CLIP_CONFIG` (same architecture, for CPU tests).
    quick_gelu: the text tower's activation; None means QuickGELU, as every released CLIP
        ResNet checkpoint (openai, yfcc15m, cc12m) was trained with it.
    cache_dir: where open_clip keeps downloaded weights.
    """

    def __init__(
        self,
        arch: str = "RN50",
        weights: str | Path | None = None,
        small: bool = False,
        quick_gelu: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        open_clip = _open_clip()
        self.arch = "small" if small else arch
        self.small = small
        config = _architecture_config(arch, small)
        expected = _describe_architecture(arch, small, config)

        state: dict[str, Tensor] | None = None
        source = ""
        description = f"random init ({'small config' if small else 'open_clip ' + arch})"
        if weights is not None:
            weights_str = str(weights)
            tag_cfg = None if small else open_clip.get_pretrained_cfg(arch, weights_str)
            if tag_cfg:
                try:
                    local = open_clip.pretrained.download_pretrained(
                        tag_cfg, cache_dir=None if cache_dir is None else str(cache_dir)
                    )
                except Exception as error:  # noqa: BLE001 - offline, proxy, hub errors alike
                    raise CheckpointError(
                        f"open_clip weights {arch} {weights_str!r} cannot be downloaded "
                        f"({type(error).__name__}); when offline, download them elsewhere and "
                        "pass the local file path instead (--backbone-weights PATH)"
                    ) from None
                if not local:
                    raise CheckpointError(
                        f"open_clip has no download for {arch} {weights_str!r}; pass a local "
                        "file path (--backbone-weights PATH)"
                    )
                state = read_clip_state_dict(Path(local), expected)
                source = f"open_clip {arch} {weights_str!r} ({local})"
                description = f"open_clip {arch} {weights_str}"
            else:
                path = Path(weights_str).expanduser()
                if not path.is_file() and not small:
                    tags = open_clip.list_pretrained_tags_by_model(arch)
                    raise CheckpointError(
                        f"backbone weights {weights_str!r} is neither an existing file nor an "
                        f"open_clip tag for {arch} (tags: {', '.join(tags) or 'none'}); pass the "
                        "path of a local CLIP checkpoint"
                    )
                state = read_clip_state_dict(path, expected)
                source = f"file {path}"
                description = f"local file {path} sha256 {file_sha256(path)}"

        self.model = open_clip.CLIP(
            **config, quick_gelu=True if quick_gelu is None else quick_gelu
        )
        if state is not None:
            _load_into(self.model, state, source, expected)
        self.weights_description: str = description
        self.architecture_description: str = expected

        visual = self.model.visual
        self.feature_dim: int = visual.attnpool.k_proj.in_features
        self.embed_dim: int = int(config["embed_dim"])
        self.image_size: int = int(visual.image_size)
        self.context_length: int = int(self.model.context_length)
        self.num_heads: int = int(visual.attnpool.num_heads)

    # ----- image side -------------------------------------------------------------------------

    def encode_image_dense(self, images: Tensor, stage: int = 4) -> Tensor:
        """ResNet features before attention pooling: [B, 3, S, S] -> [B, C, S/s, S/s].

        stage 4 (default) is C5 (s = 32, C = `feature_dim`); stages 1-3 stop at an earlier
        ResNet layer (s = 4, 8, 16; C = `stage_channels(stage)`) for finer maps.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"stage must be 1, 2, 3 or 4 (ResNet layer), got {stage}")
        visual = self.model.visual
        x = images.to(visual.conv1.weight.dtype)
        x = visual.stem(x)
        for index in range(1, stage + 1):
            x = getattr(visual, f"layer{index}")(x)
        return x

    def stage_channels(self, stage: int) -> int:
        """Channels of ResNet layer `stage` (1-4); stage 4 gives `feature_dim`."""
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"stage must be 1, 2, 3 or 4 (ResNet layer), got {stage}")
        return int(getattr(self.model.visual, f"layer{stage}")[-1].conv3.out_channels)

    def positional_embedding(self, height: int, width: int) -> Tensor:
        """The attention pool's positional embedding for an h x w grid: [1 + h*w, C5].

        Row 0 belongs to the mean token. The spatial rows are CLIP's own at the native grid
        (image_size / 32) and bicubically resized otherwise, as CLIP-based dense methods do.
        """
        table = self.model.visual.attnpool.positional_embedding
        native = int(round(math.sqrt(table.shape[0] - 1)))
        if (height, width) == (native, native):
            return table
        spatial = table[1:].reshape(1, native, native, -1).permute(0, 3, 1, 2)
        spatial = F.interpolate(
            spatial.float(), size=(height, width), mode="bicubic", align_corners=False
        ).to(table.dtype)
        return torch.cat([table[:1], spatial.flatten(2)[0].T], dim=0)

    def attention_pool(self, c5: Tensor) -> Tensor:
        """CLIP's attention pooling of a C5 map into the joint space: [B, C5, h, w] -> [B, D].

        At the native grid this is exactly open_clip's AttentionPool2d; at other grids the
        positional embedding is resized (see `positional_embedding`).
        """
        pool = self.model.visual.attnpool
        batch, channels, height, width = c5.shape
        tokens = c5.flatten(2).permute(2, 0, 1)  # [h*w, B, C]
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        tokens = tokens + self.positional_embedding(height, width)[:, None, :].to(tokens.dtype)
        pooled, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=channels,
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return pooled[0]

    def global_embedding(self, images: Tensor) -> Tensor:
        """The model's own image embedding (attention-pooled C5): [B, 3, S, S] -> [B, D]."""
        return self.attention_pool(self.encode_image_dense(images))

    def dense_embeddings(self, c5: Tensor) -> Tensor:
        """MaskCLIP-style per-position joint-space embeddings: [B, C5, h, w] -> [B, D, h, w].

        The attention pool's value projection then its output projection, applied at every
        position as 1x1 convolutions, with no positional embedding (MaskCLIP's ResNet head
        feeds the raw C5 map to v_proj and c_proj). When every position holds the same feature
        and the positional embedding is zero, every token of the attention pool holds it too,
        so attention returns its value and this equals the global embedding exactly.
        """
        pool = self.model.visual.attnpool
        value = F.conv2d(c5, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias)
        return F.conv2d(value, pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)

    # ----- text side --------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], length: int | None = None) -> Tensor:
        """open_clip BPE tokens: [T] texts -> [T, L] long.

        length None: the model's context, a long text truncated with its end token kept;
        length L: `released_tokens` (the first L tokens, a long text loses its end token).
        """
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of texts, not a single string")
        if length is None:
            tokens = _open_clip().tokenize(list(texts), context_length=self.context_length)
        else:
            tokens = released_tokens(texts, length)
        return tokens.to(self.model.token_embedding.weight.device)

    def encode_tokens(self, tokens: Tensor) -> Tensor:
        """The projected embedding of token rows, pooled at the highest token: [T, L] -> [T, D].

        L may be below the context length (see `encode_clip_tokens`). Not normalised.
        """
        return encode_clip_tokens(self.model, tokens)

    def encode_text(self, texts: Sequence[str], length: int | None = None) -> Tensor:
        """The projected EOT-token embedding of each text: [T] texts -> [T, D] (not normalised);
        `length` as in `tokenize`."""
        return self.encode_tokens(self.tokenize(texts, length))

    def extra_repr(self) -> str:
        return f"arch={self.arch}, weights={self.weights_description!r}"
