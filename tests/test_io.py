"""Atomic writes, torn JSON-lines tails and the exclusive lock."""

from __future__ import annotations

import json
import os

import pytest

from refbench.errors import DataError, OutputError
from refbench.io import (
    append_jsonl,
    atomic_write_json,
    exclusive_lock,
    read_json,
    read_jsonl,
)


def test_atomic_write_leaves_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_read_jsonl_drops_a_torn_last_line_and_reports_the_good_prefix(tmp_path):
    path = tmp_path / "p.jsonl"
    with open(path, "w") as handle:
        append_jsonl(handle, [{"k": 1}, {"k": 2}])
    good_size = path.stat().st_size
    with open(path, "a") as handle:
        handle.write('{"k": 3, "trunc')
    records, length = read_jsonl(path)
    assert records == [{"k": 1}, {"k": 2}]
    assert length == good_size
    with open(path, "a") as handle:  # an unterminated but parseable line is unfinished too
        handle.truncate(good_size)
        handle.write('{"k": 3}')
    assert read_jsonl(path) == ([{"k": 1}, {"k": 2}], good_size)


def test_read_jsonl_refuses_corruption_in_the_middle(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"k": 1}\nnot json\n{"k": 2}\n')
    with pytest.raises(DataError, match="line 2 is corrupt"):
        read_jsonl(path)


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(DataError, match="config.json does not exist"):
        read_json(tmp_path / "config.json", "run config")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_second_lock_holder_fails_at_once(tmp_path):
    lock = tmp_path / "cache.lock"
    with exclusive_lock(lock, "the cache"):
        with pytest.raises(OutputError, match="another refbench process is using the cache"):
            with exclusive_lock(lock, "the cache"):
                pass
    with exclusive_lock(lock):  # released afterwards
        pass
