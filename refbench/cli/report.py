"""``refbench leaderboard``, ``compare``, ``show`` and ``curves``: what researchers publish."""

from __future__ import annotations

from pathlib import Path

import click

from refbench.errors import ConfigError


def _listed(values: tuple[str, ...]) -> list[str]:
    """Repeated and comma-separated option values, flattened in order."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _write_or_echo(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from refbench.io import atomic_write_text

    atomic_write_text(out, text)
    click.echo(f"wrote {out}", err=True)


@click.command("leaderboard")
@click.argument("run_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--reported", is_flag=True, help="Include numbers reported in papers.")
@click.option("--reported-csv", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Reported numbers file (default leaderboards/reported.csv).")
@click.option("--reported-source", default=None,
              help="Keep only reported rows whose source contains this text (e.g. 'Table 6').")
@click.option("--metric", "metrics", multiple=True,
              help="Metric blocks, repeatable or comma-separated (default PointM,mIoU,oIoU).")
@click.option("--splits", "splits", multiple=True,
              help="Families (refcoco, refcoco+, refcocog, synth) or split ids; repeatable or "
                   "comma-separated (default refcoco,refcoco+,refcocog).")
@click.option("--format", "fmt", type=click.Choice(["md", "latex", "csv"]), default="md",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write here instead of stdout.")
@click.option("--precision", type=click.IntRange(0, 4), default=1, show_default=True,
              help="Decimals of the x100 values.")
@click.option("--ci", is_flag=True, help="Add 95% bootstrap intervals to measured values.")
@click.option("--resamples", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resample-by", "resample_by", type=click.Choice(["auto", "image", "expression"]),
              default="auto", show_default=True,
              help="Bootstrap unit: auto = image when an image has several expressions.")
@click.option("--all-runs", is_flag=True, help="One row per run instead of the newest per split.")
@click.option("--strict", is_flag=True, help="Refuse to tabulate runs of different protocols.")
@click.option("--standalone", is_flag=True, help="LaTeX: a whole compilable document.")
def leaderboard_command(
    run_dirs: tuple[Path, ...], reported: bool, reported_csv: Path | None,
    reported_source: str | None, metrics: tuple[str, ...], splits: tuple[str, ...], fmt: str,
    out: Path | None, precision: int, ci: bool, resamples: int, seed: int, resample_by: str,
    all_runs: bool, strict: bool, standalone: bool,
) -> None:
    """Tabulate run folders (and, with --reported, published numbers) as in PCNet's Table 1."""
    from refbench.metrics.table import DEFAULT_BLOCKS
    from refbench.report import leaderboard as lb
    from refbench.report.reported import load_reported
    from refbench.report.runs import find_runs

    if not run_dirs and not reported:
        raise ConfigError("give run folders and/or --reported; nothing to tabulate")
    runs = find_runs(list(run_dirs)) if run_dirs else []
    table = None
    if reported or reported_csv is not None:
        table = load_reported(reported_csv)
        if reported_source:
            table = table[table["source"].str.contains(reported_source, regex=False)]
            if table.empty:
                raise ConfigError(f"no reported row has a source containing {reported_source!r}")
    board = lb.build_leaderboard(
        runs, table, metrics=_listed(metrics) or DEFAULT_BLOCKS,
        splits=_listed(splits) or lb.DEFAULT_SPLITS, all_runs=all_runs, strict=strict, ci=ci,
        n_resamples=resamples, seed=seed, resample_by=resample_by,
    )
    if fmt == "md":
        text = lb.to_markdown(board, precision)
    elif fmt == "latex":
        text = lb.to_latex(board, precision, standalone=standalone)
    else:
        text = lb.to_csv(board, precision)
    _write_or_echo(text, out)


@click.command("compare")
@click.argument("run_a", type=click.Path(path_type=Path, file_okay=False))
@click.argument("run_b", type=click.Path(path_type=Path, file_okay=False))
@click.option("--metric", "metrics", multiple=True,
              help="Metrics, repeatable or comma-separated (default: PointM, mIoU, oIoU and any "
                   "proposal metrics both runs carry).")
