"""SynthRef statistics are computed once per data set identity, then memoised and read back."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from refbench.data.identity import refs_sha256
from refbench.data.refer import ReferDataset
from refbench.synth import cached_stats, generate, stats

stats_module = importlib.import_module("refbench.synth.stats")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    """Two data roots holding a SynthRef with the same split names but different refs."""
    first = generate(tmp_path_factory.mktemp("synth-a"), seed=1,
                     images={"train": 2, "val": 6, "test": 1})
    second = generate(tmp_path_factory.mktemp("synth-b"), seed=2,
                      images={"train": 2, "val": 6, "test": 1})
    return first, second


@pytest.fixture
def counted(monkeypatch) -> list[tuple[str, str]]:
    """Every call of the expensive `stats`, with an empty in-process memo."""
    calls: list[tuple[str, str]] = []
    real = stats_module.stats

    def counting(data_root, split_id):
        calls.append((str(data_root), split_id))
        return real(data_root, split_id)

    monkeypatch.setattr(stats_module, "stats", counting)
    monkeypatch.setattr(stats_module, "_MEMO", {})
    return calls


def _eval(root: Path, out: Path) -> dict:
    from refbench import create_model
    from refbench.eval.runner import evaluate

    result = evaluate(create_model("center"), ReferDataset(root, "synth-val"), out_dir=out,
                      progress=False)
    return json.loads((Path(result["run_dir"]) / "config.json").read_text())["chance"]


def test_second_eval_of_a_split_does_not_recompute(roots, counted, tmp_path, monkeypatch):
    first, _ = roots
    chance = _eval(first, tmp_path / "runs-1")
    assert len(counted) == 1
    assert _eval(first, tmp_path / "runs-2") == chance  # in-process memo
    monkeypatch.setattr(stats_module, "_MEMO", {})  # as a new process: read from disk
    assert _eval(first, tmp_path / "runs-3") == chance
    assert len(counted) == 1
    assert chance["PointM"] == stats(first, "synth-val")["overall"]


def test_another_refs_file_gets_its_own_statistics(roots, counted, tmp_path):
    first, second = roots
    one, two = ReferDataset(first, "synth-val"), ReferDataset(second, "synth-val")
    assert refs_sha256(one) != refs_sha256(two)
    a = cached_stats(first, "synth-val", refs_sha256(one))
    b = cached_stats(second, "synth-val", refs_sha256(two))
    assert len(counted) == 2
    assert json.dumps(b) == json.dumps(stats(second, "synth-val"))
    assert json.dumps(a) != json.dumps(b)


@pytest.mark.parametrize("split", ["synth-val", "synth-test"])
def test_cached_values_equal_a_fresh_computation(roots, counted, split, monkeypatch):
    first, _ = roots
    sha = refs_sha256(ReferDataset(first, split))
    fresh = stats(first, split)
    computed = cached_stats(first, split, sha)
    monkeypatch.setattr(stats_module, "_MEMO", {})
    from_disk = cached_stats(first, split, sha)
    assert len(counted) == 1  # `fresh` calls the real function, not the counted one
    for value in (computed, from_disk):
        # key order, key types and float bits, NaN included: json.dumps tells them all apart
        assert json.dumps(value) == json.dumps(fresh)
        assert list(value["objects_histogram"]) == list(fresh["objects_histogram"])
    from_disk["overall"]["random_point"] = -1.0  # callers get copies, never the memo itself
    assert cached_stats(first, split, sha)["overall"] == fresh["overall"]


def test_a_stale_or_corrupt_file_is_recomputed(roots, counted, tmp_path):
    first, _ = roots
    sha = refs_sha256(ReferDataset(first, "synth-val"))
    cached_stats(first, "synth-val", sha, cache_dir=tmp_path)
    (stored,) = tmp_path.glob("synth-val-*.json")
    stored.write_text("{not json")
    stats_module._MEMO.clear()
    value = cached_stats(first, "synth-val", sha, cache_dir=tmp_path)
    assert len(counted) == 2
    assert json.dumps(value) == json.dumps(stats(first, "synth-val"))
    assert json.loads(stored.read_text())["identity"]["refs_sha256"] == sha
