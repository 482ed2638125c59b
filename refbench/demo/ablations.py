"""`refbench reproduce ablations`: PCNet's Tables 2-5 in miniature on SynthRef.

Each cell is the demo's PCNet config (`configs.PCNET_DEMO`) plus the switches of one row of the
paper's tables, trained from scratch per seed on synth-train and scored on the chosen split.
Training and evaluation runs are the demo's (keyed, reused, resumable), so an interrupted grid
continues where it stopped. A cell's value is the mean ± sample standard deviation over seeds,
with a percentile bootstrap CI over the expressions of all its seeds pooled.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from refbench.demo import configs
from refbench.demo.configs import ModelSpec
from refbench.device import check_device
from refbench.errors import ConfigError, DataError

METRICS = ("PointM", "mIoU", "oIoU")


@dataclass(frozen=True)
class Cell:
    """One row of one ablation table and the PCNet config overrides that realise it."""

    table: str
    row: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A folder-safe name, e.g. ``table3-N=2``."""
        safe = self.row.replace("+", "p").replace(" ", "").replace("/", "-")
        return f"{self.table.lower().replace(' ', '')}-{safe}"


# Table 2 (components). "L_cls" is the single-stage baseline without CRM: one stage reading the
# full sentence (num_cues 0) through ADD modulation, i.e. Q + Q = 2Q, which the cosine map
# ignores, so no cue enters the model; RaS and IaD off. "+CRM" is the small preset's CRM (N = 3,
# ADD modulation, see plugins/pcnet config.SMALL_PRESET) with L_cls only. RaS needs N >= 2 (Sec. 4.3), so Table 3's N = 1 has ras off.
TABLES: dict[str, list[Cell]] = {
    "Table 2": [
        Cell("Table 2", "L_cls", {"num_stages": 1, "num_cues": 0, "modulation": "ADD",
                                  "ras": False, "iad": False}),
        Cell("Table 2", "+CRM", {"ras": False, "iad": False}),
        Cell("Table 2", "+CRM+RaS", {"ras": True, "iad": False}),
        Cell("Table 2", "+CRM+IaD", {"ras": False, "iad": True}),
        Cell("Table 2", "all", {"ras": True, "iad": True}),
    ],
    "Table 3": [
        Cell("Table 3", f"N={n}", {"num_stages": n, "num_cues": n, **({"ras": False} if n == 1
                                                                       else {})})
        for n in (1, 2, 3, 4)
    ],
    "Table 4": [Cell("Table 4", m, {"modulation": m}) for m in ("ADD", "TTA", "VTA+ADD",
                                                                 "VTA+TTA")],
    "Table 5": [Cell("Table 5", f"N_d={d}", {"num_distinct": d}) for d in (0, 1, 2, 3)],
}


def expand_grid(only: Sequence[str] | None = None) -> list[Cell]:
    """The cells of the chosen tables (``Table 2``, ``2``, ``table2`` all name Table 2)."""
    if not only:
        return [cell for cells in TABLES.values() for cell in cells]
    chosen: list[Cell] = []
    for name in only:
        digits = "".join(ch for ch in str(name) if ch.isdigit())
        key = f"Table {digits}"
        if key not in TABLES:
            raise ConfigError(f"--only {name!r} is not an ablation table; choose from "
                              f"{', '.join(t.split()[1] for t in TABLES)} (PCNet Tables 2-5)")
        chosen.extend(TABLES[key])
    return chosen


def cell_spec(cell: Cell, base: ModelSpec = configs.PCNET_DEMO) -> ModelSpec:
    """The training spec of `cell`: `base` with the cell's overrides."""
    return base.with_overrides(cell.label, **cell.overrides)


@dataclass
class CellResult:
    """A cell over seeds: per-seed values, mean, sample std and a pooled bootstrap CI."""

    cell: Cell
    seeds: list[int]
    values: dict[str, list[float]]
    mean: dict[str, float]
    std: dict[str, float]
    ci: dict[str, tuple[float, float]]
    run_dirs: list[Path] = field(default_factory=list)
    shares_runs_of: Cell | None = None  # an earlier cell with the same resolved config


