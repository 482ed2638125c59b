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
    PROTOCOL_DESCRIPTIONS,
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
