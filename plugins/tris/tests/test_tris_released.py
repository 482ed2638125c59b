"""The released variant against TRIS's own code: golden outputs of fawnliu/TRIS run on CPU.

tests/golden/tris/ holds what the official code computed (README.md there says how) with
weights from tests/reference_weights.py in the official key layout, on the data set of
tests/reference_fixture.py. Here the same weights are regenerated from their seed, written as
the official checkpoint file, and loaded through refbench as a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from refbench_tris import TRIS

from refbench.api import Batch, Expression
from refbench.cli import main
from refbench.data.refer import ReferDataset
from refbench.data.splits import get_split
from refbench.data.transforms import ModelImageTransform
from refbench.errors import CheckpointError
from refbench.nn import released_tokens
from tests.plugin_fixture import register_checkout_plugin
from tests.reference_fixture import write_reference_refer
from tests.reference_weights import seeded_state_dict

GOLDEN = Path(__file__).resolve().parents[3] / "tests" / "golden" / "tris"
SPLIT = "refcocog-val-u"
END_OF_TEXT = 49407


@pytest.fixture(scope="module")
def golden() -> dict:
    record = json.loads((GOLDEN / "tris_golden.json").read_text())
    with np.load(GOLDEN / "tris_golden.npz") as arrays:
        record["arrays"] = {name: arrays[name] for name in arrays.files}
    return record


def official_weights(golden: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's ``model`` entry, regenerated from the manifest and the seed."""
    return seeded_state_dict(
        golden["checkpoint"]["manifest"], golden["seeds"]["checkpoint"], golden["centred_keys"]
    )


