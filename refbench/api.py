"""The plugin contract: what a referring-segmentation method gives the harness and takes from it.

A plugin subclasses `RISModel` (evaluation only) or `TrainableModel` (evaluation and training)
and is registered under the entry-point group ``refbench.models``. The harness owns everything
after the response map: resizing to the original image, normalisation, thresholding, the peak
point, proposal selection and metrics, so that every method is scored by the same code.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from refbench.errors import (
    CheckpointError,
    ConfigError,
    PredictionError,
    RefbenchError,
    did_you_mean,
)

CHECKPOINT_FORMAT = "refbench-checkpoint/1"

# CLIP's normalisation, the default for every model built on a CLIP backbone.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageNet's, which TRIS's and PCNet's released code use (with a CLIP backbone).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Expression:
    """One referring sentence about one object, with the ids that tie it to the data set."""

    text: str
    image_id: int = -1
    ref_id: int = -1
    ann_id: int = -1
    sent_id: int = -1
    cues: tuple[str, ...] = ()  # target-related phrases, first = head noun (PCNet Sec. 3.1)

    @property
    def key(self) -> str:
        """A stable id for this expression within its split: ``image:ref:sent``."""
        return f"{self.image_id}:{self.ref_id}:{self.sent_id}"


@dataclass
class Batch:
    """Images encoded once, each with the expressions to answer about it.

    images: [B, 3, S, S] float, resized and normalised for the model.
    expressions: for each image, its expressions (at least one each).
    extras: optional per-batch tensors a plugin asked for, e.g. ``proposals`` [B, P, S, S].
    """

    images: Tensor
    expressions: list[list[Expression]]
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Batch.images must be [B, 3, S, S], got {tuple(self.images.shape)}")
        if len(self.expressions) != self.images.shape[0]:
            raise ValueError(
                f"Batch has {self.images.shape[0]} images but {len(self.expressions)} expression lists"
            )

    @property
    def flat_expressions(self) -> list[Expression]:
        """All expressions in batch order: image 0's, then image 1's, ..."""
        return [e for group in self.expressions for e in group]

    @property
    def num_expressions(self) -> int:
        return sum(len(g) for g in self.expressions)

    def image_index(self) -> Tensor:
        """[E] long: the image each flat expression belongs to."""
        counts = torch.tensor([len(g) for g in self.expressions], dtype=torch.long)
        return torch.repeat_interleave(torch.arange(len(self.expressions)), counts).to(
            self.images.device
        )

    def texts(self) -> list[str]:
        return [e.text for e in self.flat_expressions]

    def to(self, device: torch.device | str) -> Batch:
        extras = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.extras.items()}
        return Batch(self.images.to(device), self.expressions, extras)


@dataclass
class Prediction:
    """What a model says about a batch, one entry per flat expression.

    response_maps: [E, h, w] float at the model's own resolution; higher = more likely target.
    stage_maps: optional [E, N, h, w] per-stage maps of a multi-stage model (for figures).
    masks: optional [E, h, w] bool for models that segment directly.
    """

    response_maps: Tensor
    stage_maps: Tensor | None = None
    masks: Tensor | None = None

    def check(self, batch: Batch) -> None:
        """Raise `PredictionError` unless the shapes match `batch` and every map is finite."""
        expressions = batch.flat_expressions
        maps = self.response_maps
        if maps.ndim != 3 or maps.shape[0] != len(expressions):
            raise PredictionError(
                f"model returned response maps of shape {tuple(maps.shape)}; expected "
                f"[{len(expressions)}, h, w], one map per expression in the batch"
            )
        finite = torch.isfinite(maps.detach()).flatten(1).all(dim=1)
        if not bool(finite.all()):
            bad = expressions[int((~finite).nonzero()[0, 0])]
            raise PredictionError(
                f"response map for expression {bad.key} ({bad.text!r}) holds NaN or inf; "
                "check the checkpoint and the model's numerics"
            )
        if self.stage_maps is not None and (
            self.stage_maps.ndim != 4 or self.stage_maps.shape[0] != len(expressions)
        ):
            raise PredictionError(
                f"stage maps have shape {tuple(self.stage_maps.shape)}; expected [E, N, h, w]"
            )
        if self.masks is not None and self.masks.shape[0] != len(expressions):
            raise PredictionError(f"masks have shape {tuple(self.masks.shape)}; expected [E, h, w]")


def merge_config(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, owner: str
) -> dict[str, Any]:
    """`defaults` updated with `overrides`; an unknown key is a `ConfigError` with a hint."""
    merged = copy.deepcopy(dict(defaults))
    for key, value in (overrides or {}).items():
        if key not in merged:
            hint = did_you_mean(key, merged, cutoff=0.6, quote=False)
            raise ConfigError(
                f"{owner} has no config key {key!r}.{hint} Valid keys: {', '.join(sorted(merged))}"
            )
        merged[key] = value
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_fail(owner: str, key: str, value: Any, why: str) -> ConfigError:
    fix = "" if "--set" in why else f"; fix it with --set {key}=..."
    return ConfigError(f"{owner} config {key}={value!r}: {why}{fix}")


def validate_base_config(config: Mapping[str, Any], owner: str = "model") -> None:
    """Raise a one-line `ConfigError` naming the key when an image-preparation key is unusable.

    ``input_size`` a positive integer; ``mean`` three numbers in [0, 1] and ``std`` three
    positive numbers (the 0-1 pixel scale); ``resize`` "torch" or "pil"; ``num_cues`` >= 0.
    """
    from refbench.data.transforms import RESIZE_MODES

    if "input_size" in config:
        value = config["input_size"]
        if not (_is_int(value) and value >= 1):
            raise _config_fail(owner, "input_size", value, "must be a positive integer, e.g. 320")
    for key in ("mean", "std"):
        if key not in config:
            continue
        value = config[key]
        numbers = isinstance(value, list | tuple) and all(_is_number(v) for v in value)
        if not (numbers and len(value) == 3):
            raise _config_fail(
                owner, key, value,
                f"must be three numbers, one per RGB channel; quote the list: "
                f"--set '{key}=[0.5,0.5,0.5]'",
            )
        if key == "mean" and not all(0.0 <= v <= 1.0 for v in value):
            raise _config_fail(owner, key, value, "each channel must be in [0, 1] (images are "
                               "scaled to 0-1 before normalising; divide 0-255 values by 255)")
        if key == "std" and not all(v > 0 for v in value):
            raise _config_fail(owner, key, value, "each channel must be positive")
    if "resize" in config and config["resize"] not in RESIZE_MODES:
        raise _config_fail(owner, "resize", config["resize"],
                           f"resize must be one of {', '.join(RESIZE_MODES)}")
    if "num_cues" in config and not (_is_int(config["num_cues"]) and config["num_cues"] >= 0):
        raise _config_fail(owner, "num_cues", config["num_cues"], "must be an integer >= 0")


# Training recipe keys: (kind, lower bound, lower bound allowed, None allowed).
_RECIPE_RULES: dict[str, tuple[str, float, bool, bool]] = {
    "lr": ("number", 0.0, False, False),
    "backbone_lr_scale": ("number", 0.0, True, False),
    "weight_decay": ("number", 0.0, True, False),
    "batch_size": ("int", 1, True, False),
    "epochs": ("int", 1, True, False),
    "poly_power": ("number", 0.0, False, False),
    "warmup_steps": ("int", 0, True, False),
    "grad_clip": ("number", 0.0, True, True),
    "num_proposals": ("int", 0, True, False),
    "num_distinct": ("int", 0, True, False),
}


def validate_training_config(
    config: Mapping[str, Any], owner: str = "model", total_steps: int | None = None
) -> None:
    """Raise a one-line `ConfigError` naming the key when a training-recipe value is unusable.

    ``lr`` and ``poly_power`` positive numbers; ``weight_decay``, ``backbone_lr_scale`` and
    ``grad_clip`` numbers >= 0 (``grad_clip`` may be null: off); ``epochs`` and ``batch_size``
    integers >= 1; ``warmup_steps``, ``num_proposals`` and ``num_distinct`` integers >= 0, and
    ``warmup_steps`` below `total_steps` when the run's step count is known.
    """
    for key, (kind, low, inclusive, nullable) in _RECIPE_RULES.items():
        if key not in config:
            continue
        value = config[key]
        if value is None and nullable:
            continue
        typed = _is_int(value) if kind == "int" else _is_number(value)
        in_range = typed and (value >= low if inclusive else value > low)
        if not in_range:
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            noun = "an integer" if kind == "int" else "a number"
            raise _config_fail(owner, key, value, f"must be {noun} {bound}")
    if total_steps is not None and "warmup_steps" in config:
        warmup = config["warmup_steps"]
        if warmup >= total_steps:
            raise ConfigError(
                f"{owner} config warmup_steps={warmup} is not shorter than the run's "
                f"{total_steps} steps (epochs x batches per epoch); lower it with --set "
                f"warmup_steps=N (N < {total_steps}) or train longer"
            )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, for provenance of checkpoints and weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class RISModel(nn.Module):
    """A referring-segmentation method as the harness sees it.

    Subclasses set `name`, override `default_config` and `predict`. The config carries
    everything evaluation needs: ``input_size``, ``mean``, ``std`` and, for models that read
    target-related cues, ``num_cues`` (0 = no cues).
    """

    name: ClassVar[str] = "base"
    # Config keys that change parameter shapes (or what the weights mean): a checkpoint
    # refuses overrides of them.
    architecture_keys: ClassVar[tuple[str, ...]] = ()
    # Set by `from_checkpoint`: the file the weights came from (None = built from config).
    checkpoint_path: str | None = None

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = merge_config(self.default_config(), config, f"model {self.name!r}")
        self.validate_config(self.config)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """Raise a one-line `ConfigError` for a harness-read key with an unusable value."""
        validate_base_config(config, f"model {cls.name!r}")

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The config `from_config(overrides)` would hold, checked, without building anything.

        The default merges `overrides` into `default_config`; a plugin whose presets or
        variants fill in keys overrides this to apply them the way its constructor does.
        """
        config = merge_config(cls.default_config(), overrides, f"model {cls.name!r}")
        cls.validate_config(config)
        return config

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The config a plain `create_model(name)` uses; subclasses extend it.

        ``input_size``, ``mean``, ``std`` and ``resize`` ("torch" or "pil", see
        `refbench.data.transforms`) say how the harness prepares images for the model.
        """
        return {
            "input_size": 320,
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "resize": "torch",
            "num_cues": 0,
        }

    # --- what the harness reads from the config -------------------------------------------
    @property
    def input_size(self) -> int:
        return int(self.config["input_size"])

    @property
    def num_cues(self) -> int:
        return int(self.config.get("num_cues", 0))

    @property
    def reference_evaluation(self) -> dict[str, str]:
        """Evaluation settings under which the method's authors report, where they differ
        from refbench's defaults (e.g. ``{"sentences": "first"}``): `refbench eval` names the
        flag when a run differs, and training validates with them."""
        return {}

    @property
    def weights_description(self) -> str:
        """Which weights the model holds, said in every run (e.g. 'random init')."""
        initial = str(self.config.get("weights", "random init"))
        if self.checkpoint_path is None:
            return initial
        return f"checkpoint {Path(self.checkpoint_path).name} (initialised from {initial})"

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **overrides: Any) -> RISModel:
        merged = dict(config or {})
        merged.update(overrides)
        return cls(merged)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu", **overrides: Any
    ) -> RISModel:
        """Rebuild a model from a checkpoint written by `checkpoint_state` (or the trainer),
        or from a file in another format that the plugin's `import_checkpoint` recognises.

        Refused with a `CheckpointError` saying why: a checkpoint of another model, config keys
        this version does not know, or an override of one of `architecture_keys` (the weights
        only fit the value they were trained with).
        """
        state = read_checkpoint_file(path, map_location)
        if not (isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT):
            model = cls.import_checkpoint(state, Path(path), dict(overrides))
            if model is None:
                raise CheckpointError(
                    f"checkpoint {path} is not a refbench checkpoint (no format "
                    f"{CHECKPOINT_FORMAT!r}) and model {cls.name!r} does not recognise it as "
                    "one it can import; write checkpoints with `refbench train` or "
                    "`model.checkpoint_state()`"
                )
            model.checkpoint_path = str(path)
            return model
        if state.get("model") != cls.name:
            raise CheckpointError(
                f"checkpoint {path} was written by model {state.get('model')!r}, not {cls.name!r}; "
                f"evaluate it with --model {state.get('model')}"
            )
        stored = dict(state.get("config", {}))
        unknown = sorted(set(stored) - set(cls.default_config()))
        if unknown:
            raise CheckpointError(
                f"checkpoint {path} has config keys model {cls.name!r} does not know "
                f"({', '.join(unknown)}); it was written by another version of the plugin"
            )
        for key in cls.architecture_keys:
            if key not in overrides:
                continue
            held = stored.get(key, cls.default_config().get(key))
            if overrides[key] != held:
                raise CheckpointError(
                    f"checkpoint {path} was trained with {key}={held!r}, not "
                    f"{overrides[key]!r}; its weights only fit {key}={held!r} "
                    "(drop the override or train a new model)"
                )
        try:
            model = cls.from_checkpoint_config({**stored, **overrides})
        except RefbenchError as error:
            raise CheckpointError(f"checkpoint {path} holds an unusable config: {error}") from None
        load_state_exactly(model, state["state_dict"], f"checkpoint {path}")
        model.checkpoint_path = str(path)
        return model

    @classmethod
    def import_checkpoint(
        cls, state: Any, path: Path, overrides: dict[str, Any]
    ) -> RISModel | None:
        """A model loaded from a checkpoint in another format (e.g. the authors' own), or None.

        `state` is the file's content read with ``weights_only=True``. A plugin that reads
        published checkpoints overrides this: it returns the loaded model when it recognises
        the file, raises a `CheckpointError` naming what the file is when it recognises it but
        cannot load it (another backbone, another stage), and returns None otherwise.
        """
        return None

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> RISModel:
        """The model a checkpoint's weights are loaded into; by default `from_config`.

        A plugin whose config names pretrained weights (downloaded or read at construction)
        overrides this to skip them, since the checkpoint replaces every parameter.
        """
        return cls.from_config(config)

    def checkpoint_state(self) -> dict[str, Any]:
        """A dict that `from_checkpoint` reads back: format, model name, config, weights."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.name,
            "config": copy.deepcopy(self.config),
            "state_dict": self.state_dict(),
        }

    # --- inference ------------------------------------------------------------------------
    def predict(self, batch: Batch) -> Prediction:  # pragma: no cover - abstract
        """One response map per expression in `batch` (see `Prediction`)."""
        raise NotImplementedError


