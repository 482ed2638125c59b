"""Seeded weights in a reference implementation's own key layout, for golden-output tests.

No real checkpoint can be downloaded where refbench is tested, so a reference run (the authors'
code, run outside the project) and refbench's tests both build the same random weights from a
manifest of key names and shapes and one seed. Every tensor depends only on (seed, its key), so
the order of the manifest does not matter and a subset can be regenerated alone.

The scales keep a randomly initialised ResNet-50 and CLIP transformer numerically tame
(fan-in scaling for weights, BatchNorm statistics near identity). Every floating tensor is
rounded to a float16-representable value: OpenAI's CLIP releases store float16 weights and
the official CLIP loader rounds to float16 before loading, so rounded values load identically
on either side.

Only torch and the standard library are used: the reference venv imports this file by path.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

# CLIP's initial logit scale, log(1 / 0.07); also TRIS's and PCNet's temperature.
LOG_INVERSE_007 = math.log(1 / 0.07)

# Parameters used as `x @ P` (fan-in along dim 0) rather than `P @ x`.
RIGHT_MULTIPLIED = ("text_projection", "visual.proj")


def _generator(seed: int, key: str) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed((int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**63))
    return generator


def seeded_tensor(key: str, shape: Sequence[int], dtype: str, seed: int) -> Tensor:
    """The tensor a manifest entry (key, shape, dtype) holds for `seed`."""
    shape = tuple(int(s) for s in shape)
    if not dtype.startswith("torch.float"):
        return torch.zeros(shape, dtype=getattr(torch, dtype.removeprefix("torch.")))
    generator = _generator(seed, key)
    normal = torch.randn(shape, generator=generator, dtype=torch.float32)
    name = key.rsplit(".", 1)[-1]
    if key.endswith("logit_scale"):
        value = torch.full(shape, LOG_INVERSE_007)
    elif name == "running_mean":
        value = 0.05 * normal
    elif name == "running_var":
        value = 1.0 + 0.1 * torch.rand(shape, generator=generator)
    elif "token_embedding" in key:
        value = 0.02 * normal
    elif key.endswith("positional_embedding") and "attnpool" not in key:
        value = 0.01 * normal
    elif key.endswith(RIGHT_MULTIPLIED) and len(shape) == 2:
        value = normal / math.sqrt(shape[0])
    elif name == "weight" and len(shape) == 1:  # BatchNorm, LayerNorm, InstanceNorm scales
        value = 1.0 + 0.05 * normal
    elif name in ("bias", "in_proj_bias"):
        value = 0.02 * normal
    elif len(shape) >= 2:  # convolution, linear and attention weights; attention-pool table
        fan_in = math.prod(shape[1:])
        value = normal / math.sqrt(fan_in)
    else:  # class embeddings and other vectors
        value = 0.02 * normal
    value = value.to(torch.float16).to(torch.float32)
    return value.to(getattr(torch, dtype.removeprefix("torch.")))


def centred(weight: Tensor) -> Tensor:
    """`weight` minus its mean over each output row (dims 1..), still float16-representable.

    A random 1x1 projection of post-ReLU features keeps their common positive direction, so
    every position gets nearly the same vector and a cosine map is nearly constant; with rows
    that sum to zero the positions differ, as they do in a trained model.
    """
    mean = weight.flatten(1).mean(dim=1).view(-1, *[1] * (weight.ndim - 1))
    return (weight - mean).to(torch.float16).to(weight.dtype)


def seeded_state_dict(
    manifest: Iterable[Sequence], seed: int, centred_keys: Sequence[str] = ()
) -> dict[str, Tensor]:
    """{key: tensor} for manifest rows (key, shape, dtype); `centred_keys` get `centred`."""
    state = {
        str(key): seeded_tensor(str(key), shape, str(dtype), seed)
        for key, shape, dtype in manifest
    }
    for key in centred_keys:
        state[key] = centred(state[key])
    return state


def manifest_of(state_dict: dict[str, Tensor]) -> list[list]:
    """Manifest rows (key, shape, dtype) of a state dict, in its order."""
    return [[key, list(value.shape), str(value.dtype)] for key, value in state_dict.items()]
