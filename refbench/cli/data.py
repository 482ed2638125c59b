"""``refbench data``: check real data against published sizes; generate and inspect SynthRef."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from refbench.cli import LazyGroup
from refbench.errors import ConfigError, DataError

# name -> "module:attribute" (relative to refbench.cli); imported only when used.
DATA_COMMANDS: dict[str, str] = {
    "check": "data:check_command",
    "synth": "synth:synth_command",
    "stats": "synth:stats_command",
}


@click.group("data", cls=LazyGroup, lazy_commands=DATA_COMMANDS)
def data_group() -> None:
    """Check the RefCOCO-family files, or generate and describe SynthRef."""


QUICK_SAMPLE = 100  # images decoded per data set with --quick
MAX_LINES_PER_KIND = 10  # problem lines printed per data set and kind before a count


@click.command("check")
@click.option(
    "--data-root",
    required=True,
    envvar="REFBENCH_DATA_ROOT",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder holding refcoco/, refcoco+/, refcocog/ (see docs/data.md).",
)
@click.option(
    "--split",
    "split_ids",
    multiple=True,
    help="Split id to check (repeatable); default: every split of every data set found.",
)
@click.option(
    "--quick",
    is_flag=True,
    help=f"Decode {QUICK_SAMPLE} evenly spaced images per data set instead of every image.",
)
@click.pass_context
def check_command(
    ctx: click.Context, data_root: Path, split_ids: tuple[str, ...], quick: bool
) -> None:
    """Check the files of each data set: refs parse and match the published counts,
    instances.json parses, every image the refs use opens and decodes at its recorded size.

    Prints one line per problem and exits 2 when there is any.
    """
    from rich.console import Console
    from rich.table import Table

    from refbench.data import published
    from refbench.data.refer import DOCS_HINT, ReferDataset
    from refbench.data.splits import get_split

    table_of_counts = published.PUBLISHED
    if not data_root.is_dir():
        raise DataError(f"data root {data_root} does not exist; {DOCS_HINT}")
    for split_id in split_ids:
        get_split(split_id)  # unknown ids fail listing the valid ones
        if split_id not in table_of_counts:
            raise ConfigError(
                f"split {split_id!r} has no published counts to check against; checkable "
                f"splits: {', '.join(table_of_counts)}"
            )
    explicit = bool(split_ids)
    wanted = list(split_ids) if explicit else list(table_of_counts)

    def files_of(split_id: str) -> list[Path]:
        info = get_split(split_id)
        folder = data_root / info.dataset
        return [folder / info.refs_file, folder / "instances.json"]

    notes: list[str] = []  # what was not checked, and why (not a failure)
    problems: list[str] = []
    if not explicit:
        datasets = list(dict.fromkeys(get_split(s).dataset for s in wanted))
        found = [d for d in datasets if (data_root / d).is_dir()]
        if not found:
            expected = sorted({str(p) for s in wanted for p in files_of(s)})
            raise DataError(
                f"no RefCOCO-family files under {data_root}; expected e.g. {expected[0]}; "
                f"{DOCS_HINT}"
            )
        absent = [d for d in datasets if d not in found]
        if absent:
            notes.append(f"absent (no folder under {data_root}, not checked): "
                         f"{', '.join(absent)}")
        kept: list[str] = []
        for dataset_name in found:
            splits = [s for s in wanted if get_split(s).dataset == dataset_name]
            with_refs = [s for s in splits if files_of(s)[0].is_file()]
            if not with_refs:  # a data set folder without any refs file: checked, and MISSING
                kept.extend(splits)
                continue
            for refs_file in dict.fromkeys(files_of(s)[0] for s in splits if s not in with_refs):
                notes.append(f"{dataset_name}: {refs_file.name} absent, its splits not checked")
            kept.extend(with_refs)
        wanted = kept

    table = Table(title=f"refbench data check: {data_root}")
    for column, justify in (
        ("split", "left"),
        ("refs", "right"),
        ("published", "right"),
        ("sentences", "right"),
        ("published", "right"),
        ("status", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    opened: dict[str, list[Any]] = {}  # data set folder -> its opened splits
    for split_id in wanted:
        expected = table_of_counts[split_id]
        missing = [p for p in files_of(split_id) if not p.is_file()]
        if missing:
            table.add_row(
                split_id, "-", f"{expected.refs:,}", "-", f"{expected.sentences:,}", "[red]MISSING"
            )
            problems.extend(f"{split_id}: missing {p}" for p in missing)
            continue
        try:
            dataset = ReferDataset(data_root, split_id)
        except DataError as error:
            table.add_row(split_id, "-", f"{expected.refs:,}", "-", f"{expected.sentences:,}",
                          "[red]UNREADABLE")
            problems.append(f"{split_id}: {error}")
            continue
        opened.setdefault(dataset.info.dataset, []).append(dataset)
        num_refs = len(dataset.refs)
        num_sentences = sum(len(r.sentences) for r in dataset.refs)
        ok = num_refs == expected.refs and num_sentences == expected.sentences
        if not ok:
            problems.append(
                f"{split_id}: {num_refs:,} refs and {num_sentences:,} sentences where the "
                f"published files have {expected.refs:,} and {expected.sentences:,}"
            )
        table.add_row(
            split_id,
            f"{num_refs:,}",
            f"{expected.refs:,}",
            f"{num_sentences:,}",
            f"{expected.sentences:,}",
            "[green]ok" if ok else "[red]MISMATCH",
        )
    summaries: list[str] = []
    for dataset_name, datasets_of in opened.items():
        summary, found_problems = _check_files(datasets_of, quick)
        summaries.append(f"{dataset_name}: {summary}")
        problems.extend(f"{dataset_name}: {line}" for line in found_problems)
    console = Console()
    console.print(table)
    for line in summaries + notes + problems:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if problems:
        console.print(f"{len(problems)} problem line(s) above; {DOCS_HINT}", markup=False)
        ctx.exit(2)


def _check_files(datasets: list[Any], quick: bool) -> tuple[str, list[str]]:
    """Parse the data set's instances.json and decode the images its checked splits use.

    Returns (a one-line summary, problem lines: at most `MAX_LINES_PER_KIND` per kind, then a
    count of the rest).
    """
    from concurrent.futures import ThreadPoolExecutor

    first = datasets[0]
    try:
        images_in_file = len(first._instances.images)
    except DataError as error:
        return "instances.json unreadable, images not checked", [str(error)]
    owner: dict[int, Any] = {}
    for dataset in datasets:
        for image_id in dataset.image_ids:
            owner.setdefault(image_id, dataset)
    image_ids = sorted(owner)
    if quick and len(image_ids) > QUICK_SAMPLE:
        step = len(image_ids) / QUICK_SAMPLE
        image_ids = [image_ids[int(i * step)] for i in range(QUICK_SAMPLE)]

    def decode(image_id: int) -> str | None:
        try:
            owner[image_id].load_image(image_id)
        except DataError as error:
            return str(error)
        return None

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        failures = [m for m in pool.map(decode, image_ids) if m is not None]
    shown = failures[:MAX_LINES_PER_KIND]
    if len(failures) > len(shown):
        shown.append(f"... and {len(failures) - len(shown):,} more images that cannot be used")
    which = "an even sample (--quick)" if len(image_ids) < len(owner) else "all"
    summary = (f"instances.json parsed ({images_in_file:,} images); decoded "
               f"{len(image_ids):,} of the {len(owner):,} images the refs use ({which}), "
               f"{len(failures):,} failed")
    return summary, shown
