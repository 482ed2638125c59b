"""Protocol table: names, lookup errors, and that `refbench list` can read it without torch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refbench.errors import UnknownNameError
from refbench.metrics.protocols import (
    BOX_RULES,
    GT_OVERLAPS,
    PROTOCOL_DESCRIPTIONS,
    PROTOCOLS,
    SENTENCE_MODES,
    Protocol,
    check_sentence_mode,
    get_protocol,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_protocol_names_and_descriptions():
    assert set(PROTOCOL_DESCRIPTIONS) == {"tris", "sag"}
    assert all(isinstance(text, str) and text for text in PROTOCOL_DESCRIPTIONS.values())
    assert SENTENCE_MODES == ("all", "first")


def test_tris_constants_match_the_released_code():
    tris = get_protocol("tris")
    # TRIS/PCNet validate.py: F.interpolate(..., align_corners=True), pred /= max + 1e-5,
    # pred.gt(1e-9); the model's forward ends in F.relu.
    assert (tris.clamp_negative, tris.align_corners) == (True, True)
    assert (tris.normalisation, tris.epsilon) == ("max", 1e-5)
    assert (tris.threshold, tris.inclusive) == (1e-9, False)


def test_sag_constants():
    sag = get_protocol("sag")
    assert (sag.clamp_negative, sag.align_corners, sag.normalisation) == (False, False, "minmax")
    assert (sag.threshold, sag.inclusive) == (0.5, True)


def test_box_and_ground_truth_rules():
    tris, sag = get_protocol("tris"), get_protocol("sag")
    # TRIS: dataset/ReferDataset.py casts the box to int, validate.py's isCorrectHit tests the
    # peak's indices in the closed box; refer.py's getMask sums the polygons and
    # ReferDataset.py keeps mask == 1.
    assert (tris.box_rule, tris.gt_overlap) == ("integer", "once")
    # SaG: build_batches.py takes the max over polygons (the union); it reports no box hit,
    # so refbench's pixel-centre rule stays.
    assert (sag.box_rule, sag.gt_overlap) == ("centre", "union")
    assert BOX_RULES == ("centre", "integer") and GT_OVERLAPS == ("union", "once")
    for protocol in PROTOCOLS.values():
        assert protocol.box_rule in BOX_RULES and protocol.gt_overlap in GT_OVERLAPS


def test_descriptions_state_both_rules_and_their_sources():
    tris, sag = PROTOCOL_DESCRIPTIONS["tris"], PROTOCOL_DESCRIPTIONS["sag"]
    for phrase in ("truncated to integers", "isCorrectHit", "exactly one polygon", "getMask",
                   "ReferDataset.py"):
        assert phrase in tris, phrase
    for phrase in ("union", "build_batches.py", "pixel centre", "no box hit"):
        assert phrase in sag, phrase
    assert "dataset/refer.py" in get_protocol("tris").source
    assert "build_batches.py" in get_protocol("sag").source


def test_protocol_is_frozen_and_passes_through():
    tris = get_protocol("tris")
    assert get_protocol(tris) is tris
    assert isinstance(tris, Protocol)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tris.threshold = 0.3  # type: ignore[misc]


def test_unknown_protocol_lists_valid_names_and_hints():
    with pytest.raises(UnknownNameError) as caught:
        get_protocol("triss")
    message = str(caught.value)
    assert "'triss'" in message and "tris, sag" in message and "Did you mean 'tris'" in message
    assert "\n" not in message


def test_sentence_mode_check():
    assert check_sentence_mode("first") == "first"
    with pytest.raises(UnknownNameError, match="all, first"):
        check_sentence_mode("last")


def test_importing_protocols_does_not_import_torch_or_numpy():
    code = (
        "import json, sys\n"
        "import refbench.metrics.protocols as p\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'numpy': 'numpy' in sys.modules,"
        " 'names': sorted(p.PROTOCOL_DESCRIPTIONS)}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "numpy": False, "names": ["sag", "tris"]}
