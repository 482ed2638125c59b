"""Run PCNet's official training losses (zaiquanyang/Boosting_WRIS) on CPU; record the outputs.

Run in a throwaway venv OUTSIDE the refbench tree, from an empty work folder (README.md here
gives the exact commands). This script is refbench's; it imports the official modules from
--pcnet-repo and calls them on the fixed inputs of `loss_inputs.py`. No full model is built:
`TRIS_Loss`, `cbs_loss`, `compute_cam_loss` and `c4_foward` of model_prog_v5.TRIS are called
unbound on a SimpleNamespace `self` carrying `args` (args.py's defaults). It patches at run
time only `.cuda()` (a no-op) and `torch.tensor(..., device='cuda:0')` (made on the CPU).

The frozen CLIP of `cbs_loss` is the official CLIP class with ViT-B/32 shapes and
txt_length 20, its weights seeded by tests/reference_weights.py (never written to disk).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

CLIP_SEED = 16  # the frozen ViT-B/32 of cbs_loss
# (clip_fg, clip_bg): all four at stages 0 and 1, the default (both off) at stages 2 and 3
FLAG_CASES = [(False, False), (True, False), (False, True), (True, True)]
GRADIENT_CASE = {"stages": 4, "pair": 1}
NEGATIVES = 3


def refuse_breakpoint(*args, **kwargs):
    raise RuntimeError("the official code reached breakpoint(): an input needs requires_grad")


def number(value) -> float:
    return float(torch.as_tensor(value).detach().double())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pcnet-repo", required=True, type=Path)
    parser.add_argument("--project", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    options = parser.parse_args()
    sys.path.insert(0, str(options.pcnet_repo))
    here = options.project / "tests" / "golden" / "pcnet"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import reference_runtime as helpers  # tests/golden/reference_runtime.py

    load_by_path = helpers.load_by_path
    inputs_module = load_by_path("loss_inputs", here / "loss_inputs.py")
    weights = load_by_path("reference_weights", options.project / "tests" / "reference_weights.py")
    helpers.patch_for_cpu()
    sys.breakpointhook = refuse_breakpoint

    import CLIP.clip as clip  # noqa: E402 - the official package, after sys.path
    import CLIP.clip.model as clip_model_module
    import model.model_prog_v5 as prog
    import model.utils as official_utils
    from args import get_parser

    torch.set_grad_enabled(True)
    data = inputs_module.make_inputs()
    batch = inputs_module.BATCH
    relu_maps = inputs_module.relu_maps
    args = get_parser().parse_args(["--negative_samples", str(NEGATIVES), "--size", "320",
                                    "--max_query_len", "20"])
    this = SimpleNamespace(args=args, training=True,
                           logit_scale=torch.tensor(float(np.log(1 / 0.07))))
    this.TRIS_Loss = lambda *a, **k: prog.TRIS.TRIS_Loss(this, *a, **k)
    this.cbs_loss = lambda *a, **k: prog.TRIS.cbs_loss(this, *a, **k)
    golden: dict = {"args": {k: getattr(args, k) for k in (
        "softmax_T", "FOCAL_P", "FOCAL_LAMBDA", "w1", "w2", "w3", "w4", "w5", "div_loc",
        "clip_fg", "clip_bg")}}

    # --- 1. TRIS_Loss + multilabel_soft_margin_loss, as compute_cam_loss ------------------
    vis_x = torch.zeros(batch, 1, inputs_module.GRID, inputs_module.GRID)
    labels = torch.eye(batch)
    cls = []
    for scores in data["scores"]:
        cls_out, _ = prog.TRIS.TRIS_Loss(this, scores, vis_x)
        cls.append(F.multilabel_soft_margin_loss(cls_out, labels))
    golden["cls"] = [number(v) for v in cls]

    # --- 2. SAM_shrink_loss per stage ------------------------------------------------------
    samples = {"zs_mask": data["proposals"], "clip_score": data["clip_scores"],
               "target": torch.zeros(batch, 1, 320, 320), "same_img_mark_0": data["same_image"]}
    # The official functions stop in the debugger when their result needs no gradient.
    maps = relu_maps(data["fields"].clone().requires_grad_(True))
    other_maps = relu_maps(data["other_fields"].clone().requires_grad_(True))
    matches = [official_utils.SAM_shrink_loss(m, samples) for m in maps]
    golden["left"] = [number(left) for left, _ in matches]
    golden["right"] = [number(right) for _, right in matches]

    # --- 4. SAM_diversify_loss per stage ---------------------------------------------------
    golden["diversify"] = [
        number(official_utils.SAM_diversify_loss(m, o, samples, loss_mask=data["same_image"]))
        for m, o in zip(maps, other_maps)
    ]

    # --- 5. cbs_loss per stage and clip_fg/clip_bg case, with a seeded ViT-B/32 -----------
    clip_model = clip_model_module.CLIP(512, 224, 12, 768, 32, 77, 20, 49408, 512, 8, 12)
    manifest = weights.manifest_of(clip_model.state_dict())
    clip_model.load_state_dict(weights.seeded_state_dict(manifest, CLIP_SEED), strict=True)
    clip_model.eval()
    positive_tokens = torch.stack(
        [clip.tokenize(s).squeeze(0)[:20] for s in inputs_module.POSITIVE_SENTENCES])
    negative_tokens = torch.stack([
        torch.stack([clip.tokenize(s).squeeze(0)[:20] for s in group])
        for group in inputs_module.NEGATIVE_SENTENCES])
    samples["neg_word_ids"] = negative_tokens
    sigmoid_maps = torch.sigmoid(F.interpolate(
        data["fields"].reshape(-1, 1, 10, 10), size=(320, 320), mode="bilinear",
        align_corners=False)).reshape(inputs_module.STAGES, batch, 1, 320, 320)
    # A recorder around the CLIP towers (values unchanged): the masked images the official
    # code builds and the features it gets back, so refbench's fast tests can check the
    # arithmetic without a ViT-B/32 (its slow tests run one).
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for tower in ("encode_image", "encode_text"):
        def recorded(x, _tower=tower, _original=getattr(clip_model, tower)):
            out = _original(x)
            calls.append((_tower, x.detach().clone(), (out[1] if _tower == "encode_text"
                                                       else out).detach().clone()))
            return out
        setattr(clip_model, tower, recorded)
    arrays = {}
    calibration = []
    with torch.no_grad():
        for stage in range(inputs_module.STAGES):
            row = {}
            for clip_fg, clip_bg in FLAG_CASES if stage < 2 else FLAG_CASES[:1]:
                args.clip_fg, args.clip_bg = clip_fg, clip_bg
                calls.clear()
                clip_loss, cbs = prog.TRIS.cbs_loss(
                    this, img_x=data["images"], sig_out=sigmoid_maps[stage],
                    word_id=positive_tokens, same_ref_word_ids=None, clip_model=clip_model,
                    samples=samples, target=None)
                row[f"clip_loss_fg{int(clip_fg)}_bg{int(clip_bg)}"] = number(clip_loss)
                row["cbs"] = number(cbs)
                if (clip_fg, clip_bg) != (False, False):
                    continue
                # cbs_loss's calls: image(fg), text(pos), image(bg), text(pos), image(fg),
                # then text(negatives of image i) for each i
                towers = [c[0] for c in calls]
                assert towers == ["encode_image", "encode_text"] * 2 + ["encode_image"] + [
                    "encode_text"] * batch, towers
                for label, index in [("foreground", 0), ("background", 2)]:
                    masked = calls[index][1]
                    arrays[f"stage{stage}_{label}_every16"] = masked[..., ::16, ::16].numpy()
                    row[f"{label}_sum"] = float(masked.double().sum())
                    row[f"{label}_abs_sum"] = float(masked.double().abs().sum())
                    arrays[f"stage{stage}_{label}_features"] = calls[index][2].numpy()
                if stage == 0:
                    arrays["positive_text_features"] = calls[1][2].numpy()
                    arrays["negative_text_features"] = torch.stack(
                        [c[2] for c in calls[5:]]).numpy()
            calibration.append(row)
    args.clip_fg = args.clip_bg = False
    golden["calibration"] = calibration

    # --- 3 and 6. c4_foward's stage loop and combination, stages 1..4, every pair ----------
    # compute_cam_loss is replaced by the prepared maps of each stage (in call order) and the
    # per-stage cls/fg/cbs computed above; SAM_shrink_loss, SAM_diversify_loss, the random
    # pair and the averaging are the official code's. The pair is forced through
    # model_prog_v5.random.choice, which records the range it was asked to choose from.
    def run_c4(stages: int, pair: int | None, fields, other_fields) -> tuple:
        relu = relu_maps(fields)
        relu_other = relu_maps(other_fields)
        calls = {"main": 0, "other": 0}

        def compute_cam_loss(fuse_v, fuse_l, img_x, vis_x, word_id=None, samples=None,
                             clip_model=None, cam_loss=True):
            if cam_loss:
                k = calls["main"]
                calls["main"] += 1
                return (relu[k], None, cls[k], torch.tensor(calibration[k][
                    "clip_loss_fg0_bg0"]), torch.tensor(calibration[k]["cbs"]))
            k = calls["other"]
            calls["other"] += 1
            return relu_other[k], None, None, None, None

        asked: list = []

        def choice(options):
            asked.append(list(options))
            return pair

        this.args.K_Iters = stages
        this.compute_cam_loss = compute_cam_loss
        this.c4_vis_project = lambda x: x
        this.global_lan_project = lambda x: x
        this.refer_core = lambda k, prior_vis, prior_main_lan, current_sub_lan=None, \
            vis_x=None: (prior_main_lan, prior_vis, prior_main_lan[None].repeat(batch, 1, 1))
        prog.random.choice = choice
        width = 4
        out = prog.TRIS.c4_foward(
            this, img_x=data["images"], vis_x=torch.ones(batch, width, 10, 10),
            ref_lan=torch.ones(2 * batch, width), ref_word=torch.ones(2 * batch, 20),
            sub_ref_lan=torch.ones(2 * batch, stages, width),
            sub_ref_word=torch.ones(2 * batch, stages, 20), samples=samples,
            clip_model=None, div_loc=True)
        return out, asked

    combinations = []
    for stages in range(1, inputs_module.STAGES + 1):
        for pair in (range(stages - 1) if stages >= 3 else [None]):
            out, asked = run_c4(stages, pair, data["fields"].clone().requires_grad_(True),
                                data["other_fields"].clone().requires_grad_(True))
            names = ["cls", "fg", "cbs", "shrink", "anchor", "diversify"]
            combinations.append({"stages": stages, "pair": pair, "asked": asked,
                                 **{n: number(v) for n, v in zip(names, out)}})
    golden["combinations"] = combinations

    # gradients of shrink, anchor and diversify with respect to the 10x10 responses
    for index, name in [(3, "shrink"), (4, "anchor"), (5, "diversify")]:
        fields = data["fields"].clone().requires_grad_(True)
        other_fields = data["other_fields"].clone().requires_grad_(True)
        out, _ = run_c4(GRADIENT_CASE["stages"], GRADIENT_CASE["pair"], fields, other_fields)
        out[index].backward()
        for label, leaf in [("fields", fields), ("other_fields", other_fields)]:
            if leaf.grad is not None:  # None: the loss does not depend on that input
                arrays[f"grad_{name}_{label}"] = leaf.grad.numpy()
    golden["gradient_case"] = GRADIENT_CASE
    golden["arrays"] = sorted(arrays)

    commit = subprocess.run(["git", "-C", str(options.pcnet_repo), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    golden = {
        "reference": {"repository": "https://github.com/zaiquanyang/Boosting_WRIS",
                      "commit": commit, "torch": torch.__version__},
        "inputs": {"seed": inputs_module.SEED, "clip_seed": CLIP_SEED,
                   "positive_tokens": positive_tokens.tolist(),
                   "negative_tokens": negative_tokens.tolist()},
        "clip_manifest": manifest,
    } | golden
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "pcnet_losses_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(options.out / "pcnet_losses_golden.npz", **arrays)
    print(json.dumps({k: golden[k] for k in ("cls", "left", "right", "diversify")}))
    print(json.dumps(golden["combinations"]))


if __name__ == "__main__":
    main()