def aggregate(
    cell: Cell, per_seed: Sequence[tuple[int, dict[str, float], list[dict[str, Any]]]],
    n_resamples: int = 1000, seed: int = 0,
) -> CellResult:
    """Mean ± std (ddof 1; 0 for one seed) of each metric over seeds, CI over pooled records.

    `per_seed` holds (seed, metrics, prediction records) of each seed's run.
    """
    from refbench.report.bootstrap import bootstrap_ci

    if not per_seed:
        raise DataError(f"cell {cell.table} {cell.row} has no finished run to aggregate")
    values = {m: [float(metrics[m]) for _, metrics, _ in per_seed] for m in METRICS}
    mean = {m: float(np.mean(v)) for m, v in values.items()}
    std = {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()}
    pooled = [record for _, _, records in per_seed for record in records]
    intervals = bootstrap_ci(pooled, METRICS, n_resamples=n_resamples, seed=seed)
    ci = {m: (intervals[m].low, intervals[m].high) for m in METRICS}
    return CellResult(cell, [s for s, _, _ in per_seed], values, mean, std, ci)


# --------------------------------------------------------------------------- reported numbers


def default_reported_path() -> Path:
    """leaderboards/reported-ablations.csv of this checkout."""
    return Path(__file__).resolve().parents[2] / "leaderboards" / "reported-ablations.csv"


def load_reported_ablations(path: str | Path | None = None) -> dict[tuple[str, str, str], str]:
    """(table, row, metric) -> the paper's value as printed ("57.7" or "S 57.7 / F 56.4")."""
    import pandas as pd

    path = Path(path) if path is not None else default_reported_path()
    if not path.is_file():
        raise DataError(f"{path} does not exist; it holds the paper's Tables 2-5")
    frame = pd.read_csv(path)
    cells: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in frame.itertuples(index=False):
        cells.setdefault((row.table, row.row, row.metric), {})[row.variant] = float(row.value)
    out = {}
    for key, variants in cells.items():
        if set(variants) == {"PCNet_S", "PCNet_F"}:
            out[key] = f"S {variants['PCNet_S']:.1f} / F {variants['PCNet_F']:.1f}"
        else:
            out[key] = "/".join(f"{v:.1f}" for v in variants.values())
    return out


# --------------------------------------------------------------------------- tables


def _cell_text(result: CellResult, metric: str) -> str:
    low, high = result.ci[metric]
    return (f"{100 * result.mean[metric]:.1f} ± {100 * result.std[metric]:.1f} "
            f"({100 * low:.1f}–{100 * high:.1f})")


def render_tables(
    results: Sequence[CellResult], header: Sequence[str], reported: dict[tuple[str, str, str], str]
) -> tuple[str, str]:
    """(Markdown, LaTeX) of the grid, one block per table, the paper's numbers beside ours."""
    from refbench.report.leaderboard import latex_escape

    md = [f"<!-- {line} -->" for line in header] + [""]
    md += ["# PCNet ablations on SynthRef", ""] + [f"- {line}" for line in header] + [""]
    md.append("Ours: mean ± std over seeds (95% bootstrap CI over the pooled expressions), x100. "
              "Paper: RefCOCOg Val (G), PCNet_F unless marked S (PCNet_S).")
    tex = [f"% {line}" for line in header]
    tex += [r"\begin{table}", r"\centering", r"\begin{tabular}{l" + "ll" * len(METRICS) + "}",
            r"\toprule",
            "Row & " + " & ".join(f"{m} (ours) & {m} (paper)" for m in METRICS) + r" \\"]
    for table in TABLES:
        rows = [r for r in results if r.cell.table == table]
        if not rows:
            continue
        md += ["", f"## {table}", ""]
        md.append("| Row | seeds | " + " | ".join(f"{m} (ours) | {m} (paper)" for m in METRICS)
                  + " |")
        md.append("| --- | --- |" + " --- | --- |" * len(METRICS))
        tex += [r"\midrule", rf"\multicolumn{{{1 + 2 * len(METRICS)}}}{{l}}{{{table}}} \\"]
        for result in rows:
            ours = [_cell_text(result, m) for m in METRICS]
            paper = [reported.get((table, result.cell.row, m), "-") for m in METRICS]
            row = result.cell.row
            if result.shares_runs_of is not None:
                row += f" (= {result.shares_runs_of.table} {result.shares_runs_of.row})"
            md.append(f"| {row} | {len(result.seeds)} | "
                      + " | ".join(f"{o} | {p}" for o, p in zip(ours, paper)) + " |")
            tex.append(latex_escape(row) + " & " + " & ".join(
                f"{latex_escape(o)} & {latex_escape(p)}" for o, p in zip(ours, paper)) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}",
            r"\caption{PCNet ablations on SynthRef (ours) beside RefCOCOg Val (G) (paper).}",
            r"\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


