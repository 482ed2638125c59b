"""The generic trainer every `TrainableModel` (PCNet, TRIS, third-party plugins) reuses.

It owns what a plugin should not: AdamW over `model.parameter_groups()` with polynomial decay
and optional warm-up, bf16 autocast and channels_last on CUDA, DDP under torchrun, gradient
clipping, per-step JSON-lines logging, validation through the evaluation runner at each epoch
end, and checkpoints that resume exactly (same weights bit for bit as an uninterrupted run).

Run folder (``out_dir``): ``train_log.jsonl`` (one line per logged step, and one ``"kind": "val"``
line per validation), ``last.pt`` (every epoch, every `checkpoint_every` steps, and when
`max_steps` stops the run), ``best.pt`` (best validation score so far), ``val/epoch_NNN/``.

Model config keys it reads, besides the recipe (``lr``, ``weight_decay``, ``epochs``,
``batch_size``, ``poly_power``, ``warmup_steps``, ``grad_clip``): ``sampling`` and
``num_distinct`` (the `TrainingSampler`), ``num_cues``, ``num_proposals``, ``input_size``,
``mean``, ``std`` and ``resize`` (the image transform evaluation uses too) and
``selection_metric`` (what picks best.pt; PointM when the model declares none).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from refbench.api import TrainableModel, validate_training_config
from refbench.data.transforms import ModelImageTransform
from refbench.errors import CheckpointError, ConfigError, DataError
from refbench.eval import distributed
from refbench.io import append_jsonl, atomic_write_text, ensure_dir, exclusive_lock, read_jsonl
from refbench.metrics.table import get_metric
from refbench.nn.schedule import poly_lr_lambda
from refbench.train.checkpoint import (
    capture_rng,
    load_training_checkpoint,
    restore_rng,
    save_checkpoint,
    training_fingerprint,
)
from refbench.train.data import FalseNegativeFn, TrainingData, check_cues
from refbench.train.sampler import TrainingSampler

EvaluateFn = Callable[..., Mapping[str, Any]]

DEFAULT_SELECTION_METRIC = "PointM"


def resolve_selection_metric(config: Mapping[str, Any], metric: str | None = None) -> str:
    """The validation metric that picks best.pt: `metric` when given, else the model config's
    ``selection_metric``, else PointM."""
    name = metric if metric is not None else str(
        config.get("selection_metric", DEFAULT_SELECTION_METRIC))
    get_metric(name)  # an unknown name is a one-line error naming the metrics
    return name


def seed_training(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (every CUDA device too) from `seed`.

    Called before a model is built, so its initial weights follow from the seed, and by
    `Trainer.fit` before the first step of a new run, so the random numbers training draws do
    not depend on what ran in between (a cache built or read).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device as well


def _seed_worker(worker_id: int) -> None:
    """Seed a DataLoader worker's NumPy and Python generators from its torch seed (which the
    loader's generator fixes), so augmentations drawn in workers repeat with the seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


class TrainingStepModule(nn.Module):
    """Wraps a model so that `forward(batch)` is its `training_step` (DDP hooks need forward)."""

    def __init__(self, model: TrainableModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, Tensor]:
        return self.model.training_step(batch)


def _default_evaluate(model: Any, dataset: Any, **kwargs: Any) -> Mapping[str, Any]:
    from refbench.eval.runner import evaluate

    return evaluate(model, dataset, **kwargs)


