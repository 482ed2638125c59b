"""Every evaluation split refbench knows, as data in one table.

A split id is kebab-case: ``<dataset>-<split>[-<partition>]``. `dataset` is the folder under the
data root, `split_by` names the refs file (``refs(<split_by>).p``) and `split` is the value of
the refs' ``split`` field, matched as the refer API does.
"""

from __future__ import annotations

from dataclasses import dataclass

from refbench.errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class SplitInfo:
    """One split: where its refs live and how published tables name it."""

    id: str
    dataset: str  # folder under the data root: refcoco, refcoco+, refcocog, synthref
    split_by: str  # unc, google, umd, synth
    split: str  # the refs' "split" value: train, val, test, testA, testB
    family: str  # column group in tables: refcoco, refcoco+, refcocog, synth
    column: str  # column title in tables: Val, TestA, Val (G), ...

    @property
    def refs_file(self) -> str:
        return f"refs({self.split_by}).p"

    @property
    def is_synthetic(self) -> bool:
        return self.split_by == "synth"


def _rows() -> list[SplitInfo]:
    rows: list[SplitInfo] = []
    for dataset in ("refcoco", "refcoco+"):
        for split, column in (("train", "Train"), ("val", "Val"), ("testA", "TestA"), ("testB", "TestB")):
            rows.append(SplitInfo(f"{dataset}-{split.lower()}", dataset, "unc", split, dataset, column))
    for split, column in (("train", "Train (G)"), ("val", "Val (G)")):
        rows.append(SplitInfo(f"refcocog-{split}-g", "refcocog", "google", split, "refcocog", column))
    for split, column in (("train", "Train (U)"), ("val", "Val (U)"), ("test", "Test (U)")):
        rows.append(SplitInfo(f"refcocog-{split}-u", "refcocog", "umd", split, "refcocog", column))
    for split, column in (("train", "Train"), ("val", "Val"), ("test", "Test")):
        rows.append(SplitInfo(f"synth-{split}", "synthref", "synth", split, "synth", column))
    for split, column in (("train", "Train"), ("val", "Val"), ("test", "Test")):
        rows.append(
            SplitInfo(f"synth-hard-{split}", "synthref-hard", "synth", split, "synth-hard", column)
        )
    return rows


SPLITS: dict[str, SplitInfo] = {row.id: row for row in _rows()}


def get_split(split_id: str) -> SplitInfo:
    """The split `split_id`, or an `UnknownNameError` listing the valid ids."""
    if split_id in SPLITS:
        return SPLITS[split_id]
    hint = did_you_mean(split_id, SPLITS)
    raise UnknownNameError(f"unknown split {split_id!r}.{hint} Valid splits: {', '.join(SPLITS)}")
