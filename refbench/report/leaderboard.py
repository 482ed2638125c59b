"""Comparison tables in the layout of the PCNet paper's Tables 1 and 6, built with pandas.

Rows are methods: numbers reported in papers (``leaderboards/reported.csv``) first, then
measured runs (marked "measured", with their protocol and a provenance note), then, on SynthRef,
chance levels. Columns are splits grouped by data set (RefCOCO Val/TestA/TestB, RefCOCO+ ...,
RefCOCOg Val (G)/Val (U)/Test (U)). Within each metric block, rows with and without a segmentor
are ranked apart (as the paper does); the best value of a column is bold and the second
underlined. Fully-supervised, oracle and chance rows are references and never ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from refbench.data.splits import SPLITS, get_split
from refbench.errors import ConfigError, DataError, UnknownNameError
from refbench.metrics.table import BLOCKS, DEFAULT_BLOCKS, block_metrics, get_metric
from refbench.report.runs import Run

FAMILY_TITLES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg", "synth": "SynthRef"}
FAMILY_SPLITS = {
    "refcoco": ["refcoco-val", "refcoco-testa", "refcoco-testb"],
    "refcoco+": ["refcoco+-val", "refcoco+-testa", "refcoco+-testb"],
    "refcocog": ["refcocog-val-g", "refcocog-val-u", "refcocog-test-u"],
    "synth": ["synth-val", "synth-test"],
}
DEFAULT_SPLITS = ("refcoco", "refcoco+", "refcocog")
RANKED_SUPERVISION = {"weak"}
CHANCE_LABELS = {
    "random_point": "chance: random point",
    "random_object": "chance: random object",
    "shape_only": "chance: shape oracle",
    "colour_shape_only": "chance: colour+shape oracle",
    "attribute_only": "chance: attribute oracle",
}
def backbone_label(model_config: dict) -> str:
    """The backbone column of a measured row: its architecture, marked when it is the tiny
    random-initialised configuration used on SynthRef (never to be read as a real RN50)."""
    backbone = str(model_config.get("backbone", model_config.get("arch", "-")))
    if model_config.get("small_backbone") or model_config.get("preset") == "small":
        return f"{backbone}-small"
    return backbone


ROW_FIELDS = ["block", "method", "source", "backbone", "segmentor", "supervision", "protocol"]


def resolve_splits(names: Sequence[str]) -> list[str]:
    """Split ids for `names`: families (refcoco, refcoco+, refcocog, synth) or split ids."""
    result: list[str] = []
    for name in names:
        ids = FAMILY_SPLITS.get(name)
        if ids is None:
            try:
                ids = [get_split(name).id]
            except UnknownNameError:
                raise UnknownNameError(
                    f"unknown --splits value {name!r}; use a family ({', '.join(FAMILY_SPLITS)}) "
                    f"or a split id ({', '.join(SPLITS)})"
                ) from None
        result.extend(i for i in ids if i not in result)
    if not result:
        raise ConfigError("--splits selects no split")
    return result


def split_title(split_id: str) -> tuple[str, str]:
    """(data set title, column title) of a split, e.g. ('RefCOCOg', 'Val (G)')."""
    info = get_split(split_id)
    return FAMILY_TITLES.get(info.family, info.family), info.column


@dataclass
class Leaderboard:
    """A built table: one row per (block, method row), percent values per split, and notes.

    table: columns `ROW_FIELDS` + "note" + one float column per split id (percent, NaN where
    missing) + "<split>:low" / "<split>:high" when intervals were computed.
    marks: same index, one column per split id: "best", "second" or "".
    """

    table: pd.DataFrame
    marks: pd.DataFrame
    splits: list[str]
    notes: list[str] = field(default_factory=list)
    has_ci: bool = False
    ci_units: list[str] = field(default_factory=list)  # what the bootstrap drew, per run


# ----------------------------------------------------------------------------- building


def data_id(run: Run) -> str:
    """12 hex digits of the refs file's SHA-256 the run recorded ("" when it recorded none)."""
    dataset = run.config.get("dataset")
    sha = dataset.get("refs_sha256") if isinstance(dataset, dict) else None
    return str(sha)[:12] if sha else ""


