"""The generic trainer on CPU with a tiny TrainableModel and a stand-in of ReferDataset.

This file is also the worker script of the DDP test: ``torchrun ... tests/test_train_trainer.py
OUT STEPS`` trains the same tiny model under DDP (gloo).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from refbench.api import Batch, Prediction, TrainableModel, load_checkpoint_file
from refbench.data.refer import Ref, Sentence
from refbench.errors import CheckpointError, ConfigError, DataError
from refbench.io import read_jsonl
from refbench.train.checkpoint import save_checkpoint
from refbench.train.data import TrainingData
from refbench.train.trainer import Trainer

# --- stand-ins ----------------------------------------------------------------------------


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class FakeRefer:
    """Images of coloured blocks; each block is an object with 1-2 sentences naming its colour."""

    def __init__(self, num_images: int = 10, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.image_ids = list(range(num_images))
        self._refs: dict[int, list[Ref]] = {}
        self._images: dict[int, np.ndarray] = {}
        names = list(COLOURS)
        sent = 0
        for image_id in self.image_ids:
            image = np.zeros((12, 18, 3), dtype=np.uint8)
            refs = []
            for j in range(1 + image_id % 3):
                colour = names[int(rng.integers(3))]
                image[:, j * 6 : j * 6 + 6] = COLOURS[colour]
                sentences = [Sentence(sent + k, f"the {colour} block {k}", {}) for k in range(1 + j % 2)]
                sent += len(sentences)
                refs.append(Ref(image_id * 10 + j, image_id * 100 + j, image_id, 1, "train", tuple(sentences)))
            self._refs[image_id] = refs
            self._images[image_id] = image

    def refs_of_image(self, image_id: int) -> list[Ref]:
        return self._refs[image_id]

    def load_image(self, image_id: int) -> np.ndarray:
        return self._images[image_id]


class TinyModel(TrainableModel):
    """conv + word-hash embedding; per-image loss: positive scores high, extras low."""

    name = "tiny"

    @classmethod
    def default_config(cls) -> dict:
        config = super().default_config()
        config.update({"input_size": 16, "batch_size": 3, "epochs": 3, "num_distinct": 1,
                       "lr": 1e-2, "dropout": 0.2, "backbone_lr_scale": 0.5})
        return config

    def __init__(self, config: dict | None = None) -> None:
        super().__init__(config)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, 8, 1)
        self.words = nn.EmbeddingBag(64, 8, mode="mean")
        self.dropout = nn.Dropout(float(self.config["dropout"]))

    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        ids = [[zlib.crc32(w.encode()) % 64 for w in t.split()] for t in texts]
        offsets = torch.tensor([0, *np.cumsum([len(i) for i in ids])[:-1]])
        flat = torch.tensor([i for row in ids for i in row])
        return self.words(flat, offsets)

    def _maps(self, batch: Batch) -> torch.Tensor:
        features = self.head(self.dropout(self.backbone(batch.images)))  # [B, 8, S, S]
        text = self._embed_text(batch.texts())  # [E, 8]
        per_expr = features[batch.image_index()]  # [E, 8, S, S]
        return torch.einsum("ecyx,ec->eyx", per_expr, text)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        scores = self._maps(batch).mean(dim=(1, 2))  # [E]
        target = torch.cat(
            [torch.tensor([1.0] + [0.0] * (len(g) - 1)) for g in batch.expressions]
        )
        per_expr = nn.functional.binary_cross_entropy_with_logits(scores, target, reduction="none")
        weights = torch.cat([torch.full((len(g),), 1.0 / len(g)) for g in batch.expressions])
        per_image_pos = (per_expr * weights * target).sum() / len(batch.expressions)
        per_image_neg = (per_expr * weights * (1 - target)).sum() / len(batch.expressions)
        return {"pos": per_image_pos, "neg": 0.5 * per_image_neg}

    def predict(self, batch: Batch) -> Prediction:
        return Prediction(self._maps(batch))


class OtherModel(TinyModel):
    name = "other"


class ReleasedTinyModel(TinyModel):
    """TinyModel declaring the trainer's optional keys, as a plugin's released variant does."""

    name = "tiny-released"

    @classmethod
    def default_config(cls) -> dict:
        config = super().default_config()
        config.update({"sampling": "refs", "selection_metric": "mIoU", "resize": "pil"})
        return config


def fake_evaluate(model, dataset, out_dir, **kwargs):
    """A deterministic stand-in for the eval runner: a score from the weights."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    value = float(torch.sigmoid(sum(p.detach().sum() for p in model.parameters())))
    return {"metrics": {"PointM": value, "mIoU": value / 2}}


