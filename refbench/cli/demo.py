"""``refbench demo``: SynthRef end to end (data, cues, proposals, PCNet and TRIS trained and
scored, leaderboard, figure), each step cached; see refbench/demo/pipeline.py."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--out", "out_dir", default="leaderboards", show_default=True,
              help="Folder for synthref.md, synthref.tex and synthref.png.")
@click.option("--work-dir", default="runs/demo", show_default=True,
              help="Folder for the demo's training and evaluation runs (locked while running).")
@click.option("--retrain", is_flag=True, help="Train again even when a checkpoint exists.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training/evaluation seed.")
@click.option("--budget-minutes", type=float, default=None,
              help="Training time for all models together; steps follow a measured speed.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--data-root", default=None,
              help="SynthRef data root (default: generated once into the refbench cache).")
@click.option("--no-progress", is_flag=True, help="Print step lines only, no bars.")
def demo_command(out_dir: str, work_dir: str, retrain: bool, seed: int,
                 budget_minutes: float | None, device: str, data_root: str | None,
                 no_progress: bool) -> None:
    """Run the SynthRef demo; a second run reuses caches and checkpoints."""
    import os

    from rich.console import Console

    from refbench.demo.pipeline import DemoOptions, run_demo

    console = Console()
    options = DemoOptions(
        out_dir=Path(out_dir), work_dir=Path(work_dir), retrain=retrain, seed=seed,
        budget_minutes=budget_minutes, device=device,
        data_root=Path(data_root) if data_root else None,
        progress=not no_progress and os.environ.get("REFBENCH_NO_PROGRESS") != "1",
    )
    result = run_demo(options, console=console)
    click.echo("")
    click.echo(result.table)
    click.echo("")
    total = sum(step.seconds for step in result.steps)
    click.echo(f"wrote {result.markdown}, {result.latex}, {result.figure} ({total:.0f} s)")
