"""``refbench train``: train a registered `TrainableModel` on a split into a run folder.

The run folder is ``<out>/<model>/<split>/<time>_<sha>/`` with config.json and env.json (as for
evaluation runs), the trainer's ``train_log.jsonl``, ``last.pt``, ``best.pt``, the validation
runs under ``val/`` and ``train_summary.json`` written last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from refbench.cli.options import SET_HELP, data_root_option, parse_overrides
from refbench.errors import CheckpointError, ConfigError, DataError

CHECKPOINT_NAME = "last.pt"


def read_config_file(path: str | None) -> dict[str, Any]:
    """The JSON object of a ``--config`` file, or {}."""
    if path is None:
        return {}
    from refbench.io import read_json

    config = read_json(path, "training config")
    if not isinstance(config, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of config keys")
    return config


def find_resume_dir(out_root: Path, model: str, split: str, resume: str) -> Path:
    """The run folder to continue: `resume` itself, or the newest training run of `model` on
    `split`, which must hold a checkpoint (an older one is never picked silently)."""
    from refbench.io import lock_holder, lock_is_held

    if resume != "latest":
        path = Path(resume)
        folder = path.parent if path.is_file() else path
        if not (folder / CHECKPOINT_NAME).is_file():
            raise CheckpointError(
                f"--resume {resume}: {folder / CHECKPOINT_NAME} does not exist; pass a training "
                "run folder holding last.pt"
            )
        return folder
    parent = out_root / model / split
    runs = sorted(
        p for p in parent.glob("*")
        if not p.name.startswith(".")
        and ((p / CHECKPOINT_NAME).is_file() or (p / "config.json").is_file())
    )
    if not runs:
        raise CheckpointError(
            f"--resume: no training run of {model} on {split} with a {CHECKPOINT_NAME} under "
            f"{parent}; run without --resume to start one"
        )
    newest = runs[-1]
    if (newest / CHECKPOINT_NAME).is_file():
        return newest
    older = next((p for p in reversed(runs) if (p / CHECKPOINT_NAME).is_file()), None)
    other = f", or continue an older run with --resume {older}" if older else ""
    lock = newest / ".train.lock"
    if lock_is_held(lock):
        raise CheckpointError(
            f"--resume: the newest training run of {model} on {split}, {newest}, is still "
            f"being trained ({lock_holder(lock)}) and has no {CHECKPOINT_NAME} yet; wait for "
            f"it{other}"
        )
    raise CheckpointError(
        f"--resume: the newest training run of {model} on {split}, {newest}, has no "
        f"{CHECKPOINT_NAME} (it stopped before its first checkpoint); start a new run without "
        f"--resume{other}"
    )


def ensure_proposals(dataset: Any, backend: str | None, num_proposals: int) -> tuple[str, Any]:
    """(backend, store) for `dataset`; felzenszwalb proposals of SynthRef are built on demand."""
    from refbench.proposals import ProposalStore, default_options, get_backend, load_proposals

    chosen = backend or ("felzenszwalb" if dataset.info.is_synthetic else "sam")
    try:
        return chosen, load_proposals(dataset, chosen)
    except DataError:
        if not (chosen == "felzenszwalb" and dataset.info.is_synthetic):
            raise  # its message names `refbench proposals build ...`
    engine = get_backend(chosen, max_proposals=num_proposals, **default_options(chosen, True))
    store = ProposalStore(dataset, chosen, engine.config())
    store.build(dataset, engine, progress=True)
    return chosen, store


def false_negative_mask(dataset: Any) -> Any:
    """A [B, B] function for SynthRef: does image i's positive expression also fit image j?"""
    if not dataset.info.is_synthetic:
        raise ConfigError(
            "--mask-false-negatives needs a SynthRef split (its scenes say which expressions fit "
            f"which images); {dataset.info.id} has no such record"
        )
    from refbench.synth import compatibility

    root = Path(dataset.data_root)

    def fits(expressions, image_ids):
        return compatibility(root, [e.key for e in expressions], list(image_ids))

    return fits


def check_training_length(
    dataset: Any, config: dict[str, Any], model_name: str, seed: int, world_size: int
) -> int:
    """The run's total steps; a batch larger than the split or a warm-up not shorter than the
    run is a one-line `ConfigError`. Builds nothing."""
    from refbench.api import validate_training_config
    from refbench.train.sampler import TrainingSampler

    sampler = TrainingSampler.for_model(dataset, config, seed=seed, world_size=world_size)
    total_steps = len(sampler) * int(config["epochs"])
    validate_training_config(config, f"model {model_name!r}", total_steps=total_steps)
    return total_steps


@click.command("train")
@click.option("--model", "model_name", required=True, help="Registered model name (refbench list).")
@click.option("--split", required=True, help="Training split id, e.g. refcocog-train-g.")
@click.option("--val-split", default=None, help="Split scored at each epoch end (best.pt).")
@data_root_option
@click.option("--config", "config_file", default=None, help="JSON file of model config keys.")
@click.option("--set", "set_pairs", multiple=True, metavar="KEY=VALUE",
              help=SET_HELP + " Applied after --config.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs (default: the model config's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Items per global batch: distinct images, or refs for models sampling refs.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--out", "out_dir", default="runs/train", show_default=True, help="Runs root.")
@click.option("--resume", default=None, is_flag=False, flag_value="latest", metavar="[RUN]",
              help="Continue a run (its folder, or the newest run of this model and split).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--cues", "cue_backend", default=None, help="Cue backend (models reading cues).")
@click.option("--proposals", "proposal_backend", default=None,
              help="Proposal backend (models that train with proposals).")