def make_trainer(out_dir, seed_model: int = 0, model_cls=TinyModel, overrides=None, **kwargs):
    torch.manual_seed(seed_model)
    model = model_cls(overrides)
    kwargs.setdefault("val_dataset", FakeRefer(4, seed=9))
    kwargs.setdefault("evaluate_fn", fake_evaluate)
    return Trainer(model, FakeRefer(), out_dir=out_dir, device="cpu", seed=11, progress=False,
                   **kwargs)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [5, 4])  # 4 batches per epoch: k=5 is mid-epoch, k=4 its end
def test_resume_continues_exactly(tmp_path: Path, k: int) -> None:
    straight = make_trainer(tmp_path / "straight", max_steps=2 * k, checkpoint_every=3)
    assert straight.steps_per_epoch == 4  # 10 images, batch 3: 3+3+3+1
    straight.fit()

    first = make_trainer(tmp_path / "split", max_steps=k, checkpoint_every=3)
    first.fit()
    assert load_checkpoint_file(tmp_path / "split" / "last.pt")["trainer"]["step"] == k
    # a different initialisation and RNG state: everything must come from the checkpoint
    torch.manual_seed(1234)
    np.random.seed(99)
    second = make_trainer(tmp_path / "split", seed_model=5, max_steps=2 * k, resume=True,
                          checkpoint_every=3)
    assert second.step == k
    summary = second.fit()
    assert summary["step"] == 2 * k

    a, b = params(straight), params(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for group_a, group_b in zip(straight.optimizer.param_groups, second.optimizer.param_groups):
        assert group_a["lr"] == group_b["lr"]
    log_a = [r for r in read_jsonl(tmp_path / "straight" / "train_log.jsonl")[0]]
    log_b = [r for r in read_jsonl(tmp_path / "split" / "train_log.jsonl")[0]]
    # the split run also validated where its first part stopped (step k, inside an epoch)
    log_b = [r for r in log_b if not (r["kind"] == "val" and r["step"] == k and k % 4)]
    strip = [{k2: v for k2, v in r.items() if k2 != "samples_per_s"} for r in log_a]
    assert strip == [{k2: v for k2, v in r.items() if k2 != "samples_per_s"} for r in log_b]
    assert [r["step"] for r in log_a if r["kind"] == "train"] == list(range(1, 2 * k + 1))


def test_log_schedule_and_best_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, overrides={"poly_power": 1.0, "warmup_steps": 2})
    summary = trainer.fit()
    records, _ = read_jsonl(tmp_path / "train_log.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    total = 12
    assert len(train) == total and len(val) == 3 and summary["finished"]
    # lr used at step t (0-based): warm-up (t+1)/2, then linear decay 1 - (t-2)/(T-2)
    for t, record in enumerate(train):
        factor = (t + 1) / 2 if t < 2 else 1 - (t - 2) / (total - 2)
        assert record["lr"] == pytest.approx(1e-2 * factor)
        assert record["lrs"][1] == pytest.approx(0.5e-2 * factor)  # backbone group
        assert record["loss"] == pytest.approx(sum(record["losses"].values()), rel=1e-5)
        assert set(record["losses"]) == {"pos", "neg"}
    best = max(val, key=lambda r: r["metrics"]["PointM"])
    assert summary["best_value"] == best["metrics"]["PointM"]
    saved = load_checkpoint_file(tmp_path / "best.pt")
    assert saved["trainer"]["epoch"] == best["epoch"] and saved["model"] == "tiny"
    restored = TinyModel.from_checkpoint(tmp_path / "best.pt")  # a plain model checkpoint too
    assert fake_evaluate(restored, None, tmp_path / "x")["metrics"]["PointM"] == best[
        "metrics"]["PointM"]


def test_a_run_stopped_inside_an_epoch_validates_its_final_weights(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, max_steps=6)  # 4 steps per epoch: stops in epoch 2
    summary = trainer.fit()
    records, _ = read_jsonl(tmp_path / "train_log.jsonl")
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [4, 6]
    assert (tmp_path / "val" / "step_000006").is_dir()
    final = fake_evaluate(trainer.model, None, tmp_path / "x")["metrics"]["PointM"]
    assert val[-1]["metrics"]["PointM"] == final
    assert summary["best_value"] == max(r["metrics"]["PointM"] for r in val)
    saved = load_checkpoint_file(tmp_path / "best.pt")
    best_step = max(val, key=lambda r: r["metrics"]["PointM"])["step"]
    assert saved["trainer"]["step"] == best_step


def test_validation_that_reseeds_rngs_does_not_change_training(tmp_path: Path) -> None:
    def reseeding_evaluate(model, dataset, out_dir, **kwargs):
        torch.manual_seed(0)  # as the eval runner does
        return fake_evaluate(model, dataset, out_dir)

    with_val = make_trainer(tmp_path / "a", evaluate_fn=reseeding_evaluate)
    with_val.fit()
    without = make_trainer(tmp_path / "b", val_dataset=None)
    without.fit()
    for name, value in params(with_val).items():
        assert torch.equal(value, params(without)[name]), name


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, overrides={"dropout": 0.0, "epochs": 15}, val_dataset=None)
    batch = trainer.data.collate([trainer.data[i] for i in trainer.sampler.global_batches(0)[0]])
    with torch.no_grad():
        before = sum(trainer.model.training_step(batch).values()).item()
    trainer.fit()
    with torch.no_grad():
        after = sum(trainer.model.training_step(batch).values()).item()
    assert after < 0.8 * before