@click.option("--resamples", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--level", type=float, default=0.95, show_default=True)
@click.option("--precision", type=click.IntRange(0, 4), default=1, show_default=True)
@click.option("--resample-by", "resample_by", type=click.Choice(["auto", "image", "expression"]),
              default="auto", show_default=True,
              help="Bootstrap unit: auto = image when an image has several expressions.")
def compare_command(
    run_a: Path, run_b: Path, metrics: tuple[str, ...], resamples: int, seed: int, level: float,
    precision: int, resample_by: str,
) -> None:
    """Paired bootstrap test of A − B over the same expressions of two runs."""
    import pandas as pd

    from refbench.metrics.table import get_metric
    from refbench.report.bootstrap import available_metrics, paired_bootstrap
    from refbench.report.runs import load_run

    a, b = load_run(run_a), load_run(run_b)
    check_comparable(a, b)
    records_a, records_b = a.records(), b.records()
    wanted = _listed(metrics)
    if not wanted:
        both = [m for m in available_metrics(records_a) if m in available_metrics(records_b)]
        wanted = [m for m in both if get_metric(m).default]
    results = paired_bootstrap(records_a, records_b, wanted, resamples, level, seed, resample_by)
    p = precision
    rows = [
        {"metric": r.metric, f"A ({a.model})": f"{100 * r.value_a:.{p}f}",
         f"B ({b.model})": f"{100 * r.value_b:.{p}f}", "A - B": f"{100 * r.difference:+.{p}f}",
         f"{int(level * 100)}% CI": f"[{100 * r.low:+.{p}f}, {100 * r.high:+.{p}f}]",
         "p": f"{r.p_value:.4f}"}
        for r in results.values()
    ]
    first = next(iter(results.values()), None)
    unit = (f"resampling {first.n_units} images (all expressions of an image together)"
            if first is not None and first.resample_by == "image"
            else "resampling expressions")
    click.echo(f"A: {a.path}\nB: {b.path}\n{a.split}, protocol {a.protocol}, sentences "
               f"{a.sentences}, n={len(records_a)} paired expressions, {unit}, {resamples} "
               f"resamples, seed {seed}\n")
    click.echo(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))


def check_comparable(a, b) -> None:
    """Refuse runs on different splits, protocols or sentence modes (a `ConfigError`)."""
    for what, left, right in (("splits", a.split, b.split), ("protocols", a.protocol, b.protocol),
                              ("sentence modes", a.sentences, b.sentences)):
        if left != right:
            raise ConfigError(
                f"runs {a.path} and {b.path} use different {what} ({left} vs {right}); a paired "
                "test needs runs on the same expressions under the same protocol"
            )
    from refbench.report.leaderboard import data_id

    if data_id(a) and data_id(b) and data_id(a) != data_id(b):
        raise ConfigError(
            f"runs {a.path} and {b.path} were made on different data (refs sha256 {data_id(a)} vs "
            f"{data_id(b)}); a paired test needs runs on the same refs file"
        )


@click.command("show")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--compare", "compare", is_flag=True, help="Draw the runs side by side.")
@click.option("--n", "n", type=int, default=16, show_default=True, help="Expressions to sample.")
@click.option("--keys", "keys", multiple=True, help="Expression keys image:ref:sent (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Data root, if not the one recorded in the run.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
def show_command(
    runs: tuple[Path, ...], compare: bool, n: int, keys: tuple[str, ...], seed: int,
    data_root: Path | None, device: str, out: Path,
) -> None:
    """Draw image, ground truth and response map with its peak (and stage maps) per expression."""
    from refbench.report.figures import show_compare, show_run
    from refbench.report.runs import load_run

    loaded = [load_run(p) for p in runs]
    chosen = _listed(keys) or None
    if compare:
        panels = show_compare(loaded, out, n, chosen, seed, data_root, device)
    else:
        if len(loaded) != 1:
            raise ConfigError("show takes one run; use --compare for several")
        panels = show_run(loaded[0], out, n, chosen, seed, data_root, None, device)
    click.echo(f"wrote {out} ({panels} panels)")


@click.command("curves")
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
def curves_command(log: Path, out: Path) -> None:
    """Plot every loss and the learning rate from a training run's train_log.jsonl."""
    from refbench.report.figures import plot_curves

    panels = plot_curves(log, out)
    click.echo(f"wrote {out} ({panels} panels)")
