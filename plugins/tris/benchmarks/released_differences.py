"""The measured effect of each difference between TRIS's released code and refbench's variant.

Runs on the golden fixture (tests/reference_fixture.py) with the seeded weights in the
official checkpoint layout (tests/reference_weights.py, the golden run's seed): RANDOM
weights, so the figures say how large each difference is on these maps and inputs, not what
it does to a trained model's scores. Each row changes one thing in the released variant and
reports the largest change of the 10x10 response (relative to the released map's peak), and
PointM / mIoU / Hit over the 10 val sentences under the tris protocol.

    python plugins/tris/benchmarks/released_differences.py        # from the repository root
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from refbench_tris import TRIS  # noqa: E402

from refbench.api import CLIP_MEAN, CLIP_STD  # noqa: E402
from refbench.data.refer import ReferDataset  # noqa: E402
from refbench.data.transforms import ModelImageTransform  # noqa: E402
from refbench.metrics.functional import box_hit  # noqa: E402
from refbench.metrics.scoring import score_batch  # noqa: E402
from tests.reference_fixture import write_reference_refer  # noqa: E402
from tests.reference_weights import seeded_state_dict  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "tris" / "tris_golden.json"


def load(folder: Path) -> tuple[TRIS, ReferDataset]:
    golden = json.loads(GOLDEN.read_text())
    weights = seeded_state_dict(golden["checkpoint"]["manifest"], golden["seeds"]["checkpoint"],
                                golden["centred_keys"])
    path = folder / golden["checkpoint"]["name"]
    torch.save({"model": weights, "optimizer": {}, "lr_scheduler": {}, "epoch": 0}, path)
    write_reference_refer(folder / "data")
    return TRIS.from_checkpoint(path).eval(), ReferDataset(folder / "data", "refcocog-val-u")


@torch.no_grad()
def evaluate(model: TRIS, dataset: ReferDataset, transform: ModelImageTransform,
             protocol: str = "tris", overlap: str = "once", one_by_one: bool = True,
             box_rule: str | None = None) -> dict:
    """10x10 maps of every val sentence and the tris-protocol records (one image at a time)."""
    from dataclasses import replace

    from refbench.metrics.protocols import get_protocol

    chosen = get_protocol(protocol)
    if box_rule is not None:
        chosen = replace(chosen, box_rule=box_rule)
    small, records = [], []
    for image_id, expressions in dataset.expressions_by_image().items():
        image = dataset.load_image(image_id)
        tensor = transform(image)[None]
        visual = model.encode_images(tensor)
        if one_by_one:
            text = torch.cat([model.encode_texts([e.text]) for e in expressions])
        else:
            text = model.encode_texts([e.text for e in expressions])
        maps = model.response(visual.expand(len(expressions), -1, -1, -1), text[:, None, :])
        small.append(maps[:, 0])
        upsampled = torch.nn.functional.interpolate(maps, size=tensor.shape[-2:],
                                                    mode="bilinear", align_corners=False)
        gt = torch.from_numpy(np.stack([dataset.mask(e.ann_id, overlap=overlap)
                                        for e in expressions]))
        boxes = torch.tensor([dataset.box(e.ann_id) for e in expressions], dtype=torch.float64)
        records += score_batch(torch.relu(upsampled[:, 0]), image.shape[0], image.shape[1], gt,
                               boxes, chosen)
    inter = np.array([r["inter"] for r in records], dtype=float)
    union = np.array([r["union"] for r in records], dtype=float)
    return {
        "maps": torch.cat(small),
        "peaks": [r["peak"] for r in records],
        "PointM": 100 * np.mean([r["point_hit"] for r in records]),
        "mIoU": 100 * np.mean(inter / np.maximum(union, 1)),
        "Hit": 100 * np.mean([r["box_hit"] for r in records]),
    }


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        model, dataset = load(Path(folder))
        released = ModelImageTransform.for_model(model.config)
        base = evaluate(model, dataset, released)
        peak = float(base["maps"].abs().max())
        rows = [("released variant (= the official validate run)", base)]

        clip_torch = ModelImageTransform(320, CLIP_MEAN, CLIP_STD, "torch")
        rows.append(("CLIP mean/std and torch resize", evaluate(model, dataset, clip_torch)))
        imagenet_torch = ModelImageTransform(320, model.config["mean"], model.config["std"],
                                             "torch")
        rows.append(("torch resize (ImageNet mean/std)",
                     evaluate(model, dataset, imagenet_torch)))
        inputs = [(released(dataset.load_image(i)) - clip_torch(dataset.load_image(i))).abs().max()
                  for i in dataset.image_ids]
        model.text_length = None
        rows.append(("77-token text (end token kept)", evaluate(model, dataset, released)))
        model.text_length = 20
        fusion, model.fusion = model.fusion, None
        rows.append(("no bilateral block (attn_multi 0)", evaluate(model, dataset, released)))
        model.fusion = fusion
        rows.append(("texts of an image encoded together",
                     evaluate(model, dataset, released, one_by_one=False)))
        rows.append(("ground truth: union of polygons",
                     evaluate(model, dataset, released, overlap="union")))
        rows.append(("Box Hit: pixel centre in the float box",
                     evaluate(model, dataset, released, box_rule="centre")))

    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(1000, 4, generator=generator, dtype=torch.float64) * 40 + 2
    offsets = torch.randint(-1, 2, (1000, 2), generator=generator)
    corners = torch.stack([boxes[:, 1] + boxes[:, 3], boxes[:, 0] + boxes[:, 2]], dim=1)
    peaks = (corners.floor().long() + offsets).clamp(min=0)  # peaks within a pixel of an edge
    differ = (box_hit(peaks, boxes, "integer") != box_hit(peaks, boxes, "centre")).sum()
    print(f"Box Hit rules disagree on {int(differ)} of 1000 peaks within one pixel of a random "
          "fractional box's far corner")
    print(f"max |input difference|, released vs CLIP/torch preprocessing: "
          f"{max(float(v) for v in inputs):.3f} (after normalisation)")
    print("| change | max |Δ map| / peak | peaks moved | PointM | mIoU | Hit |")
    print("|---|---|---|---|---|---|")
    for name, result in rows:
        change = float((result["maps"] - base["maps"]).abs().max()) / peak
        moved = sum(a != b for a, b in zip(result["peaks"], base["peaks"]))
        print(f"| {name} | {change:.3g} | {moved} of {len(base['peaks'])} | "
              f"{result['PointM']:.1f} | {result['mIoU']:.2f} | {result['Hit']:.1f} |")


if __name__ == "__main__":
    main()
