"""Figures with matplotlib: response maps with their peak (PCNet Fig. 3), each stage's map
(Fig. 9), methods side by side on the same expressions (Fig. 10), and training curves.

Run folders do not store response maps, so `refbench show` recomputes them: the model is rebuilt
from the run's config.json (model, model_config, checkpoint) and run on the run's split, with the
runner's input transform and the run's protocol (its resize, normalisation, peak rule and
ground-truth rule, from refbench.metrics). The peak, the stage peaks and the hit/miss label come
from the run's predictions.jsonl where it holds them, so a figure never disagrees with the
run's metrics; a recomputed peak that differs from the recorded one is noted on stderr.
Figures are drawn on a `matplotlib.figure.Figure` with the Agg canvas (no pyplot state).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refbench.errors import ConfigError, DataError
from refbench.io import print_note
from refbench.report.runs import Run


@dataclass
class MapItem:
    """One expression drawn in a figure.

    image: [H, W, 3] uint8; ground_truth: [H, W] bool (the protocol's ground-truth rule);
    response_map: [H, W] float, the protocol's map at the image size; peak: (y, x), the run's
    peak; stage_maps: [N, H, W] float or None, each stage's protocol map; stage_peaks: N (y, x)
    or None; point_hit: the run's PointM verdict (None: the ground truth at `peak`).
    """

    key: str
    text: str
    image: np.ndarray
    ground_truth: np.ndarray
    response_map: np.ndarray
    peak: tuple[int, int]
    stage_maps: np.ndarray | None = None
    stage_peaks: list[tuple[int, int]] | None = None
    point_hit: bool | None = None

    @property
    def hit(self) -> bool:
        """The peak falls inside the ground truth (PointM), as the run scored it."""
        if self.point_hit is not None:
            return self.point_hit
        return bool(self.ground_truth[self.peak])


def run_protocol(run: Run):
    """The `Protocol` a run was scored with (the default protocol when it records none)."""
    from refbench.metrics.protocols import DEFAULT_PROTOCOL, get_protocol

    return get_protocol(run.metrics.get("protocol") or run.config.get("protocol")
                        or DEFAULT_PROTOCOL)


def _protocol_maps(maps, height: int, width: int, protocol: Any) -> tuple[np.ndarray, list]:
    """Maps [E, h, w] -> (the protocol's maps [E, H, W] as NumPy, their peaks [(y, x)] * E)."""
    from refbench.metrics.functional import peak_yx, protocol_maps

    resized = protocol_maps(maps.detach().float().cpu(), (height, width), protocol)
    return resized.numpy(), [(int(y), int(x)) for y, x in peak_yx(resized).tolist()]


def _yx(value: Any) -> tuple[int, int]:
    return int(value[0]), int(value[1])


def load_run_model(run: Run, device: str = "cpu"):
    """The model a run evaluated, rebuilt from its config.json (model, model_config, checkpoint)."""
    from refbench.registry import load_model

    config = run.config
    overrides = dict(config.get("model_config") or {})
    model = load_model(str(config["model"]), checkpoint=config.get("checkpoint"), **overrides)
    return model.to(device).eval()


def choose_keys(run: Run, n: int, keys: Sequence[str] | None = None, seed: int = 0) -> list[str]:
    """`keys` if given (each must be in the run), else `n` keys sampled (seeded) from the run."""
    available = [str(r["key"]) for r in run.records()]
    if keys:
        missing = [k for k in keys if k not in set(available)]
        if missing:
            raise DataError(f"run {run.path} has no expression {missing[0]}; pick keys from its predictions.jsonl")
        return list(keys)
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(available), size=min(n, len(available)), replace=False)
    return [available[i] for i in sorted(picked)]


def compute_items(
    run: Run, keys: Sequence[str], data_root: str | Path | None = None, model: Any = None,
    device: str = "cpu",
) -> list[MapItem]:
    """Recompute response maps of `run`'s model for `keys` on the run's split.

    Maps are the run's protocol maps; peaks, stage peaks and hits are the run's records where
    they hold them, else computed by the protocol's rules (what the runner would record).
    """
    import torch

    from refbench.api import Batch
    from refbench.data.refer import ReferDataset
    from refbench.data.transforms import ModelImageTransform

    root = data_root or run.config.get("data_root")
    if not root:
        raise ConfigError(f"run {run.path} records no data_root; pass --data-root")
    dataset = ReferDataset(root, run.split)
    expressions = {e.key: e for e in dataset.expressions("all")}
    records = {str(r["key"]): r for r in run.records()}
    protocol = run_protocol(run)
    model = model if model is not None else load_run_model(run, device)
    transform = ModelImageTransform.for_model(model.config)  # as the runner builds it
    items: list[MapItem] = []
    moved: list[str] = []
    for key in keys:
        expression = expressions.get(key)
        if expression is None:
            raise DataError(f"split {run.split} under {root} has no expression {key}")
        record = records.get(key, {})
        image = dataset.load_image(expression.image_id)
        height, width = image.shape[:2]
        batch = Batch(transform(image)[None].to(device), [[expression]])
        with torch.no_grad():
            prediction = model.predict(batch)
        prediction.check(batch)
        responses, peaks = _protocol_maps(prediction.response_maps, height, width, protocol)
        peak = _yx(record["peak"]) if record.get("peak") is not None else peaks[0]
        if peak != peaks[0]:
            moved.append(key)
        stages, stage_peaks = None, None
        if prediction.stage_maps is not None:
            stages, stage_peaks = _protocol_maps(prediction.stage_maps[0], height, width, protocol)
            if record.get("stage_peaks") is not None:
                stage_peaks = [_yx(p) for p in record["stage_peaks"]]
        hit = record.get("point_hit")
        items.append(
            MapItem(key, expression.text, image,
                    np.asarray(dataset.mask(expression.ann_id, overlap=protocol.gt_overlap),
                               dtype=bool),
                    responses[0], peak, stages, stage_peaks, None if hit is None else bool(hit))
        )
    if moved:
        print_note(
            f"the model's map now peaks elsewhere than run {run.path} recorded for "
            f"{len(moved)} of {len(items)} expressions (first: {moved[0]}); the figure marks the "
            "recorded peaks and verdicts"
        )
    return items


def new_figure(rows: int, cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.4 * cols, 2.4 * rows), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _normalised(response: np.ndarray) -> np.ndarray:
    low, high = float(response.min()), float(response.max())
    return (response - low) / (high - low) if high > low else np.zeros_like(response)


def draw_map(
    axis, item: MapItem, response: np.ndarray, title: str, peak: tuple[int, int] | None = None
) -> None:
    """`response` [H, W] over the image with a star at `peak` (default: the map's first maximum,
    the protocol's peak rule)."""
    axis.imshow(item.image)
    axis.imshow(_normalised(response), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    if peak is None:
        peak = np.unravel_index(int(np.argmax(response)), response.shape)
    # the paper marks peaks in green (Fig. 3)
    axis.plot([peak[1]], [peak[0]], marker="*", color="lime", markersize=12, markeredgecolor="black")
    axis.set_title(title, fontsize=8)


def draw_inputs(axes_row, item: MapItem) -> None:
    axes_row[0].imshow(item.image)
    axes_row[0].set_title("\n".join(textwrap.wrap(item.text, 28)[:2]), fontsize=8)
    # the target keeps its colours, everything else is dimmed
    dimmed = item.image * np.where(item.ground_truth, 1.0, 0.25)[..., None]
    axes_row[1].imshow(dimmed.astype(np.uint8))
    axes_row[1].set_title("ground truth", fontsize=8)


def save_figure(figure, out: str | Path) -> int:
    import io

    from refbench.io import atomic_write_bytes

    for axis in figure.axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out, buffer.getvalue())
    return len(figure.axes)


def verdict(item: MapItem) -> str:
    """The label a map panel carries: ``hit`` or ``miss``, the run's PointM verdict."""
    return "hit" if item.hit else "miss"


def draw_show(items: Sequence[MapItem], out: str | Path, label: str = "") -> int:
    """One row per item: image + sentence, ground truth, map with peak, each stage's map.

    Returns the number of panels drawn (rows x (3 + stages)).
    """
    if not items:
        raise DataError("no expressions to draw")
    stages = max((0 if i.stage_maps is None else i.stage_maps.shape[0]) for i in items)
    figure, axes = new_figure(len(items), 3 + stages)
    for row, item in zip(axes, items):
        draw_inputs(row, item)
        draw_map(row[2], item, item.response_map, f"{label} {verdict(item)}".strip(), item.peak)
        for number in range(stages):
            if item.stage_maps is not None and number < item.stage_maps.shape[0]:
                peak = item.stage_peaks[number] if item.stage_peaks else None
                draw_map(row[3 + number], item, item.stage_maps[number], f"stage {number + 1}",
                         peak)
            else:
                row[3 + number].axis("off")
    return save_figure(figure, out)


def draw_compare(columns: Sequence[tuple[str, Sequence[MapItem]]], out: str | Path) -> int:
    """One row per expression: image + sentence, ground truth, then each method's map.

    `columns` is [(method label, items in the same key order)]. Returns the panel count.
    """
    if not columns or not columns[0][1]:
        raise DataError("no expressions to draw")
    first = columns[0][1]
    figure, axes = new_figure(len(first), 2 + len(columns))
    for index, row in enumerate(axes):
        draw_inputs(row, first[index])
        for offset, (label, items) in enumerate(columns):
            item = items[index]
            draw_map(row[2 + offset], item, item.response_map, f"{label} {verdict(item)}",
                     item.peak)
    return save_figure(figure, out)


def show_run(
    run: Run, out: str | Path, n: int = 16, keys: Sequence[str] | None = None, seed: int = 0,
    data_root: str | Path | None = None, model: Any = None, device: str = "cpu",
) -> int:
    """Draw `n` sampled (or the given) expressions of `run`; returns the panel count."""
    chosen = choose_keys(run, n, keys, seed)
    items = compute_items(run, chosen, data_root, model, device)
    return draw_show(items, out, label=run.model)


def show_compare(
    runs: Sequence[Run], out: str | Path, n: int = 8, keys: Sequence[str] | None = None,
    seed: int = 0, data_root: str | Path | None = None, device: str = "cpu",
) -> int:
    """Draw the runs' maps side by side on the same expressions; runs must share a split."""
    if len(runs) < 2:
        raise ConfigError("show --compare needs at least two runs")
    splits = {r.split for r in runs}
    if len(splits) > 1:
        raise ConfigError(f"runs to compare are on different splits ({', '.join(sorted(splits))}); pick runs of one split")
    common = set.intersection(*({str(r["key"]) for r in run.records()} for run in runs))
    if keys:
        missing = [k for k in keys if k not in common]
        if missing:
            raise DataError(f"expression {missing[0]} is not in every run; pick keys all runs scored")
        chosen = list(keys)
    else:
        ordered = sorted(common)
        if not ordered:
            raise DataError("the runs share no expression")
        rng = np.random.default_rng(seed)
        chosen = [ordered[i] for i in sorted(rng.choice(len(ordered), size=min(n, len(ordered)), replace=False))]
    columns = [(run.model, compute_items(run, chosen, data_root, None, device)) for run in runs]
    return draw_compare(columns, out)


def plot_curves(log_path: str | Path, out: str | Path) -> int:
    """Training curves from train_log.jsonl: one panel per ``loss*`` key, and the learning rate.

    Accepts the log file or a training-run folder holding train_log.jsonl; returns the panel count.
    """
    from refbench.io import read_jsonl

    path = Path(log_path)
    if path.is_dir():
        path = path / "train_log.jsonl"
    if not path.is_file():
        raise DataError(f"training log {path} does not exist; pass a train_log.jsonl or its folder")
    raw, _ = read_jsonl(path)
    records = []
    for line in raw:
        if line.get("kind", "train") != "train":
            continue  # validation lines carry metrics, not losses
        flat = {k: v for k, v in line.items() if not isinstance(v, dict)}
        # the trainer nests the named losses: {"loss": total, "losses": {"cls": ...}}
        for name, value in (line.get("losses") or {}).items():
            flat[f"loss/{name}"] = value
        records.append(flat)
    names = sorted({k for r in records for k, v in r.items()
                    if k.startswith("loss") and isinstance(v, (int, float))})
    if not names:
        raise DataError(f"{path} has no 'loss*' entries to plot")
    panels = names + (["lr"] if any("lr" in r for r in records) else [])
    figure, axes = new_figure(1, len(panels))
    for axis, name in zip(axes[0], panels):
        points = [(r.get("step", i), r[name]) for i, r in enumerate(records) if isinstance(r.get(name), (int, float))]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, linewidth=1)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
    figure.tight_layout()
    import io

    from refbench.io import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(out, buffer.getvalue())
    return len(figure.axes)
