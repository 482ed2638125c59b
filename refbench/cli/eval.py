"""``refbench eval`` (evaluate a model on a split into a run folder) and ``refbench score``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from refbench.cli.options import SET_HELP, check_overrides, data_root_option, parse_overrides
from refbench.device import check_device
from refbench.errors import DataError, OutputError


def open_dataset(split: str, data_root: str | None) -> Any:
    """The split's reader (see refbench.data.roots for where its files are looked up)."""
    from refbench.data.roots import open_split

    return open_split(split, data_root)


def build_model(
    name: str, checkpoint: str | None, overrides: dict[str, Any], allow_random_weights: bool
) -> Any:
    """The registered model `name`, from `checkpoint` when given, with config `overrides`."""
    from refbench.registry import get_model_class, load_model

    cls = get_model_class(name)
    if allow_random_weights and "allow_random_weights" in cls.default_config():
        overrides = {**overrides, "allow_random_weights": True}
    return load_model(name, checkpoint=checkpoint, **overrides)


def metrics_table(result: dict[str, Any], title: str) -> Any:
    """A rich table of the metrics (x100, 2 decimals)."""
    from rich.table import Table

    from refbench.metrics.table import ordered

    metrics = result.get("metrics", {})
    table = Table(title=title)
    names = ordered(metrics)
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_row(str(result.get("n", "")), *(_pct(metrics[name]) for name in names))
    return table


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100.0 * float(value):.2f}"


def print_result(console: Any, result: dict[str, Any]) -> None:
    """The metrics table and, on SynthRef, PointM per template and the chance levels."""
    from rich.table import Table

    title = f"{result.get('split')}  protocol={result.get('protocol')}  " \
        f"sentences={result.get('sentences')}"
    console.print(metrics_table(result, title))
    per_template = result.get("per_template")
    if per_template:
        table = Table(title="SynthRef per template")
        chance = (result.get("chance") or {}).get("per_template", {})
        for column in ("template", "n", "PointM", "mIoU", "chance (random object)"):
            table.add_column(column, justify="left" if column == "template" else "right")
        for template, values in sorted(per_template.items()):
            table.add_row(
                template, str(values.get("n", "")), _pct(values.get("PointM")),
                _pct(values.get("mIoU")), _pct(chance.get(template, {}).get("random_object")),
            )
        console.print(table)
        background = result.get("metrics", {}).get("BackgroundPeaks")
        if background is not None:
            console.print(f"peaks on background: {_pct(background)}%")
    chance = (result.get("chance") or {}).get("PointM")
    if chance:
        text = ", ".join(f"{k} {_pct(v)}" for k, v in chance.items())
        console.print(f"chance PointM (x100): {text}")


@click.command("eval")
@click.option("--model", "model_name", required=True, help="Registered model name (refbench list).")
@click.option("--split", required=True, help="Split id, e.g. refcocog-val-g or synth-val.")
@data_root_option
@click.option("--checkpoint", default=None,
              help="A checkpoint of this model: refbench's, or the authors' file where the plugin reads it (tris).")
