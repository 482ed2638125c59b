"""Published sizes of the RefCOCO-family splits: referred objects (refs) and sentences.

Sources (also in docs/data.md): object counts per split from the TensorFlow Datasets
``ref_coco`` builder's statistics table (computed from the refer files); sentence counts for
RefCOCO from FlagEval's dataset card. RefCOCO+ and RefCOCOg sentence counts are the values
usually quoted from the data-set papers (Yu et al. 2016; Mao et al. 2016; Nagaraja et al.
2016); they are cross-checked by their totals (RefCOCO+ sums to the 141,564 expressions Yu et
al. report; the Google and UMD partitions of RefCOCOg sum to the same 49,822 objects and
95,010 sentences).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedCount:
    """How many refs (referred objects) and sentences a split has in the released files."""

    refs: int
    sentences: int


# split id (refbench.data.splits) -> published counts
PUBLISHED: dict[str, PublishedCount] = {
    "refcoco-train": PublishedCount(42404, 120624),
    "refcoco-val": PublishedCount(3811, 10834),
    "refcoco-testa": PublishedCount(1975, 5657),
    "refcoco-testb": PublishedCount(1810, 5095),
    "refcoco+-train": PublishedCount(42278, 120191),
    "refcoco+-val": PublishedCount(3805, 10758),
    "refcoco+-testa": PublishedCount(1975, 5726),
    "refcoco+-testb": PublishedCount(1798, 4889),
    "refcocog-train-g": PublishedCount(44822, 85474),
    "refcocog-val-g": PublishedCount(5000, 9536),
    "refcocog-train-u": PublishedCount(42226, 80512),
    "refcocog-val-u": PublishedCount(2573, 4896),
    "refcocog-test-u": PublishedCount(5023, 9602),
}
