"""``refbench data synth`` (generate SynthRef) and ``refbench data stats`` (its chance levels)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


@click.command("synth")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data root to write <root>/synthref (or synthref-hard) into.")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed.")
@click.option("--images", type=int, default=None, help="Training images [default: 10000].")
@click.option("--val-images", type=int, default=None, help="Validation images [default: 100].")
@click.option("--test-images", type=int, default=None, help="Test images [default: 200].")
@click.option("--size", type=int, default=96, show_default=True, help="Image side in pixels.")
@click.option("--variant", type=click.Choice(["default", "hard"]), default="default",
              show_default=True, help="Split family: default (synth-*) or hard (synth-hard-*).")
@click.option("--overwrite", is_flag=True, help="Replace an existing data set in --out.")
def synth_command(
    out: Path,
    seed: int,
    images: int | None,
    val_images: int | None,
    test_images: int | None,
    size: int,
    variant: str,
    overwrite: bool,
) -> None:
    """Generate the SynthRef benchmark in the refer format (deterministic by seed)."""
    from refbench.synth import generate, get_variant, synth_info

    counts = {
        split: n
        for split, n in (("train", images), ("val", val_images), ("test", test_images))
        if n is not None
    }
    start = time.perf_counter()
    root = generate(out, seed=seed, images=counts, size=size, variant=variant, overwrite=overwrite)
    seconds = time.perf_counter() - start
    info = synth_info(root, variant)
    dataset = get_variant(variant).dataset
    c = info["counts"]
    click.echo(
        f"wrote {root / dataset}: {c['images']} images, {c['refs']} refs, {c['sentences']} "
        f"sentences (SynthRef v{info['version']}, variant {variant}, seed {seed}) in {seconds:.1f} s"
    )


def _fmt(value: float) -> str:
    return f"{value:.3f}"


@click.command("stats")
@click.option("--split", "split_id", default="synth-test", show_default=True,
              help="A SynthRef split id (synth-* or synth-hard-*).")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root holding synthref/ [default: the cache, generated on first use].")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats_command(split_id: str, data_root: Path | None, as_json: bool) -> None:
    """Objects, templates and the chance levels a result on a SynthRef split must beat."""
    from refbench.data.splits import get_split
    from refbench.errors import ConfigError
    from refbench.synth import ensure_synthref, stats
    from refbench.synth.stats import CHANCE_KEYS
    from refbench.synth.variants import variant_of_dataset

    info = get_split(split_id)
    if not info.is_synthetic:
        raise ConfigError(f"--split {split_id!r} is not a SynthRef split; use synth-test or similar")
    variant = variant_of_dataset(info.dataset).variant
    if data_root is None:
        data_root = ensure_synthref(variant=variant)
    result = stats(data_root, split_id)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return

    console = Console()
    if not console.is_terminal:  # files and pipes: wide enough that no header wraps
        console = Console(width=120)
    overview = Table(title=f"SynthRef {split_id} (v{result['version']}, {data_root})")
    overview.add_column("statistic")
    overview.add_column("value", justify="right")
    length = result["sentence_length"]
    for name, value in (
        ("images", str(result["images"])),
        ("refs / sentences", f"{result['refs']} / {result['sentences']}"),
        ("objects per image", f"{result['objects_per_image']:.2f}"),
        ("refs per image", f"{result['refs_per_image']:.2f}"),
        ("sentences per ref", f"{result['sentences_per_ref']:.2f}"),
        ("distractor rate", _fmt(result["distractor_rate"])),
        ("images with look-alike pair", _fmt(result["lookalike_image_rate"])),
        ("sentences about a look-alike", _fmt(result["lookalike_sentence_rate"])),
        ("sentence length (words)", f"{length['mean']:.2f} ({length['min']}-{length['max']})"),
        ("false-negative pair rate", _fmt(result["false_negative_rate"])),
    ):
        overview.add_row(name, value)
    console.print(overview)

    chance = Table(title="Chance levels (expected PointM)")
    chance.add_column("template")
    chance.add_column("share", justify="right")
    for key in CHANCE_KEYS:
        chance.add_column(key, justify="right")
    chance.add_row("overall", "1.000", *(_fmt(result["overall"][k]) for k in CHANCE_KEYS))
    for template, levels in result["per_template"].items():
        chance.add_row(
            template,
            _fmt(result["template_mix"][template]),
            *(_fmt(levels[k]) for k in CHANCE_KEYS),
        )
    console.print(chance)
