"""Data: the splits table, the refer-format reader, images and transforms."""

from refbench.data.splits import SPLITS, SplitInfo, get_split

__all__ = ["SPLITS", "SplitInfo", "get_split"]