class TrainableModel(RISModel):
    """A model the generic trainer can optimise: it returns named losses for a batch.

    The trainer sums the losses (each already weighted by the model's config), logs each,
    and owns the optimiser, schedule, AMP, DDP, checkpoints and resumption.
    """

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        config = super().default_config()
        config.update(
            {
                "lr": 5e-5,
                "backbone_lr_scale": 0.1,
                "weight_decay": 1e-2,
                "batch_size": 36,
                "epochs": 15,
                "poly_power": 0.9,
                "warmup_steps": 0,
                "grad_clip": 1.0,
                "num_proposals": 0,  # proposals per image the training batch must carry
                "num_distinct": 0,  # N_d: extra expressions about other objects per image
            }
        )
        return config

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """The base keys' checks plus the training recipe's (`validate_training_config`)."""
        super().validate_config(config)
        validate_training_config(config, f"model {cls.name!r}")

    def training_step(self, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        """Named scalar losses for one training batch."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups; the default puts parameters named ``backbone.*`` at a lower rate."""
        lr = float(self.config["lr"])
        backbone, rest = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (backbone if name.startswith("backbone.") else rest).append(param)
        groups = [{"params": rest, "lr": lr, "name": "head"}]
        if backbone:
            scale = float(self.config["backbone_lr_scale"])
            groups.append({"params": backbone, "lr": lr * scale, "name": "backbone"})
        return groups


# How torch's restricted unpickler names the Python object it refused to build.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The content of a checkpoint file, read with ``weights_only=True`` (no code runs).

    A folder, a missing file and a file holding Python objects besides tensors and plain
    containers are one-line `CheckpointError`s; the last never suggests loading it unsafely.
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth"))
        found = (f"it holds {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}; pass "
                 f"one of them, e.g. {path / inside[0]}") if inside else "it holds no .pt or " \
            ".pth file; pass the path of a checkpoint file"
        raise CheckpointError(f"checkpoint {path} is a folder, not a file: {found}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a user-facing error
        text = str(error)
        if "Weights only load failed" in text or "GLOBAL" in text:
            refused = _REFUSED_GLOBAL.search(text)
            what = f"a Python object ({refused.group(1)})" if refused else "Python objects"
            reason = (f"it holds {what} besides tensors and plain containers, and refbench "
                      "never runs code from a checkpoint")
        else:
            reason = _first_line(error)
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely ({reason}); is it a model checkpoint?"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a refbench checkpoint with ``weights_only=True``; clear errors for bad files."""
    state = read_checkpoint_file(path, map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a refbench checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            "write checkpoints with `refbench train` or `model.checkpoint_state()`"
        )
    return state


def foreign_state_dict(state: Any, prefixes: tuple[str, ...]) -> dict[str, Tensor] | None:
    """The weights in a checkpoint another code base saved, or None when it holds none of them.

    Training scripts of the field save {model, optimizer, lr_scheduler, epoch}; a bare state
    dict and DataParallel's ``module.`` prefix are accepted too. The weights count as found when
    some name starts with one of `prefixes` (the code base's own module names).
    """
    if not isinstance(state, Mapping):
        return None
    weights = state.get("model", state)
    if not isinstance(weights, Mapping) or not weights:
        return None
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
        return None
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    return weights if any(k.startswith(prefixes) for k in weights) else None


def build_from_foreign(
    cls: type[RISModel],
    config: Mapping[str, Any],
    weights: Mapping[str, Tensor],
    path: Path,
    foreign_name: Callable[[str], str],
) -> RISModel:
    """`cls` built for a foreign checkpoint's `config` and loaded with its `weights`.

    `foreign_name` maps each of the model's parameter names to the file's; a file name with
    no counterpart is kept, so the error lists it. A config the model refuses and a mismatch
    are one-line `CheckpointError`s naming the file.
    """
    try:
        model = cls.from_checkpoint_config(config)
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read with this config: {error}") \
            from None
    ours = {foreign_name(k): k for k in model.state_dict()}
    load_state_exactly(model, {ours.get(k, k): v for k, v in weights.items()},
                       f"checkpoint {path}")
    return model


def load_state_exactly(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load `state` into `model` with every key present and every shape equal.

    Otherwise a `CheckpointError` naming `source` lists the first few missing, unexpected and
    mis-shaped names, e.g. ``2 missing (fusion.text_out.0.weight, ...)``.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(own[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected),
                         ("with another shape (file vs model)", mismatched)):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            problems.append(f"{len(names)} {label} ({shown})")
    if problems:
        raise CheckpointError(
            f"{source} does not fit model {getattr(model, 'name', type(model).__name__)!r} "
            f"with this config: {'; '.join(problems)}; was it trained with other config "
            "overrides or another version of the plugin?"
        )
    model.load_state_dict(dict(state), strict=True)
