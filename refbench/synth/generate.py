"""Write a SynthRef data set in the refer format: refs(synth).p, instances.json, PNG images.

Layout under a data root: ``<root>/<dataset>/refs(synth).p``, ``instances.json`` (COCO style,
with the generator's version, parameters and seed in ``info``), ``scenes.json`` (each object's
shape, colour, size and centre, and each sentence's meaning, for the resolver and stats),
``info.json`` (the same ``info`` alone) and ``images/<file_name>``. The data set is built in a
temp folder beside its target and renamed into place: the rename is the commit point.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from refbench.errors import ConfigError, OutputError
from refbench.io import cache_root, encode_rle, ensure_dir, exclusive_lock
from refbench.synth.grammar import (
    TEMPLATES,
    Meaning,
    cues,
    fitting_meanings,
    is_natural,
    paraphrases,
)
from refbench.synth.scene import SceneObject, render, sample_scene, visible_masks
from refbench.synth.variants import SYNTH_VERSION, VARIANTS, SynthParams, get_variant

SPLIT_ORDER = ("test", "val", "train")  # ids of test and val stay fixed whatever the train size
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
# Relative chance of each template when a target admits several.
TEMPLATE_WEIGHTS = {"attribute": 1.0, "position": 1.5, "superlative": 0.8, "relation": 1.8}
MIN_SIZE, MAX_SIZE = 48, 1024
WAIT_FOR_OTHER_S = 900.0


def _image_rng(seed: int, params: SynthParams, split: str, index: int) -> np.random.Generator:
    variant_code = list(VARIANTS).index(params.variant)
    return np.random.default_rng([seed, variant_code, _SPLIT_CODE[split], index])


def make_scene(
    rng: np.random.Generator, params: SynthParams, size: int
) -> tuple[list[SceneObject], list[np.ndarray], np.ndarray, list[tuple[int, Meaning, list[str]]]]:
    """One scene: objects, visible masks [S, S], image [S, S, 3] and (object, meaning, sentences)."""
    margin_px = params.margin * size
    lo, hi = params.refs_per_image
    while True:
        objects = sample_scene(rng, params, size)
        masks, full_areas = visible_masks(objects, size)
        if any(m.sum() < 0.5 * a for m, a in zip(masks, full_areas)):
            continue
        natural: dict[int, list[Meaning]] = {i: [] for i in range(len(objects))}
        for meaning, index in fitting_meanings(objects, params.relations, margin_px).items():
            if is_natural(meaning, objects):
                natural[index].append(meaning)
        referable = [i for i, found in natural.items() if found]
        lookalikes = [
            i
            for i, o in enumerate(objects)
            if sum(p.shape == o.shape and p.colour == o.colour for p in objects) > 1
        ]
        if any(i not in referable for i in lookalikes):
            continue
        wanted = int(rng.integers(lo, hi + 1))
        others = [i for i in referable if i not in lookalikes]
        others = [others[k] for k in rng.permutation(len(others))]
        targets = lookalikes + others[: max(0, wanted - len(lookalikes))]
        if len(targets) < lo:
            continue
        chosen = []
        for i in sorted(targets):
            templates = [t for t in TEMPLATES if any(m.template == t for m in natural[i])]
            weights = np.array([TEMPLATE_WEIGHTS[t] for t in templates])
            template = templates[int(rng.choice(len(templates), p=weights / weights.sum()))]
            options = [m for m in natural[i] if m.template == template]
            meaning = options[int(rng.integers(len(options)))]
            forms = paraphrases(meaning)
            s_lo, s_hi = params.sentences_per_ref
            count = int(rng.integers(s_lo, s_hi + 1))
            picked = sorted(rng.choice(len(forms), size=min(count, len(forms)), replace=False))
            chosen.append((i, meaning, [forms[k] for k in picked]))
        image = render(rng, objects, masks, size)
        return objects, masks, image, chosen


def _split_counts(params: SynthParams, images: dict[str, int] | None) -> dict[str, int]:
    counts = dict(params.default_images)
    for split, count in (images or {}).items():
        if split not in counts:
            raise ConfigError(f"unknown SynthRef split {split!r} in images; use train, val, test")
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"images[{split!r}] must be a positive integer, got {count!r}")
        counts[split] = count
    return counts


def _render_image(
    job: tuple[str, int, int], *, params: SynthParams, seed: int, size: int, image_dir: Path
) -> tuple[str, list[SceneObject], list[np.ndarray], list]:
    """Draw one scene from its own random stream and write its PNG (runs in a worker)."""
    split, index, image_id = job
    objects, masks, pixels, chosen = make_scene(_image_rng(seed, params, split, index), params, size)
    file_name = f"synthref_{split}_{image_id:07d}.png"
    Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=1)
    return file_name, objects, masks, chosen


@contextlib.contextmanager
def _scene_pool():
    """A pool of one worker process per core, or None on a single core. Every image has its own
    random stream, so the output is byte-identical however many processes draw it."""
    workers = os.cpu_count() or 1
    if workers < 2:
        yield None
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield pool


def _write_dataset(folder: Path, params: SynthParams, seed: int, counts: dict[str, int], size: int) -> dict:
    """Generate every split into `folder`; returns the data set's info record."""
    image_dir = ensure_dir(folder / "images")
    category_ids = {shape: k + 1 for k, shape in enumerate(params.shapes)}
    info = {
        "name": "SynthRef",
        "version": SYNTH_VERSION,
        "variant": params.variant,
        "seed": seed,
        "params": {**params.as_dict(), "size": size, "images": counts},
    }
    images, annotations, refs = [], [], []
    scene_objects: dict[str, list[dict]] = {}
    meanings: dict[str, dict] = {}
    image_id = ann_id = ref_id = sent_id = 0
    jobs = []
    for split in SPLIT_ORDER:
        for index in range(counts[split]):
            jobs.append((split, index, len(jobs) + 1))
    render_job = functools.partial(_render_image, params=params, seed=seed, size=size,
                                   image_dir=image_dir)
    with _scene_pool() as pool:
        rendered = pool.imap(render_job, jobs, chunksize=32) if pool else map(render_job, jobs)
        for (split, _, image_id), (file_name, objects, masks, chosen) in zip(jobs, rendered):
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            ann_ids = []
            described = []
            for obj, mask in zip(objects, masks):
                ann_id += 1
                ann_ids.append(ann_id)
                rle = encode_rle(mask)
                ys, xs = np.nonzero(mask)
                x0, y0 = int(xs.min()), int(ys.min())
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": category_ids[obj.shape],
                        "segmentation": {"size": [size, size], "counts": rle["counts"]},
                        "area": int(mask.sum()),
                        "bbox": [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)],
                        "iscrowd": 0,
                    }
                )
                described.append(
                    {
                        "ann_id": ann_id,
                        "shape": obj.shape,
                        "colour": obj.colour,
                        "size": obj.size,
                        "cx": obj.cx,
                        "cy": obj.cy,
                        "r": obj.r,
                        "rgb": list(obj.rgb),
                        "area": int(mask.sum()),
                    }
                )
            scene_objects[str(image_id)] = described
            for obj_index, meaning, sentences in chosen:
                ref_id += 1
                sentence_records = []
                for text in sentences:
                    sent_id += 1
                    meanings[str(sent_id)] = meaning.as_dict()
                    sentence_records.append(
                        {
                            "sent_id": sent_id,
                            "sent": text,
                            "raw": text,
                            "tokens": text.split(),
                            "template": meaning.template,
                            "cues": cues(meaning, text),
                        }
                    )
                refs.append(
                    {
                        "ref_id": ref_id,
                        "ann_id": ann_ids[obj_index],
                        "image_id": image_id,
                        "split": split,
                        "category_id": category_ids[objects[obj_index].shape],
                        "sent_ids": [s["sent_id"] for s in sentence_records],
                        "file_name": file_name,
                        "sentences": sentence_records,
                    }
                )
    instances = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": shape, "supercategory": "shape"} for shape, cid in category_ids.items()
        ],
    }
    scenes = {
        "version": SYNTH_VERSION,
        "variant": params.variant,
        "margin_px": params.margin * size,
        "relations": list(params.relations),
        "objects": scene_objects,
        "meanings": meanings,
    }
    with open(folder / "instances.json", "w", encoding="utf-8") as handle:
        json.dump(instances, handle, separators=(",", ":"))
    with open(folder / "scenes.json", "w", encoding="utf-8") as handle:
        json.dump(scenes, handle, separators=(",", ":"))
    with open(folder / "refs(synth).p", "wb") as handle:
        # Through JSON first: pickle memoises shared objects, and whether two equal strings are one
        # object depends on which process built them; a canonical copy keeps the bytes fixed.
        pickle.dump(json.loads(json.dumps(refs)), handle, protocol=2)
    summary = {**info, "counts": {"images": image_id, "refs": ref_id, "sentences": sent_id}}
    with open(folder / "info.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return summary


def generate(
    out_root: Path,
    seed: int = 0,
    images: dict[str, int] | None = None,
    size: int = 96,
    variant: str = "default",
    overwrite: bool = False,
) -> Path:
    """Generate SynthRef into ``out_root/<dataset>`` atomically; returns the data root `out_root`.

    `images` overrides the image count of any of train/val/test (defaults: the variant's
    `default_images`). An existing data set is an `OutputError` unless `overwrite` is set.
    """
    params = get_variant(variant)
    if not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"SynthRef image size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    counts = _split_counts(params, images)
    out_root = ensure_dir(Path(out_root).expanduser(), "SynthRef data root")
    target = out_root / params.dataset
    if target.exists() and not overwrite:
        raise OutputError(
            f"{target} already exists; delete it, pass overwrite (--overwrite) or choose another --out"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{params.dataset}.tmp-", dir=out_root))
    try:
        _write_dataset(tmp, params, seed, counts, size)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{params.dataset}.old-", dir=out_root))
            os.replace(target, old / params.dataset)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_root


def default_root() -> Path:
    """Where the default SynthRef data sets are cached: ``cache_root()/synthref-v<version>``."""
    return cache_root() / f"synthref-v{SYNTH_VERSION}"


def is_complete(root: Path, variant: str = "default") -> bool:
    """Whether ``root`` holds a committed data set of `variant` (the folder exists only then)."""
    folder = Path(root) / get_variant(variant).dataset
    return all((folder / name).is_file() for name in ("instances.json", "refs(synth).p", "scenes.json"))


def ensure_synthref(root: Path | None = None, variant: str = "default") -> Path:
    """The data root holding SynthRef `variant`, generating it with default settings once.

    Without `root` the cache folder `default_root()` is used. Generation holds a lock so that
    two processes never generate at once; a second process waits for the first one's result.
    """
    params = get_variant(variant)
    root = Path(root).expanduser() if root is not None else default_root()
    if is_complete(root, variant):
        return root
    ensure_dir(root, "SynthRef data root")
    lock = root / f".{params.dataset}.lock"
    deadline = time.monotonic() + WAIT_FOR_OTHER_S
    while True:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(lock, f"SynthRef data root {root}"))
            except OutputError:
                if time.monotonic() > deadline:
                    raise OutputError(
                        f"waited {WAIT_FOR_OTHER_S:.0f} s for another process generating "
                        f"{root / params.dataset}; remove {lock} if no such process runs"
                    ) from None
                time.sleep(0.5)
                if is_complete(root, variant):
                    return root
                continue
            if not is_complete(root, variant):
                for stale in root.glob(f".{params.dataset}.tmp-*"):  # a crashed earlier attempt
                    shutil.rmtree(stale, ignore_errors=True)
                generate(root, variant=variant, overwrite=(root / params.dataset).exists())
            return root


def synth_info(data_root: Path, variant: str = "default") -> dict:
    """The generator version, variant, seed, parameters and counts of a data set (for runs)."""
    from refbench.io import read_json

    return read_json(Path(data_root) / get_variant(variant).dataset / "info.json", "SynthRef info")
