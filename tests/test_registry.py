"""Entry-point discovery: out-of-tree plugins, broken plugins, duplicates, close-name hints."""

from __future__ import annotations

import sys

import pytest
import torch

from refbench import registry
from refbench.api import Batch, Expression, RISModel
from refbench.errors import PluginError, UnknownNameError
from tests.plugin_fixture import TOY_MODEL_SOURCE, write_plugin


@pytest.fixture
def toy_plugin(tmp_path, monkeypatch):
    write_plugin(tmp_path, "toy-plugin", "1.2.3", "toy_plugin", {"toy": "toy_plugin:ToyModel"},
                 TOY_MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("toy_plugin", None)


def test_out_of_tree_plugin_is_found_through_entry_points_alone(toy_plugin):
    entries = registry.discover()
    assert "toy" in entries
    assert (entries["toy"].distribution, entries["toy"].version) == ("toy-plugin", "1.2.3")
    assert "toy_plugin" not in sys.modules  # listing does not import the plugin
    model = registry.load_model("toy", scale=2.0)
    assert isinstance(model, RISModel) and model.config["scale"] == 2.0
    images = torch.ones(1, 3, 32, 32)
    batch = Batch(images, [[Expression("a", 1, 1, 1, 1), Expression("b", 1, 2, 2, 2)]])
    prediction = model.predict(batch)
    prediction.check(batch)
    assert torch.equal(prediction.response_maps, torch.full((2, 8, 8), 2.0))


def test_core_models_are_registered_by_the_core_distribution():
    entries = registry.discover()
    assert entries["random"].distribution == "refbench"
    assert entries["center"].target == "refbench.baselines:CenterPriorModel"


def test_broken_plugin_is_reported_and_others_still_work(tmp_path, monkeypatch, toy_plugin):
    write_plugin(tmp_path / "b", "broken-plugin", "0.1", "broken_plugin",
                 {"broken": "broken_plugin:Missing"}, "raise ImportError('no such thing')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    entries = registry.discover()
    assert {"broken", "toy"} <= set(entries)
    with pytest.raises(PluginError, match="broken-plugin 0.1 failed to import.*no such thing"):
        registry.get_model_class("broken")
    assert registry.get_model_class("toy").name == "toy"


def test_duplicate_names_name_both_distributions(tmp_path, monkeypatch, toy_plugin):
    write_plugin(tmp_path / "d", "other-plugin", "2.0", "other_plugin",
                 {"toy": "other_plugin:ToyModel"}, TOY_MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path / "d"))
    assert "random" in registry.discover()  # the clash does not stop discovery
    with pytest.raises(PluginError, match=r"registered twice.*toy-plugin.*other-plugin|"
                       r"registered twice.*other-plugin.*toy-plugin"):
        registry.get_model_class("toy")


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'random'"):
        registry.get_entry("randon")


def test_entry_point_to_a_non_model_is_refused(tmp_path, monkeypatch):
    write_plugin(tmp_path, "odd-plugin", "0.1", "odd_plugin", {"odd": "odd_plugin:thing"},
                 "thing = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="not a refbench.api.RISModel subclass"):
        registry.get_model_class("odd")
