"""Time PCNet training steps and predictions on CPU with the small preset (prints figures)."""

from __future__ import annotations

import argparse
import time

import torch
from refbench_pcnet.model import PCNet

from refbench.api import Batch, Expression


def make_batch(size: int, input_size: int, proposals: int) -> Batch:
    """Random images, two expressions with cues per image, box proposals."""
    images = torch.randn(size, 3, input_size, input_size)
    masks = torch.zeros(size, proposals, input_size, input_size, dtype=torch.bool)
    step = input_size // 4
    for p in range(min(proposals, 4)):
        masks[:, p, p * step : (p + 1) * step, p * step : (p + 1) * step] = True
    expressions = [
        [
            Expression(f"the red circle {i}", image_id=i, sent_id=0, cues=("circle", "red circle")),
            Expression(f"the blue square {i}", image_id=i, sent_id=1, cues=("square",)),
        ]
        for i in range(size)
    ]
    return Batch(images, expressions, {"proposals": masks})


def main() -> None:
    """Print seconds per training step and per prediction, median of --repeats."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PCNet({"preset": "small"})
    cfg = model.config
    batch = make_batch(args.batch, cfg["input_size"], cfg["num_proposals"])
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=float(cfg["lr"]))
    step_times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        losses = model.training_step(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
    model.eval()
    predict_times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        model.predict(batch)
        predict_times.append(time.perf_counter() - start)
    step = sorted(step_times[1:])[len(step_times[1:]) // 2]
    predict = sorted(predict_times[1:])[len(predict_times[1:]) // 2]
    print(f"small preset, batch {args.batch}, {args.threads} threads")
    print(f"train step  {step:.3f} s  ({args.batch / step:.0f} images/s)")
    print(f"predict     {predict:.3f} s  ({2 * args.batch / predict:.0f} expressions/s)")
    print("losses " + ", ".join(f"{k}={v.item():.4f}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
