"""``refbench data``: check real data against published sizes; generate and inspect SynthRef."""

from __future__ import annotations

from pathlib import Path

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
    help="Split id to check (repeatable); default: every RefCOCO-family split whose files exist.",
)
@click.pass_context
def check_command(ctx: click.Context, data_root: Path, split_ids: tuple[str, ...]) -> None:
    """Count refs and sentences per split and compare them with the published numbers.

    Exits 2 when a count differs or a requested split's files are missing.
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

    if not explicit:
        present = [s for s in wanted if all(p.is_file() for p in files_of(s))]
        if not present:
            expected = sorted({str(p) for s in wanted for p in files_of(s)})
            raise DataError(
                f"no RefCOCO-family files under {data_root}; expected e.g. {expected[0]}; "
                f"{DOCS_HINT}"
            )
        wanted = present

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
    failed = False
    notes: list[str] = []
    for split_id in wanted:
        expected = table_of_counts[split_id]
        missing = [p for p in files_of(split_id) if not p.is_file()]
        if missing:
            failed = True
            table.add_row(
                split_id, "-", f"{expected.refs:,}", "-", f"{expected.sentences:,}", "[red]MISSING"
            )
            notes.extend(f"{split_id}: missing {p}" for p in missing)
            continue
        dataset = ReferDataset(data_root, split_id)
        num_refs = len(dataset.refs)
        num_sentences = sum(len(r.sentences) for r in dataset.refs)
        ok = num_refs == expected.refs and num_sentences == expected.sentences
        failed = failed or not ok
        table.add_row(
            split_id,
            f"{num_refs:,}",
            f"{expected.refs:,}",
            f"{num_sentences:,}",
            f"{expected.sentences:,}",
            "[green]ok" if ok else "[red]MISMATCH",
        )
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    if failed:
        console.print(f"some splits differ from the published sizes or are missing; {DOCS_HINT}")
        ctx.exit(2)
