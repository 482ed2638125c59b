"""`refbench demo`: SynthRef end to end, as a pipeline of cached steps.

Steps: SynthRef data, template cues, felzenszwalb proposals, training of each model in
`configs.DEMO_MODELS`, evaluation on synth-test, leaderboard (md + tex), figure, table. Each
step is skipped when its output exists: a training run is keyed by the resolved training config,
the data version and the plugin's code version, so a checkpoint of another config is never
reused. The working folder is locked, so a second demo at the same time fails at once with a
message; an interrupted run resumes training from its last checkpoint and evaluation from its
predictions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refbench.demo import configs
from refbench.demo.configs import ModelSpec
from refbench.errors import ConfigError, OutputError
from refbench.io import (
    atomic_write_json,
    atomic_write_text,
    cache_root,
    ensure_dir,
    read_json,
    stable_hash,
)

TRAIN_SUMMARY = "train_summary.json"
TRAIN_KEY = "train_key.json"
CHECKPOINT_EVERY = 25  # steps between last.pt writes: the most an interruption loses


# --------------------------------------------------------------------------- helpers


def check_cache_writable() -> Path:
    """The cache folder, created if needed; an `OutputError` naming REFBENCH_CACHE if not writable."""
    root = cache_root()
    try:
        ensure_dir(root, "refbench cache")
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-", delete=True)
        probe.close()
    except (OutputError, OSError) as error:
        reason = error.args[0] if isinstance(error, OutputError) else error.strerror
        raise OutputError(
            f"the refbench cache {root} cannot be written ({reason}); set REFBENCH_CACHE to a "
            "writable folder, e.g. REFBENCH_CACHE=/tmp/refbench-cache refbench demo"
        ) from None
    return root


def digest(obj: Any) -> str:
    """SHA-256 of the canonical JSON of `obj`."""
    return stable_hash(obj)


def plugin_code_version(model_class: type) -> dict[str, Any]:
    """The distribution (name, version) of a model class and a hash of its package's sources."""
    import importlib

    from refbench.eval.provenance import model_distribution

    package = importlib.import_module(model_class.__module__.split(".")[0])
    folder = Path(package.__file__).parent
    sources = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        sources.update(path.relative_to(folder).as_posix().encode())
        sources.update(path.read_bytes())
    return {"distribution": model_distribution(getattr(model_class, "name", "")),
            "sources_sha256": sources.hexdigest()}


def data_version(dataset: Any) -> dict[str, Any]:
    """What identifies a split's data: its refs file hash and the generator's info block."""
    meta = dataset.metadata()
    return {"split": meta["split_id"], "refs_sha256": meta["refs_sha256"],
            "num_sentences": meta["num_sentences"], "info": meta.get("instances_info")}


def checkpoint_of(train_dir: Path) -> Path:
    """best.pt when validation ran, else last.pt."""
    best = train_dir / "best.pt"
    return best if best.is_file() else train_dir / "last.pt"


class Poller:
    """Calls `update()` every `interval` seconds in a daemon thread (drives a progress bar)."""

    def __init__(self, update: Callable[[], None], interval: float = 0.5) -> None:
        self.update = update
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a bar update must never break a step
                self.update()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self.update()


# --------------------------------------------------------------------------- display


class Display:
    """One rich progress display: a line per finished step and a bar for the current one."""

    def __init__(self, steps: int, enabled: bool = True, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console()
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
            disable=not enabled,
        )
        self.enabled = enabled
        self.overall = self.progress.add_task("demo", total=steps)
        self.current: Any = None
        self.messages: list[str] = []

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start(self, name: str, total: int | None = None) -> None:
        """Show a bar for step `name` (`total` units of work, or indeterminate)."""
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(f"  {name}", total=total)

    def update(self, completed: int, total: int | None = None) -> None:
        """Move the current step's bar."""
        if self.current is not None:
            self.progress.update(self.current, completed=completed,
                                 **({"total": total} if total is not None else {}))

    def finish(self, line: str) -> None:
        """Close the current step with a status line."""
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.advance(self.overall)
        self.messages.append(line)
        if self.enabled:
            self.progress.console.print(line)
        else:
            self.console.print(line)


# --------------------------------------------------------------------------- results


