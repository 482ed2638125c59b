"""The ablation grid: cells -> config overrides, aggregation against hand computations, the
paper's numbers against an independently typed copy, and (slow) a 2-cell grid end to end."""

from __future__ import annotations

import math

import pytest

from refbench.demo.ablations import (
    TABLES,
    Cell,
    GridOptions,
    aggregate,
    cell_spec,
    expand_grid,
    load_reported_ablations,
    render_tables,
    run_ablations,
    speed_provenance,
    speed_value,
)
from refbench.demo.configs import ModelSpec
from refbench.errors import ConfigError


def test_grid_expands_to_the_papers_rows_with_their_switches():
    cells = expand_grid()
    assert len(cells) == 5 + 4 + 4 + 4
    by_row = {(c.table, c.row): cell_spec(c).overrides for c in cells}
    assert by_row[("Table 2", "L_cls")] == {"preset": "small", "num_stages": 1, "num_cues": 0,
                                             "modulation": "ADD", "ras": False, "iad": False}
    assert by_row[("Table 2", "+CRM")] == {"preset": "small", "ras": False, "iad": False}
    assert by_row[("Table 2", "+CRM+IaD")]["ras"] is False
    assert by_row[("Table 2", "+CRM+IaD")]["iad"] is True
    assert by_row[("Table 3", "N=1")] == {"preset": "small", "num_stages": 1, "num_cues": 1,
                                          "ras": False}
    assert by_row[("Table 3", "N=4")] == {"preset": "small", "num_stages": 4, "num_cues": 4}
    assert [by_row[("Table 4", m)]["modulation"] for m in ("ADD", "TTA", "VTA+ADD", "VTA+TTA")] \
        == ["ADD", "TTA", "VTA+ADD", "VTA+TTA"]
    assert [by_row[("Table 5", f"N_d={d}")]["num_distinct"] for d in range(4)] == [0, 1, 2, 3]
    assert [c.row for c in expand_grid(["3"])] == ["N=1", "N=2", "N=3", "N=4"]
    assert len(expand_grid(["table4", "Table 5"])) == 8
    labels = [c.label for c in cells]
    assert len(set(labels)) == len(labels) and all("/" not in x for x in labels)
    with pytest.raises(ConfigError, match="--only '7'"):
        expand_grid(["7"])


def test_every_cell_builds_a_valid_pcnet_config():
    from refbench_pcnet.model import PCNet

    for cell in expand_grid():
        config = PCNet.from_config(cell_spec(cell).overrides).config
        for key, value in cell.overrides.items():
            assert config[key] == value


def _records(hits: list[int], inter: list[int], union: list[int]) -> list[dict]:
    return [{"key": f"{i}", "point_hit": h, "inter": a, "union": b}
            for i, (h, a, b) in enumerate(zip(hits, inter, union))]


def test_aggregation_matches_a_hand_computation():
    cell = Cell("Table 3", "N=2", {"num_stages": 2})
    first = _records([1] * 100, [3] * 100, [4] * 100)  # PointM 1, mIoU .75, oIoU .75
    second = _records([0] * 100, [1] * 100, [4] * 100)  # PointM 0, mIoU .25, oIoU .25
    per_seed = [(0, {"PointM": 1.0, "mIoU": 0.75, "oIoU": 0.75}, first),
                (1, {"PointM": 0.0, "mIoU": 0.25, "oIoU": 0.25}, second)]
    result = aggregate(cell, per_seed)
    assert result.seeds == [0, 1]
    assert result.mean["PointM"] == pytest.approx(0.5)
    assert result.mean["mIoU"] == pytest.approx(0.5)
    # sample std of {1, 0}: sqrt(((1-.5)^2 + (0-.5)^2) / (2-1))
    assert result.std["PointM"] == pytest.approx(math.sqrt(0.5))
    assert result.std["oIoU"] == pytest.approx(math.sqrt((0.25**2 + 0.25**2) / 1))
    # pooled: 200 expressions, half hits -> the 95% interval is about 0.5 +- 2*sqrt(.25/200)
    low, high = result.ci["PointM"]
    assert 0.40 < low < 0.5 < high < 0.60
    one = aggregate(cell, per_seed[:1])
    assert one.std["PointM"] == 0.0 and one.ci["PointM"] == (1.0, 1.0)


