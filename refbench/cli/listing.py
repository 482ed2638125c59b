"""``refbench list``: registered models, splits and protocols, without importing torch."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from refbench.data.splits import SPLITS
from refbench.registry import discover


@click.command("list")
def list_command() -> None:
    """List registered models, every split and the evaluation protocols."""
    from refbench.metrics.protocols import PROTOCOL_DESCRIPTIONS

    console = Console()
    models = Table(title="Models (entry-point group refbench.models)")
    for column in ("name", "distribution", "version", "target"):
        models.add_column(column)
    for entry in discover().values():
        models.add_row(entry.name, entry.distribution, entry.version, entry.target)
    console.print(models)

    splits = Table(title="Splits")
    for column in ("id", "dataset", "refs file", "split"):
        splits.add_column(column)
    for info in SPLITS.values():
        splits.add_row(info.id, info.dataset, info.refs_file, info.split)
    console.print(splits)

    protocols = Table(title="Evaluation protocols")
    protocols.add_column("name")
    protocols.add_column("what it does")
    for name, text in PROTOCOL_DESCRIPTIONS.items():
        protocols.add_row(name, text)
    console.print(protocols)