@click.option("--mask-false-negatives", is_flag=True,
              help="SynthRef: do not use an expression as a negative for images it also fits.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader workers.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="Also write last.pt every N steps.")
@click.option("--metric", "selection_metric", default=None,
              help="Validation metric that picks best.pt (higher is better; default: the "
                   "model's, PointM for most).")
def train_command(
    model_name: str, split: str, val_split: str | None, data_root: str | None,
    config_file: str | None, set_pairs: tuple[str, ...], epochs: int | None,
    batch_size: int | None, device: str | None, out_dir: str, resume: str | None, seed: int,
    cue_backend: str | None, proposal_backend: str | None, mask_false_negatives: bool,
    num_workers: int, checkpoint_every: int, selection_metric: str | None,
) -> None:
    """Train a model on a split; print where the best checkpoint is."""
    import torch

    from refbench.api import TrainableModel
    from refbench.data.roots import open_split
    from refbench.data.splits import get_split
    from refbench.device import check_device
    from refbench.eval import distributed
    from refbench.eval.provenance import environment
    from refbench.eval.run_folder import create_run_dir, note_resume
    from refbench.io import atomic_write_json
    from refbench.registry import get_model_class
    from refbench.train.trainer import Trainer, resolve_selection_metric, seed_training

    # Cheap checks first: a mistake costs nothing and leaves nothing behind (no model is
    # built, no cache, no run folder until every setting has been checked).
    get_split(split)
    if val_split is not None:
        get_split(val_split)
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cls = get_model_class(model_name)
    if not issubclass(cls, TrainableModel):
        raise ConfigError(f"model {model_name!r} cannot be trained (it is not a TrainableModel)")
    overrides = {**read_config_file(config_file), **parse_overrides(set_pairs)}
    if epochs is not None:
        overrides["epochs"] = epochs
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    resolved = cls.resolve_config(overrides)  # every key checked, nothing built
    if cue_backend is not None:
        from refbench.cues import check_backend_name

        check_backend_name(cue_backend)
    selection_metric = resolve_selection_metric(resolved, selection_metric)
    out_root = Path(out_dir)
    resume_dir = find_resume_dir(out_root, model_name, split, resume) if resume else None

    dataset = open_split(split, data_root)
    val_dataset = open_split(val_split, data_root) if val_split else None
    ctx = distributed.setup(device)
    # batch size vs the population (images or refs, as the trainer samples) and warm-up vs the
    # run's length, before any model or cache
    check_training_length(dataset, resolved, model_name, seed, ctx.world_size)
    if proposal_backend is not None:
        from refbench.proposals import check_backend_name as check_proposals

        check_proposals(dataset, proposal_backend)
    seed_training(seed)  # the model's initial weights follow from --seed
    model = cls.from_config(overrides)
    if model.config != resolved:  # a plugin that fills keys in its constructor only
        check_training_length(dataset, model.config, model_name, seed, ctx.world_size)
        selection_metric = resolve_selection_metric(model.config, selection_metric)

    cue_table = None
    if model.num_cues:
        from refbench.cues import ensure_cues

        cue_backend, cue_table = ensure_cues(dataset, cue_backend, model.num_cues)
        if val_dataset is not None:
            ensure_cues(val_dataset, cue_backend, model.num_cues)
    else:
        cue_backend = None
    store = None
    num_proposals = int(model.config.get("num_proposals", 0))
    if num_proposals:
        proposal_backend, store = ensure_proposals(dataset, proposal_backend, num_proposals)
    masking = false_negative_mask(dataset) if mask_false_negatives else None

    config = {
        "model": model_name,
        "model_config": model.config,
        "weights": model.weights_description,
        "split": split,
        "val_split": val_split,
        "data_root": str(getattr(dataset, "data_root", data_root)),
        "cues": cue_backend,
        "proposals": proposal_backend if num_proposals else None,
        "mask_false_negatives": mask_false_negatives,
        "seed": seed,
        "device": device,
        "world_size": ctx.world_size,
        "selection_metric": selection_metric,
    }
    run_dir: Path | None = None
    if ctx.is_main:
        env = environment(model_name=model_name, device=device, seed=seed,
                          world_size=ctx.world_size)
        if resume_dir is not None:
            run_dir = resume_dir
            note_resume(run_dir, env)
        else:
            run_dir = create_run_dir(out_root, config, env)
    run_dir = Path(distributed.broadcast(str(run_dir) if run_dir else None, ctx))

    trainer = Trainer(
        model, dataset, out_dir=run_dir, val_dataset=val_dataset, device=device, seed=seed,
        resume=resume_dir is not None, checkpoint_every=checkpoint_every,
        num_workers=num_workers, cues=cue_table, proposals=store, false_negatives=masking,
        selection_metric=selection_metric,
        eval_kwargs={"device": device, "cues": cue_backend, "progress": False, "seed": seed,
                     **model.reference_evaluation},
    )
    try:
        summary = trainer.fit()
    finally:
        distributed.teardown(ctx)
    if not ctx.is_main:
        return
    atomic_write_json(run_dir / "train_summary.json", summary)
    click.echo(json.dumps({k: summary[k] for k in ("step", "epoch", "best_value")}))
    if summary["best_checkpoint"]:
        click.echo(f"best checkpoint ({selection_metric} {summary['best_value']:.4f}): "
                   f"{summary['best_checkpoint']}")
    click.echo(f"last checkpoint: {summary['last_checkpoint']}")
    click.echo(f"run folder: {run_dir}")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        click.echo(f"trained on {ctx.world_size} processes")
