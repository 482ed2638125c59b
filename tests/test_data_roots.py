"""One rule for where a split's files are: --data-root, $REFBENCH_DATA_ROOT, SynthRef cache."""

from __future__ import annotations

import pytest

from refbench.data import roots
from refbench.errors import ConfigError


def test_explicit_root_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(roots.DATA_ROOT_ENV, "/elsewhere")
    assert roots.resolve_data_root("refcoco-val", tmp_path) == tmp_path
    assert roots.resolve_data_root("synth-test", tmp_path) == tmp_path


def test_environment_serves_refcoco_family(tmp_path, monkeypatch):
    monkeypatch.setenv(roots.DATA_ROOT_ENV, str(tmp_path))
    assert roots.resolve_data_root("refcocog-val-g") == tmp_path


def test_missing_root_names_the_option_the_variable_and_the_files(monkeypatch):
    monkeypatch.delenv(roots.DATA_ROOT_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"--data-root \(or \$REFBENCH_DATA_ROOT\).*"
                       r"refcocog/refs\(umd\)\.p"):
        roots.resolve_data_root("refcocog-test-u")


def test_synthetic_splits_use_the_cache_generated_set(monkeypatch, tmp_path):
    monkeypatch.setenv(roots.DATA_ROOT_ENV, "/refcoco/root/not/for/synth")
    calls = []

    def fake_ensure(root=None, variant="default"):
        calls.append(variant)
        return tmp_path

    import refbench.synth

    monkeypatch.setattr(refbench.synth, "ensure_synthref", fake_ensure)
    assert roots.resolve_data_root("synth-val") == tmp_path
    assert roots.resolve_data_root("synth-hard-test") == tmp_path
    assert calls == ["default", "hard"]