def test_reported_ablations_match_an_independent_copy():
    # typed again from the PCNet paper (Yang et al., NeurIPS 2024), Tables 2-5
    reported = load_reported_ablations()
    assert reported[("Table 2", "L_cls", "PointM")] == "51.7"
    assert reported[("Table 2", "+CRM", "mIoU")] == "26.8"
    assert reported[("Table 2", "all", "PointM")] == "S 58.6 / F 57.9"
    assert reported[("Table 2", "+CRM+RaS", "oIoU")] == "S 29.6 / F 28.5"
    assert reported[("Table 3", "N=4", "PointM")] == "56.7"
    assert reported[("Table 3", "N=1", "mIoU")] == "27.4"
    assert reported[("Table 4", "TTA", "oIoU")] == "29.1"
    assert reported[("Table 4", "ADD", "PointM")] == "56.3"
    assert reported[("Table 5", "N_d=0", "PointM")] == "56.4"
    assert reported[("Table 5", "N_d=3", "mIoU")] == "29.7"
    # every cell of the grid has the paper's three metrics beside it
    for cell in expand_grid():
        for metric in ("PointM", "mIoU", "oIoU"):
            assert (cell.table, cell.row, metric) in reported


def test_rendered_table_holds_ours_and_the_papers():
    cell = TABLES["Table 4"][0]
    result = aggregate(cell, [(0, {"PointM": 0.5, "mIoU": 0.2, "oIoU": 0.3},
                               _records([1, 0], [1, 1], [5, 5]))])
    md, tex = render_tables([result], ["command: test"], load_reported_ablations())
    assert "| ADD | 1 | 50.0 ± 0.0" in md and "| 56.3 |" in md
    assert "command: test" in md and r"\toprule" in tex and "56.3" in tex


def test_speed_provenance_tells_old_and_new_measurements_apart():
    new = {"samples_per_s": 72.0, "host": "vm", "measured": "2026-12-01 12:03"}
    later = {"samples_per_s": 44.0, "host": "vm", "measured": "2026-12-01 12:30"}
    assert speed_value(new) == 72.0 and speed_value(110.5) == 110.5
    assert speed_provenance([new]) == ("speeds of the 1 trained models: 1 measured "
                                       "2026-12-01 12:03 on vm")
    line = speed_provenance([later, 110.5, new])
    assert "2 measured 2026-12-01 12:03 to 2026-12-01 12:30 on vm" in line
    assert "1 read from an earlier speed.json without a date" in line


@pytest.mark.slow
def test_two_cell_grid_end_to_end(tmp_path):
    from refbench.synth import generate

    root = tmp_path / "data"
    generate(root, images={"train": 16, "val": 4, "test": 4})
    base = ModelSpec("pcnet", "pcnet", {"preset": "small", "batch_size": 4, "warmup_steps": 0,
                                        "hidden_dim": 16}, epochs=1, max_steps=2)
    # Table 3's N=3 is the preset, i.e. Table 2's "all": one model, trained once
    cells = (TABLES["Table 3"][0], TABLES["Table 2"][4], TABLES["Table 3"][2])
    options = GridOptions(seeds=1, work_dir=tmp_path / "work", out_dir=tmp_path / "lb",
                          data_root=root, base=base, cells=cells, progress=False,
                          budget_minutes=0.05)
    results = run_ablations(options)
    assert [r.cell.row for r in results] == ["N=1", "all", "N=3"]
    assert len(list((tmp_path / "work" / "train").iterdir())) == 2
    assert results[2].run_dirs == results[1].run_dirs
    assert results[2].values == results[1].values and results[2].shares_runs_of == cells[1]
    assert results[1].shares_runs_of is None
    md = (tmp_path / "lb" / "synthref-ablations.md").read_text()
    assert "| N=1 | 1 |" in md and "| all | 1 |" in md and "| N=3 (= Table 2 all) | 1 |" in md
    # 0.05 min over 2 distinct cells x 1 seed: 1.5 s of training each
    assert "budget 0.05 min" in md and "(2 s of training each" in md
    assert "speeds of the 2 trained models: 2 measured" in md
    assert (tmp_path / "lb" / "synthref-ablations.tex").is_file()
    again = run_ablations(options)  # every cell's run exists: nothing is trained again
    assert [r.run_dirs for r in again] == [r.run_dirs for r in results]
