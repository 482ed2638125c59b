"""The evaluation runner: images encoded once per batch, every expression scored by the harness.

Expressions are grouped by image; a DataLoader yields batches of images (resized and
normalised for the model) with their expressions, the model answers one response map per
expression, and `refbench.metrics.scoring.score_batch` scores each image's maps at the
original size. Records are appended to the run's predictions.jsonl after every batch, so a
killed run resumes where it stopped; metrics.json is written last, atomically.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from refbench.api import Batch, Expression, Prediction, RISModel, file_sha256
from refbench.data.transforms import ModelImageTransform
from refbench.errors import ConfigError, PredictionError, RefbenchError
from refbench.eval import distributed
from refbench.eval.provenance import environment, model_distribution
from refbench.eval.run_folder import (
    MAPS_FOLDER,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RunFolder,
    open_run,
)
from refbench.io import append_jsonl, atomic_write_json, atomic_writer, encode_rle, read_jsonl
from refbench.metrics.protocols import DEFAULT_PROTOCOL, Protocol, get_protocol


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class ImageGroups(Dataset):
    """One item per image: the model's input, the original size, and ground truth to score.

    Each item is a dict with ``image`` [3, S, S], ``image_id``, ``height``, ``width``,
    ``expressions`` (list[Expression]), ``gt_masks`` [E, H, W] bool (built by `protocol`'s
    ``gt_overlap`` rule), ``boxes`` [E, 4] (x, y, w, h), ``object_masks`` [1, H, W] bool (the
    union of every annotated object) and ``proposals`` [P, H, W] bool or None.
    """

    def __init__(
        self,
        dataset: Any,
        groups: Sequence[tuple[int, list[Expression]]],
        transform: Callable[[np.ndarray], torch.Tensor],
        proposal_store: Any = None,
        protocol: str | Protocol = DEFAULT_PROTOCOL,
    ) -> None:
        self.dataset = dataset
        self.groups = list(groups)
        self.transform = transform
        self.proposal_store = proposal_store
        self.gt_overlap = get_protocol(protocol).gt_overlap

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self._item(index)
        except RefbenchError as error:
            # Carried to the main process whole: DataLoader would re-raise it from a worker
            # with a multi-line traceback in the message.
            return {"error": error}

    def _item(self, index: int) -> dict[str, Any]:
        image_id, expressions = self.groups[index]
        image = self.dataset.load_image(image_id)
        height, width = int(image.shape[0]), int(image.shape[1])
        masks: dict[tuple[int, str], np.ndarray] = {}

        def mask(ann_id: int, overlap: str) -> np.ndarray:
            if (ann_id, overlap) not in masks:
                decoded = self.dataset.mask(ann_id, overlap=overlap)
                masks[ann_id, overlap] = np.asarray(decoded, dtype=bool)
            return masks[ann_id, overlap]

        gt_masks = torch.from_numpy(
            np.stack([mask(e.ann_id, self.gt_overlap) for e in expressions])
        )
        boxes = torch.tensor([self.dataset.box(e.ann_id) for e in expressions], dtype=torch.float64)
        # on_background only needs the union of all objects: computed here, in the worker.
        union = np.zeros((height, width), dtype=bool)
        for ann_id in self.dataset.annotation_ids(image_id):
            union |= mask(ann_id, "union")
        object_masks = torch.from_numpy(union)[None]
        proposals = None
        if self.proposal_store is not None:
            proposals = self.proposal_store.load(image_id, (height, width))
        return {
            "image": self.transform(image),
            "image_id": image_id,
            "height": height,
            "width": width,
            "expressions": expressions,
            "gt_masks": gt_masks,
            "boxes": boxes,
            "object_masks": object_masks,
            "proposals": proposals,
        }


def collate_groups(items: list[dict[str, Any]]) -> tuple[Batch, list[dict[str, Any]]]:
    """Stack images into a `Batch`; keep the per-image ground truth beside it.

    An item that failed to load carries its `RefbenchError`, which is returned in place of
    the batch so that the runner raises it in the main process with its one-line message.
    """
    for item in items:
        if "error" in item:
            return item["error"], []
    images = torch.stack([item["image"] for item in items])
    batch = Batch(images, [list(item["expressions"]) for item in items])
    metas = [{k: v for k, v in item.items() if k != "image"} for item in items]
    return batch, metas


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class Scorer:
    """Turns one batch's prediction into per-expression records (see docs/runs.md)."""

    def __init__(
        self, protocol: str, save_masks: bool, templates: dict[str, str] | None = None
    ) -> None:
        self.protocol = protocol
        self.save_masks = save_masks
        self.templates = templates or {}

    def __call__(self, prediction: Any, metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from refbench.metrics.functional import peak_yx, protocol_maps
        from refbench.metrics.scoring import score_batch

        records: list[dict[str, Any]] = []
        start = 0
        for meta in metas:
            expressions: list[Expression] = meta["expressions"]
            stop = start + len(expressions)
            maps = prediction.response_maps[start:stop].float()
            height, width = meta["height"], meta["width"]
            scored = score_batch(
                maps, height, width, meta["gt_masks"], meta["boxes"], self.protocol,
                proposals=meta["proposals"], object_masks=meta["object_masks"],
                return_masks=self.save_masks,
            )
            predicted_masks = None
            if self.save_masks:
                scored, predicted_masks = scored
            stage_peaks = None
            if prediction.stage_maps is not None:
                stages = prediction.stage_maps[start:stop].float()
                count = stages.shape[1]
                normalised = protocol_maps(stages.flatten(0, 1), (height, width), self.protocol)
                flat = peak_yx(normalised).tolist()
                stage_peaks = [flat[i * count : (i + 1) * count] for i in range(len(expressions))]
            for index, (expression, result) in enumerate(zip(expressions, scored)):
                record = {
                    "key": expression.key,
                    "image_id": expression.image_id,
                    "ref_id": expression.ref_id,
                    "ann_id": expression.ann_id,
                    "sent_id": expression.sent_id,
                    "text": expression.text,
                    "height": height,
                    "width": width,
                }
                record.update(_jsonable(result))
                if predicted_masks is not None:
                    record["rle"] = encode_rle(predicted_masks[index])
                if expression.key in self.templates:
                    record["template"] = self.templates[expression.key]
                if stage_peaks is not None:
                    record["stage_peaks"] = stage_peaks[index]
                records.append(record)
            start = stop
        return records


def save_response_maps(folder: Path, prediction: Any, metas: list[dict[str, Any]]) -> None:
    """One ``<image_id>.npz`` per image: ``keys`` [E], ``response`` [E, h, w] and, for
    multi-stage models, ``stages`` [E, N, h, w], float16 at the model's resolution."""
    start = 0
    for meta in metas:
        keys = [e.key for e in meta["expressions"]]
        stop = start + len(keys)
        arrays = {
            "keys": np.array(keys),
            "response": prediction.response_maps[start:stop].float().cpu().numpy().astype(
                np.float16
            ),
        }
        if prediction.stage_maps is not None:
            stages = prediction.stage_maps[start:stop].float().cpu().numpy()
            arrays["stages"] = stages.astype(np.float16)
        with atomic_writer(folder / f"{meta['image_id']}.npz", "maps folder") as handle:
            np.savez_compressed(handle, **arrays)
        start = stop


def compute_metrics(
    records: list[dict[str, Any]], run_config: dict[str, Any]
) -> dict[str, Any]:
    """The metrics.json content for `records` of a run with `run_config`."""
    from refbench.metrics.records import metrics_from_records, per_group

    unique = dedupe_records(records)
    result: dict[str, Any] = {
        "split": run_config.get("split"),
        "protocol": run_config.get("protocol"),
        "sentences": run_config.get("sentences"),
        "n": len(unique),
        "metrics": metrics_from_records(unique),
    }
    if any("template" in record for record in unique):
        result["per_template"] = per_group(unique, key="template")
    if run_config.get("chance") is not None:
        result["chance"] = run_config["chance"]
    return result


def dedupe_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with one line per key (the first), sorted by key for reproducible sums."""
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        seen.setdefault(record["key"], record)
    return [seen[key] for key in sorted(seen)]


def _attach_cues(
    groups: dict[int, list[Expression]], cue_table: dict[str, tuple[str, ...]]
) -> dict[int, list[Expression]]:
    return {
        image_id: [
            dataclasses.replace(e, cues=tuple(cue_table.get(e.key, ()))) for e in expressions
        ]
        for image_id, expressions in groups.items()
    }


def _templates(dataset: Any, groups: dict[int, list[Expression]]) -> dict[str, str]:
    """SynthRef: the grammar template of every sentence, by expression key."""
    if not dataset.info.is_synthetic:
        return {}
    templates: dict[str, str] = {}
    for expressions in groups.values():
        for expression in expressions:
            sentence = dataset.sentence(expression.key)
            template = (getattr(sentence, "extra", None) or {}).get("template")
            if template is not None:
                templates[expression.key] = str(template)
    return templates


def _chance(dataset: Any) -> dict[str, Any] | None:
    if not dataset.info.is_synthetic:
        return None
    from refbench.data.identity import refs_sha256
    from refbench.synth import cached_stats

    # Chance levels of PointM (random point, random object, ...), overall and per template;
    # computed once per refs file and split, then read from the cache.
    summary = cached_stats(dataset.data_root, dataset.info.id, refs_sha256(dataset))
    per_template = {
        template: {k: v for k, v in values.items() if k != "sentences"}
        for template, values in summary.get("per_template", {}).items()
    }
    return _jsonable({"PointM": summary["overall"], "per_template": per_template})


def _protocol_rules(protocol: str) -> dict[str, Any]:
    """Every rule of the protocol, so that a run says what its name meant when it ran."""
    rules = dataclasses.asdict(get_protocol(protocol))
    return {k: v for k, v in rules.items() if k not in ("name", "description", "source")}


def run_config(
    model: RISModel,
    dataset: Any,
    *,
    protocol: str,
    sentences: str,
    proposals: str | None,
    cues: str | None,
    batch_size: int,
    device: str,
    seed: int,
    save_masks: bool,
    checkpoint: str | Path | None,
    num_expressions: int,
    save_maps: bool = False,
    chance: dict[str, Any] | None,
    cue_store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config.json of a run (see docs/runs.md)."""
    return _jsonable(
        {
            "model": model.name,
            "model_config": model.config,
            "weights": model.weights_description,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
            "split": dataset.info.id,
            "data_root": str(dataset.data_root),
            "dataset": dataset.metadata(),
            "protocol": protocol,
            "protocol_rules": _protocol_rules(protocol),
            "sentences": sentences,
            "proposals": proposals,
            "cues": cues,
            "cue_store": cue_store,
            "batch_size": int(batch_size),
            "device": str(device),
            "seed": int(seed),
            "save_masks": bool(save_masks),
            "save_maps": bool(save_maps),
            "num_expressions": int(num_expressions),
            "chance": chance,
        }
    )


def evaluate(
    model: RISModel,
    dataset: Any,
    *,
    protocol: str = "tris",
    sentences: str = "all",
    batch_size: int = 8,
    device: str = "cpu",
    num_workers: int = 0,
    out_dir: str | Path = "runs",
    run_dir: str | Path | None = None,
    resume: bool = True,
    save_masks: bool = False,
    proposals: str | None = None,
    cues: str | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    save_maps: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on `dataset` into a run folder; return the metrics.json content.

    `out_dir` is the runs root (``runs/``); `run_dir` resumes that folder explicitly; with
    `resume`, an unfinished run with the same config under `out_dir` is continued. The
    returned dict also holds ``run_dir`` (not written to metrics.json). Under torchrun each
    rank scores ``images[rank::world_size]`` and rank 0 writes the folder. `save_maps` keeps
    every response map (and each stage's map) at the model's resolution under ``maps/``.
    """
    from refbench.metrics.protocols import SENTENCE_MODES, get_protocol

    get_protocol(protocol)
    if sentences not in SENTENCE_MODES:
        raise ConfigError(
            f"unknown sentence mode {sentences!r}; use one of {', '.join(SENTENCE_MODES)}"
        )
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    seed_everything(seed)
    ctx = distributed.setup(device)
    try:
        return _evaluate(
            model, dataset, ctx, protocol=protocol, sentences=sentences, batch_size=batch_size,
            device=device, num_workers=num_workers, out_dir=out_dir, run_dir=run_dir,
            resume=resume, save_masks=save_masks, proposals=proposals, cues=cues, seed=seed,
            progress=progress, checkpoint=checkpoint, save_maps=save_maps,
        )
    finally:
        distributed.teardown(ctx)


def _evaluate(
    model: RISModel, dataset: Any, ctx: distributed.DistContext, *, protocol: str,
    sentences: str, batch_size: int, device: str, num_workers: int, out_dir: str | Path,
    run_dir: str | Path | None, resume: bool, save_masks: bool, proposals: str | None,
    cues: str | None, seed: int, progress: bool, checkpoint: str | Path | None,
    save_maps: bool = False,
) -> dict[str, Any]:
    groups = dataset.expressions_by_image(sentences)
    if model.num_cues > 0:
        from refbench.cues import ensure_cues, load_cues

        if ctx.world_size > 1:  # ranks must not build one cache at once: it must exist already
            cues = cues or ("template" if dataset.info.is_synthetic else "heuristic")
            cue_table = load_cues(dataset, cues, model.num_cues)
        else:
            cues, cue_table = ensure_cues(dataset, cues, model.num_cues)
        groups = _attach_cues(groups, cue_table)
        from refbench.cues.store import describe_cue_store

        cue_store = describe_cue_store(dataset, cues)
    else:
        cues = None
        cue_store = None
    proposal_store = None
    if proposals is not None:
        from refbench.proposals import load_proposals

        proposal_store = load_proposals(dataset, proposals)
    templates = _templates(dataset, groups)
    num_expressions = sum(len(v) for v in groups.values())
    config = run_config(
        model, dataset, protocol=protocol, sentences=sentences, proposals=proposals, cues=cues,
        batch_size=batch_size, device=device, seed=seed, save_masks=save_masks,
        checkpoint=checkpoint, num_expressions=num_expressions, save_maps=save_maps,
        chance=_chance(dataset) if ctx.is_main else None, cue_store=cue_store,
    )

    # Rank 0 owns the folder: it opens and locks it and reads what is done; the others follow.
    run: RunFolder | None = None
    opened: tuple[str | None, set[str], str | None] = (None, set(), None)
    if ctx.is_main:
        env = environment(
            model_name=model.name, device=device, seed=seed, world_size=ctx.world_size
        )
        try:
            run = open_run(out_dir, config, env, resume_dir=run_dir, resume=resume)
            try:
                opened = (str(run.path), _finished_keys(run.path / PREDICTIONS_FILE), None)
            except BaseException:
                run.release()
                run = None
                raise
        except RefbenchError as error:
            if not ctx.active:
                raise
            opened = (None, set(), str(error))
    folder_name, done, refusal = distributed.broadcast(opened, ctx)
    if refusal is not None:
        raise RefbenchError(refusal)  # every rank stops with rank 0's one-line reason
    folder = Path(folder_name)
    try:
        return _run_in_folder(
            model, dataset, ctx, folder, config, groups, done, templates, proposal_store,
            fresh=run is not None and not run.resumed, protocol=protocol,
            batch_size=batch_size, device=device, num_workers=num_workers, save_masks=save_masks,
            progress=progress, save_maps=save_maps,
        )
    finally:
        if run is not None:
            run.release()


def _run_in_folder(
    model: RISModel, dataset: Any, ctx: distributed.DistContext, folder: Path,
    config: dict[str, Any], groups: dict[int, list[Expression]], done: set[str],
    templates: dict[str, str], proposal_store: Any, *, fresh: bool, protocol: str,
    batch_size: int, device: str, num_workers: int, save_masks: bool, progress: bool,
    save_maps: bool,
) -> dict[str, Any]:
    """Score what `folder` does not hold yet, then write its metrics (rank 0 holds its lock)."""
    written = 0
    try:
        pending = [
            (image_id, [e for e in groups[image_id] if e.key not in done]) for image_id in groups
        ]
        pending = [(image_id, exprs) for image_id, exprs in pending if exprs]
        total_pending = sum(len(exprs) for _, exprs in pending)
        mine = distributed.shard(pending, ctx)

        model = model.to(device).eval()
        loader = DataLoader(
            ImageGroups(dataset, mine, ModelImageTransform.for_model(model.config),
                        proposal_store, protocol),
            batch_size=batch_size, shuffle=False, num_workers=num_workers,
            collate_fn=collate_groups, persistent_workers=False,
        )
        steps = distributed.max_over_ranks(len(loader), ctx)
        scorer = Scorer(protocol, save_masks, templates)
        with _progress(progress and ctx.is_main, total_pending) as advance:
            handle = open(folder / PREDICTIONS_FILE, "a", encoding="utf-8") if ctx.is_main else None
            try:
                batches = iter(loader)
                for _ in range(steps):
                    item = next(batches, None)
                    records: list[dict[str, Any]] = []
                    if item is not None:
                        batch, metas = item
                        if isinstance(batch, RefbenchError):
                            raise batch
                        batch = batch.to(device)
                        with torch.inference_mode():
                            prediction = model.predict(batch)
                        check_prediction(prediction, batch, model)
                        records = scorer(prediction, metas)
                        if save_maps:
                            save_response_maps(folder / MAPS_FOLDER, prediction, metas)
                    records = distributed.gather_to_main(records, ctx)
                    if handle is not None and records:
                        append_jsonl(handle, records)
                        written += len(records)
                        advance(len(records))
            finally:
                if handle is not None:
                    handle.close()
        result: dict[str, Any] | None = None
        if ctx.is_main:
            records, _ = read_jsonl(folder / PREDICTIONS_FILE)
            result = compute_metrics(records, config)
            atomic_write_json(folder / METRICS_FILE, result)
    except BaseException as error:
        if ctx.is_main:
            _after_failure(folder, fresh, written + len(done), error)
        raise
    result = distributed.broadcast(result, ctx)
    return {**result, "run_dir": str(folder)}


PREDICTION_CONTRACT = (
    "a refbench.api.Prediction whose response_maps is a float tensor [E, S, S], one map per "
    "expression of the batch"
)


def check_prediction(prediction: Any, batch: Batch, model: RISModel) -> None:
    """Raise `PredictionError`, naming the model and its distribution, unless `prediction`
    keeps the plugin contract (`Prediction` of tensors, shapes matching `batch`, finite)."""
    problem = None
    if not isinstance(prediction, Prediction):
        problem = f"predict returned {_kind(prediction)}"
    else:
        for field in ("response_maps", "stage_maps", "masks"):
            value = getattr(prediction, field)
            if (field == "response_maps" or value is not None) and not isinstance(
                value, torch.Tensor
            ):
                problem = f"predict returned a Prediction whose {field} is {_kind(value)}"
                break
    if problem is None:
        try:
            prediction.check(batch)
            return
        except PredictionError as error:
            raise PredictionError(f"model {_model_origin(model)}: {error}") from None
    raise PredictionError(
        f"model {_model_origin(model)}: {problem}; the plugin contract is {PREDICTION_CONTRACT} "
        f"(E = {len(batch.flat_expressions)} here)"
    )


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"a NumPy array of shape {tuple(value.shape)}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _model_origin(model: RISModel) -> str:
    name = getattr(model, "name", None) or type(model).__name__
    origin = model_distribution(str(name))
    if origin is None:
        return f"{name!r} ({type(model).__module__}.{type(model).__qualname__})"
    return f"{name!r} (distribution {origin['name']} {origin['version']})"


def _finished_keys(path: Path) -> set[str]:
    """Keys already in a predictions file; a torn last line is cut off first."""
    if not path.exists():
        return set()
    records, good = read_jsonl(path)
    if good != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(good)
    return {record["key"] for record in records}


def _after_failure(folder: Path, fresh: bool, kept: int, error: BaseException) -> None:
    """A run that failed: remove it when it holds nothing, else say how to resume it."""
    if fresh and kept == 0:
        shutil.rmtree(folder, ignore_errors=True)
        return
    if isinstance(error, RefbenchError) and error.args:
        error.args = (
            f"{error.args[0]} (the unfinished run {folder} keeps {kept} predictions; "
            f"continue it with --resume {folder})",
        )


class _progress:
    """One rich progress bar over expressions, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and total > 0 and os.environ.get("REFBENCH_NO_PROGRESS") != "1"
        self.total = total
        self._bar = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), transient=False,
        )
        self._bar.__enter__()
        task = self._bar.add_task("eval", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
