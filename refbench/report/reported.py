"""Numbers reported in papers, read from ``leaderboards/reported.csv``.

Columns: method, backbone, segmentor (yes / no / n/a), supervision (weak / full / oracle),
metric (a leaderboard block, `refbench.metrics.table.BLOCKS`), split (a split id), value (percent, as printed), source (paper and table).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from refbench.data.splits import SPLITS
from refbench.errors import DataError
from refbench.metrics.table import BLOCKS

COLUMNS = ["method", "backbone", "segmentor", "supervision", "metric", "split", "value", "source"]
SEGMENTOR_VALUES = {"yes", "no", "n/a"}
SUPERVISION_VALUES = {"weak", "full", "oracle"}


def default_reported_path() -> Path:
    """``leaderboards/reported.csv`` in the working folder, else beside the refbench sources."""
    here = Path("leaderboards") / "reported.csv"
    if here.is_file():
        return here
    return Path(__file__).resolve().parents[2] / "leaderboards" / "reported.csv"


def load_reported(path: str | Path | None = None) -> pd.DataFrame:
    """The reported numbers as a DataFrame with `COLUMNS`; malformed rows are a `DataError`."""
    path = Path(path) if path is not None else default_reported_path()
    if not path.is_file():
        raise DataError(f"reported numbers file {path} does not exist; pass --reported-csv PATH")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV ({error})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
    frame = frame[COLUMNS].copy()
    for number, row in enumerate(frame.itertuples(index=False), start=2):
        where = f"{path} line {number}"
        if row.metric not in BLOCKS:
            raise DataError(f"{where}: unknown metric {row.metric!r}; use one of {', '.join(BLOCKS)}")
        if row.split not in SPLITS:
            raise DataError(f"{where}: unknown split {row.split!r}")
        if row.segmentor not in SEGMENTOR_VALUES:
            raise DataError(f"{where}: segmentor must be one of {sorted(SEGMENTOR_VALUES)}")
        if row.supervision not in SUPERVISION_VALUES:
            raise DataError(f"{where}: supervision must be one of {sorted(SUPERVISION_VALUES)}")
        try:
            float(row.value)
        except ValueError:
            raise DataError(f"{where}: value {row.value!r} is not a number") from None
    frame["value"] = frame["value"].astype(float)
    return frame
