"""Run TRIS's official code (fawnliu/TRIS) on CPU and record the golden outputs in this folder.

Run in a throwaway venv OUTSIDE the refbench tree, from an empty work folder (README.md here
gives the exact commands). This script is refbench's; it imports the official modules from
--tris-repo and calls them. It patches at run time only what stops them running offline on a
CPU: `.cuda()` calls, CUDA memory/synchronise calls, a hard-coded ``device='cuda:0'``, CLIP's
download (our seeded weights are served instead) and the TensorBoard writer (a recorder).

Weights come from tests/reference_weights.py (seed below) in the official key layout; the data
set from tests/reference_fixture.py. Nothing of the official code is copied into refbench.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_SEED = 14  # TRIS checkpoint (backbone, projections, bilateral block)
CALIBRATION_SEED = 15  # the frozen ViT-B/32 of the calibration losses
CENTRED = ["vis_project.weight"]  # see reference_weights.centred: maps that are not flat
CHECKPOINT_NAME = "ckpt_320_epoch_0_best.pth"
FORWARD_CASES = [  # (ref_id, sentence index) answered alone, at batch size 1
    (11, 0), (12, 0), (13, 0), (13, 1), (14, 1), (16, 1),
]
BATCH_OF_TWO = [(11, 0), (13, 0)]  # one forward with both images and both sentences
EMBEDDED = [(11, 0), (13, 1), (14, 1), (12, 0)]  # 10, 21, 25 and 29 CLIP tokens
TRACKED = [  # parameters whose first training step is recorded
    "vis_project.weight", "lan_project.bias", "attn_fusion.v_proj1.0.weight",
    "attn_fusion.t_output.0.bias", "backbone.visual.conv1.weight",
    "backbone.transformer.resblocks.0.attn.in_proj_weight", "backbone.token_embedding.weight",
    "backbone.visual.attnpool.c_proj.weight", "logit_scale",
]
TRACKED_BUFFERS = ["backbone.visual.bn1.running_mean", "backbone.visual.layer4.2.bn3.running_var"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tris-repo", required=True, type=Path)
    parser.add_argument("--project", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    options = parser.parse_args()
    work = Path.cwd()
    sys.path.insert(0, str(options.tris_repo))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import reference_runtime as helpers  # tests/golden/reference_runtime.py

    load_by_path = helpers.load_by_path
    weights = load_by_path("reference_weights", options.project / "tests" / "reference_weights.py")
    fixture = load_by_path("reference_fixture", options.project / "tests" / "reference_fixture.py")
    helpers.patch_for_cpu()
    helpers.serve_state_dicts()

    import CLIP.clip as clip  # noqa: E402 - the official package, after sys.path
    import CLIP.clip.clip as clip_module
    import CLIP.clip.model as clip_model_module
    import model.model_stage1 as stage1
    import train_stage1
    import validate as validate_module
    from args import get_parser
    from dataset.ReferDataset import ReferDataset
    from dataset.transform import get_transform
    from logger import create_logger
    from utils.util import load_checkpoint, save_checkpoint

    # CLIP's download: our seeded RN50 file; train_stage1 loads "ViT-B-32" from the work folder.
    rn50 = weights.seeded_state_dict(
        weights.manifest_of(helpers.clip_state(clip_model_module, "RN50", 20)), CHECKPOINT_SEED)
    torch.save(rn50, work / "RN50.pt")
    vit_manifest = weights.manifest_of(helpers.clip_state(clip_model_module, "ViT-B/32", 20))
    torch.save(weights.seeded_state_dict(vit_manifest, CALIBRATION_SEED), work / "ViT-B-32")
    clip_module._download = lambda url, root: str(work / "RN50.pt")

    data = work / "data"
    fixture.write_reference_refer(data)
    official_root = fixture.official_layout(data, work / "official-data")
    logger = create_logger()
    validate_module.logger = logger
    train_stage1.logger = logger
    writer = helpers.RecordingWriter()
    train_stage1.writer = writer

    def arguments(*extra: str):
        return get_parser().parse_args([
            "--dataset", "refcocog", "--splitBy", "umd", "--refer_data_root",
            str(official_root), "--size", "320", "--max_query_len", "20",
            "--output", str(work / "weights"), *extra,
        ])

    # --- the checkpoint, written by the official save_checkpoint -------------------------
    args = arguments()
    model = stage1.TRIS(args)
    manifest = weights.manifest_of(model.state_dict())
    state = weights.seeded_state_dict(manifest, CHECKPOINT_SEED, CENTRED)
    model.load_state_dict(state, strict=True)
    groups = model.trainable_parameters()
    optimizer = torch.optim.AdamW([
        {"params": groups[0], "lr": args.lr * args.lr_multi, "weight_decay": args.weight_decay},
        {"params": groups[1], "lr": args.lr, "weight_decay": args.weight_decay},
    ], lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / 100) ** 0.9)
    save_checkpoint(0, model, optimizer, scheduler, args=args, checkpoint_name=CHECKPOINT_NAME)
    stored = torch.load(work / "weights" / CHECKPOINT_NAME, map_location="cpu")
    structure = {
        "keys": sorted(stored),
        "epoch": stored["epoch"],
        "optimizer_param_groups": [
            {k: v for k, v in g.items() if k != "params"} | {"num_params": len(g["params"])}
            for g in stored["optimizer"]["param_groups"]
        ],
        "lr_scheduler": {k: v for k, v in stored["lr_scheduler"].items() if k != "lr_lambdas"},
    }

    # --- validate.py's own run: batch 1, every sentence ----------------------------------
    samples: list[dict] = []
    original_iu, original_hit = validate_module.compute_mask_IU, validate_module.isCorrectHit

    def compute_mask_iu(target, pred):
        inter, union = original_iu(target, pred)
        samples.append({"inter": int(inter), "union": int(union)})
        return inter, union

    def is_correct_hit(boxes, heatmap, gt_mask=None):
        hit, max_loc, hitm = original_hit(boxes, heatmap, gt_mask)
        samples[-1].update({"box_hit": int(hit), "point_hit": int(hitm),
                            "peak": [int(max_loc[0]), int(max_loc[1])],
                            "boxes": np.asarray(boxes).tolist()})
        return hit, max_loc, hitm

    validate_module.compute_mask_IU = compute_mask_iu
    validate_module.isCorrectHit = is_correct_hit
    results: list = []
    original_validate = validate_module.validate

    def recording_validate(*a, **k):
        value = original_validate(*a, **k)
        results.append([float(v) for v in value])
        return value

    validate_module.validate = recording_validate
    printed = io.StringIO()
    eval_args = arguments("--batch_size", "1", "--test_split", "val", "--resume", "--pretrain",
                          CHECKPOINT_NAME, "--eval")
    with contextlib.redirect_stdout(printed):
        validate_module.main(eval_args)
    log_lines = printed.getvalue().splitlines()
    final_line = " ".join(next(line for line in reversed(log_lines)
                               if line.startswith("Test: mIOU")).split())
    val_set = ReferDataset(refer_data_root=str(official_root), dataset="refcocog",
                           splitBy="umd", split="val", image_transforms=get_transform(320, False),
                           eval_mode=True, max_tokens=20)
    order = []
    for ref_id in val_set.ref_ids:
        ref = val_set.refer.Refs[ref_id]
        for j, sentence in enumerate(ref["sentences"]):
            order.append({"ref_id": int(ref_id), "image_id": int(ref["image_id"]),
                          "sent_id": int(sentence["sent_id"]), "sentence_index": j,
                          "text": sentence["sent"]})
    assert len(order) == len(samples), (len(order), len(samples))
    per_sample = [o | s for o, s in zip(order, samples)]

    # --- forward cases, through the official data set and model --------------------------
    model = stage1.TRIS(args).eval()
    load_checkpoint(arguments("--pretrain", CHECKPOINT_NAME, "--eval"), model)
    captured: list[torch.Tensor] = []
    original_upsample = stage1.Upsample

    def upsample(x, size):
        captured.append(x.detach().clone())
        return original_upsample(x, size)

    stage1.Upsample = upsample
    position = {ref_id: i for i, ref_id in enumerate(val_set.ref_ids)}
    arrays: dict[str, np.ndarray] = {}
    cases = []
    for name, pairs in [(f"single_{i}", [pair]) for i, pair in enumerate(FORWARD_CASES)] + [
        ("batch_of_two", BATCH_OF_TWO)
    ]:
        images, tokens = [], []
        for ref_id, j in pairs:
            item, _ = val_set[position[ref_id]]
            images.append(item["img"])
            tokens.append(item["word_ids"][0, :, j])
        captured.clear()
        with torch.no_grad():
            output = model(torch.stack(images), torch.stack(tokens))
        arrays[f"{name}_scores"] = captured[0][:, 0].numpy()  # [B, 10, 10]
        arrays[f"{name}_map_every4"] = output[:, 0, ::4, ::4].numpy()  # [B, 80, 80]
        arrays[f"{name}_map_max"] = output.amax(dim=(1, 2, 3)).numpy()
        cases.append({"name": name, "pairs": [list(p) for p in pairs],
                      "tokens": [t.tolist() for t in tokens]})
    first_image, _ = val_set[position[11]]
    arrays["input_image201_every4"] = first_image["img"][:, ::4, ::4].numpy()
    arrays["input_image201_sum"] = np.asarray(first_image["img"].double().sum().item())
    embedded_tokens = []
    for ref_id, j in EMBEDDED:
        item, _ = val_set[position[ref_id]]
        embedded_tokens.append(item["word_ids"][0, :, j])
    with torch.no_grad():
        _, hidden = model.backbone.encode_text(torch.stack(embedded_tokens))
    arrays["text_embeddings"] = hidden.numpy()
    embedded = [{"pair": list(p), "tokens": t.tolist(),
                 "num_tokens": len(clip.tokenize(val_set.refer.Refs[p[0]]["sentences"][p[1]]
                                                 ["sent"])[0].nonzero())}
                for p, t in zip(EMBEDDED, embedded_tokens)]

    # --- training: train_stage1.train_one_epoch on the train split -----------------------
    train_args = arguments("--batch_size", "3", "--negative_samples", "3", "--epoch", "15")
    stage1.Upsample = original_upsample
    model = stage1.TRIS(train_args)
    model.load_state_dict(state, strict=True)
    train_set = ReferDataset(refer_data_root=str(official_root), dataset="refcocog",
                             splitBy="umd", split="train", size=320, max_tokens=20,
                             image_transforms=get_transform(320, train=True), eval_mode=False,
                             negative_samples=3)
    drawn: list[dict] = []
    original_getitem = ReferDataset.__getitem__

    def getitem(self, index):
        sample, target = original_getitem(self, index)
        drawn.append({"ref_id": int(self.ref_ids[index]), "sentence": target["sentences"],
                      "negatives": list(sample["neg_sents"])})
        return sample, target

    ReferDataset.__getitem__ = getitem
    loader = torch.utils.data.DataLoader(train_set, batch_size=3, num_workers=0, shuffle=True)
    groups = model.trainable_parameters()
    optimizer = torch.optim.AdamW([
        {"params": groups[0], "lr": train_args.lr * train_args.lr_multi,
         "weight_decay": train_args.weight_decay},
        {"params": groups[1], "lr": train_args.lr, "weight_decay": train_args.weight_decay},
    ], lr=train_args.lr, weight_decay=train_args.weight_decay)
    total = len(loader) * train_args.epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / total) ** 0.9)
    named = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    snapshots: list[dict] = []
    original_step = optimizer.step

    def step(*a, **k):
        before = {n: named[n].detach().clone() for n in TRACKED}
        grads = {n: (None if named[n].grad is None else named[n].grad.detach().clone())
                 for n in TRACKED}
        out = original_step(*a, **k)
        snapshots.append({
            n: {
                "delta_sum": float((named[n].detach() - before[n]).double().sum()),
                "delta_abs_sum": float((named[n].detach() - before[n]).double().abs().sum()),
                "delta_corner": (named[n].detach() - before[n]).flatten()[:8].tolist(),
                "grad_abs_sum": None if grads[n] is None else float(grads[n].double().abs().sum()),
            } for n in TRACKED
        } | {n: {"value_corner": buffers[n].flatten()[:8].tolist()} for n in TRACKED_BUFFERS}
          | {"lrs": [g["lr"] for g in optimizer.param_groups]})
        return out

    optimizer.step = step
    calibration_clip, _ = clip.load("ViT-B-32", device="cpu", jit=False, txt_length=20)
    calibration_clip.eval()
    os.chdir(work)
    with contextlib.redirect_stdout(io.StringIO()):
        train_stage1.train_one_epoch(loader, model, optimizer, 0, 0, train_args, 0,
                                     calibration_clip, lr_scheduler=scheduler)
    losses: dict[int, dict[str, float]] = {}
    for name, value, iteration in writer.scalars:
        losses.setdefault(iteration, {})[name] = value
    batches = [drawn[i : i + 3] for i in range(0, len(drawn), 3)]

    commit = subprocess.run(["git", "-C", str(options.tris_repo), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    golden = {
        "reference": {"repository": "https://github.com/fawnliu/TRIS", "commit": commit,
                      "torch": torch.__version__},
        "seeds": {"checkpoint": CHECKPOINT_SEED, "calibration_clip": CALIBRATION_SEED},
        "centred_keys": CENTRED,
        "checkpoint": {"name": CHECKPOINT_NAME, "manifest": manifest,
                       "structure": structure},
        "calibration_clip_manifest": vit_manifest,
        "validate": {"metrics": dict(zip(["oIoU", "mIoU", "Hit"], results[0])),
                     "final_line": final_line, "samples": per_sample},
        "forward": cases,
        "embedded": embedded,
        "training": {"batch_size": 3, "negative_samples": 3, "epochs": 15,
                     "steps_per_epoch": len(loader), "batches": batches,
                     "losses": [losses[i] for i in sorted(losses)], "steps": snapshots},
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "tris_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(options.out / "tris_golden.npz", **arrays)
    print(json.dumps(golden["validate"]["metrics"]), final_line)
    print(json.dumps(golden["training"]["losses"]))


if __name__ == "__main__":
    main()
