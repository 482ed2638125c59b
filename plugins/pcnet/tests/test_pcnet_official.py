"""The official variant against PCNet's own code: golden outputs of Boosting_WRIS run on CPU.

tests/golden/pcnet/ holds what the official code computed (README.md there says how) with
weights from tests/reference_weights.py in the official key layout, on the data set and the
phrase and SAM files of tests/reference_fixture.py. Here the same weights are regenerated from
their seed, written as the official save_checkpoint writes them, and loaded through refbench as
a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from refbench_pcnet.model import PCNet, official_name

from refbench.api import Batch, Expression
from refbench.cli import main
from refbench.data.refer import ReferDataset
from refbench.data.splits import get_split
from refbench.data.transforms import ModelImageTransform
from refbench.errors import CheckpointError, ConfigError
from tests.plugin_fixture import register_checkout_plugin
from tests.reference_fixture import write_pcnet_files, write_reference_refer
from tests.reference_weights import seeded_state_dict

GOLDEN = Path(__file__).resolve().parents[3] / "tests" / "golden" / "pcnet"
SPLIT = "refcocog-val-u"


@pytest.fixture(scope="module")
def golden() -> dict:
    record = json.loads((GOLDEN / "pcnet_golden.json").read_text())
    with np.load(GOLDEN / "pcnet_golden.npz") as arrays:
        record["arrays"] = {name: arrays[name] for name in arrays.files}
    return record


def official_weights(golden: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's ``model`` entry, regenerated from the manifest and the seed."""
    return seeded_state_dict(golden["checkpoint"]["manifest"], golden["seed"],
                             golden["centred_keys"])


