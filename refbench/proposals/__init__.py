"""Class-agnostic mask proposals (PCNet Sec. 3.3, appendix D): backends, post-processing, cache.

Proposals are computed once per refs file (``<dataset>-<split_by>``) and kept on disk as COCO RLE
at the original image size; `ProposalStore.load` gives a [P, H, W] bool tensor at any size.
"""

from __future__ import annotations

from typing import Any

from refbench.errors import UnknownNameError, did_you_mean
from refbench.proposals.importers import import_pcnet_proposals, import_sam_rle_folder
from refbench.proposals.oracle import oracle_scores
from refbench.proposals.postprocess import (
    PAPER_MIN_AREA,
    SYNTH_FELZENSZWALB,
    SYNTH_MIN_AREA_FRACTION,
    default_min_area,
    default_options,
    postprocess,
    postprocess_rles,
)
from refbench.proposals.store import ProposalStore, load_proposals

BACKENDS = ("felzenszwalb", "sam")

__all__ = [
    "BACKENDS",
    "PAPER_MIN_AREA",
    "check_backend_name",
    "SYNTH_FELZENSZWALB",
    "SYNTH_MIN_AREA_FRACTION",
    "ProposalStore",
    "default_min_area",
    "default_options",
    "get_backend",
    "import_pcnet_proposals",
    "import_sam_rle_folder",
    "load_proposals",
    "oracle_scores",
    "postprocess",
    "postprocess_rles",
]


def check_backend_name(dataset: Any, name: str) -> str:
    """`name` when it is a proposal backend or names proposals stored for `dataset`; a near
    miss of a backend (``felzenswalb``) is an `UnknownNameError` saying the right name."""
    from refbench.errors import DataError

    if name in BACKENDS:
        return name
    try:
        load_proposals(dataset, name)
    except DataError:
        hint = did_you_mean(name, BACKENDS, n=1, cutoff=0.6)
        if not hint:
            raise  # its message says how to build or import proposals under that name
        raise UnknownNameError(
            f"unknown proposal backend {name!r}.{hint} Valid backends: "
            f"{', '.join(BACKENDS)} (or the name proposals were imported under)"
        ) from None
    return name


def get_backend(name: str, **options: Any):
    """The proposal backend `name` ("felzenszwalb" or "sam") built with `options`."""
    if name == "felzenszwalb":
        from refbench.proposals.felzenszwalb import FelzenszwalbBackend

        return FelzenszwalbBackend(**options)
    if name == "sam":
        from refbench.proposals.sam import SamBackend

        return SamBackend(**options)
    hint = did_you_mean(name, BACKENDS, n=1)
    raise UnknownNameError(f"unknown proposal backend {name!r}.{hint} Valid: {', '.join(BACKENDS)}")