# --------------------------------------------------------------------------- running the grid


@dataclass
class GridOptions:
    """Options of `run_ablations` (the CLI flags, plus what tests shrink)."""

    split: str = configs.TEST_SPLIT
    seeds: int = 3
    budget_minutes: float | None = None
    only: tuple[str, ...] = ()
    work_dir: Path = Path("runs/ablations")
    out_dir: Path = Path("leaderboards")
    data_root: Path | None = None
    device: str = "cpu"
    base: ModelSpec = configs.PCNET_DEMO
    cells: tuple[Cell, ...] | None = None  # overrides `only` (tests)
    progress: bool = True
    command: str = "refbench reproduce ablations"


def run_ablations(options: GridOptions, console: Any = None) -> list[CellResult]:
    """Train and score every (cell, seed), aggregate, write synthref-ablations.md/.tex."""
    from refbench.data.refer import ReferDataset
    from refbench.data.splits import get_split
    from refbench.demo import pipeline
    from refbench.io import atomic_write_json, atomic_write_text, ensure_dir, exclusive_lock
    from refbench.io import read_json as read_json_file
    from refbench.report.runs import load_run
    from refbench.synth import ensure_synthref

    info = get_split(options.split)
    if not info.is_synthetic:
        raise ConfigError(f"--split {options.split}: the ablation grid runs on SynthRef splits "
                          "(synth-val or synth-test)")
    if options.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {options.seeds}")
    if options.budget_minutes is not None and options.budget_minutes <= 0:
        raise ConfigError(f"--budget must be positive minutes, got {options.budget_minutes}")
    cells = list(options.cells) if options.cells is not None else expand_grid(options.only)
    reported = load_reported_ablations()
    pipeline.check_cache_writable()
    work_dir = ensure_dir(options.work_dir, "ablation working folder")
    device = check_device(options.device)
    with exclusive_lock(work_dir / ".ablations.lock", f"the ablation folder {work_dir} "
                        "(a grid is running)"):
        data_root = ensure_synthref(options.data_root)
        train = ReferDataset(data_root, get_split(configs.TRAIN_SPLIT))
        val = ReferDataset(data_root, get_split(configs.VAL_SPLIT))
        test = ReferDataset(data_root, info)
        specs = [cell_spec(c, options.base) for c in cells]
        prepared = pipeline.prepare_inputs(specs, [train, val, test])
        # Rows of different tables can be one model (Table 3's N=3, Table 4's ADD and Table
        # 5's N_d=1 are the preset, i.e. Table 2's "all"): train those once and report both.
        first_with: dict[str, int] = {}
        same_as = [first_with.setdefault(pipeline.digest(prepared.probe(s).config), i)
                   for i, s in enumerate(specs)]
        jobs = sum(1 for i, j in enumerate(same_as) if i == j) * options.seeds
        per_job = (None if options.budget_minutes is None
                   else options.budget_minutes * 60.0 / jobs)
        speeds_path = work_dir / "speed.json"
        speeds = read_json_file(speeds_path) if speeds_path.is_file() else {}
        results: list[CellResult] = []
        used_speeds: list[Any] = []
        start = time.perf_counter()
        for index, (cell, spec) in enumerate(zip(cells, specs)):
            if same_as[index] != index:
                earlier = results[same_as[index]]
                if console is not None and options.progress:
                    console.print(f"[{index + 1}/{len(cells)}] {cell.table} {cell.row}: the "
                                  f"model of {earlier.cell.table} {earlier.cell.row}, reused")
                results.append(replace(earlier, cell=cell, shares_runs_of=earlier.cell))
                continue
            if per_job is not None:
                probe = prepared.probe(spec)
                key = pipeline.digest({"config": probe.config, "device": device})[:16]
                if key not in speeds:
                    rate = pipeline.measure_samples_per_second(
                        spec, train, prepared.cues_for(spec, train), prepared.proposals_for(
                            spec, train), device, 0)
                    speeds[key] = {"samples_per_s": rate, "host": platform.node() or "unknown",
                                   "measured": time.strftime("%Y-%m-%d %H:%M")}
                    atomic_write_json(speeds_path, speeds)
                used_speeds.append(speeds[key])
                batch = int(probe.config["batch_size"])
                steps = pipeline.steps_for_budget(per_job, speed_value(speeds[key]), batch)
                epochs = max(1, math.ceil(steps / max(1, len(train.image_ids) // batch)))
                spec = ModelSpec(spec.name, spec.label, dict(spec.overrides), epochs, steps)
            per_seed = []
            run_dirs = []
            for seed in range(options.seeds):
                if console is not None and options.progress:
                    console.print(f"[{index + 1}/{len(cells)}] {cell.table} {cell.row} seed {seed}")
                outcome = pipeline.train_model(
                    spec, work_dir / "train", train, val, seed=seed, device=device,
                    retrain=False, cues=prepared.cues_for(spec, train),
                    val_cue_backend=configs.CUE_BACKEND if prepared.probe(spec).num_cues else None,
                    proposals=prepared.proposals_for(spec, train),
                )
                eval_root = work_dir / "eval" / outcome.train_dir.name / options.split
                run_dir, _ = pipeline.evaluate_model(
                    spec, outcome.checkpoint, eval_root, test, device=device, seed=seed,
                    proposals=None,
                )
                run = load_run(run_dir)
                per_seed.append((seed, run.metrics["metrics"], run.records()))
                run_dirs.append(run_dir)
            result = aggregate(cell, per_seed)
            result.run_dirs = run_dirs
            results.append(result)
        elapsed = time.perf_counter() - start
    header = grid_header(options, device, elapsed, per_job)
    if used_speeds:
        header.append(speed_provenance(used_speeds))
    md, tex = render_tables(results, header, reported)
    atomic_write_text(Path(options.out_dir) / "synthref-ablations.md", md)
    atomic_write_text(Path(options.out_dir) / "synthref-ablations.tex", tex)
    return results


def speed_value(entry: Any) -> float:
    """Samples/s of a speed.json entry (a number in files written before it kept provenance)."""
    return float(entry["samples_per_s"] if isinstance(entry, dict) else entry)


def speed_provenance(entries: Sequence[Any]) -> str:
    """A header line saying where and when the speeds behind the steps were measured.

    Equal-time comparisons hold only between speeds measured under the same load; a grid
    extended later, under another load, mixes them, and this line shows it.
    """
    dated = [e for e in entries if isinstance(e, dict) and e.get("measured")]
    parts = []
    if dated:
        times = sorted(e["measured"] for e in dated)
        hosts = sorted({str(e.get("host", "unknown")) for e in dated})
        span = times[0] if times[0] == times[-1] else f"{times[0]} to {times[-1]}"
        parts.append(f"{len(dated)} measured {span} on {', '.join(hosts)}")
    if len(dated) < len(entries):
        parts.append(f"{len(entries) - len(dated)} read from an earlier speed.json without a date")
    return f"speeds of the {len(entries)} trained models: " + "; ".join(parts)


def grid_header(options: GridOptions, device: str, elapsed: float,
                per_job: float | None) -> list[str]:
    """Header lines: command, machine, date, budget, training config."""
    import os

    from refbench.eval.provenance import git_state

    sha, dirty = git_state()
    cpu = f"{os.cpu_count()} CPUs" if device == "cpu" else device
    budget = ("no budget: each cell trains the demo's max_steps "
              f"({options.base.max_steps} steps, epochs {options.base.epochs})"
              if per_job is None else
              f"budget {options.budget_minutes:g} min spread over distinct models x seeds "
              f"({per_job:.0f} s of training each, steps from a measured samples/s)")
    return [
        f"command: {options.command}",
        f"machine: {platform.node() or 'unknown'} ({platform.machine()}, {cpu}, "
        f"{platform.system()}); date {time.strftime('%Y-%m-%d %H:%M')}; "
        f"git {sha or 'unknown'}{' (dirty)' if dirty else ''}; {elapsed / 60:.1f} min",
        f"split {options.split}, seeds 0..{options.seeds - 1}; {budget}",
        f"base config: {options.base.name} {options.base.overrides}",
    ]