def _run_group(run: Run, all_runs: bool) -> tuple[str, ...]:
    key = (run.model, run.config_digest, run.checkpoint_sha256 or "", run.protocol, run.sentences,
           data_id(run))
    return (*key, str(run.path)) if all_runs else key


def mixed_data(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
    """Splits whose runs were made on different data: split -> data id -> its runs.

    A run that recorded no data identity counts as its own kind ("unrecorded") when other runs
    of its split recorded one: it cannot be shown to be on the same data.
    """
    by_split: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        by_split.setdefault(run.split, {}).setdefault(data_id(run), []).append(run)
    return {split: ids for split, ids in by_split.items() if len(ids) > 1}


def _data_note(split: str, ids: dict[str, list[Run]]) -> str:
    parts = []
    for identity, runs in ids.items():
        named = ", ".join(f"{r.model} {r.path.name} (n={r.metrics.get('n', '?')})" for r in runs)
        parts.append(f"refs sha256 {identity or 'unrecorded'}: {named}")
    return (f"{split}: runs on different data ({'; '.join(parts)}); shown as separate rows "
            "labelled by data id, and values on different data are not comparable")


def select_runs(runs: Sequence[Run], all_runs: bool = False) -> tuple[dict[tuple, dict[str, Run]], list[str]]:
    """Runs grouped into table rows (group -> split -> run), newest per split, and notes."""
    groups: dict[tuple, dict[str, list[Run]]] = {}
    for run in runs:
        groups.setdefault(_run_group(run, all_runs), {}).setdefault(run.split, []).append(run)
    chosen: dict[tuple, dict[str, Run]] = {}
    notes: list[str] = []
    for group, by_split in groups.items():
        chosen[group] = {}
        for split, candidates in by_split.items():
            candidates = sorted(candidates, key=lambda r: (r.started_at, r.path.name))
            chosen[group][split] = candidates[-1]
            if len(candidates) > 1:
                notes.append(
                    f"{len(candidates)} runs of {group[0]} on {split} ({group[3]}/{group[4]}"
                    + (f", data {group[5]}" if group[5] else "") + "); "
                    f"showing the newest, {candidates[-1].path.name} (--all-runs lists each)"
                )
    return chosen, notes


def _provenance(marker: str, group_runs: dict[str, Run]) -> str:
    runs = list(group_runs.values())
    first = runs[0]
    dist = first.env.get("model_distribution") or {}
    plugin = f"{dist.get('name', '?')} {dist.get('version', '?')}" if dist else "unknown"
    checkpoint = first.checkpoint_sha256
    shas = []
    for run in runs:
        sha = str(run.env.get("git_sha") or "unknown")[:7]
        text = sha + (" (dirty)" if run.env.get("git_dirty") else "")
        if text not in shas:
            shas.append(text)
    folders = ", ".join(f"{s} {r.path.name} (n={r.metrics.get('n', '?')})" for s, r in group_runs.items())
    proposals = first.config.get("proposals")
    return (
        f"[{marker}] {first.model}: plugin {plugin}; weights {first.config.get('weights', '?')}; "
        f"checkpoint {'sha256 ' + checkpoint[:12] if checkpoint else 'none'}; "
        f"protocol {first.protocol}, sentences {first.sentences}"
        + (f"; data refs sha256 {data_id(first)}" if data_id(first) else "")
        + (f"; proposals {proposals}" if proposals else "")
        + f"; git {', '.join(shas)}; runs: {folders}"
    )


def _chance_levels(metrics: dict[str, Any], template: str | None) -> dict[str, float]:
    chance = metrics.get("chance")
    if not isinstance(chance, dict):
        return {}
    if template is not None:
        per_template = chance.get("per_template")
        levels = per_template.get(template) if isinstance(per_template, dict) else None
    else:
        levels = chance.get("overall", chance)
    if not isinstance(levels, dict):
        return {}
    return {k: float(v) for k, v in levels.items() if k != "sentences" and isinstance(v, (int, float))}


def build_leaderboard(
    runs: Sequence[Run] = (),
    reported: pd.DataFrame | None = None,
    metrics: Sequence[str] = DEFAULT_BLOCKS,
    splits: Sequence[str] = DEFAULT_SPLITS,
    all_runs: bool = False,
    strict: bool = False,
    ci: bool = False,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    resample_by: str = "auto",
) -> Leaderboard:
    """The comparison table of `runs` (measured) and `reported` rows on `splits` for `metrics`.

    Runs of one split made on different data (their recorded refs SHA-256 differ) are never
    merged: they are separate rows labelled ``data <id>``, with a note naming them (a
    `ConfigError` with `strict`). Intervals (`ci`) resample by `resample_by` (bootstrap.py).
    """
    for metric in metrics:
        if metric not in BLOCKS:
            raise UnknownNameError(f"unknown --metric {metric!r}; choose from {', '.join(BLOCKS)}")
    split_ids = resolve_splits(splits)
    synthetic = any(get_split(s).is_synthetic for s in split_ids)
    runs = [r for r in runs if r.split in split_ids]
    if reported is None and not runs:
        raise DataError(
            f"nothing to tabulate: no run on {', '.join(split_ids)} and no --reported numbers"
        )
    blocks = list(metrics)
    templates: list[str] = []
    if synthetic:
        if "BackgroundPeaks" not in blocks:
            blocks.append("BackgroundPeaks")
        templates = sorted({t for r in runs for t in (r.metrics.get("per_template") or {})})
        blocks += [f"PointM: {t}" for t in templates]

    entries: list[dict[str, Any]] = []
    notes: list[str] = []

    def add(block: str, row: dict[str, str], split: str, value: float, low=math.nan, high=math.nan):
        entries.append({"block": block, **row, "split": split, "value": value, "low": low, "high": high})

    # reported numbers, in the file's order; the first of duplicate cells wins
    if reported is not None:
        seen: dict[tuple, tuple[float, str]] = {}
        conflicts: dict[tuple, set[str]] = {}
        for row in reported.itertuples(index=False):
            if row.metric not in blocks or row.split not in split_ids:
                continue
            cell = (row.method, row.backbone, row.segmentor, row.supervision, row.metric, row.split)
            if cell in seen:
                if not math.isclose(seen[cell][0], row.value):
                    conflicts.setdefault(cell[:5], set()).update({seen[cell][1], row.source})
                continue
            seen[cell] = (row.value, row.source)
            fields = {"method": row.method, "source": "reported", "backbone": row.backbone,
                      "segmentor": row.segmentor, "supervision": row.supervision,
                      "protocol": "published", "note": ""}
            add(row.metric, fields, row.split, float(row.value))
        for (method, _, segmentor, _, metric), sources in conflicts.items():
            tables = " vs ".join(sorted(s.split(";")[0] for s in sources))
            notes.append(
                f"{method} {metric} (segmentor {segmentor}) differs between sources ({tables}); "
                "the first listed in reported.csv is shown (choose with --reported-source)"
            )
        if seen:
            notes.append(
                "reported: numbers as published (leaderboards/reported.csv), computed by each "
                "paper's own evaluation code"
            )

    # measured runs
    mixed = mixed_data(runs)
    if mixed:
        described = [_data_note(split, ids) for split, ids in mixed.items()]
        if strict:
            raise ConfigError(f"{described[0]}; tabulate runs of one data set at a time, or drop "
                              "--strict to get them as separate rows")
        notes.extend(described)
    chosen, selection_notes = select_runs(runs, all_runs)
    notes.extend(selection_notes)
    intervals: dict[str, dict[str, Any]] = {}
    if ci:
        from refbench.report.bootstrap import available_metrics, bootstrap_ci

        for group_runs in chosen.values():
            for run in group_runs.values():
                wanted = [spec.name for b in blocks for spec in block_metrics(b)]
                # a metric whose per-record fields are absent keeps its value, without interval
                present = available_metrics(run.records())
                wanted = [k for k in dict.fromkeys(wanted) if k in run.metrics["metrics"] and k in present]
                intervals[str(run.path)] = bootstrap_ci(
                    run.records(), wanted, n_resamples=n_resamples, level=level, seed=seed,
                    resample_by=resample_by,
                )
    protocols: dict[str, list[str]] = {}
    provenance: list[str] = []
    for number, group_runs in enumerate(chosen.values(), start=1):
        marker = f"m{number}"
        first = next(iter(group_runs.values()))
        provenance.append(_provenance(marker, group_runs))
        protocol = f"{first.protocol}/{first.sentences}"
        protocols.setdefault(protocol, []).append(marker)
        label = first.model
        group_data = data_id(first)
        same_model = [g for g in chosen if g[0] == first.model]
        if len({g[1:5] for g in same_model}) > 1 or (all_runs and len(same_model) > 1):
            label += f" ({first.path.name})" if all_runs else f" (config {first.config_digest[:6]})"
        if any(split in mixed for split in group_runs):
            label += f" (data {group_data or 'unrecorded'})"
        backbone = backbone_label(first.config.get("model_config") or {})
        for split, run in group_runs.items():
            values = run.metrics["metrics"]
            cis = intervals.get(str(run.path), {})
            for block in blocks:
                if block.startswith("PointM: "):
                    stats = (run.metrics.get("per_template") or {}).get(block[len("PointM: "):])
                    if isinstance(stats, dict) and stats.get("PointM") is not None:
                        fields = {"method": label, "source": "measured", "backbone": backbone,
                                  "segmentor": "no", "supervision": "weak", "protocol": protocol,
                                  "note": marker}
                        add(block, fields, split, 100 * float(stats["PointM"]))
                for spec in block_metrics(block):
                    if values.get(spec.name) is None:
                        continue
                    method = label if spec.supervision != "oracle" else f"Oracle ({first.config.get('proposals') or 'proposals'})"
                    fields = {"method": method, "source": "measured", "backbone": backbone,
                              "segmentor": spec.segmentor, "supervision": spec.supervision,
                              "protocol": protocol, "note": marker}
                    interval = cis.get(spec.name)
                    low, high = (100 * interval.low, 100 * interval.high) if interval else (math.nan, math.nan)
                    add(block, fields, split, 100 * float(values[spec.name]), low, high)
    if len(protocols) > 1:
        described = "; ".join(f"{p} ({', '.join(m)})" for p, m in protocols.items())
        if strict:
            raise ConfigError(
                f"the measured runs use different protocols: {described}; tabulate one protocol "
                "at a time, or drop --strict to get a table with a footnote"
            )
        notes.append(f"measured rows mix protocols: {described}; compare only within one protocol")

    # chance levels (SynthRef), one row per level, from the runs that carry them
    if synthetic:
        for block in blocks:
            if block != "PointM" and not block.startswith("PointM: "):
                continue
            template = block[len("PointM: "):] if block != "PointM" else None
            for group_runs in chosen.values():
                for split, run in group_runs.items():
                    for key, level_value in _chance_levels(run.metrics, template).items():
                        fields = {"method": CHANCE_LABELS.get(key, f"chance: {key}"),
                                  "source": "chance", "backbone": "-", "segmentor": "no",
                                  "supervision": "chance", "protocol": "expected", "note": ""}
                        add(block, fields, split, 100 * level_value)

    notes = provenance + notes
    board = _assemble(entries, blocks, split_ids, notes, ci)
    if ci:
        units = []
        for found in intervals.values():
            for interval in found.values():
                text = f"{interval.resample_by}s" if interval.resample_by == "image" else "expressions"
                if text not in units:
                    units.append(text)
        board.ci_units = units
    return board


def _assemble(
    entries: list[dict[str, Any]], blocks: list[str], split_ids: list[str], notes: list[str], ci: bool
) -> Leaderboard:
    columns = ROW_FIELDS + ["note"] + split_ids
    if not entries:
        empty = pd.DataFrame(columns=columns)
        return Leaderboard(empty, pd.DataFrame(columns=split_ids), split_ids, notes, ci)
    long = pd.DataFrame(entries)
    source_order = {"reported": 0, "measured": 1, "chance": 2}
    long["block_order"] = long["block"].map({b: i for i, b in enumerate(blocks)})
    long["source_order"] = long["source"].map(source_order)
    long["first_seen"] = range(len(long))
    # as the paper: full supervision first, then rows without and with a segmentor, oracles last
    long["segmentor_order"] = long["segmentor"].map({"n/a": 0, "no": 1, "yes": 2})
    long["oracle_last"] = (long["supervision"] == "oracle").astype(int)
    keys = ROW_FIELDS + ["note"]
    sort = ["block_order", "segmentor_order", "oracle_last", "source_order", "first_seen"]
    order = long.groupby(keys, sort=False)[sort].min().sort_values(sort)
    # the first value of a cell wins (a chance level seen in two runs of one split is one level)
    firsts = long.drop_duplicates(keys + ["split"])
    wide = firsts.pivot(index=keys, columns="split", values="value")
    table = wide.reindex(index=order.index, columns=split_ids).reset_index()
    if ci:
        for bound in ("low", "high"):
            extra = firsts.pivot(index=keys, columns="split", values=bound)
            extra = extra.reindex(index=order.index, columns=split_ids)
            for split in split_ids:
                table[f"{split}:{bound}"] = extra[split].to_numpy()
    table.columns.name = None
    return Leaderboard(table, rank_marks(table, split_ids), split_ids, notes, ci)


def rank_marks(table: pd.DataFrame, split_ids: Sequence[str], precision: int = 1) -> pd.DataFrame:
    """"best" / "second" per column within each (block, segmentor) group of ranked rows.

    Values are compared as printed (rounded to `precision`), so ties share a mark.
    """
    marks = pd.DataFrame("", index=table.index, columns=list(split_ids))
    ranked = table[table["supervision"].isin(RANKED_SUPERVISION)]
    for (block, _), group in ranked.groupby(["block", "segmentor"], sort=False):
        lower = block in BLOCKS and not get_metric(block).higher_is_better
        for split in split_ids:
            values = group[split].dropna().round(precision)
            distinct = sorted(set(values), reverse=not lower)
            if distinct:
                marks.loc[values.index[values == distinct[0]], split] = "best"
            if len(distinct) > 1:
                marks.loc[values.index[values == distinct[1]], split] = "second"
    return marks


# ----------------------------------------------------------------------------- rendering


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def _cells(board: Leaderboard, style: str, precision: int) -> pd.DataFrame:
    """The table as display strings (md or latex), marks and intervals applied."""
    marks = rank_marks(board.table, board.splits, precision)
    seg = {"md": {"yes": "✓", "no": "✗", "n/a": "N/A"},
           "latex": {"yes": r"\checkmark", "no": r"$\times$", "n/a": "N/A"}}[style]
    esc = latex_escape if style == "latex" else (lambda s: str(s).replace("|", r"\|"))
    rows = []
    for index, row in board.table.iterrows():
        method = esc(row["method"]) + (f" [{row['note']}]" if row["note"] else "")
        cells = {"Metric": esc(row["block"]), "Method": method, "Source": row["source"],
                 "Backbone": esc(row["backbone"]), "Segmentor": seg[row["segmentor"]],
                 "Protocol": esc(row["protocol"])}
        for split in board.splits:
            value = row[split]
            if pd.isna(value):
                cells[split] = "-"
                continue
            text = f"{value:.{precision}f}"
            mark = marks.loc[index, split]
            if mark == "best":
                text = f"**{text}**" if style == "md" else rf"\textbf{{{text}}}"
            elif mark == "second":
                text = f"<u>{text}</u>" if style == "md" else rf"\underline{{{text}}}"
            low, high = row.get(f"{split}:low", math.nan), row.get(f"{split}:high", math.nan)
            if board.has_ci and not pd.isna(low):
                if style == "md":
                    text += f" ({low:.{precision}f}–{high:.{precision}f})"
                else:
                    text += rf" {{\scriptsize ({low:.{precision}f}--{high:.{precision}f})}}"
            cells[split] = text
        rows.append(cells)
    return pd.DataFrame(rows, columns=["Metric", "Method", "Source", "Backbone", "Segmentor",
                                       "Protocol", *board.splits])


def _ci_note(board: Leaderboard) -> list[str]:
    if not board.has_ci:
        return []
    units = " or ".join(board.ci_units) or "expressions"
    return [f"measured (low–high): 95% percentile bootstrap interval, resampling {units} "
            "(images: all expressions of an image drawn together, used when an image has several)"]


def to_markdown(board: Leaderboard, precision: int = 1) -> str:
    """GitHub Markdown: a pipe table (pandas/tabulate), then the notes as a list."""
    if board.table.empty:
        raise DataError("the table is empty: no reported or measured value on the chosen splits")
    cells = _cells(board, "md", precision)
    # only the first row of a metric block names the metric
    cells.loc[cells["Metric"].duplicated(), "Metric"] = ""
    cells = cells.rename(columns={s: " ".join(split_title(s)) for s in board.splits})
    text = cells.to_markdown(index=False, disable_numparse=True, colalign=["left"] * 6 + ["right"] * len(board.splits))
    legend = "Best per column in **bold**, second <u>underlined</u> (ranked within each metric and segmentor group; full supervision, oracle and chance rows are not ranked). Values x100."
    notes = [legend, *_ci_note(board), *board.notes]
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def to_latex(board: Leaderboard, precision: int = 1, standalone: bool = False) -> str:
    """A booktabs table (needs booktabs, multirow, amssymb); `standalone` wraps it in a document."""
    if board.table.empty:
        raise DataError("the table is empty: no reported or measured value on the chosen splits")
    cells = _cells(board, "latex", precision)
    splits = board.splits
    families: list[tuple[str, int]] = []
    for split in splits:
        title = split_title(split)[0]
        if families and families[-1][0] == title:
            families[-1] = (title, families[-1][1] + 1)
        else:
            families.append((title, 1))
    fixed = ["Metric", "Method", "Source", "Backbone", "Segmentor", "Protocol"]
    lines = [
        "% refbench leaderboard: needs \\usepackage{booktabs,multirow,amssymb}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{" + "l" * len(fixed) + "c" * len(splits) + "}",
        r"\toprule",
    ]
    head = [rf"\multirow{{2}}{{*}}{{{name}}}" for name in fixed]
    rules, column = [], len(fixed) + 1
    for title, width in families:
        head.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(title)}}}")
        rules.append(rf"\cmidrule(lr){{{column}-{column + width - 1}}}")
        column += width
    lines.append(" & ".join(head) + r" \\")
    lines.append(" ".join(rules))
    lines.append(" & " * (len(fixed) - 1) + " & " + " & ".join(latex_escape(split_title(s)[1]) for s in splits) + r" \\")
    lines.append(r"\midrule")
    blocks = list(dict.fromkeys(cells["Metric"]))
    for number, block in enumerate(blocks):
        part = cells[cells["Metric"] == block]
        for position, (_, row) in enumerate(part.iterrows()):
            metric = rf"\multirow{{{len(part)}}}{{*}}{{{block}}}" if position == 0 else ""
            values = [metric] + [row[c] for c in fixed[1:]] + [row[s] for s in splits]
            lines.append(" & ".join(values) + r" \\")
        lines.append(r"\midrule" if number < len(blocks) - 1 else r"\bottomrule")
    lines.append(r"\end{tabular}")
    legend = (r"Best per column in \textbf{bold}, second \underline{underlined} (ranked within "
              r"each metric and segmentor group; full supervision, oracle and chance rows are "
              r"not ranked). Values $\times 100$.")
    notes = [legend] + [latex_escape(n).replace("–", "--") for n in _ci_note(board) + board.notes]
    lines.append(r"\par\smallskip")
    lines.append(r"{\footnotesize")
    lines.extend(note + r"\par" for note in notes)
    lines.append("}")
    lines.append(r"\end{table}")
    body = "\n".join(lines) + "\n"
    if not standalone:
        return body
    return (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{multirow}\n"
        "\\usepackage{amssymb}\n\\begin{document}\n" + body + "\\end{document}\n"
    )


def to_csv(board: Leaderboard, precision: int = 1) -> str:
    """Plain numbers (percent, rounded to `precision`) with the row fields, one column per split."""
    table = board.table.copy()
    value_columns = [c for c in table.columns if c not in ROW_FIELDS + ["note"]]
    table[value_columns] = table[value_columns].astype(float).round(precision)
    return table.to_csv(index=False, float_format=f"%.{precision}f", lineterminator="\n")
