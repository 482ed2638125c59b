"""Run PCNet's official code (zaiquanyang/Boosting_WRIS) on CPU and record golden outputs here.

Run in a throwaway venv OUTSIDE the refbench tree, from an empty work folder (README.md here
gives the exact commands). This script is refbench's; it imports the official modules from
--repo and calls them. It patches at run time only what stops them running offline on a CPU:
`.cuda()` calls, CUDA memory calls, a hard-coded ``device='cuda…'``, CLIP's download (our
seeded weights are served instead), validate.py's import of a ``demo`` module the repository
does not ship, and the data paths hard-coded in dataset/ReferDataset.py (a symlink at
/home/yzq/mnt/data/coco points at the fixture).

Weights come from tests/reference_weights.py (seed below) in the official key layout; the data
set and PCNet's phrase and SAM files from tests/reference_fixture.py. Nothing of the official
code is copied into refbench.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_SEED = 28  # the PCNet checkpoint (backbone, projections, four attention blocks)
CENTRED = ["c4_vis_project.weight"]  # see reference_weights.centred: maps that are not flat
CHECKPOINT_NAME = "ckpt_320_epoch_0_best.pth"
HARD_CODED_ROOT = Path("/home/yzq/mnt/data/coco")  # dataset/ReferDataset.py's phrase/mask dirs
K_VALUES = (1, 3)
BATCH_OF_TWO = [(11, 0), (13, 0)]  # (ref_id, sentence index): one eval forward with both
CALIBRATION_SEED = 25  # the frozen ViT-B/32 of the cbs loss
TRAIN_STEPS = 2
TRACKED = [  # parameters whose update is recorded after each training step
    "c4_vis_project.weight", "global_lan_project.bias", "attn_fusion_vl.0.v_proj1.0.weight",
    "attn_fusion_vl.2.t_output.0.bias", "backbone.visual.conv1.weight",
    "backbone.transformer.resblocks.0.attn.in_proj_weight", "logit_scale",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True, type=Path)
    parser.add_argument("--project", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    options = parser.parse_args()
    work = Path.cwd()
    sys.path.insert(0, str(options.repo))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import reference_runtime as helpers  # tests/golden/reference_runtime.py

    load_by_path = helpers.load_by_path
    weights = load_by_path("reference_weights", options.project / "tests" / "reference_weights.py")
    fixture = load_by_path("reference_fixture", options.project / "tests" / "reference_fixture.py")
    helpers.patch_for_cpu()
    helpers.serve_state_dicts()

    import CLIP.clip.clip as clip_module
    import CLIP.clip.model as clip_model_module
    import model.model_prog_v5 as prog

    # validate.py imports get_norm_cam from a demo module the repository does not ship; its
    # result only feeds figures that validate never draws (`if idx < 0`), so a stand-in that
    # returns its input is served.
    sys.modules["demo"] = types.SimpleNamespace(get_norm_cam=lambda cam: cam)
    import validate as validate_module
    from args import get_parser
    from dataset.ReferDataset import ReferDataset
    from dataset.transform import get_transform
    from logger import create_logger
    from utils.util import load_checkpoint, save_checkpoint

    # CLIP's download: our seeded RN50 file (the backbone's initial weights; the checkpoint
    # replaces them).
    rn50 = helpers.clip_state(clip_model_module, "RN50", 20)
    torch.save(weights.seeded_state_dict(weights.manifest_of(rn50), CHECKPOINT_SEED),
               work / "RN50.pt")
    clip_module._download = lambda url, root: str(work / "RN50.pt")

    data = work / "data"
    fixture.write_reference_refer(data, image_format="jpg")
    pcnet_files = fixture.write_pcnet_files(data)
    official_root = fixture.official_layout(data, work / "official-data")
    if HARD_CODED_ROOT.is_symlink() or HARD_CODED_ROOT.exists():
        HARD_CODED_ROOT.unlink()
    HARD_CODED_ROOT.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(official_root.resolve(), HARD_CODED_ROOT)
    validate_module.logger = create_logger()

    def arguments(k_iters: int, *extra: str):
        return get_parser().parse_args([
            "--dataset", "refcocog", "--splitBy", "umd", "--refer_data_root",
            str(official_root), "--size", "320", "--max_query_len", "20",
            "--attn_multi_vis", "0.1", "--attn_multi_text", "0.1", "--K_Iters", str(k_iters),
            "--output", str(work / "weights"), *extra,
        ])

    # --- the checkpoint, written by the official save_checkpoint -------------------------
    args = arguments(1)
    model = prog.TRIS(args)
    manifest = weights.manifest_of(model.state_dict())
    state = weights.seeded_state_dict(manifest, CHECKPOINT_SEED, CENTRED)
    model.load_state_dict(state, strict=True)
    groups = model.trainable_parameters()
    optimizer = torch.optim.AdamW([
        {"params": groups[0], "lr": args.lr * args.lr_multi, "weight_decay": args.weight_decay},
        {"params": groups[1], "lr": args.lr, "weight_decay": args.weight_decay},
    ], lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / 100) ** 0.9)
    (work / "weights").mkdir(exist_ok=True)
    save_checkpoint(0, model, optimizer, scheduler, args=args, checkpoint_name=CHECKPOINT_NAME)
    stored = torch.load(work / "weights" / CHECKPOINT_NAME, map_location="cpu")
    structure = {
        "keys": sorted(stored),
        "epoch": stored["epoch"],
        "num_tensors": len(stored["model"]),
        "attn_fusion_vl_parameters": sum(v.numel() for k, v in stored["model"].items()
                                         if k.startswith("attn_fusion_vl.")),
    }

    val_set = ReferDataset(refer_data_root=str(official_root), dataset="refcocog",
                           splitBy="umd", bert_tokenizer="clip", split="val", size=320,
                           image_transforms=get_transform(320, train=False), eval_mode=True,
                           max_tokens=20)
    position = {ref_id: i for i, ref_id in enumerate(val_set.ref_ids)}
    arrays: dict[str, np.ndarray] = {}
    runs = {}
    captured: list[torch.Tensor] = []
    original_upsample = prog.Upsample

    def upsample(x, size):
        captured.append(x.detach().clone())
        return original_upsample(x, size)

    prog.Upsample = upsample
    for k_iters in K_VALUES:
        eval_args = arguments(k_iters, "--batch_size", "1", "--test_split", "val", "--resume",
                              "--pretrain", CHECKPOINT_NAME, "--eval")
        model = prog.TRIS(eval_args)
        load_checkpoint(eval_args, model)
        model.eval()
        # --- validate.py's validate: batch 1, the first sentence of each ref ---------------
        samples: list[dict] = []
        original_iu, original_hit = validate_module.compute_mask_IU, validate_module.isCorrectHit

        def compute_mask_iu(target, pred, samples=samples, original_iu=original_iu):
            inter, union = original_iu(target, pred)
            if pred.dtype == torch.bool:  # the map's mask (SAM masks are float)
                samples[-1].update({"inter": int(inter), "union": int(union)})
            return inter, union

        def is_correct_hit(boxes, heatmap, gt_mask=None, samples=samples,
                           original_hit=original_hit):
            hit, max_loc, hitm = original_hit(boxes, heatmap, gt_mask)
            samples.append({"box_hit": int(hit), "point_hit": int(hitm),
                            "peak": [int(max_loc[0]), int(max_loc[1])],
                            "boxes": np.asarray(boxes).tolist()})
            return hit, max_loc, hitm

        validate_module.compute_mask_IU = compute_mask_iu
        validate_module.isCorrectHit = is_correct_hit
        loader = torch.utils.data.DataLoader(val_set, batch_size=1, num_workers=0,
                                             shuffle=False)
        printed = io.StringIO()
        captured.clear()
        with contextlib.redirect_stdout(printed):
            metrics = validate_module.validate(eval_args, loader, model, 0)
        validate_module.compute_mask_IU, validate_module.isCorrectHit = original_iu, original_hit
        names = ["oIoU", "mIoU", "Hit", "SAM_mIoU", "SAM_oIoU", "HitM"]
        final_line = " ".join(next(line for line in reversed(printed.getvalue().splitlines())
                                   if line.startswith("Test: mIOU")).split())
        # one Upsample call per stage and sentence: [K per sample]
        per_stage = torch.stack([c[0, 0] for c in captured]).view(len(samples), k_iters, 10, 10)
        arrays[f"k{k_iters}_scores"] = per_stage.numpy()  # [refs, K, 10, 10], before Upsample
        order = []
        for ref_id in val_set.ref_ids:
            ref = val_set.refer.Refs[ref_id]
            order.append({"ref_id": int(ref_id), "image_id": int(ref["image_id"]),
                          "sent_id": int(ref["sentences"][0]["sent_id"]),
                          "text": ref["sentences"][0]["sent"]})
        assert len(order) == len(samples), (len(order), len(samples))
        # --- the ReLU'd 320 map of each ref's first sentence, as validate's model call -----
        maps = []
        with torch.no_grad():
            for ref_id in val_set.ref_ids:
                item, _ = val_set[position[ref_id]]
                tokens = item["word_ids"][:, :, 0]
                cue_tokens = item["llm_word_ids"][:, :3, :, 0]
                output = model(item["img"][None], tokens, cue_tokens, samples={})
                maps.append(output[0, 0])
        stacked = torch.stack(maps)
        arrays[f"k{k_iters}_map_every8"] = stacked[:, ::8, ::8].numpy()
        arrays[f"k{k_iters}_map_max"] = stacked.amax(dim=(1, 2)).numpy()
        runs[f"k{k_iters}"] = {
            "metrics": dict(zip(names, [float(v) for v in metrics])),
            "final_line": final_line,
            "samples": [o | s for o, s in zip(order, samples)],
        }

    # --- one eval forward with two images and two sentences (K = 3): the released code's
    # batch-wide attention and its reshape in forward_Qt_Kt ------------------------------------
    model = prog.TRIS(arguments(3, "--pretrain", CHECKPOINT_NAME, "--eval"))
    load_checkpoint(arguments(3, "--pretrain", CHECKPOINT_NAME, "--eval"), model)
    model.eval()
    images, tokens, cue_tokens = [], [], []
    for ref_id, j in BATCH_OF_TWO:
        item, _ = val_set[position[ref_id]]
        images.append(item["img"])
        tokens.append(item["word_ids"][0, :, j])
        cue_tokens.append(item["llm_word_ids"][0, :3, :, j])
    captured.clear()
    with torch.no_grad():
        output = model(torch.stack(images), torch.stack(tokens), torch.stack(cue_tokens),
                       samples={})
    arrays["batch_of_two_scores"] = torch.stack([c[:, 0] for c in captured], dim=1).numpy()
    arrays["batch_of_two_map_every8"] = output[:, 0, ::8, ::8].numpy()
    first, _ = val_set[position[11]]
    arrays["input_image201_every4"] = first["img"][:, ::4, ::4].numpy()

    # --- training: train_prog.train_one_epoch on the train split, every loss term on -----------
    import random

    import train_prog

    train_prog.writer = writer = helpers.RecordingWriter()
    train_prog.logger = validate_module.logger
    train_prog.get_gpu_mem_info = lambda gpu_id=0: (0, 0, 0)
    vit_manifest = weights.manifest_of(helpers.clip_state(clip_model_module, "ViT-B/32", 20))
    torch.save(weights.seeded_state_dict(vit_manifest, CALIBRATION_SEED), work / "ViT-B-32.pt")
    clip_module._download = lambda url, root: str(
        work / ("ViT-B-32.pt" if "ViT-B-32" in url else "RN50.pt"))
    train_args = arguments(3, "--batch_size", "2", "--negative_samples", "1", "--w2", "1",
                           "--w3", "1", "--div_loc", "1", "--epoch", "15")
    prog.Upsample = original_upsample
    model = prog.TRIS(train_args)
    model.load_state_dict(state, strict=True)
    train_set = ReferDataset(refer_data_root=str(official_root), dataset="refcocog",
                             splitBy="umd", bert_tokenizer="clip", split="train", size=320,
                             max_tokens=20, image_transforms=get_transform(320, train=True),
                             eval_mode=False, negative_samples=1)
    drawn: list[dict] = []
    original_getitem, original_negatives = ReferDataset.__getitem__, ReferDataset.get_neg_samples

    def get_neg_samples(self, this_img_id, this_ref_id, sentences):
        value = original_negatives(self, this_img_id, this_ref_id, sentences)
        neg_sents, _, diff_ref_id, diff_choice, same = value
        drawn.append({"negatives": list(neg_sents), "other_ref_id": int(diff_ref_id),
                      "other_sentence_index": int(diff_choice), "same_image": bool(same)})
        return value

    def getitem(self, index):
        sample, target = original_getitem(self, index)
        ref = self.refer.Refs[self.ref_ids[index]]
        texts = [s["sent"] for s in ref["sentences"]]
        drawn[-1].update({"ref_id": int(self.ref_ids[index]),
                          "sentence_index": texts.index(target["sentences"])})
        return sample, target

    ReferDataset.__getitem__, ReferDataset.get_neg_samples = getitem, get_neg_samples
    loader = torch.utils.data.DataLoader(train_set, batch_size=2, num_workers=0, shuffle=True)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == TRAIN_STEPS:
            break
    ReferDataset.__getitem__, ReferDataset.get_neg_samples = original_getitem, original_negatives
    groups = model.trainable_parameters()
    optimizer = torch.optim.AdamW([
        {"params": groups[0], "lr": train_args.lr * train_args.lr_multi,
         "weight_decay": train_args.weight_decay},
        {"params": groups[1], "lr": train_args.lr, "weight_decay": train_args.weight_decay},
    ], lr=train_args.lr, weight_decay=train_args.weight_decay)
    total = len(loader) * train_args.epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / total) ** 0.9)
    named = dict(model.named_parameters())
    snapshots: list[dict] = []
    original_step = optimizer.step

    def step(*a, **k):
        before = {n: named[n].detach().clone() for n in TRACKED}
        out = original_step(*a, **k)
        snapshots.append({n: {
            "delta_sum": float((named[n].detach() - before[n]).double().sum()),
            "delta_abs_sum": float((named[n].detach() - before[n]).double().abs().sum()),
        } for n in TRACKED} | {"lrs": [g["lr"] for g in optimizer.param_groups]})
        return out

    optimizer.step = step
    pairs: list[int] = []
    original_choice = prog.random.choice

    def choice(options):
        value = original_choice(options)
        pairs.append(int(value))
        return value

    prog.random = types.SimpleNamespace(choice=choice)
    random.seed(0)
    calibration_clip, _ = clip_module.load("ViT-B/32", device="cpu", jit=False, txt_length=20)
    calibration_clip.eval()
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    with contextlib.redirect_stdout(io.StringIO()):
        train_prog.train_one_epoch(batches, model, optimizer, 0, 0, train_args, 0,
                                   calibration_clip, lr_scheduler=scheduler, amp_scaler=scaler,
                                   config=train_args)
    losses: dict[int, dict[str, float]] = {}
    for name, value, iteration in writer.scalars:
        if name.startswith(("train/", "optim/")):
            losses.setdefault(iteration, {})[name] = value
    training = {
        "args": {"batch_size": 2, "negative_samples": 1, "K_Iters": 3, "w1": 1, "w2": 1,
                 "w3": 1, "w4": 5, "w5": 2, "div_loc": 1, "epoch": 15,
                 "steps_per_epoch": len(loader)},
        "batches": [drawn[i: i + 2] for i in range(0, 2 * TRAIN_STEPS, 2)],
        "pairs": pairs,
        "losses": [losses[i] for i in sorted(losses)],
        "steps": snapshots,
        "calibration_clip_manifest": vit_manifest,
        "calibration_seed": CALIBRATION_SEED,
    }

    commit = subprocess.run(["git", "-C", str(options.repo), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    golden = {
        "reference": {"repository": "https://github.com/zaiquanyang/Boosting_WRIS",
                      "commit": commit, "torch": torch.__version__},
        "seed": CHECKPOINT_SEED,
        "centred_keys": CENTRED,
        "checkpoint": {"name": CHECKPOINT_NAME, "manifest": manifest, "structure": structure},
        "validate": runs,
        "batch_of_two": {"pairs": [list(p) for p in BATCH_OF_TWO], "k_iters": 3},
        "phrases": {f"{r}/{j}": p for (r, j), p in pcnet_files["phrases"].items()},
        "training": training,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "pcnet_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(options.out / "pcnet_golden.npz", **arrays)
    for name, run in runs.items():
        print(name, json.dumps(run["metrics"]), run["final_line"])
    print(json.dumps(training["losses"]), training["pairs"])


if __name__ == "__main__":
    main()
