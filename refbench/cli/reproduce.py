"""``refbench reproduce ablations``: PCNet's ablation Tables 2-5 in miniature on SynthRef."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("reproduce")
def reproduce_group() -> None:
    """Reproduce a paper's experiments on SynthRef."""


@reproduce_group.command("ablations")
@click.option("--split", default="synth-test", show_default=True, help="Split scored per cell.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per cell (0..N-1).")
@click.option("--budget", "budget_minutes", type=float, default=None,
              help="Training minutes for the whole grid, spread over its distinct models x seeds.")
@click.option("--only", multiple=True, help="Tables to run (2, 3, 4, 5); repeatable.")
@click.option("--work-dir", default="runs/ablations", show_default=True,
              help="Folder for the grid's runs (cells already there are skipped).")
@click.option("--out", "out_dir", default="leaderboards", show_default=True,
              help="Folder for synthref-ablations.md and .tex.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--data-root", default=None, help="SynthRef data root (default: the cache).")
def ablations_command(split: str, seeds: int, budget_minutes: float | None, only: tuple[str, ...],
                      work_dir: str, out_dir: str, device: str, data_root: str | None) -> None:
    """Train and score each ablation cell per seed; write the table with the paper's numbers."""
    from rich.console import Console

    from refbench.demo.ablations import GridOptions, run_ablations

    only_tables = tuple(part for item in only for part in item.split(",") if part)
    options = GridOptions(
        split=split, seeds=seeds, budget_minutes=budget_minutes, only=only_tables,
        work_dir=Path(work_dir), out_dir=Path(out_dir),
        data_root=Path(data_root) if data_root else None, device=device,
        command="refbench " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["reproduce"]
        else "refbench reproduce ablations",
    )
    results = run_ablations(options, console=Console())
    click.echo(f"{len(results)} cells -> {Path(out_dir) / 'synthref-ablations.md'}")