class Trainer:
    """Trains a `TrainableModel` on a refer-format dataset; `fit()` runs and returns a summary.

    Every user mistake (batch larger than the split, missing cues or proposals, a checkpoint of
    another model or config) raises a `RefbenchError` from the constructor or at the start of
    `fit`, before the first step.
    """

    def __init__(
        self,
        model: TrainableModel,
        train_dataset: Any,
        *,
        out_dir: str | Path,
        val_dataset: Any = None,
        device: str | torch.device | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        amp: bool | None = None,
        log_every: int = 1,
        resume: bool | str | Path = False,
        checkpoint_every: int | None = None,
        max_steps: int | None = None,
        num_workers: int = 0,
        cues: Mapping[str, Any] | None = None,
        proposals: Any = None,
        false_negatives: FalseNegativeFn | None = None,
        selection_metric: str | None = None,
        evaluate_fn: EvaluateFn | None = None,
        eval_kwargs: Mapping[str, Any] | None = None,
        find_unused_parameters: bool = False,
        progress: bool = True,
    ) -> None:
        if not isinstance(model, TrainableModel):
            raise ConfigError(
                f"model {getattr(model, 'name', type(model).__name__)!r} is not trainable "
                "(it does not subclass refbench.api.TrainableModel)"
            )
        self.model = model
        self.config = model.config
        recipe = {**self.config, "epochs": epochs if epochs is not None else self.config["epochs"],
                  "batch_size": batch_size if batch_size is not None else self.config["batch_size"]}
        validate_training_config(recipe, f"model {model.name!r}")
        self.epochs = int(recipe["epochs"])
        self.batch_size = int(recipe["batch_size"])
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers={num_workers!r}: must be an integer >= 0")
        self.seed = int(seed)
        self.out_dir = Path(out_dir)
        self.log_every = max(1, int(log_every))
        self.checkpoint_every = checkpoint_every
        self.max_steps = max_steps
        self.selection_metric = resolve_selection_metric(self.config, selection_metric)
        self.val_dataset = val_dataset
        self.evaluate_fn = evaluate_fn or _default_evaluate
        self.eval_kwargs = dict(eval_kwargs or {})
        self.progress = progress
        self.rank, self.world_size, self.local_rank = distributed.env_ranks()
        self.is_main = self.rank == 0

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("--device cuda was asked for but no CUDA device is available")
            if self.world_size > 1:
                self.device = torch.device("cuda", self.local_rank)
        self.amp = bool(amp if amp is not None else self.device.type == "cuda")
        self.amp = self.amp and self.device.type == "cuda"  # bf16 autocast is for CUDA only

        # --- data: every user-facing check happens here, before any training step --------
        self.sampler = TrainingSampler.for_model(
            train_dataset,
            self.config,
            batch_size=self.batch_size,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
        )
        num_proposals = int(self.config.get("num_proposals", 0))
        if model.num_cues and cues is None:
            raise DataError(
                f"model {model.name!r} reads {model.num_cues} cues per expression but no cue "
                "cache was given; pass --cues BACKEND to build one"
            )
        if num_proposals and proposals is None:
            raise DataError(
                f"model {model.name!r} needs {num_proposals} proposals per image but no proposal "
                "store was given; pass --proposals BACKEND to build one"
            )
        if model.num_cues:
            check_cues(self.sampler.expressions(), cues)
        try:
            transform = ModelImageTransform.for_model(self.config)  # as evaluation builds it
        except ValueError as error:
            raise ConfigError(f"model {model.name!r}: {error}") from None
        self.data = TrainingData(
            train_dataset,
            input_size=transform.size,
            mean=transform.mean,
            std=transform.std,
            resize=transform.resize,
            num_cues=model.num_cues,
            cues=cues,
            num_proposals=num_proposals,
            proposals=proposals,
            proposal_size=self.config.get("proposal_size"),
            false_negatives=false_negatives,
        )
        self._loader_generator = torch.Generator()
        self.loader = DataLoader(
            self.data,
            batch_sampler=self.sampler,
            collate_fn=self.data.collate,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            generator=self._loader_generator,  # keeps the global RNG untouched by the loader
            worker_init_fn=_seed_worker,
        )
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = self.steps_per_epoch * self.epochs
        validate_training_config(recipe, f"model {model.name!r}", total_steps=self.total_steps)

        settings = {
            "model_config": dict(self.config),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "false_negative_masking": false_negatives is not None,
        }
        self.fingerprint, self.fingerprint_hash = training_fingerprint(model.name, settings)

        # --- optimisation -----------------------------------------------------------------
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        groups = model.parameter_groups()
        if not any(len(list(g["params"])) for g in groups):
            raise ConfigError(f"model {model.name!r} has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            groups, lr=float(self.config["lr"]), weight_decay=float(self.config["weight_decay"])
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            poly_lr_lambda(
                self.total_steps,
                float(self.config.get("poly_power", 0.9)),
                int(self.config.get("warmup_steps", 0)),
            ),
        )
        self.grad_clip = float(self.config.get("grad_clip", 0.0) or 0.0)

        # --- position; resumption ---------------------------------------------------------
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best: dict[str, Any] = {
            "metric": self.selection_metric, "value": None, "epoch": None
        }
        self._rng_to_restore: dict[str, Any] | None = None
        self._log_handle: Any = None
        self._pending_log: list[dict[str, Any]] = []
        self._last_log_write = 0.0
        if resume:
            path = self.out_dir / "last.pt" if resume is True else Path(resume)
            if not path.is_file():
                raise CheckpointError(
                    f"cannot resume: {path} does not exist; run without --resume to start afresh"
                )
            self._load(path)

        self.step_module = TrainingStepModule(self.model)
        self.wrapped: nn.Module = self.step_module
        if self.world_size > 1:
            distributed.join_process_group(self.device)
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.step_module, find_unused_parameters=find_unused_parameters
            )

    # --- checkpoints ----------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        state = load_training_checkpoint(
            path, self.model.name, self.fingerprint, self.fingerprint_hash
        )
        try:
            self.model.load_state_dict(state["state_dict"])
        except RuntimeError as error:
            raise CheckpointError(
                f"checkpoint {path} does not fit model {self.model.name!r} "
                f"({str(error).splitlines()[0]})"
            ) from None
        trainer = state["trainer"]
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        self.step = int(trainer["step"])
        self.epoch = int(trainer["epoch"])
        self.batch_in_epoch = int(trainer["batch_in_epoch"])
        self.best = dict(trainer["best"])
        self._rng_to_restore = trainer["rng"]

    def checkpoint_state(self) -> dict[str, Any]:
        """The model's checkpoint plus everything needed to continue training exactly."""
        state = self.model.checkpoint_state()
        state["trainer"] = {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(),
            "best": dict(self.best),
            "fingerprint": self.fingerprint,
            "fingerprint_hash": self.fingerprint_hash,
            "world_size": self.world_size,
        }
        return state

    def _log(self, record: dict[str, Any] | None = None, flush: bool = False) -> None:
        """Buffer a log line; write (fsync) every 5 s, and always before a checkpoint."""
        if not self.is_main:
            return
        if record is not None:
            self._pending_log.append(record)
        if self._log_handle is None or not self._pending_log:
            return
        if flush or time.monotonic() - self._last_log_write > 5.0:
            append_jsonl(self._log_handle, self._pending_log)
            self._pending_log = []
            self._last_log_write = time.monotonic()

    def _save(self, name: str) -> Path:
        path = self.out_dir / name
        self._log(flush=True)  # the log never lags behind a checkpoint
        if self.is_main:
            save_checkpoint(path, self.checkpoint_state())
        return path

    # --- one step -------------------------------------------------------------------------
    def _train_step(self, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        batch = batch.to(self.device)
        if self.device.type == "cuda":
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.amp
            else contextlib.nullcontext()
        )
        with autocast:
            losses = self.wrapped(batch)
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(
                f"{type(self.model).__name__}.training_step must return a non-empty dict of "
                f"named scalar losses, got {type(losses).__name__}"
            )
        for name, value in losses.items():
            if not (isinstance(value, Tensor) and value.ndim == 0):
                raise TypeError(f"loss {name!r} from training_step is not a scalar tensor")
        total = torch.stack([v.float() for v in losses.values()]).sum()
        if not torch.isfinite(total):
            bad = [n for n, v in losses.items() if not torch.isfinite(v)]
            raise FloatingPointError(
                f"loss {', '.join(bad)} is not finite at step {self.step}; the last checkpoint "
                f"in {self.out_dir} is intact (lower lr or enable grad_clip)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return total.detach(), {k: v.detach().float() for k, v in losses.items()}

    def _reduced(self, total: Tensor, losses: dict[str, Tensor]) -> dict[str, float]:
        names = ["loss", *losses]
        values = torch.stack([total, *losses.values()]).float()
        if self.world_size > 1:
            dist.all_reduce(values)
            values /= self.world_size
        return {n: float(v) for n, v in zip(names, values.cpu().tolist())}

    # --- validation -----------------------------------------------------------------------
    def _validate(self, folder: str | None = None) -> float | None:
        """Score the val split through `evaluate_fn` on every rank (the runner shards it).

        folder: the run's name under val/ (default ``epoch_NNN``, the epochs completed).

        The runner seeds the RNGs itself, so they are saved before and restored after: training
        draws the same random numbers whether or not a validation ran in between.
        """
        if self.val_dataset is None:
            return None
        rng = capture_rng()
        self.model.eval()
        out = self.out_dir / "val" / (folder or f"epoch_{self.epoch:03d}")
        with torch.no_grad():
            result = self.evaluate_fn(self.model, self.val_dataset, out_dir=out, **self.eval_kwargs)
        self.model.train()
        restore_rng(rng)
        value = None
        if self.is_main:
            metrics = result.get("metrics", result)
            if self.selection_metric not in metrics:
                raise ConfigError(
                    f"validation gave no {self.selection_metric!r}; choose the selection metric "
                    f"(--metric, or the model config's selection_metric) among "
                    f"{', '.join(sorted(metrics))}"
                )
            value = float(metrics[self.selection_metric])
            record = {"kind": "val", "step": self.step, "epoch": self.epoch,
                      "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)}}
            self._log(record, flush=True)
        if self.world_size > 1:
            holder = [value]
            dist.broadcast_object_list(holder, src=0)
            value = holder[0]
        return value

    def _select(self, value: float | None) -> bool:
        """Record `value` as the best so far if it is; True when it is (save best.pt). Better
        is higher or lower as the metric table says (BackgroundPeaks: lower)."""
        best = self.best["value"]
        higher = get_metric(self.selection_metric).higher_is_better
        improved = value is not None and (
            best is None or (value > best if higher else value < best))
        if improved:
            self.best = {"metric": self.selection_metric, "value": value, "epoch": self.epoch,
                         "step": self.step}
        return improved

    # --- the loop -------------------------------------------------------------------------
    def _reached_max_steps(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

    def _trim_log(self, path: Path) -> None:
        """Keep only log lines up to the resumed step, so the log reads as one clean run."""
        if not path.exists():
            return
        records, _ = read_jsonl(path)
        kept = [r for r in records if int(r.get("step", 0)) <= self.step]
        atomic_write_text(
            path,
            "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in kept),
        )

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch (or `max_steps`); returns step, epoch and the best score."""
        ensure_dir(self.out_dir, "training output folder")
        lock = exclusive_lock(self.out_dir / ".train.lock", str(self.out_dir))
        with lock if self.is_main else contextlib.nullcontext():
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        log_path = self.out_dir / "train_log.jsonl"
        if self.is_main:
            if self._rng_to_restore is not None:
                self._trim_log(log_path)
            else:
                log_path.unlink(missing_ok=True)
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
        elif self.step == 0:
            seed_training(self.seed)
        self.model.train()
        stopped = False
        progress = Progress(
            TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            disable=not (self.progress and self.is_main),
        )
        self._log_handle = open(log_path, "a", encoding="utf-8") if self.is_main else None
        self._pending_log = []
        self._last_log_write = time.monotonic()
        try:
            with progress:
                task = progress.add_task(
                    "train", total=self.total_steps, completed=self.step,
                    epoch=self.epoch, loss="-",
                )
                while self.epoch < self.epochs:
                    if self._reached_max_steps():
                        stopped = True
                        break
                    self.sampler.set_epoch(self.epoch)
                    self.sampler.set_start(self.batch_in_epoch)
                    self._loader_generator.manual_seed(self.seed * 100_003 + self.epoch)
                    tick = time.perf_counter()
                    for batch in self.loader:
                        images = batch.images.shape[0] * self.world_size
                        lrs = [g["lr"] for g in self.optimizer.param_groups]
                        total, losses = self._train_step(batch)
                        self.step += 1
                        self.batch_in_epoch += 1
                        now = time.perf_counter()
                        rate, tick = images / max(now - tick, 1e-9), now
                        if self.step % self.log_every == 0:
                            values = self._reduced(total, losses)
                            if self.is_main:
                                record = {
                                    "kind": "train",
                                    "step": self.step,
                                    "epoch": self.epoch,
                                    "batch": self.batch_in_epoch,
                                    "loss": values.pop("loss"),
                                    "losses": values,
                                    "lr": lrs[0],
                                    "lrs": lrs,
                                    "samples_per_s": rate,
                                }
                                self._log(record)
                                progress.update(task, loss=f"{record['loss']:.4f}")
                        progress.update(task, completed=self.step, epoch=self.epoch)
                        if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                            self._save("last.pt")
                        if self._reached_max_steps() and self.batch_in_epoch < self.steps_per_epoch:
                            stopped = True
                            break
                    if stopped:
                        break
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    improved = self._select(self._validate())
                    self._save("last.pt")
                    if improved:
                        self._save("best.pt")
                if stopped:
                    # `max_steps` ended the run inside an epoch: the weights it ends with are
                    # validated too, or best.pt would be the last full epoch's (or missing).
                    improved = self.batch_in_epoch > 0 and self._select(
                        self._validate(f"step_{self.step:06d}"))
                    self._save("last.pt")
                    if improved:
                        self._save("best.pt")
        finally:
            if self._log_handle is not None:
                self._log(flush=True)
                self._log_handle.close()
                self._log_handle = None
        best = self.out_dir / "best.pt"
        return {
            "step": self.step,
            "epoch": self.epoch,
            "finished": self.epoch >= self.epochs,
            "best_metric": self.best["metric"],
            "best_value": self.best["value"],
            "best_epoch": self.best["epoch"],
            "best_checkpoint": str(best) if self.best["value"] is not None else None,
            "last_checkpoint": str(self.out_dir / "last.pt"),
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world_size,
        }