def write_official_checkpoint(golden: dict, path: Path, weights: dict | None = None) -> Path:
    """A file laid out as train_stage1.py's save_checkpoint writes it."""
    structure = golden["checkpoint"]["structure"]
    groups, start = [], 0
    for group in structure["optimizer_param_groups"]:
        count = group["num_params"]
        groups.append({k: v for k, v in group.items() if k != "num_params"}
                      | {"params": list(range(start, start + count))})
        start += count
    torch.save({"model": official_weights(golden) if weights is None else weights,
                "optimizer": {"state": {}, "param_groups": groups},
                "lr_scheduler": structure["lr_scheduler"] | {"lr_lambdas": [None, None]},
                "epoch": structure["epoch"]}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(golden, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official")
    return write_official_checkpoint(golden, folder / golden["checkpoint"]["name"])


@pytest.fixture(scope="module")
def model(checkpoint) -> TRIS:
    return TRIS.from_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refer")
    write_reference_refer(root)
    return root


@pytest.fixture(scope="module")
def val_set(data_root) -> ReferDataset:
    return ReferDataset(data_root, get_split(SPLIT))


def expression(val_set: ReferDataset, ref_id: int, index: int) -> Expression:
    ref = val_set.ref(ref_id)
    sentence = ref.sentences[index]
    return Expression(sentence.text, image_id=ref.image_id, ref_id=ref_id, ann_id=ref.ann_id,
                      sent_id=sentence.sent_id)


def batch_of(model: TRIS, dataset: ReferDataset, groups: list[list[Expression]]) -> Batch:
    transform = ModelImageTransform.for_model(model.config)
    images = torch.stack([transform(dataset.load_image(g[0].image_id)) for g in groups])
    return Batch(images, groups)


def close(actual: torch.Tensor | np.ndarray, expected: np.ndarray, relative: float = 1e-4,
          scale: float | None = None) -> None:
    """|actual - expected| <= relative x scale (default: the largest |expected|)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    bound = relative * (scale if scale is not None else float(np.abs(expected).max()))
    worst = float(np.abs(actual - expected).max())
    assert worst <= bound, f"max difference {worst:.3g} > {bound:.3g}"


def test_the_published_checkpoint_loads_as_it_is(model, golden, checkpoint) -> None:
    # Every one of the file's 518 tensors has a home, and nothing is left unset.
    assert len(model.state_dict()) == len(golden["checkpoint"]["manifest"]) == 518
    assert model.config["variant"] == "released" and model.config["attn_multi"] == 0.1
    assert model.config["mean"] == [0.485, 0.456, 0.406] and model.config["resize"] == "pil"
    assert model.checkpoint_path == str(checkpoint)
    assert model.weights_description.startswith(
        "the authors' TRIS stage-1 checkpoint ckpt_320_epoch_0_best.pth; variant released")
    weights = official_weights(golden)
    exported = model.export_official()
    assert set(exported) == set(weights)
    assert all(torch.equal(exported[k], weights[k]) for k in weights)


def test_preprocessing_equals_the_official_input_tensor(model, val_set, golden) -> None:
    image = ModelImageTransform.for_model(model.config)(val_set.load_image(201))
    expected = golden["arrays"]["input_image201_every4"]
    assert float(np.abs(image[:, ::4, ::4].numpy() - expected).max()) <= 1e-6
    assert float(image.double().sum()) == pytest.approx(
        float(golden["arrays"]["input_image201_sum"]), rel=1e-9)


def test_twenty_token_text_equals_the_official_embeddings(model, val_set, golden) -> None:
    texts = [expression(val_set, *case["pair"]).text for case in golden["embedded"]]
    tokens = released_tokens(texts, 20)
    assert tokens.tolist() == [case["tokens"] for case in golden["embedded"]]
    with torch.no_grad():
        embedded = model.backbone.encode_tokens(tokens)
    close(embedded, golden["arrays"]["text_embeddings"])
    # 21 and more tokens: the end token is cut, so the text is pooled at its start token and
    # every such sentence gets the same embedding.
    long = [i for i, case in enumerate(golden["embedded"]) if case["num_tokens"] > 20]
    assert [golden["embedded"][i]["num_tokens"] for i in long] == [21, 25, 29]
    assert all(END_OF_TEXT not in tokens[i].tolist() for i in long)
    assert torch.allclose(embedded[long[0]], embedded[long[-1]], atol=1e-6)


def single_cases(golden: dict) -> list[tuple[str, list]]:
    return [(case["name"], case["pairs"][0]) for case in golden["forward"]
            if case["name"].startswith("single")]


def test_maps_equal_the_official_forward(model, val_set, golden) -> None:
    arrays = golden["arrays"]
    for name, (ref_id, index) in single_cases(golden):
        batch = batch_of(model, val_set, [[expression(val_set, ref_id, index)]])
        with torch.no_grad():
            visual = model.encode_images(batch.images)
            text = model.encode_texts(batch.texts())
            scores = model.response(visual, text[:, None, :])[:, 0]
        expected_scores = arrays[f"{name}_scores"]
        close(scores, expected_scores)
        maps = model.predict(batch).response_maps
        assert maps.shape == (1, 320, 320)
        assert float(maps.amax()) == pytest.approx(float(arrays[f"{name}_map_max"][0]), abs=1e-5)
        close(maps[:, ::4, ::4], arrays[f"{name}_map_every4"],
              scale=float(np.abs(expected_scores).max()))


def test_joint_forward_of_two_images_equals_the_official_batch(model, val_set, golden) -> None:
    """The released forward fuses every text of the batch into every image (training does);
    refbench's predict answers each pair alone, as the released evaluation (batch 1) does."""
    arrays = golden["arrays"]
    pairs = next(c["pairs"] for c in golden["forward"] if c["name"] == "batch_of_two")
    items = [expression(val_set, *pair) for pair in pairs]
    batch = batch_of(model, val_set, [[item] for item in items])
    with torch.no_grad():
        visual = model.encode_images(batch.images)
        text = model.encode_texts(batch.texts())
        joint = model.response(visual, text[None].expand(2, -1, -1))
    diagonal = torch.stack([joint[0, 0], joint[1, 1]])
    close(diagonal, arrays["batch_of_two_scores"])
    alone = arrays["single_0_scores"][0]  # ref 11 sentence 0, answered alone
    assert pairs[0] == golden["forward"][0]["pairs"][0]
    assert float(np.abs(arrays["batch_of_two_scores"][0] - alone).max()) > 1e-2


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """refbench-tris registered on sys.path through a .dist-info, as pip would."""
    register_checkout_plugin(tmp_path, monkeypatch, "refbench-tris", {"tris": "refbench_tris.model:TRIS"})


def run_eval(tmp_path, checkpoint, data_root, out: str, *extra: str) -> tuple[list, dict]:
    code = main(["eval", "--model", "tris", "--checkpoint", str(checkpoint), "--split", SPLIT,
                 "--data-root", str(data_root), "--out", str(tmp_path / out), *extra])
    assert code == 0
    (run_dir,) = (tmp_path / out / "tris" / SPLIT).iterdir()
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return records, json.loads((run_dir / "metrics.json").read_text())


def test_refbench_eval_reproduces_the_official_validate_run(
    tmp_path, installed, checkpoint, data_root, golden
) -> None:
    records, result = run_eval(tmp_path, checkpoint, data_root, "runs", "--batch-size", "1")
    by_key = {(r["ref_id"], r["sent_id"]): r for r in records}
    samples = golden["validate"]["samples"]
    assert len(records) == len(samples) == 10
    for sample in samples:
        record = by_key[(sample["ref_id"], sample["sent_id"])]
        assert (record["inter"], record["union"]) == (sample["inter"], sample["union"]), sample
        assert record["peak"] == sample["peak"], sample
        assert (record["point_hit"], record["box_hit"]) == \
            (bool(sample["point_hit"]), bool(sample["box_hit"])), sample
    metrics, official = result["metrics"], golden["validate"]["metrics"]
    count = len(samples)
    assert metrics["PointM"] == sum(s["point_hit"] for s in samples) / count
    assert 100 * metrics["Hit"] == official["Hit"]
    assert 100 * metrics["oIoU"] == pytest.approx(official["oIoU"], rel=1e-12)
    # validate.py sums per-sample IoUs in float32: equal to its 5 printed decimals
    assert 100 * metrics["mIoU"] == pytest.approx(official["mIoU"], rel=1e-6)
    assert f"mIOU {100 * metrics['mIoU']:.5f}" in golden["validate"]["final_line"]
    assert f"Overall IOU {100 * metrics['oIoU']:.5f}" in golden["validate"]["final_line"]
    # Grouping several images and sentences per batch changes nothing.
    grouped, _ = run_eval(tmp_path, checkpoint, data_root, "runs-grouped", "--batch-size", "3")
    assert sorted(json.dumps(r, sort_keys=True) for r in grouped) == \
        sorted(json.dumps(r, sort_keys=True) for r in records)


# --- training ----------------------------------------------------------------------------------
def training_batch(model: TRIS, dataset: ReferDataset, drawn: list[dict]) -> Batch:
    """The batch train_stage1.py drew: each ref's image, its sentence, then its negatives."""
    groups = []
    for item in drawn:
        ref = dataset.ref(item["ref_id"])
        texts = [item["sentence"], *item["negatives"]]
        groups.append([Expression(t, image_id=ref.image_id, ref_id=ref.ref_id, ann_id=ref.ann_id)
                       for t in texts])
    return batch_of(model, dataset, groups)


def check_losses(losses: dict, official: dict, relative: float) -> None:
    """refbench's weighted terms against the script's l4 (x5), l1 (x1) and l5 (x2)."""
    for name, term, weight in (("classification", "train/l4", 5.0),
                               ("calibration_positive", "train/l1", 1.0),
                               ("calibration_negative", "train/l5", 2.0)):
        assert float(losses[name]) == pytest.approx(weight * official[term], rel=relative,
                                                     abs=1e-6), name


def test_training_steps_equal_train_stage1(golden, checkpoint, data_root, tmp_path) -> None:
    """Two steps of the released recipe on the batches train_stage1.py drew: every loss term,
    the AdamW update of each parameter group, the frozen temperature, BatchNorm statistics."""
    from refbench_tris.model import official_name

    from refbench.train.trainer import Trainer

    calibration = tmp_path / "ViT-B-32.pt"
    torch.save(seeded_state_dict(golden["calibration_clip_manifest"],
                                 golden["seeds"]["calibration_clip"]), calibration)
    model = TRIS.from_checkpoint(checkpoint, calibration_clip_weights=str(calibration))
    assert (model.config["sampling"], model.config["num_distinct"]) == ("refs", 3)
    training = golden["training"]
    train_set = ReferDataset(data_root, get_split("refcocog-train-u"))
    trainer = Trainer(model, train_set, out_dir=tmp_path / "run", epochs=training["epochs"],
                      batch_size=training["batch_size"], device="cpu", progress=False)
    assert trainer.steps_per_epoch == training["steps_per_epoch"]
    names = {official_name(k): k for k in model.state_dict()}
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    model.train()

    first = training_batch(model, train_set, training["batches"][0])
    before = {k: p.detach().clone() for k, p in params.items()}
    used = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    # one forward per step, as the script: train mode updates BatchNorm's statistics
    _, losses = trainer._train_step(first)
    check_losses(losses, training["losses"][0], 1e-4)
    # the poly schedule's next rate (the script logs group 0, the backbone's, after stepping)
    after = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert after["backbone"] == pytest.approx(training["losses"][0]["optim/lr"], rel=1e-9)
    step = training["steps"][0]
    for name, expected in step.items():
        if name == "lrs":  # the script's groups: [backbone, heads]; refbench's: [head, backbone]
            assert [used["backbone"], used["head"]] == pytest.approx(expected, rel=1e-9)
        elif "value_corner" in expected:  # BatchNorm running statistics, updated in train mode
            close(buffers[names[name]].flatten()[:8], np.array(expected["value_corner"]), 1e-4)
        else:
            delta = (params[names[name]].detach() - before[names[name]]).double()
            assert float(delta.abs().sum()) == pytest.approx(expected["delta_abs_sum"],
                                                             rel=1e-3, abs=1e-12), name
            assert float(delta.sum()) == pytest.approx(expected["delta_sum"], rel=2e-2,
                                                       abs=1e-3 * expected["delta_abs_sum"]), name
    # frozen, as in the script (TRIS's logit_scale is not in its optimizer)
    assert torch.equal(model.temperature.log_scale, before["temperature.log_scale"])
    assert not model.temperature.log_scale.requires_grad
    second = training_batch(model, train_set, training["batches"][1])
    with torch.no_grad():
        check_losses(model.training_step(second), training["losses"][1], 1e-3)


# --- bad input ---------------------------------------------------------------------------------
def test_other_published_checkpoints_are_named(golden, tmp_path) -> None:
    weights = {k: torch.zeros(1) for k, _, _ in golden["checkpoint"]["manifest"]}
    rn101 = dict(weights) | {f"backbone.visual.layer3.{i}.conv1.weight": torch.zeros(1)
                             for i in range(23)}
    with pytest.raises(CheckpointError, match="CLIP RN101"):
        TRIS.from_checkpoint(write_official_checkpoint(golden, tmp_path / "rn101.pth", rn101))
    stage2 = {"backbone.visual.conv1.weight": torch.zeros(1), "attention2.Wk.weight":
              torch.zeros(1), "reduced_c1.conv.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="second stage"):
        TRIS.from_checkpoint(write_official_checkpoint(golden, tmp_path / "s2.pth", stage2))
    pcnet = dict(weights) | {"attn_fusion_vl.0.v_proj1.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="PCNet.*--model pcnet"):
        TRIS.from_checkpoint(write_official_checkpoint(golden, tmp_path / "pcnet.pth", pcnet))


def test_variant_mismatch_says_which_variant_the_file_holds(golden, checkpoint, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="released variant reads; drop --set variant=refbench"):
        TRIS.from_checkpoint(checkpoint, variant="refbench")
    small = TRIS({"preset": "small"})
    path = tmp_path / "small.pt"
    torch.save(small.checkpoint_state(), path)
    with pytest.raises(CheckpointError, match="trained with variant='refbench', not 'released'"):
        TRIS.from_checkpoint(path, variant="released")


def test_missing_keys_are_listed_by_name(golden, tmp_path) -> None:
    weights = official_weights(golden)
    del weights["attn_fusion.t_output.0.bias"], weights["lan_project.bias"]
    weights["attn_fusion.extra.weight"] = torch.zeros(1)
    path = write_official_checkpoint(golden, tmp_path / "broken.pth", weights)
    with pytest.raises(CheckpointError) as caught:
        TRIS.from_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "2 missing (text_projection.proj.bias, fusion.text_out.0.bias)" in message
    assert "1 unexpected (attn_fusion.extra.weight)" in message


def test_released_config_refuses_refbench_only_settings() -> None:
    """Checked before any weights are read (no download is attempted)."""
    from refbench.errors import ConfigError

    with pytest.raises(ConfigError, match="preset 'small' belongs to the refbench variant"):
        TRIS({"variant": "released", "preset": "small"})
    with pytest.raises(ConfigError, match="backbone='RN101'.*authors' architecture"):
        TRIS({"variant": "released", "backbone": "RN101"})
    with pytest.raises(ConfigError, match="no variant 'official'.*refbench, released"):
        TRIS({"variant": "official"})
    with pytest.raises(ConfigError, match="text_length=100"):
        TRIS({"variant": "released", "text_length": 100})
