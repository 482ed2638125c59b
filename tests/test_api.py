"""The plugin contract: batches, prediction checks, configs and checkpoints."""

from __future__ import annotations

import pytest
import torch

from refbench.api import Batch, Expression, Prediction, load_checkpoint_file, merge_config
from refbench.baselines import CenterPriorModel, RandomMapModel
from refbench.errors import CheckpointError, ConfigError, PredictionError


def make_batch(counts=(2, 1)) -> Batch:
    groups = [
        [Expression(f"s{i}{j}", image_id=i, ref_id=j, sent_id=10 * i + j) for j in range(n)]
        for i, n in enumerate(counts)
    ]
    return Batch(torch.zeros(len(counts), 3, 32, 32), groups)


def test_batch_flattens_expressions_in_image_order():
    batch = make_batch((2, 3))
    assert [e.text for e in batch.flat_expressions] == ["s00", "s01", "s10", "s11", "s12"]
    assert batch.image_index().tolist() == [0, 0, 1, 1, 1]
    assert batch.flat_expressions[3].key == "1:1:11"


def test_batch_rejects_mismatched_groups():
    with pytest.raises(ValueError, match="2 images but 1 expression lists"):
        Batch(torch.zeros(2, 3, 8, 8), [[Expression("x")]])


def test_prediction_check_names_the_expression_with_nan():
    batch = make_batch((2, 1))
    maps = torch.zeros(3, 4, 4)
    maps[1, 2, 2] = float("nan")
    with pytest.raises(PredictionError, match=r"0:1:1 \('s01'\) holds NaN or inf"):
        Prediction(maps).check(batch)
    with pytest.raises(PredictionError, match=r"expected \[3, h, w\]"):
        Prediction(torch.zeros(2, 4, 4)).check(batch)


def test_merge_config_rejects_unknown_keys_with_hint():
    with pytest.raises(ConfigError, match="Did you mean map_size"):
        merge_config({"map_size": 3, "seed": 0}, {"map_sise": 4}, "model 'random'")
    assert merge_config({"a": 1}, {"a": 2}, "x") == {"a": 2}


def test_random_model_maps_do_not_depend_on_batching():
    model = RandomMapModel()
    together = model.predict(make_batch((2, 1))).response_maps
    alone = model.predict(Batch(torch.zeros(1, 3, 32, 32), [[make_batch((2, 1)).expressions[1][0]]]))
    assert torch.equal(together[2], alone.response_maps[0])
    assert not torch.equal(together[0], together[1])


def test_center_prior_peaks_in_the_middle():
    maps = CenterPriorModel({"map_size": 9}).predict(make_batch((1,))).response_maps
    assert divmod(int(maps[0].argmax()), 9) == (4, 4)


def test_checkpoint_round_trip_and_wrong_model(tmp_path):
    model = CenterPriorModel({"sigma": 0.1})
    path = tmp_path / "center.pt"
    torch.save(model.checkpoint_state(), path)
    again = CenterPriorModel.from_checkpoint(path)
    assert again.config["sigma"] == 0.1
    with pytest.raises(CheckpointError, match="written by model 'center'.*--model center"):
        RandomMapModel.from_checkpoint(path)


def test_checkpoint_loading_refuses_foreign_and_unsafe_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a refbench checkpoint"):
        load_checkpoint_file(plain)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "refbench-checkpoint/1", "x": Evil()}, unsafe)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint_file(unsafe)


def test_checkpoint_refuses_unknown_keys_and_architecture_overrides(tmp_path):
    class Sized(CenterPriorModel):
        architecture_keys = ("map_size",)

    path = tmp_path / "center.pt"
    torch.save(Sized({"map_size": 5}).checkpoint_state(), path)
    with pytest.raises(CheckpointError, match="trained with map_size=5, not 7"):
        Sized.from_checkpoint(path, map_size=7)
    loaded = Sized.from_checkpoint(path, sigma=0.5)  # a non-architecture override is fine
    assert loaded.config["sigma"] == 0.5 and loaded.checkpoint_path == str(path)
    assert loaded.weights_description.startswith("checkpoint center.pt")

    state = torch.load(path, weights_only=True)
    state["config"]["from_the_future"] = 1
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not know \\(from_the_future\\)"):
        Sized.from_checkpoint(path)
