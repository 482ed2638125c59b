"""Test-wide settings: every test writes its caches under a temp folder, never ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Point REFBENCH_CACHE at a fresh folder so tests never touch or reuse a user's cache."""
    cache = tmp_path_factory.mktemp("refbench-cache")
    monkeypatch.setenv("REFBENCH_CACHE", str(cache))
    return cache
