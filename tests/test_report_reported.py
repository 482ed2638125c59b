"""leaderboards/reported.csv against an independently typed copy of rows of PCNet Tables 1 and 6."""

from __future__ import annotations

from pathlib import Path

import pytest

from refbench.data.splits import SPLITS
from refbench.report.reported import COLUMNS, load_reported

CSV = Path(__file__).resolve().parents[1] / "leaderboards" / "reported.csv"

# Typed by hand from the paper text (pcnet-paper.txt lines 136-157 and 388-408), not from the CSV:
# (method, segmentor, metric, split, table) -> value
TYPED = {
    ("GroupViT", "no", "PointM", "refcoco-val", "Table 1"): 25.0,
    ("SAG", "no", "PointM", "refcoco-testb", "Table 1"): 51.0,
    ("PCNet_S", "no", "PointM", "refcocog-test-u", "Table 1"): 57.4,
    ("LAVT", "n/a", "mIoU", "refcoco+-testa", "Table 1"): 70.9,
    ("TSEG", "no", "mIoU", "refcocog-val-g", "Table 1"): 22.1,
    ("PPT", "yes", "mIoU", "refcoco-testb", "Table 1"): 46.3,
    ("PCNet_S", "yes", "mIoU", "refcoco-val", "Table 1"): 52.2,
    ("PCNet_S", "yes", "mIoU", "refcoco-val", "Table 6"): 48.6,
    ("Oracle", "yes", "mIoU", "refcoco+-testb", "Table 6"): 68.2,
    ("SAG", "no", "oIoU", "refcoco-val", "Table 6"): 29.7,
    ("TRIS", "yes", "oIoU", "refcocog-val-u", "Table 6"): 39.4,
    ("PCNet_F", "no", "oIoU", "refcoco-testa", "Table 6"): 33.9,
    ("Oracle", "yes", "oIoU", "refcocog-test-u", "Table 6"): 67.6,
    ("WWbL", "no", "PointM", "refcoco+-testb", "Table 1"): 36.1,
    ("CLIP", "yes", "mIoU", "refcoco+-val", "Table 6"): 39.2,
}
# cells the paper prints as "-": they must not appear in the file
ABSENT = [
    ("TSEG", "mIoU", "refcoco-testa"),
    ("SAG", "PointM", "refcocog-val-u"),
    ("PPT", "mIoU", "refcocog-test-u"),
]


@pytest.fixture(scope="module")
def reported():
    return load_reported(CSV)


def test_columns_and_split_ids(reported) -> None:
    assert list(reported.columns) == COLUMNS
    assert set(reported["split"]) <= set(SPLITS)
    assert set(reported["metric"]) == {"PointM", "mIoU", "oIoU"}


def test_typed_rows_match(reported) -> None:
    for (method, segmentor, metric, split, table), value in TYPED.items():
        rows = reported[
            (reported["method"] == method)
            & (reported["segmentor"] == segmentor)
            & (reported["metric"] == metric)
            & (reported["split"] == split)
            & reported["source"].str.startswith(f"PCNet (NeurIPS 2024) {table}")
        ]
        assert len(rows) == 1, (method, metric, split, table)
        assert rows["value"].iloc[0] == pytest.approx(value), (method, metric, split, table)


def test_counts_per_table(reported) -> None:
    # Table 1: 22 rows x 9 splits, 14 cells printed as "-"; Table 6: 21 rows x 9, 14 "-"
    table1 = reported["source"].str.startswith("PCNet (NeurIPS 2024) Table 1")
    table6 = reported["source"].str.startswith("PCNet (NeurIPS 2024) Table 6")
    assert int(table1.sum()) == 22 * 9 - 14
    assert int(table6.sum()) == 21 * 9 - 14
    assert int((table1 | table6).sum()) == len(reported)


def test_missing_cells_absent_and_cells_unique(reported) -> None:
    for method, metric, split in ABSENT:
        rows = reported[(reported["method"] == method) & (reported["metric"] == metric)
                        & (reported["split"] == split)]
        assert rows.empty
    keys = ["method", "backbone", "segmentor", "supervision", "metric", "split", "source"]
    assert not reported.duplicated(keys).any()


def test_supervision_and_citations(reported) -> None:
    lavt = reported[reported["method"] == "LAVT"]
    assert set(lavt["supervision"]) == {"full"} and set(lavt["segmentor"]) == {"n/a"}
    assert set(reported[reported["method"] == "Oracle"]["supervision"]) == {"oracle"}
    tris = reported[reported["method"] == "TRIS"]
    assert tris["source"].str.contains("ICCV 2023").all()