def test_checkpoint_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "x", "value": torch.arange(3)})
    real_save = torch.save

    def crashing_save(obj, handle, *args, **kwargs):
        real_save({"format": "x", "value": torch.arange(100)}, handle)
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"format": "x", "value": torch.arange(5)})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_batch_larger_than_images_fails_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size 11 .* 10 distinct images"):
        make_trainer(tmp_path, batch_size=11)
    assert not (tmp_path / "train_log.jsonl").exists()


def test_wrong_model_or_config_checkpoint_fails_before_training(tmp_path: Path) -> None:
    make_trainer(tmp_path, max_steps=2).fit()
    before = load_checkpoint_file(tmp_path / "last.pt")["state_dict"]
    with pytest.raises(CheckpointError, match="written by model 'tiny', not 'other'"):
        make_trainer(tmp_path, model_cls=OtherModel, resume=True)
    with pytest.raises(CheckpointError, match=r"another config .*lr"):
        make_trainer(tmp_path, overrides={"lr": 1e-3}, resume=True)
    with pytest.raises(CheckpointError, match="another config .*batch_size"):
        make_trainer(tmp_path, batch_size=2, resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(tmp_path / "empty", resume=True)
    after = load_checkpoint_file(tmp_path / "last.pt")["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_missing_cues_or_proposals_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="reads 2 cues .*--cues"):
        make_trainer(tmp_path, overrides={"num_cues": 2})
    with pytest.raises(DataError, match="no cues for expression"):
        make_trainer(tmp_path, overrides={"num_cues": 2}, cues={"0:0:0": ("a", "b")})
    with pytest.raises(DataError, match="needs 3 proposals .*--proposals"):
        make_trainer(tmp_path, overrides={"num_proposals": 3})


class FakeProposals:
    def load(self, image_id: int, size) -> torch.Tensor:
        masks = torch.zeros(2 + image_id % 2, *size, dtype=torch.bool)
        masks[:, : image_id + 1] = True
        return masks


def test_batch_assembly_with_cues_proposals_and_false_negatives() -> None:
    dataset = FakeRefer()
    cue_table = {}
    for image_id in dataset.image_ids:
        for ref in dataset.refs_of_image(image_id):
            for s in ref.sentences:
                cue_table[f"{image_id}:{ref.ref_id}:{s.sent_id}"] = (s.text.split()[1], "x", "y")
    data = TrainingData(
        dataset, input_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_cues=2,
        cues=cue_table, num_proposals=3, proposals=FakeProposals(),
        false_negatives=lambda exprs, ids: np.ones((len(exprs), len(ids)), dtype=bool),
    )
    from refbench.train.sampler import TrainingSampler

    sampler = TrainingSampler(dataset, batch_size=4, num_distinct=1, seed=0)
    items = sampler.global_batches(0)[0]
    batch = data.collate([data[i] for i in items])
    assert batch.images.shape == (4, 3, 16, 16)
    # a flat colour block normalises to (c/255 - 0.5) / 0.25 away from the block edges
    image = dataset.load_image(items[0].image_id)
    expected = (image[6, 2].astype(np.float64) / 255 - 0.5) / 0.25
    assert np.allclose(batch.images[0, :, 8, 1].numpy(), expected, atol=1e-4)
    for i, item in enumerate(items):
        assert batch.expressions[i][0].key == item.positive.key
        assert [e.key for e in batch.expressions[i][1:]] == [e.key for e in item.extras]
        for e in batch.expressions[i]:
            assert e.cues == cue_table[e.key][:2] and e.cues[0] in e.text
    assert batch.extras["num_distinct"].tolist() == [len(i.extras) for i in items]
    assert batch.extras["proposals"].shape == (4, 3, 16, 16)
    for i, item in enumerate(items):
        count = 2 + item.image_id % 2
        assert batch.extras["proposals_valid"][i].tolist() == [True] * count + [False] * (3 - count)
        assert not batch.extras["proposals"][i, count:].any()
    assert torch.equal(batch.extras["false_negatives"], ~torch.eye(4, dtype=torch.bool))


def test_selection_metric_is_the_models_unless_given(tmp_path: Path) -> None:
    assert make_trainer(tmp_path / "a").selection_metric == "PointM"  # declares none
    assert make_trainer(tmp_path / "b", overrides={"dropout": 0.0},
                        selection_metric="mIoU").selection_metric == "mIoU"
    released = make_trainer(tmp_path / "c", model_cls=ReleasedTinyModel, max_steps=8)
    assert released.selection_metric == "mIoU"
    summary = released.fit()
    records, _ = read_jsonl(tmp_path / "c" / "train_log.jsonl")
    val = [r["metrics"] for r in records if r["kind"] == "val"]
    assert summary["best_metric"] == "mIoU"
    assert summary["best_value"] == max(m["mIoU"] for m in val)
    assert load_checkpoint_file(tmp_path / "c" / "best.pt")["trainer"]["best"]["metric"] == "mIoU"
    given = make_trainer(tmp_path / "d", model_cls=ReleasedTinyModel, selection_metric="PointM")
    assert given.selection_metric == "PointM"
    with pytest.raises(ConfigError, match="validation gave no 'oIoU'"):
        make_trainer(tmp_path / "e", overrides={"selection_metric": "oIoU"},
                     model_cls=ReleasedTinyModel, max_steps=1).fit()


def test_sampling_refs_from_the_model_config_drives_the_loader(tmp_path: Path) -> None:
    dataset = FakeRefer()
    num_refs = sum(len(dataset.refs_of_image(i)) for i in dataset.image_ids)  # 19 over 10 images
    trainer = make_trainer(tmp_path, model_cls=ReleasedTinyModel, val_dataset=None)
    assert trainer.sampler.unit == "refs" and trainer.sampler.num_items == num_refs == 19
    assert trainer.steps_per_epoch == 7  # 19 refs, batch 3: 6 x 3 + 1
    trainer.sampler.set_epoch(0)
    keys = []
    for batch in trainer.loader:  # the real DataLoader path with TrainingData
        keys += [g[0].ref_id for g in batch.expressions]
        assert batch.extras["num_distinct"].tolist() == [len(g) - 1 for g in batch.expressions]
        assert all(len(g) == 2 for g in batch.expressions)  # num_distinct 1 negative each
    assert sorted(keys) == sorted(r.ref_id for i in dataset.image_ids
                                  for r in dataset.refs_of_image(i))
    # the population is the refs: batch 11 exceeds the 10 images but not the 19 refs
    with pytest.raises(ConfigError, match="batch_size 20 .* 19 refs"):
        make_trainer(tmp_path / "x", model_cls=ReleasedTinyModel, batch_size=20)
    assert make_trainer(tmp_path / "y", model_cls=ReleasedTinyModel, batch_size=11).sampler
    with pytest.raises(ConfigError, match="batch_size 11 .* 10 distinct images"):
        make_trainer(tmp_path / "v", model_cls=ReleasedTinyModel, batch_size=11,
                     overrides={"sampling": "images"})
    with pytest.raises(ConfigError, match="'sampling' must be one of"):
        make_trainer(tmp_path / "z", model_cls=ReleasedTinyModel, overrides={"sampling": "x"})
    with pytest.raises(DataError, match="no cues for expression"):
        make_trainer(tmp_path / "w", model_cls=ReleasedTinyModel,
                     overrides={"num_cues": 2}, cues={"0:0:0": ("a", "b")})


def test_resize_pil_in_the_model_config_reaches_the_training_batch(tmp_path: Path) -> None:
    from PIL import Image

    def first_batch(trainer: Trainer):
        items = trainer.sampler.global_batches(0)[0]
        return items, trainer.data.collate([trainer.data[i] for i in items]).images

    pil = make_trainer(tmp_path / "pil", model_cls=ReleasedTinyModel, val_dataset=None)
    assert pil.data.transform.resize == "pil"
    items, images = first_batch(pil)
    mean = torch.tensor(pil.config["mean"]).view(3, 1, 1)
    std = torch.tensor(pil.config["std"]).view(3, 1, 1)
    for item, image in zip(items, images):
        pixels = FakeRefer().load_image(item.image_id)  # [12, 18, 3] uint8
        resized = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.BILINEAR))
        expected = (torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255 - mean) / std
        assert torch.allclose(image, expected, atol=1e-5)
    torch_default = make_trainer(tmp_path / "torch", model_cls=ReleasedTinyModel,
                                 overrides={"resize": "torch"}, val_dataset=None)
    assert torch_default.data.transform.resize == "torch"
    assert make_trainer(tmp_path / "tiny", val_dataset=None).data.transform.resize == "torch"
    _, torch_images = first_batch(torch_default)
    assert not torch.allclose(torch_images, images, atol=1e-3)  # the test can tell them apart
    with pytest.raises(ConfigError, match="resize must be one of"):
        make_trainer(tmp_path / "bad", model_cls=ReleasedTinyModel, overrides={"resize": "cv2"})