@dataclass
class StepRecord:
    """What one pipeline step did: ``done`` (worked), ``reused`` (cached) or ``resumed``."""

    name: str
    status: str
    seconds: float
    detail: str = ""


@dataclass
class DemoResult:
    """Everything a demo run produced."""

    steps: list[StepRecord] = field(default_factory=list)
    train_dirs: dict[str, Path] = field(default_factory=dict)
    eval_dirs: dict[str, Path] = field(default_factory=dict)
    markdown: Path | None = None
    latex: Path | None = None
    figure: Path | None = None
    table: str = ""

    def step(self, name: str) -> StepRecord:
        """The record of step `name`."""
        for record in self.steps:
            if record.name == name:
                return record
        raise KeyError(name)


# --------------------------------------------------------------------------- training


def measure_samples_per_second(
    spec: ModelSpec, dataset: Any, cues: Any, proposals: Any, device: str, seed: int,
    probe_steps: int = 4,
) -> float:
    """Training images per second of `spec` here: a few throwaway steps, the first not counted."""
    from refbench.io import read_jsonl
    from refbench.registry import get_model_class
    from refbench.train.trainer import Trainer

    model = get_model_class(spec.name).from_config(dict(spec.overrides))
    with tempfile.TemporaryDirectory(prefix="refbench-probe-") as tmp:
        trainer = Trainer(model, dataset, out_dir=tmp, device=device, seed=seed,
                          max_steps=probe_steps, cues=cues, proposals=proposals, progress=False,
                          checkpoint_every=None)
        trainer.fit()
        records, _ = read_jsonl(Path(tmp) / "train_log.jsonl")
    rates = [r["samples_per_s"] for r in records if r.get("kind") == "train" and r["step"] > 1]
    if not rates:
        rates = [r["samples_per_s"] for r in records if r.get("kind") == "train"]
    return float(sorted(rates)[len(rates) // 2])


def steps_for_budget(seconds: float, samples_per_second: float, batch_size: int) -> int:
    """Training steps that fit `seconds` at the measured speed (at least 1)."""
    return max(1, int(seconds * samples_per_second / max(1, batch_size)))


@dataclass
class TrainOutcome:
    """A finished training run: its folder, checkpoint and whether it was reused."""

    train_dir: Path
    checkpoint: Path
    status: str
    steps: int


def train_model(
    spec: ModelSpec, train_root: Path, train_dataset: Any, val_dataset: Any, *, seed: int,
    device: str, retrain: bool, cues: Any, val_cue_backend: str | None, proposals: Any,
    on_progress: Callable[[int, int], None] | None = None,
) -> TrainOutcome:
    """Train `spec` into ``train_root/<label>-<key>``, reusing or resuming what is there.

    The key hashes the resolved model config, epochs, max_steps, seed, the data version and the
    plugin's code version; a finished run with that key is reused (unless `retrain`), an
    unfinished one resumes from its last.pt, anything else starts afresh.
    """
    from refbench.registry import get_model_class
    from refbench.train.trainer import Trainer, seed_training

    cls = get_model_class(spec.name)
    seed_training(seed)  # the initial weights follow from the seed
    model = cls.from_config(dict(spec.overrides))
    key_fields = {
        "model": spec.name,
        "model_config": model.config,
        "epochs": spec.epochs,
        "max_steps": spec.max_steps,
        "seed": seed,
        "train": data_version(train_dataset),
        "val": data_version(val_dataset) if val_dataset is not None else None,
        "code": plugin_code_version(cls),
    }
    key = digest(key_fields)
    train_dir = train_root / f"{spec.label}-{key[:12]}"
    summary_path = train_dir / TRAIN_SUMMARY
    if retrain and train_dir.exists():
        shutil.rmtree(train_dir)
    if summary_path.is_file() and checkpoint_of(train_dir).is_file():
        summary = read_json(summary_path, "training summary")
        return TrainOutcome(train_dir, checkpoint_of(train_dir), "reused", int(summary["step"]))
    resume = (train_dir / "last.pt").is_file()
    if train_dir.exists() and not resume:
        shutil.rmtree(train_dir)  # a run interrupted before its first checkpoint
    ensure_dir(train_dir, "demo training folder")
    atomic_write_json(train_dir / TRAIN_KEY, {"key": key, **key_fields})
    trainer = Trainer(
        model, train_dataset, out_dir=train_dir, val_dataset=val_dataset, device=device,
        epochs=spec.epochs, seed=seed, resume=resume, checkpoint_every=CHECKPOINT_EVERY,
        max_steps=spec.max_steps, cues=cues, proposals=proposals, progress=False,
        eval_kwargs={"device": device, "cues": val_cue_backend, "progress": False, "seed": seed},
    )
    total = trainer.total_steps if spec.max_steps is None else min(trainer.total_steps,
                                                                    spec.max_steps)
    report = (lambda: on_progress(trainer.step, total)) if on_progress else (lambda: None)
    with Poller(report):
        summary = trainer.fit()
    atomic_write_json(summary_path, summary)
    return TrainOutcome(train_dir, checkpoint_of(train_dir), "resumed" if resume else "done",
                        int(summary["step"]))


# --------------------------------------------------------------------------- evaluation


def finished_eval(eval_root: Path, checkpoint_sha: str) -> Path | None:
    """A finished run under `eval_root` of the checkpoint with hash `checkpoint_sha`."""
    for config_path in sorted(eval_root.glob("*/*/*/config.json"), reverse=True):
        run_dir = config_path.parent
        if not (run_dir / "metrics.json").is_file():
            continue
        with contextlib.suppress(Exception):
            if read_json(config_path).get("checkpoint_sha256") == checkpoint_sha:
                return run_dir
    return None


def _count_lines(root: Path) -> int:
    files = sorted(root.glob("*/*/*/predictions.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        return 0
    with open(files[-1], "rb") as handle:
        return handle.read().count(b"\n")


def evaluate_model(
    spec: ModelSpec, checkpoint: Path, eval_root: Path, test_dataset: Any, *, device: str,
    seed: int, proposals: str | None, on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, str]:
    """Score `checkpoint` on `test_dataset` into `eval_root`; (run folder, status)."""
    from refbench.api import file_sha256
    from refbench.eval.runner import evaluate
    from refbench.registry import load_model

    done = finished_eval(eval_root, file_sha256(checkpoint))
    if done is not None:
        return done, "reused"
    model = load_model(spec.name, checkpoint=str(checkpoint))
    cues = configs.CUE_BACKEND if model.num_cues else None
    total = len(test_dataset.expressions("all"))
    report = (lambda: on_progress(_count_lines(eval_root), total)) if on_progress else (
        lambda: None)
    with Poller(report):
        result = evaluate(model, test_dataset, out_dir=eval_root, resume=True, device=device,
                          seed=seed, cues=cues, proposals=proposals, progress=False,
                          checkpoint=checkpoint)
    return Path(result["run_dir"]), "done"


# --------------------------------------------------------------------------- outputs


def leaderboard_files(
    eval_dirs: Sequence[Path], out_dir: Path, header: Sequence[str]
) -> tuple[Path, Path, str]:
    """Write ``synthref.md`` and ``synthref.tex`` from the demo's runs; returns paths and the md."""
    from refbench.report.leaderboard import build_leaderboard, to_latex, to_markdown
    from refbench.report.runs import load_run

    runs = [load_run(path) for path in eval_dirs]
    board = build_leaderboard(runs, metrics=("PointM", "mIoU", "oIoU", "Hit"),
                              splits=[configs.TEST_SPLIT])
    markdown = to_markdown(board)
    md_path, tex_path = out_dir / "synthref.md", out_dir / "synthref.tex"
    md_header = "".join(f"<!-- {line} -->\n" for line in header)
    tex_header = "".join(f"% {line}\n" for line in header)
    atomic_write_text(md_path, md_header + "\n" + markdown.rstrip() + "\n")
    atomic_write_text(tex_path, tex_header + to_latex(board).rstrip() + "\n")
    return md_path, tex_path, markdown


def figure_file(
    eval_dirs: dict[str, Path], out: Path, n: int, seed: int, device: str
) -> Path:
    """leaderboards/synthref.png: the same expressions for every model (see `draw_demo_figure`)."""
    from refbench.demo.figure import draw_demo_figure
    from refbench.report.figures import choose_keys, compute_items
    from refbench.report.runs import load_run

    runs = {label: load_run(path) for label, path in eval_dirs.items()}
    first = next(iter(runs.values()))
    common = set.intersection(*({str(r["key"]) for r in run.records()} for run in runs.values()))
    keys = [k for k in choose_keys(first, len(first.records()), None, seed) if k in common]
    import numpy as np

    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(keys), size=min(n, len(keys)), replace=False))
    keys = [keys[i] for i in picked]
    columns = [(label, compute_items(run, keys, device=device)) for label, run in runs.items()]
    draw_demo_figure(columns, out)
    return out


# --------------------------------------------------------------------------- the pipeline


@dataclass
class DemoOptions:
    """The demo's options (the CLI flags), plus what tests shrink: models, data root."""

    out_dir: Path = Path("leaderboards")
    work_dir: Path = Path("runs/demo")
    retrain: bool = False
    seed: int = 0
    budget_minutes: float | None = None
    device: str = "cpu"
    data_root: Path | None = None
    models: tuple[ModelSpec, ...] = configs.DEMO_MODELS
    progress: bool = True
    figure_expressions: int = configs.FIGURE_EXPRESSIONS


def run_demo(options: DemoOptions, console: Any = None) -> DemoResult:
    """Run every step of the demo (skipping finished ones); see the module docstring."""
    from refbench.registry import get_model_class

    for spec in options.models:  # an unknown or untrainable model fails before any work
        get_model_class(spec.name)
    if options.budget_minutes is not None and options.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {options.budget_minutes}")
    check_cache_writable()
    work_dir = ensure_dir(options.work_dir, "demo working folder")
    ensure_dir(options.out_dir, "leaderboard folder")
    from refbench.io import exclusive_lock

    lock = exclusive_lock(work_dir / ".demo.lock", f"the demo folder {work_dir} (a demo is running)")
    with lock:
        steps = 4 + 2 * len(options.models) + 2
        display = Display(steps, enabled=options.progress, console=console)
        with display:
            return _run(options, work_dir, display)


def _run(options: DemoOptions, work_dir: Path, display: Display) -> DemoResult:
    from refbench.cues import build_cues_with_stats, get_backend
    from refbench.data.refer import ReferDataset
    from refbench.data.splits import get_split
    from refbench.device import check_device
    from refbench.proposals import ProposalStore, default_options
    from refbench.proposals import get_backend as proposal_backend
    from refbench.registry import get_model_class
    from refbench.synth import ensure_synthref

    result = DemoResult()
    device = check_device(options.device)
    probes: dict[str, Any] = {}

    def probe_of(spec: ModelSpec) -> Any:
        """The spec's model at its initial weights (config, num_cues), built once."""
        if spec.label not in probes:
            probes[spec.label] = get_model_class(spec.name).from_config(dict(spec.overrides))
        return probes[spec.label]

    def record(name: str, status: str, seconds: float, detail: str = "") -> None:
        result.steps.append(StepRecord(name, status, seconds, detail))
        display.finish(f"[green]✓[/] {name}: {status} in {seconds:.1f} s" +
                       (f" ({detail})" if detail else ""))

    # 1. data
    display.start("SynthRef data")
    start = time.perf_counter()
    root = Path(options.data_root) if options.data_root else None
    from refbench.synth.generate import default_root, is_complete

    existed = is_complete(root or default_root())
    data_root = ensure_synthref(root)
    datasets = {s: ReferDataset(data_root, get_split(s)) for s in configs.DATA_SPLITS}
    record("data", "reused" if existed else "done", time.perf_counter() - start, str(data_root))

    # 2. cues
    display.start("template cues")
    start = time.perf_counter()
    built = 0
    cue_tables: dict[str, Any] = {}
    max_cues = max(int(probe_of(s).num_cues) for s in options.models)
    for split, dataset in datasets.items():
        table, stats = build_cues_with_stats(dataset, get_backend(configs.CUE_BACKEND),
                                             max(1, max_cues), progress=False)
        cue_tables[split] = table
        built += stats.built
    record("cues", "done" if built else "reused", time.perf_counter() - start,
           f"{built} built")

    # 3. proposals
    num_proposals = max(int(probe_of(s).config.get("num_proposals", 0)) for s in options.models)
    start = time.perf_counter()
    stores: dict[str, Any] = {}
    made = 0
    engine = proposal_backend(configs.PROPOSAL_BACKEND, max_proposals=max(1, num_proposals),
                              **default_options(configs.PROPOSAL_BACKEND, True))
    todo_total = 0
    for dataset in datasets.values():
        store = ProposalStore(dataset, configs.PROPOSAL_BACKEND, engine.config())
        stores[dataset.info.id] = store
        todo_total += len([i for i in dataset.image_ids if i not in store.images_done()])
    display.start("felzenszwalb proposals", todo_total)
    chunk = 64
    for dataset in datasets.values():
        store = stores[dataset.info.id]
        todo = [i for i in dataset.image_ids if i not in store.images_done()]
        for first in range(0, len(todo), chunk):
            made += store.build(dataset, engine, progress=False, image_ids=todo[first:first + chunk])
            display.update(made)
    record("proposals", "done" if made else "reused", time.perf_counter() - start,
           f"{made} images")

    # 4. training
    train_root = work_dir / "train"
    speed_path = work_dir / "speed.json"
    models = list(options.models)
    if options.budget_minutes is not None:
        models = _budgeted(models, options, datasets, cue_tables, stores, device, speed_path,
                           display)
    outcomes: dict[str, TrainOutcome] = {}
    for spec in models:
        display.start(f"train {spec.label}")
        start = time.perf_counter()
        probe = probe_of(spec)
        wants_proposals = int(probe.config.get("num_proposals", 0)) > 0
        outcome = train_model(
            spec, train_root, datasets[configs.TRAIN_SPLIT], datasets[configs.VAL_SPLIT],
            seed=options.seed, device=device, retrain=options.retrain,
            cues=cue_tables[configs.TRAIN_SPLIT] if probe.num_cues else None,
            val_cue_backend=configs.CUE_BACKEND if probe.num_cues else None,
            proposals=stores[configs.TRAIN_SPLIT] if wants_proposals else None,
            on_progress=lambda done, total: display.update(done, total),
        )
        outcomes[spec.label] = outcome
        result.train_dirs[spec.label] = outcome.train_dir
        record(f"train {spec.label}", outcome.status, time.perf_counter() - start,
               f"{outcome.steps} steps, {outcome.checkpoint}")

    # 5. evaluation
    for spec in models:
        display.start(f"evaluate {spec.label} on {configs.TEST_SPLIT}")
        start = time.perf_counter()
        outcome = outcomes[spec.label]
        eval_root = work_dir / "eval" / outcome.train_dir.name
        if outcome.status != "reused" and eval_root.exists():
            shutil.rmtree(eval_root)  # runs of an older checkpoint of this key
        run_dir, status = evaluate_model(
            spec, outcome.checkpoint, eval_root, datasets[configs.TEST_SPLIT], device=device,
            seed=options.seed, proposals=configs.PROPOSAL_BACKEND,
            on_progress=lambda done, total: display.update(done, total),
        )
        result.eval_dirs[spec.label] = run_dir
        record(f"evaluate {spec.label}", status, time.perf_counter() - start, str(run_dir))

    # 6. leaderboard
    display.start("leaderboard")
    start = time.perf_counter()
    header = _header(options, models)
    md, tex, table = leaderboard_files(list(result.eval_dirs.values()), Path(options.out_dir),
                                       header)
    result.markdown, result.latex, result.table = md, tex, table
    record("leaderboard", "done", time.perf_counter() - start, f"{md}, {tex}")

    # 7. figure
    display.start("figure")
    start = time.perf_counter()
    result.figure = figure_file(result.eval_dirs, Path(options.out_dir) / "synthref.png",
                                options.figure_expressions, options.seed, device)
    record("figure", "done", time.perf_counter() - start, str(result.figure))
    return result


def _header(options: DemoOptions, models: Sequence[ModelSpec]) -> list[str]:
    import platform

    from refbench.eval.provenance import git_state

    sha, dirty = git_state()
    described = "; ".join(
        f"{m.label}: {m.name} {json.dumps(m.overrides, sort_keys=True)}, epochs {m.epochs}, "
        f"max_steps {m.max_steps}" for m in models
    )
    budget = f" --budget-minutes {options.budget_minutes:g}" if options.budget_minutes else ""
    return [
        f"generated by `refbench demo --seed {options.seed}{budget}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} {platform.system()}, "
        f"device {options.device}, git {sha or 'unknown'}{' (dirty)' if dirty else ''}",
        f"models: {described}",
    ]


def _budgeted(
    models: list[ModelSpec], options: DemoOptions, datasets: dict[str, Any],
    cue_tables: dict[str, Any], stores: dict[str, Any], device: str, speed_path: Path,
    display: Display,
) -> list[ModelSpec]:
    """Each model gets an equal share of the budget, in steps at its measured speed.

    Speeds are measured once and kept in `speed_path`, so a rerun with the same budget trains
    the same number of steps (and so reuses its checkpoints).
    """
    from refbench.registry import get_model_class

    speeds = read_json(speed_path, "speed cache") if speed_path.is_file() else {}
    share = float(options.budget_minutes) * 60.0 / len(models)
    budgeted = []
    for spec in models:
        probe = get_model_class(spec.name).from_config(dict(spec.overrides))
        speed_key = digest({"config": probe.config, "device": device})[:16]
        if speed_key not in speeds:
            display.start(f"measure {spec.label} speed")
            wants_proposals = int(probe.config.get("num_proposals", 0)) > 0
            speeds[speed_key] = measure_samples_per_second(
                spec, datasets[configs.TRAIN_SPLIT],
                cue_tables[configs.TRAIN_SPLIT] if probe.num_cues else None,
                stores[configs.TRAIN_SPLIT] if wants_proposals else None, device, options.seed,
            )
            atomic_write_json(speed_path, speeds)
        batch = int(probe.config["batch_size"])
        steps = steps_for_budget(share, speeds[speed_key], batch)
        per_epoch = max(1, len(datasets[configs.TRAIN_SPLIT].image_ids) // batch)
        epochs = max(1, math.ceil(steps / per_epoch))  # the LR schedule spans the budget
        budgeted.append(ModelSpec(spec.name, spec.label, dict(spec.overrides), epochs, steps))
    return budgeted


class PreparedInputs:
    """Template cues and felzenszwalb proposals of some splits, built (or read) once."""

    def __init__(self, specs: Sequence[ModelSpec], datasets: Sequence[Any]) -> None:
        from refbench.cues import build_cues, get_backend
        from refbench.proposals import ProposalStore, default_options
        from refbench.proposals import get_backend as proposal_backend

        self._probes: dict[str, Any] = {}
        max_cues = max(1, max(int(self.probe(s).num_cues) for s in specs))
        num_proposals = max(int(self.probe(s).config.get("num_proposals", 0)) for s in specs)
        self.cues = {d.info.id: build_cues(d, get_backend(configs.CUE_BACKEND), max_cues,
                                           progress=False) for d in datasets}
        engine = proposal_backend(configs.PROPOSAL_BACKEND, max_proposals=max(1, num_proposals),
                                  **default_options(configs.PROPOSAL_BACKEND, True))
        self.stores = {}
        for dataset in datasets:
            store = ProposalStore(dataset, configs.PROPOSAL_BACKEND, engine.config())
            store.build(dataset, engine, progress=False)
            self.stores[dataset.info.id] = store

    def probe(self, spec: ModelSpec) -> Any:
        """The spec's model at initial weights, built once."""
        key = digest([spec.name, spec.overrides])
        if key not in self._probes:
            from refbench.registry import get_model_class

            self._probes[key] = get_model_class(spec.name).from_config(dict(spec.overrides))
        return self._probes[key]

    def cues_for(self, spec: ModelSpec, dataset: Any) -> Any:
        """The cue table of `dataset` when `spec` reads cues, else None."""
        return self.cues[dataset.info.id] if self.probe(spec).num_cues else None

    def proposals_for(self, spec: ModelSpec, dataset: Any) -> Any:
        """The proposal store of `dataset` when `spec` trains with proposals, else None."""
        wants = int(self.probe(spec).config.get("num_proposals", 0)) > 0
        return self.stores[dataset.info.id] if wants else None


def prepare_inputs(specs: Sequence[ModelSpec], datasets: Sequence[Any]) -> PreparedInputs:
    """Build (or read) the cues and proposals `specs` need on `datasets`."""
    return PreparedInputs(specs, datasets)