@click.option("--protocol", default="tris", show_default=True, help="tris or sag.")
@click.option("--sentences", default="all", show_default=True, help="all or first.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Images per batch.")
@click.option("--num-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="DataLoader workers.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--out", "out_dir", default="runs", show_default=True, help="Runs root folder.")
@click.option("--resume", "resume_dir", default=None, help="Continue this unfinished run folder.")
@click.option("--save-masks", is_flag=True, help="Store each predicted mask as COCO RLE.")
@click.option("--save-maps", "--stages", "save_maps", is_flag=True,
              help="Keep every response map and each stage's map (maps/<image_id>.npz).")
@click.option("--proposals", default=None, help="Proposal backend for Segmentor/Oracle rows.")
@click.option("--cues", default=None, help="Cue backend for models that read cues.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--set", "set_pairs", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--allow-random-weights", is_flag=True,
              help="Let a model without its pretrained weights run on random ones.")
def eval_command(
    model_name: str, split: str, data_root: str | None, checkpoint: str | None, protocol: str,
    sentences: str, batch_size: int, num_workers: int, device: str, out_dir: str,
    resume_dir: str | None, save_masks: bool, save_maps: bool, proposals: str | None,
    cues: str | None, seed: int, set_pairs: tuple[str, ...], allow_random_weights: bool,
) -> None:
    """Evaluate a model on a split; leave a run folder and print the metrics."""
    from rich.console import Console

    from refbench.data.splits import get_split
    from refbench.eval.runner import evaluate
    from refbench.metrics.protocols import check_sentence_mode, get_protocol

    # Cheap checks first, so a mistake costs nothing and leaves nothing behind.
    get_split(split)
    get_protocol(protocol)
    check_sentence_mode(sentences)
    check_device(device)
    overrides = parse_overrides(set_pairs)
    from refbench.registry import get_model_class

    check_overrides(get_model_class(model_name), overrides)
    if cues is not None:
        from refbench.cues import check_backend_name

        check_backend_name(cues)
    if resume_dir is None:
        _check_writable(out_dir)
    dataset = open_dataset(split, data_root)
    if proposals is not None:
        from refbench.proposals import check_backend_name as check_proposals

        check_proposals(dataset, proposals)
    model = build_model(model_name, checkpoint, overrides, allow_random_weights)
    console = Console(stderr=False)
    result = evaluate(
        model, dataset, protocol=protocol, sentences=sentences, batch_size=batch_size,
        device=device, num_workers=num_workers, out_dir=out_dir, run_dir=resume_dir,
        save_masks=save_masks, save_maps=save_maps, proposals=proposals, cues=cues, seed=seed,
        progress=True,
        checkpoint=checkpoint,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 alone reports
    print_result(console, result)
    console.print(f"weights: {model.weights_description}")
    used = {"sentences": sentences, "protocol": protocol}
    for key, value in model.reference_evaluation.items():
        if key in used and used[key] != value:
            console.print(f"note: the authors evaluate this model with --{key} {value} "
                          f"(this run: {used[key]})")
    console.print(f"run folder: {result['run_dir']}")


def _check_writable(out_dir: str) -> None:
    """Fail before any work when --out cannot hold a run folder (nothing is created)."""
    path = Path(out_dir)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"--out {out_dir}: {probe} is not a writable folder; choose a writable location"
        )


@click.command("score")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def score_command(run_dir: Path) -> None:
    """Recompute a run's metrics from its predictions.jsonl alone and rewrite metrics.json."""
    from rich.console import Console

    from refbench.eval.run_folder import CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE
    from refbench.eval.runner import compute_metrics, dedupe_records
    from refbench.io import atomic_write_json, read_json, read_jsonl

    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise DataError(f"{run_dir} has no {CONFIG_FILE}; pass a run folder made by refbench eval")
    config = read_json(config_path, "run config")
    predictions = run_dir / PREDICTIONS_FILE
    if not predictions.is_file():
        raise DataError(f"run {run_dir} has no {PREDICTIONS_FILE}; it never scored a batch")
    records, _ = read_jsonl(predictions)
    count = len(dedupe_records(records))
    expected = config.get("num_expressions")
    if expected is not None and count != expected:
        raise DataError(
            f"run {run_dir} is unfinished ({count} of {expected} expressions); finish it with "
            f"`refbench eval ... --resume {run_dir}`"
        )
    result = compute_metrics(records, config)
    stored = None
    if (run_dir / METRICS_FILE).is_file():
        stored = read_json(run_dir / METRICS_FILE, "stored metrics")
    atomic_write_json(run_dir / METRICS_FILE, result)
    console = Console()
    print_result(console, result)
    if stored is None:
        console.print(f"wrote {run_dir / METRICS_FILE} (there was none)")
    elif _same(stored, result):
        console.print("matches the stored metrics.json")
    else:
        console.print("[bold]differs from the stored metrics.json[/bold] (rewritten)")


def _same(a: Any, b: Any, tol: float = 1e-12) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= tol
    return a == b