def write_official_checkpoint(path: Path, weights: dict) -> Path:
    """A file laid out as train_prog.py's save_checkpoint writes it."""
    torch.save({"model": weights, "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"base_lrs": [5e-6, 5e-5], "last_epoch": 0}, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(golden, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official")
    return write_official_checkpoint(folder / golden["checkpoint"]["name"],
                                     official_weights(golden))


@pytest.fixture(scope="module")
def model(checkpoint) -> PCNet:
    return PCNet.from_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("refer")
    write_reference_refer(root, image_format="jpg")
    return root, write_pcnet_files(root)


@pytest.fixture(scope="module")
def val_set(data_root) -> ReferDataset:
    return ReferDataset(data_root[0], get_split(SPLIT))


def expression(val_set: ReferDataset, ref_id: int, index: int, phrases: dict) -> Expression:
    ref = val_set.ref(ref_id)
    sentence = ref.sentences[index]
    return Expression(sentence.text, image_id=ref.image_id, ref_id=ref_id, ann_id=ref.ann_id,
                      sent_id=sentence.sent_id, cues=tuple(phrases[(ref_id, index)]))


def visual_of(model: PCNet, val_set: ReferDataset, expressions: list[Expression]) -> torch.Tensor:
    transform = ModelImageTransform.for_model(model.config)
    images = torch.stack([transform(val_set.load_image(e.image_id)) for e in expressions])
    features = model.visual_projection(model.backbone.encode_image_dense(images, stage=4))
    return features.flatten(2).transpose(1, 2)


def close(actual, expected, relative: float = 1e-4) -> None:
    """|actual - expected| <= relative x the largest |expected|."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    bound = relative * float(np.abs(expected).max())
    worst = float(np.abs(actual - expected).max())
    assert worst <= bound, f"max difference {worst:.3g} > {bound:.3g}"


def test_the_official_checkpoint_loads_as_saved(model, golden, checkpoint) -> None:
    structure = golden["checkpoint"]["structure"]
    assert structure["keys"] == ["epoch", "lr_scheduler", "model", "optimizer"]
    # Every one of the file's 590 tensors has a home (33.6M parameters in the four blocks).
    assert len(model.state_dict()) == structure["num_tensors"] == 590
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("stages.")) == \
        structure["attn_fusion_vl_parameters"]
    cfg = model.config
    assert (cfg["variant"], cfg["k_iters"], cfg["text_length"]) == ("official", 1, 20)
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["resize"] == "pil"
    assert model.num_cues == 0
    assert model.weights_description == (
        "the authors' PCNet checkpoint ckpt_320_epoch_0_best.pth; variant official, k_iters 1")
    exported = model.export_official()
    regenerated = official_weights(golden)
    assert sorted(exported) == sorted(regenerated)
    assert all(torch.equal(exported[k], regenerated[k]) for k in regenerated)


def test_preprocessing_equals_the_official_input_tensor(model, val_set, golden) -> None:
    transform = ModelImageTransform.for_model(model.config)
    image = transform(val_set.load_image(val_set.ref(11).image_id))
    close(image[:, ::4, ::4], golden["arrays"]["input_image201_every4"], 1e-6)


@pytest.mark.parametrize("k_iters", [1, 3])
def test_every_stage_equals_the_official_forward(checkpoint, val_set, golden, data_root,
                                                 k_iters) -> None:
    model = PCNet.from_checkpoint(checkpoint, k_iters=k_iters).eval()
    phrases = data_root[1]["phrases"]
    samples = golden["validate"][f"k{k_iters}"]["samples"]
    scores, maps = [], []
    with torch.no_grad():
        for sample in samples:
            item = expression(val_set, sample["ref_id"], 0, phrases)
            visual = visual_of(model, val_set, [item])
            stages = model.official_scores(visual, (10, 10), model.official_texts([item.text]),
                                           model.official_cues([item]))
            scores.append(torch.stack([s[0, 0] for s in stages]))
            transform = ModelImageTransform.for_model(model.config)
            image = transform(val_set.load_image(item.image_id))[None]
            maps.append(model.predict(Batch(image, [[item]])).response_maps[0])
    arrays = golden["arrays"]
    close(torch.stack(scores), arrays[f"k{k_iters}_scores"])  # [refs, K, 10, 10]
    stacked = torch.stack(maps)
    close(stacked[:, ::8, ::8], arrays[f"k{k_iters}_map_every8"])
    close(stacked.amax(dim=(1, 2)), arrays[f"k{k_iters}_map_max"])
    assert float(stacked.amax()) > 0  # the fixture's maps are not all clipped by the ReLU


def test_batch_wide_attention_and_reshape_equal_the_official_batch(checkpoint, val_set, golden,
                                                                   data_root) -> None:
    """Two images and two sentences in one forward: the released code's batch-wide attention
    and the reshape in its query-over-context attention, reproduced by default."""
    model = PCNet.from_checkpoint(checkpoint, k_iters=3).eval()
    items = [expression(val_set, r, j, data_root[1]["phrases"])
             for r, j in golden["batch_of_two"]["pairs"]]
    expected = golden["arrays"]["batch_of_two_scores"]  # [2, K, 10, 10]

    def diagonal(**overrides) -> torch.Tensor:
        model.config.update(overrides)
        with torch.no_grad():
            stages = model.official_scores(
                visual_of(model, val_set, items), (10, 10),
                model.official_texts([e.text for e in items]), model.official_cues(items))
        return torch.stack([torch.stack([s[i, i] for i in range(2)]) for s in stages], dim=1)

    close(diagonal(), expected)
    # The corrected reshape and per-image attention are real alternatives, not no-ops.
    assert float((diagonal(official_reshape=False) - torch.from_numpy(expected)).abs().max()) > 1e-3
    own = diagonal(official_reshape=True, text_attention="own")
    assert float((own - torch.from_numpy(expected)).abs().max()) > 1e-3
    model.config.update(text_attention="batch")
    # Alone, each image gets what the batch-1 evaluation gives (the first stage's query is its
    # own sentence only when K = 1; here the cues make the point).
    alone = []
    for item in items:
        with torch.no_grad():
            stages = model.official_scores(visual_of(model, val_set, [item]), (10, 10),
                                           model.official_texts([item.text]),
                                           model.official_cues([item]))
        alone.append(stages[-1][0, 0])
    assert torch.allclose(torch.stack(alone), diagonal(text_attention="own")[:, -1], atol=1e-5)
    model.config.update(text_attention="batch")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """refbench-pcnet registered on sys.path through a .dist-info, as pip would."""
    register_checkout_plugin(tmp_path, monkeypatch, "refbench-pcnet",
                             {"pcnet": "refbench_pcnet.model:PCNet"})


def run_eval(tmp_path, checkpoint, data_root, out: str, *extra: str) -> tuple[list, dict]:
    code = main(["eval", "--model", "pcnet", "--checkpoint", str(checkpoint), "--split", SPLIT,
                 "--data-root", str(data_root), "--sentences", "first", "--out",
                 str(tmp_path / out), *extra])
    assert code == 0
    (run_dir,) = (tmp_path / out / "pcnet" / SPLIT).iterdir()
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return records, json.loads((run_dir / "metrics.json").read_text())


def check_against_validate(records: list, result: dict, run: dict) -> None:
    by_key = {(r["ref_id"], r["sent_id"]): r for r in records}
    samples = run["samples"]
    assert len(records) == len(samples) == 6
    for sample in samples:
        record = by_key[(sample["ref_id"], sample["sent_id"])]
        assert (record["inter"], record["union"]) == (sample["inter"], sample["union"]), sample
        assert record["peak"] == sample["peak"], sample
        assert (record["point_hit"], record["box_hit"]) == \
            (bool(sample["point_hit"]), bool(sample["box_hit"])), sample
    metrics, official = result["metrics"], run["metrics"]
    assert 100 * metrics["PointM"] == pytest.approx(official["HitM"], rel=1e-12)
    assert 100 * metrics["Hit"] == pytest.approx(official["Hit"], rel=1e-12)
    # PCNet's validate.py divides by the summed union + 0.001 (TRIS's by the union): with the
    # same intersections and unions the two agree to 1e-9 on this fixture, and refbench's sums
    # give validate.py's own figure exactly.
    inter = sum(r["inter"] for r in records)
    union = sum(r["union"] for r in records)
    assert 100 * inter / (union + 0.001) == pytest.approx(official["oIoU"], rel=1e-12)
    assert 100 * metrics["oIoU"] == pytest.approx(official["oIoU"], rel=1e-6)
    # validate.py averages per-sample IoUs in float32 (the per-sample I and U are equal above)
    assert 100 * metrics["mIoU"] == pytest.approx(official["mIoU"], rel=1e-6)
    assert f"Overall IOU {100 * metrics['oIoU']:.5f}" in run["final_line"]


def test_refbench_eval_reproduces_the_official_validate_run(
    tmp_path, installed, checkpoint, data_root, golden
) -> None:
    records, result = run_eval(tmp_path, checkpoint, data_root[0], "runs")
    check_against_validate(records, result, golden["validate"]["k1"])


def test_three_stages_with_the_authors_phrases_reproduce_validate(
    tmp_path, installed, checkpoint, data_root, golden
) -> None:
    """K = 3 reads the imported phrase files (paired by position, through the google ids)."""
    root = data_root[0]
    code = main(["cues", "import", "--split", SPLIT, "--data-root", str(root), "--from",
                 str(root / "refcocog" / "Mistral_7B_Ref_Sents")])
    assert code == 0
    records, result = run_eval(tmp_path, checkpoint, root, "runs-k3", "--set", "k_iters=3",
                               "--cues", "pcnet-import")
    check_against_validate(records, result, golden["validate"]["k3"])
    (run_dir,) = (tmp_path / "runs-k3" / "pcnet" / SPLIT).iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    store = config["cue_store"]  # which cue file the run read, recorded
    assert (store["backend"], store["fallback"]) == ("pcnet-import", 0)
    assert store["refs_sha256"] == config["dataset"]["refs_sha256"]
    assert Path(store["file"]).is_file()


# --- bad input ---------------------------------------------------------------------------------
def test_other_checkpoints_are_named(golden, tmp_path) -> None:
    weights = {k: torch.zeros(1) for k, _, _ in golden["checkpoint"]["manifest"]}
    rn101 = dict(weights) | {f"backbone.visual.layer3.{i}.conv1.weight": torch.zeros(1)
                             for i in range(23)}
    with pytest.raises(CheckpointError, match="CLIP RN101"):
        PCNet.from_checkpoint(write_official_checkpoint(tmp_path / "rn101.pth", rn101))
    tris = {"backbone.visual.conv1.weight": torch.zeros(1), "vis_project.weight": torch.zeros(1),
            "lan_project.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="TRIS checkpoint.*--model tris"):
        PCNet.from_checkpoint(write_official_checkpoint(tmp_path / "tris.pth", tris))
    three = {k: v for k, v in weights.items() if not k.startswith("attn_fusion_vl.3.")}
    with pytest.raises(CheckpointError, match="has 3 attention blocks"):
        PCNet.from_checkpoint(write_official_checkpoint(tmp_path / "three.pth", three))


def test_settings_the_file_fixes_are_named(checkpoint, golden, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="official variant reads; drop --set variant=paper"):
        PCNet.from_checkpoint(checkpoint, variant="paper")
    with pytest.raises(CheckpointError, match="trained with hidden_dim=1024; drop --set "
                                              "hidden_dim=512"):
        PCNet.from_checkpoint(checkpoint, hidden_dim=512)
    with pytest.raises(CheckpointError, match="k_iters=5.*from 1 to 4"):
        PCNet.from_checkpoint(checkpoint, k_iters=5)
    # The hidden size is read off the projection; a file whose parts disagree lists them.
    weights = official_weights(golden)
    narrow = {k: (v[:512] if k in ("c4_vis_project.weight", "c4_vis_project.bias") else v)
              for k, v in weights.items()}
    with pytest.raises(CheckpointError, match="98 with another shape"):
        PCNet.from_checkpoint(write_official_checkpoint(tmp_path / "narrow.pth", narrow))


def test_missing_cues_for_more_stages_are_a_one_line_error(checkpoint, val_set) -> None:
    model = PCNet.from_checkpoint(checkpoint, k_iters=2).eval()
    assert model.num_cues == 1
    ref = val_set.ref(11)
    item = Expression(ref.sentences[0].text, image_id=ref.image_id, ref_id=11,
                      ann_id=ref.ann_id, sent_id=ref.sentences[0].sent_id)
    with pytest.raises(ConfigError, match="k_iters=2 reads 1 cue.*cues import --format pcnet"):
        model.official_cues([item])


def test_official_config_refuses_paper_only_settings() -> None:
    """Checked before any weights are read (no download is attempted)."""
    with pytest.raises(ConfigError, match="preset 'small' belongs to the paper variant"):
        PCNet({"variant": "official", "preset": "small"})
    with pytest.raises(ConfigError, match="backbone='RN101'.*authors' architecture"):
        PCNet({"variant": "official", "backbone": "RN101"})
    with pytest.raises(ConfigError, match="no variant 'released'.*paper, official"):
        PCNet({"variant": "released"})
    with pytest.raises(ConfigError, match="text_attention='rows'"):
        PCNet({"variant": "official", "text_attention": "rows"})


# --- training ----------------------------------------------------------------------------------
def training_batch(model: PCNet, dataset: ReferDataset, drawn: list[dict], phrases: dict,
                   clip_scores: dict) -> Batch:
    """The batch train_prog.py drew: each ref's image, its sentence, then the other sentence
    (another object of the image, or the released fallback's random sentence); the SAM masks
    at 32x32 (nearest, as the released loader) and the sentence's clip scores."""
    from tests.reference_fixture import sam_masks_of

    def item(ref_id: int, index: int) -> Expression:
        ref = dataset.ref(ref_id)
        sentence = ref.sentences[index]
        return Expression(sentence.text, image_id=ref.image_id, ref_id=ref_id,
                          ann_id=ref.ann_id, sent_id=sentence.sent_id,
                          cues=tuple(phrases[(ref_id, index)][:2]))

    groups, masks, scores = [], [], []
    for entry in drawn:
        positive = item(entry["ref_id"], entry["sentence_index"])
        other = item(entry["other_ref_id"], entry["other_sentence_index"])
        assert entry["negatives"] == [other.text]
        assert entry["same_image"] == (other.image_id == positive.image_id)
        groups.append([positive, other])
        full = torch.from_numpy(sam_masks_of(positive.image_id)).float()[None]
        masks.append(torch.nn.functional.interpolate(full, size=(32, 32), mode="nearest")[0])
        scores.append(torch.from_numpy(
            clip_scores[entry["ref_id"]][entry["sentence_index"]].copy()))
    transform = ModelImageTransform.for_model(model.config)
    images = torch.stack([transform(dataset.load_image(g[0].image_id)) for g in groups])
    return Batch(images, groups, {"proposals": torch.stack(masks).bool(),
                                  "clip_scores": torch.stack(scores)})


def check_losses(losses: dict, official: dict) -> None:
    """refbench's weighted terms against train_prog.py's logged terms (x its weights)."""
    assert set(losses) == {"cls", "cbs", "shrink", "anchor", "diversify"}
    for name, term, weight in (("cls", "train/cls_loss", 5.0), ("cbs", "train/cbs_loss", 2.0),
                               ("shrink", "train/shrink_loss", 1.0),
                               ("anchor", "train/anchor_loss", 1.0),
                               ("diversify", "train/diversify_loc_loss", 1.0)):
        assert float(losses[name].detach()) == pytest.approx(weight * official[term], rel=1e-4,
                                                     abs=1e-6), name
    total = float(sum(v.detach() for v in losses.values()))
    assert total == pytest.approx(official["train/loss"], rel=1e-4)


def test_training_steps_equal_train_prog(golden, checkpoint, data_root, tmp_path,
                                         monkeypatch) -> None:
    """Two steps of train_prog.train_one_epoch (K = 3, every loss term weighted): the same
    losses, the same update of each parameter group (backbone x0.1, logit_scale fixed)."""
    import random

    training = golden["training"]
    root, files = data_root
    clip_file = tmp_path / "vit-b-32.pt"
    torch.save(seeded_state_dict(training["calibration_clip_manifest"],
                                 training["calibration_seed"]), clip_file)
    model = PCNet.from_checkpoint(
        checkpoint, k_iters=3, shrink_weight=1.0, anchor_weight=1.0, diversify_weight=1.0,
        num_proposals=40, calibration_clip_weights=str(clip_file)).train()
    train_set = ReferDataset(root, get_split("refcocog-train-u"))
    drawn_pairs = iter(training["pairs"])
    monkeypatch.setattr(random, "choice", lambda options: next(drawn_pairs))
    args = training["args"]
    total = args["steps_per_epoch"] * args["epoch"]
    groups = model.parameter_groups()
    optimizer = torch.optim.AdamW(groups, lr=5e-5, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / total) ** 0.9)
    named = dict(model.named_parameters())
    ours = {official_name(k): k for k in named}
    for step, (drawn, official) in enumerate(zip(training["batches"], training["losses"])):
        batch = training_batch(model, train_set, drawn, files["phrases"], files["clip_scores"])
        losses = model.training_step(batch)
        check_losses(losses, official)
        before = {n: named[ours[n]].detach().clone() for n in training["steps"][step]
                  if n != "lrs"}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        schedule.step()
        for name, expected in training["steps"][step].items():
            if name == "lrs":
                continue
            delta = (named[ours[name]].detach() - before[name]).double()
            if name == "logit_scale":  # not in the released optimiser: it never moves
                assert expected["delta_abs_sum"] == 0 and float(delta.abs().sum()) == 0
                continue
            # Adam divides by sqrt(v) + 1e-8: where gradients are that small (the first
            # convolution, deepest in the backward pass) float rounding shows at 1e-2.
            assert float(delta.abs().sum()) == pytest.approx(expected["delta_abs_sum"],
                                                             rel=1e-2), (step, name)



def test_refbench_train_runs_the_official_variant_on_the_authors_files(
    tmp_path, installed, data_root
) -> None:
    """`refbench train --set variant=official` with the imported phrases and SAM masks (K = 3,
    the proposal terms on), then eval of its checkpoint: the command a user runs."""
    root = data_root[0]
    split = "refcocog-train-u"
    assert main(["cues", "import", "--split", split, "--data-root", str(root), "--from",
                 str(root / "refcocog" / "Mistral_7B_Ref_Sents")]) == 0
    assert main(["proposals", "import", "--split", split, "--data-root", str(root), "--format",
                 "pcnet", "--from", str(root / "refcocog" / "SAM_Mask")]) == 0
    sets = ["variant=official", "backbone_weights=null", "cbs_weight=0", "batch_size=2",
            "epochs=1", "k_iters=3", "shrink_weight=1", "anchor_weight=1",
            "diversify_weight=1", "num_proposals=40"]
    code = main(["train", "--model", "pcnet", "--split", split, "--data-root", str(root),
                 "--cues", "pcnet-import", "--proposals", "pcnet-sam", "--out",
                 str(tmp_path / "runs"), *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    (run_dir,) = (tmp_path / "runs" / "pcnet" / split).iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["cues"], config["proposals"]) == ("pcnet-import", "pcnet-sam")
    assert config["model_config"]["variant"] == "official"
    assert config["model_config"]["k_iters"] == 3
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [row for row in log if row.get("kind") == "train"]
    assert len(steps) == 3  # 5 refs, 2 per step: the last step holds one
    assert all(set(row["losses"]) == {"cls", "shrink", "anchor", "diversify"} for row in steps)
    trained = PCNet.from_checkpoint(run_dir / "last.pt")
    assert trained.config["variant"] == "official" and trained.config["k_iters"] == 3


def test_eval_names_the_authors_sentence_mode(tmp_path, installed, checkpoint, data_root,
                                              capsys) -> None:
    assert PCNet({"backbone_weights": None, "preset": "small"}).reference_evaluation == {}
    records, result = run_eval(tmp_path, checkpoint, data_root[0], "runs-all", "--sentences",
                               "all")
    assert len(records) == 10 and result["sentences"] == "all"
    out = " ".join(capsys.readouterr().out.split())
    assert "note: the authors evaluate this model with --sentences first (this run: all)" in out
