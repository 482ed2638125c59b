"""Run folders written by hand for the report tests (format: docs/runs.md).

`write_run` writes config.json, env.json, predictions.jsonl and metrics.json; metrics come from
the caller (fixed numbers for golden files) or are computed here with plain NumPy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def make_records(
    n: int, hit_rate: float, seed: int, split_prefix: int = 0, template: str | None = None
) -> list[dict[str, Any]]:
    """`n` prediction records with random hits (rate `hit_rate`) and random inter/union."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        union = int(rng.integers(50, 200))
        hit = bool(rng.random() < hit_rate)
        inter = int(rng.integers(0, union + 1)) if hit else int(rng.integers(0, union // 4 + 1))
        record = {
            "key": f"{split_prefix + i // 3}:{i}:{i}",
            "image_id": split_prefix + i // 3,
            "ref_id": i,
            "ann_id": 1000 + i,
            "sent_id": i,
            "text": f"thing {i}",
            "height": 20,
            "width": 30,
            "peak": [int(rng.integers(0, 20)), int(rng.integers(0, 30))],
            "point_hit": hit,
            "box_hit": hit or bool(rng.random() < 0.2),
            "inter": inter,
            "union": union,
            "on_background": (not hit) and bool(rng.random() < 0.5),
        }
        if template is not None:
            record["template"] = template
        records.append(record)
    return records


def numpy_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """PointM, mIoU, oIoU, Hit and BackgroundPeaks of `records`, by plain NumPy."""
    hits = np.array([r["point_hit"] for r in records], dtype=float)
    inter = np.array([r["inter"] for r in records], dtype=float)
    union = np.array([r["union"] for r in records], dtype=float)
    return {
        "PointM": float(hits.mean()),
        "mIoU": float((inter / union).mean()),
        "oIoU": float(inter.sum() / union.sum()),
        "Hit": float(np.mean([r["box_hit"] for r in records])),
        "BackgroundPeaks": float(np.mean([r["on_background"] for r in records])),
    }


def write_run(
    root: Path,
    model: str,
    split: str,
    records: list[dict[str, Any]],
    name: str = "20240501-120000_abc1234",
    metrics: dict[str, float] | None = None,
    protocol: str = "tris",
    sentences: str = "all",
    started_at: str = "2024-05-01T12:00:00",
    extra: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    data_root: str = "/nonexistent",
    write_metrics: bool = True,
) -> Path:
    """Write a run folder runs/<model>/<split>/<name> under `root` and return it."""
    folder = Path(root) / "runs" / model / split / name
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model": model,
        "model_config": model_config or {"input_size": 32, "map_size": 10},
        "weights": "none",
        "checkpoint": None,
        "checkpoint_sha256": None,
        "split": split,
        "data_root": data_root,
        "dataset": {},
        "protocol": protocol,
        "sentences": sentences,
        "proposals": None,
        "batch_size": 4,
        "device": "cpu",
        "seed": 0,
        "save_masks": False,
    }
    env = {
        "refbench_version": "0.1.0",
        "git_sha": "abc1234def",
        "git_dirty": False,
        "started_at": started_at,
        "model_distribution": {"name": "refbench", "version": "0.1.0"},
        "plugins": [{"name": "refbench", "version": "0.1.0"}],
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "env.json").write_text(json.dumps(env, indent=2))
    with open(folder / "predictions.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    if write_metrics:
        result = {
            "split": split,
            "protocol": protocol,
            "sentences": sentences,
            "n": len(records),
            "metrics": metrics if metrics is not None else numpy_metrics(records),
        }
        result.update(extra or {})
        (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    return folder
