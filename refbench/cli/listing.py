"""``refbench list``: registered models, splits and protocols, without importing torch."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from refbench.data.splits import SPLITS
from refbench.registry import discover


@click.command("list")
@click.option("--check", "check_imports", is_flag=True,
              help="Also import every plugin and mark those that fail (slower: imports torch).")
def list_command(check_imports: bool) -> None:
    """List registered models, every split and the evaluation protocols.

    A model that cannot be used is marked with the reason: a name two distributions register,
    a plugin package that is not installed, and with --check one that fails to import.
    """
    from refbench.metrics.protocols import PROTOCOL_DESCRIPTIONS

    console = Console()
    models = Table(title="Models (entry-point group refbench.models)")
    for column in ("name", "distribution", "version", "target", "status"):
        models.add_column(column)
    for entry in discover().values():
        problem = entry.problem(check_import=check_imports)
        distribution = ", ".join([entry.distribution, *(c.split(" (")[0] for c in entry.clashes)])
        models.add_row(entry.name, distribution, entry.version, entry.target,
                       f"[red]unusable: {problem}[/red]" if problem else "ok")
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
