"""Leaderboards: golden Markdown/LaTeX, rank marks checked by hand, run selection, SynthRef rows."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from refbench.cli import cli, main
from refbench.errors import ConfigError, DataError
from refbench.report.leaderboard import build_leaderboard, to_csv, to_latex, to_markdown
from refbench.report.reported import load_reported
from refbench.report.runs import find_runs
from tests.report_fixture import make_records, write_run

GOLDEN = Path(__file__).parent / "golden"

REPORTED_CSV = """method,backbone,segmentor,supervision,metric,split,value,source
TRIS,ResNet-50,no,weak,PointM,refcoco-val,51.9,"Paper X Table 1"
PCNet_S,ResNet-50,no,weak,PointM,refcoco-val,60.0,"Paper X Table 1"
PCNet_S,ResNet-50,no,weak,PointM,refcocog-val-u,57.9,"Paper X Table 1"
TRIS,ResNet-50,no,weak,PointM,refcocog-val-u,51.9,"Paper X Table 1"
LAVT,Swin-Base,n/a,full,mIoU,refcoco-val,72.7,"Paper X Table 1"
TRIS,ResNet-50,no,weak,mIoU,refcoco-val,25.1,"Paper X Table 1"
PCNet_S,ResNet-50,yes,weak,mIoU,refcoco-val,52.2,"Paper X Table 1"
PCNet_S,ResNet-50,yes,weak,mIoU,refcoco-val,48.6,"Paper X Table 6"
Oracle,ResNet-50,yes,oracle,mIoU,refcoco-val,72.7,"Paper X Table 1"
TRIS,ResNet-50,no,weak,oIoU,refcoco-val,23.7,"Paper X Table 6"
"""


def make_fixed_runs(root: Path) -> Path:
    """Fixed run folders: center (an older and a newer run on refcoco-val, with proposals), toy."""
    records = make_records(30, 0.6, seed=0)
    write_run(root, "center", "refcoco-val", records, name="20240401-090000_0000aaa",
              started_at="2024-04-01T09:00:00",
              metrics={"PointM": 0.5, "mIoU": 0.2, "oIoU": 0.2})
    newest = write_run(root, "center", "refcoco-val", records, name="20240501-120000_abc1234",
                       metrics={"PointM": 0.612, "mIoU": 0.3013, "oIoU": 0.289,
                                "PropMIoU": 0.41, "PropOIoU": 0.4, "OracleMIoU": 0.7,
                                "OracleOIoU": 0.69})
    config = newest / "config.json"
    config.write_text(config.read_text().replace('"proposals": null', '"proposals": "sam"'))
    write_run(root, "toy", "refcoco-val", records, metrics={"PointM": 0.58, "mIoU": 0.27, "oIoU": 0.25},
              model_config={"input_size": 32, "backbone": "RN50"})
    write_run(root, "toy", "refcocog-val-u", records,
              metrics={"PointM": 0.55, "mIoU": 0.262, "oIoU": 0.25},
              model_config={"input_size": 32, "backbone": "RN50"})
    (root / "reported.csv").write_text(REPORTED_CSV)
    return root


@pytest.fixture
def board_inputs(tmp_path):
    root = make_fixed_runs(tmp_path)
    return find_runs([root / "runs"]), load_reported(root / "reported.csv")


def _board(board_inputs, **kwargs):
    runs, reported = board_inputs
    return build_leaderboard(runs, reported, splits=["refcoco", "refcocog"], **kwargs)


def test_markdown_golden(board_inputs) -> None:
    text = to_markdown(_board(board_inputs))
    assert text == (GOLDEN / "leaderboard.md").read_text(encoding="utf-8")


def test_latex_golden(board_inputs) -> None:
    text = to_latex(_board(board_inputs))
    assert text == (GOLDEN / "leaderboard.tex").read_text(encoding="utf-8")


def _md_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_marks_by_hand(board_inputs) -> None:
    rows = _md_rows(to_markdown(_board(board_inputs)))
    header = ["Metric", "Method", "Source", "Backbone", "Segmentor", "Protocol"]
    val = len(header)  # RefCOCO Val column
    cells = {}
    metric = ""
    for row in rows:
        metric = row[0] or metric
        cells[(metric, row[1], row[4])] = row[val]
    # PointM / RefCOCO Val: center 61.2 > PCNet_S 60.0 > toy 58.0 > TRIS 51.9
    assert cells[("PointM", "center [m1]", "✗")] == "**61.2**"
    assert cells[("PointM", "PCNet_S", "✗")] == "<u>60.0</u>"
    assert cells[("PointM", "toy [m2]", "✗")] == "58.0"
    assert cells[("PointM", "TRIS", "✗")] == "51.9"
    # mIoU without segmentor: center 30.1 > toy 27.0 > TRIS 25.1; LAVT (full) unranked
    assert cells[("mIoU", "center [m1]", "✗")] == "**30.1**"
    assert cells[("mIoU", "toy [m2]", "✗")] == "<u>27.0</u>"
    assert cells[("mIoU", "LAVT", "N/A")] == "72.7"
    # mIoU with segmentor, ranked apart: PCNet_S 52.2 (Table 1 wins) > center's proposals 41.0
    assert cells[("mIoU", "PCNet_S", "✓")] == "**52.2**"
    assert cells[("mIoU", "center [m1]", "✓")] == "<u>41.0</u>"
    assert cells[("mIoU", "Oracle", "✓")] == "72.7"
    assert cells[("mIoU", "Oracle (sam) [m1]", "✓")] == "70.0"
    # one value in a column is the best; a missing value is "-"
    assert cells[("oIoU", "TRIS", "✗")] == "23.7"
    refcocog_u = val + 3 + 1
    toy_row = next(r for r in rows if r[1] == "toy [m2]")
    assert toy_row[refcocog_u] == "<u>55.0</u>" and toy_row[val + 1] == "-"


def test_ties_share_a_mark(tmp_path) -> None:
    records = make_records(5, 0.5, seed=0)
    write_run(tmp_path, "a", "refcoco-val", records, metrics={"PointM": 0.5004})
    write_run(tmp_path, "b", "refcoco-val", records, metrics={"PointM": 0.4996})
    write_run(tmp_path, "c", "refcoco-val", records, metrics={"PointM": 0.3})
    board = build_leaderboard(find_runs([tmp_path]), None, metrics=["PointM"], splits=["refcoco-val"])
    rows = _md_rows(to_markdown(board))
    assert [r[-1] for r in rows] == ["**50.0**", "**50.0**", "<u>30.0</u>"]
    rows2 = _md_rows(to_markdown(board, precision=2))
    assert [r[-1] for r in rows2] == ["**50.04**", "<u>49.96</u>", "30.00"]


def test_newest_run_is_taken_and_said(board_inputs) -> None:
    board = _board(board_inputs)
    assert any("2 runs of center on refcoco-val" in n and "20240501-120000_abc1234" in n for n in board.notes)
    every = _board(board_inputs, all_runs=True)
    methods = set(every.table[every.table["block"] == "PointM"]["method"])
    assert {"center (20240401-090000_0000aaa)", "center (20240501-120000_abc1234)"} <= methods


def test_conflicting_reported_sources_are_footnoted(board_inputs) -> None:
    notes = _board(board_inputs).notes
    assert any("PCNet_S mIoU (segmentor yes) differs" in n for n in notes)


def test_provenance_on_measured_rows(board_inputs) -> None:
    notes = _board(board_inputs).notes
    center = next(n for n in notes if n.startswith("[m1]"))
    for part in ("center", "plugin refbench 0.1.0", "checkpoint none", "protocol tris",
                 "sentences all", "git abc1234", "proposals sam"):
        assert part in center


def test_mixed_protocols_footnote_or_refusal(tmp_path) -> None:
    records = make_records(5, 0.5, seed=0)
    write_run(tmp_path, "a", "refcoco-val", records, protocol="tris")
    write_run(tmp_path, "b", "refcoco-val", records, protocol="sag")
    runs = find_runs([tmp_path])
    board = build_leaderboard(runs, None, splits=["refcoco"])
    assert any("mix protocols" in n and "tris/all" in n and "sag/all" in n for n in board.notes)
    with pytest.raises(ConfigError, match="different protocols"):
        build_leaderboard(runs, None, splits=["refcoco"], strict=True)


def test_unfinished_run_is_refused_by_name(tmp_path, capsys) -> None:
    folder = write_run(tmp_path, "a", "refcoco-val", make_records(5, 0.5, seed=0), write_metrics=False)
    assert main(["leaderboard", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "refbench score" in err
    with pytest.raises(DataError):
        find_runs([folder])


def test_ci_cells(tmp_path) -> None:
    records = make_records(80, 0.6, seed=4)
    write_run(tmp_path, "a", "refcoco-val", records)
    board = build_leaderboard(find_runs([tmp_path]), None, metrics=["PointM"],
                              splits=["refcoco-val"], ci=True, n_resamples=200)
    cell = _md_rows(to_markdown(board))[0][-1]
    match = re.fullmatch(r"\*\*(\d+\.\d)\*\* \((\d+\.\d)–(\d+\.\d)\)", cell)
    assert match, cell
    value, low, high = (float(g) for g in match.groups())
    assert low <= value <= high and value == pytest.approx(100 * sum(r["point_hit"] for r in records) / 80, abs=0.05)


def test_synth_blocks_and_chance_rows(tmp_path) -> None:
    records = make_records(10, 0.5, seed=0, template="attribute")
    chance = {"overall": {"random_point": 0.1, "random_object": 0.25, "shape_only": 0.4,
                          "colour_shape_only": 0.6},
              "per_template": {"attribute": {"random_object": 0.3, "sentences": 10}}}
    write_run(tmp_path, "center", "synth-test", records,
              metrics={"PointM": 0.35, "mIoU": 0.2, "oIoU": 0.2, "BackgroundPeaks": 0.25},
              extra={"per_template": {"attribute": {"n": 10, "PointM": 0.5, "mIoU": 0.3}},
                     "chance": chance})
    board = build_leaderboard(find_runs([tmp_path]), None, splits=["synth"])
    table = board.table
    assert board.splits == ["synth-val", "synth-test"]
    assert list(dict.fromkeys(table["block"])) == ["PointM", "mIoU", "oIoU", "BackgroundPeaks",
                                                   "PointM: attribute"]
    chance_rows = table[(table["block"] == "PointM") & (table["source"] == "chance")]
    assert dict(zip(chance_rows["method"], chance_rows["synth-test"])) == pytest.approx({
        "chance: random point": 10.0, "chance: random object": 25.0,
        "chance: shape oracle": 40.0, "chance: colour+shape oracle": 60.0})
    template_rows = table[table["block"] == "PointM: attribute"]
    assert dict(zip(template_rows["method"], template_rows["synth-test"])) == pytest.approx(
        {"center": 50.0, "chance: random object": 30.0})
    rows = _md_rows(to_markdown(board))
    # chance rows are references: never bold, and the measured row is the only ranked one
    assert all("**" not in r[-1] for r in rows if r[1].startswith("chance"))
    assert ("BackgroundPeaks", "25.0") in [(r[0], r[-1].strip("*")) for r in rows]


def test_csv_and_cli_out(tmp_path) -> None:
    root = make_fixed_runs(tmp_path)
    out = tmp_path / "board.csv"
    result = CliRunner().invoke(cli, ["leaderboard", str(root / "runs"), "--reported-csv",
                                      str(root / "reported.csv"), "--splits", "refcoco,refcocog",
                                      "--metric", "PointM", "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("block,method,source,backbone,segmentor,supervision,protocol,note,refcoco-val")
    center = next(line for line in lines if line.startswith("PointM,center,"))
    assert center.split(",")[8] == "61.2"
    board = build_leaderboard(find_runs([root / "runs"]), None, metrics=["PointM"], splits=["refcoco"])
    assert to_csv(board) .count("\n") == 3  # header + center + toy


def _check_latex_structure(text: str, columns: int) -> None:
    spec = re.search(r"\\begin\{tabular\}\{([lc]+)\}", text)
    assert spec and len(spec.group(1)) == columns
    assert text.count(r"\toprule") == 1 and text.count(r"\bottomrule") == 1
    body = text[text.index(r"\midrule"): text.index(r"\bottomrule")]
    rows = [line for line in body.splitlines() if line.endswith(r"\\")]
    for row in rows:
        assert len(re.findall(r"(?<!\\)&", row)) == columns - 1, row
    for match in re.finditer(r"\\multirow\{(\d+)\}\{\*\}\{([^}]*)\}", body):
        block_rows = body[match.start():].split(r"\midrule")[0]
        assert block_rows.count(r"\\") == int(match.group(1)), match.group(2)
    assert text.count("{") == text.count("}") + text.count(r"\{") - text.count(r"\}")


def test_latex_structure_and_compiles(board_inputs, tmp_path) -> None:
    board = _board(board_inputs, ci=True, n_resamples=50)
    text = to_latex(board, standalone=True)
    _check_latex_structure(text, columns=6 + 6)
    assert "\\usepackage{booktabs}" in text and "\\usepackage{multirow}" in text
    if shutil.which("pdflatex"):
        (tmp_path / "table.tex").write_text(text)
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]
        assert (tmp_path / "table.pdf").stat().st_size > 1000


def test_small_random_backbones_are_marked_apart_from_real_ones():
    from refbench.report.leaderboard import backbone_label

    assert backbone_label({"backbone": "RN50"}) == "RN50"
    assert backbone_label({"backbone": "RN50", "preset": "small"}) == "RN50-small"
    assert backbone_label({"arch": "RN50", "small_backbone": True}) == "RN50-small"
    assert backbone_label({}) == "-"
