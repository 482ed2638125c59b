"""`refbench list`: models with their distributions, every split, protocols — without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from refbench.data.splits import SPLITS

ROOT = Path(__file__).resolve().parents[1]


def test_list_shows_models_splits_and_protocols_without_importing_torch():
    code = (
        "import sys; from refbench.cli import main; code = main(['list']); "
        "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-FREE'); sys.exit(code)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.rstrip().endswith("TORCH-FREE")
    assert "refbench.baselines:CenterPriorModel" in out
    for split_id in SPLITS:
        assert split_id in out
    assert "tris" in out and "sag" in out and "align_corners" in out


def test_unknown_command_exits_2_with_a_one_line_error():
    from refbench.cli import main

    assert main(["evaluate"]) == 2