# --- DDP ----------------------------------------------------------------------------------

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _ddp_worker(out_dir: str, steps: int) -> None:
    trainer = make_trainer(out_dir, overrides={"dropout": 0.0, "batch_size": 4}, val_dataset=None,
                           max_steps=steps)
    assert trainer.world_size == int(os.environ["WORLD_SIZE"])
    trainer.fit()
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    steps = 4  # crosses an epoch boundary (10 images, batch 4: 4+4+2)
    single = make_trainer(tmp_path / "one", overrides={"dropout": 0.0, "batch_size": 4},
                          val_dataset=None, max_steps=steps)
    single.fit()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", __file__,
         str(tmp_path / "two"), str(steps)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint_file(tmp_path / "two" / "last.pt")
    assert state["trainer"]["world_size"] == 2 and state["trainer"]["step"] == steps
    for name, value in single.model.state_dict().items():
        assert torch.allclose(value, state["state_dict"][name], atol=1e-6), name


if __name__ == "__main__":
    _ddp_worker(sys.argv[1], int(sys.argv[2]))


def test_best_checkpoint_follows_the_metric_direction() -> None:
    """best.pt keeps the highest PointM but the lowest BackgroundPeaks (the metric table)."""
    from refbench.errors import UnknownNameError
    from refbench.train.trainer import Trainer, resolve_selection_metric

    def run(metric: str, values: list[float]) -> float:
        trainer = Trainer.__new__(Trainer)
        trainer.selection_metric = metric
        trainer.best = {"metric": metric, "value": None, "epoch": None, "step": None}
        trainer.epoch = trainer.step = 0
        for value in values:
            trainer._select(value)
        return trainer.best["value"]

    assert run("PointM", [0.2, 0.5, 0.3]) == 0.5
    assert run("BackgroundPeaks", [0.2, 0.5, 0.1, 0.3]) == 0.1
    with pytest.raises(UnknownNameError, match="PointM"):
        resolve_selection_metric({}, "PointMM")
