"""Pieces of `refbench train` that need no model: resume folders, config files, cue building."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refbench.cli.train import false_negative_mask, find_resume_dir, read_config_file
from refbench.cues import ensure_cues
from refbench.errors import CheckpointError, ConfigError, DataError


def test_resume_finds_the_newest_run_with_a_checkpoint(tmp_path: Path) -> None:
    parent = tmp_path / "tiny" / "synth-train"
    for name, has_ckpt in (("20250101-000000_abc", True), ("20250102-000000_abc", True),
                           ("20250103-000000_abc", False)):
        (parent / name).mkdir(parents=True)
        if has_ckpt:
            (parent / name / "last.pt").write_bytes(b"x")
    assert find_resume_dir(tmp_path, "tiny", "synth-train", "latest").name == "20250102-000000_abc"
    explicit = parent / "20250101-000000_abc"
    assert find_resume_dir(tmp_path, "tiny", "synth-train", str(explicit)) == explicit
    assert find_resume_dir(tmp_path, "tiny", "synth-train", str(explicit / "last.pt")) == explicit
    with pytest.raises(CheckpointError, match="20250103-000000_abc/last.pt does not exist"):
        find_resume_dir(tmp_path, "tiny", "synth-train", str(parent / "20250103-000000_abc"))
    with pytest.raises(CheckpointError, match="no training run of tiny on refcoco-train"):
        find_resume_dir(tmp_path, "tiny", "refcoco-train", "latest")


def test_config_file_must_be_a_json_object(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"lr": 1e-4, "epochs": 2}))
    assert read_config_file(str(good)) == {"lr": 1e-4, "epochs": 2}
    assert read_config_file(None) == {}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        read_config_file(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        read_config_file(str(tmp_path / "missing.json"))


def test_missing_heuristic_cues_are_built_on_demand(tmp_path: Path, monkeypatch) -> None:
    from refbench.data import refer
    from tests.refer_fixture import make_tiny_refer

    monkeypatch.setenv("REFBENCH_CACHE", str(tmp_path / "cache"))
    refer.clear_cache()
    make_tiny_refer(tmp_path / "data")
    dataset = refer.ReferDataset(tmp_path / "data", "refcoco-train")
    backend, table = ensure_cues(dataset, None, 3)
    assert backend == "heuristic"
    keys = {e.key for e in dataset.expressions("all")}
    assert set(table) >= keys and all(len(table[k]) == 3 for k in keys)
    with pytest.raises(ConfigError, match="only works on SynthRef"):
        ensure_cues(dataset, "template", 3)
    with pytest.raises(ConfigError, match="needs a SynthRef split"):
        false_negative_mask(dataset)
