"""What a SynthRef split holds and the chance levels a result on it must beat.

Chance levels are expected PointM (the ground-truth mask at the predicted peak), averaged over
every sentence of the split, overall and per template:

- ``random_point``: the peak is a uniformly random pixel, so PointM = target area / image area.
- ``random_object``: the peak falls on one of the image's objects chosen uniformly: 1 / #objects.
- ``shape_only``: a model that understands only the target's shape word (the head noun) picks
  uniformly among the objects of that shape: 1 / #objects with the target's shape.
- ``colour_shape_only``: a model that understands only the target's colour word (when the
  sentence names one) and shape word picks uniformly among the objects with that colour and
  shape: 1 / #objects matching them. Size, position, superlative and relation words are ignored.
- ``attribute_only``: a model that understands every attribute word of the target phrase (size,
  colour, shape) and nothing else picks uniformly among the objects the phrase describes. It is
  1 on attribute sentences; on the others it is the level of a model that finds the described
  objects but not which one a direction word means. Image-text pairs alone teach neither size
  nor direction words on SynthRef (docs/synthref.md, "What SynthRef can and cannot tell"), so
  this is what reading size words would add, not a level weak supervision should reach.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections import Counter
from pathlib import Path

import numpy as np

from refbench.data.splits import get_split
from refbench.errors import ConfigError, DataError, RefbenchError
from refbench.io import atomic_write_json, cache_root, read_json, stable_hash
from refbench.safe_pickle import restricted_load
from refbench.synth.grammar import TEMPLATES
from refbench.synth.resolver import load_resolver
from refbench.synth.variants import variant_of_dataset

CHANCE_KEYS = ("random_point", "random_object", "shape_only", "colour_shape_only",
               "attribute_only")
_MAX_FALSE_NEGATIVE_PAIRS = 400_000
# Bump when `stats` changes what it computes: every stored statistics file then misses.
STATS_FORMAT = 1
_STATS_KEYS = ("split", "variant", "version", "images", "refs", "sentences", "objects_per_image",
               "objects_histogram", "refs_per_image", "sentences_per_ref", "distractor_rate",
               "lookalike_image_rate", "lookalike_sentence_rate", "sentence_length",
               "template_mix", "false_negative_rate", "overall", "per_template")
_MEMO: dict[str, dict] = {}

def load_refs(path: Path) -> list[dict]:
    """The refs of a refer-format pickle, read with a restricted unpickler."""
    try:
        with open(path, "rb") as handle:
            return restricted_load(handle)
    except FileNotFoundError:
        raise DataError(f"refs file {path} does not exist") from None
    except pickle.UnpicklingError as error:
        raise DataError(f"refs file {path}: {error}; only plain data is allowed") from None
    except EOFError as error:
        raise DataError(f"refs file {path} is corrupt ({error})") from None


def _chance(rows: list[dict]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) if rows else float("nan") for key in CHANCE_KEYS}


def stats(data_root: Path, split_id: str) -> dict:
    """Counts, template mix and chance levels of SynthRef split `split_id` (see module doc).

    Keys: split, variant, version, images, refs, sentences, objects_per_image (mean),
    objects_histogram {count: images}, refs_per_image, sentences_per_ref, distractor_rate
    (share of sentences whose target shares shape or colour with another object),
    lookalike_image_rate (share of images holding two objects of one colour and shape),
    lookalike_sentence_rate (share of sentences whose target has such a twin),
    sentence_length {mean, min, max} in words, template_mix {template: share},
    false_negative_rate (share of (sentence, other image of the split) pairs where the sentence
    also fits; estimated on a fixed sample when the split is large), overall {chance levels},
    per_template {template: {chance levels, sentences}}.
    """
    info = get_split(split_id)
    if not info.is_synthetic:
        raise ConfigError(f"stats are computed for SynthRef splits only; {split_id!r} is not one")
    params = variant_of_dataset(info.dataset)
    data_root = Path(data_root)
    refs = [r for r in load_refs(data_root / info.dataset / info.refs_file) if r["split"] == info.split]
    if not refs:
        raise DataError(f"{data_root / info.dataset} holds no refs of split {info.split!r}")
    resolver = load_resolver(data_root, params.variant)
    scenes = resolver.scene_records
    rows: list[dict] = []
    image_ids = sorted({r["image_id"] for r in refs})
    for ref in refs:
        objects = scenes[str(ref["image_id"])]
        target = next(o for o in objects if o["ann_id"] == ref["ann_id"])
        twins = sum(o["shape"] == target["shape"] and o["colour"] == target["colour"] for o in objects)
        shares = sum(o["shape"] == target["shape"] or o["colour"] == target["colour"] for o in objects)
        for sentence in ref["sentences"]:
            named = resolver.meaning(sentence["sent_id"]).target
            same_shape = sum(o["shape"] == named.shape for o in objects)
            same_colour_shape = sum(
                o["shape"] == named.shape and (named.colour is None or o["colour"] == named.colour)
                for o in objects
            )
            described = sum(
                o["shape"] == named.shape
                and (named.colour is None or o["colour"] == named.colour)
                and (named.size is None or o["size"] == named.size)
                for o in objects
            )
            rows.append(
                {
                    "template": sentence["template"],
                    "sent_id": sentence["sent_id"],
                    "length": len(sentence["tokens"]),
                    "area": target["area"],
                    "random_object": 1.0 / len(objects),
                    "shape_only": 1.0 / same_shape,
                    "colour_shape_only": 1.0 / same_colour_shape,
                    "attribute_only": 1.0 / described,
                    "distractor": shares > 1,
                    "lookalike": twins > 1,
                }
            )
    side = float(_image_side(data_root, info.dataset))
    for row in rows:
        row["random_point"] = row["area"] / (side * side)
    lengths = [r["length"] for r in rows]
    templates = Counter(r["template"] for r in rows)
    counts = Counter(len(scenes[str(i)]) for i in image_ids)
    lookalike_images = sum(
        1
        for i in image_ids
        if len({(o["shape"], o["colour"]) for o in scenes[str(i)]}) < len(scenes[str(i)])
    )
    return {
        "split": split_id,
        "variant": params.variant,
        "version": resolver_version(data_root, info.dataset),
        "images": len(image_ids),
        "refs": len(refs),
        "sentences": len(rows),
        "objects_per_image": float(np.mean([len(scenes[str(i)]) for i in image_ids])),
        "objects_histogram": {int(k): int(v) for k, v in sorted(counts.items())},
        "refs_per_image": len(refs) / len(image_ids),
        "sentences_per_ref": len(rows) / len(refs),
        "distractor_rate": float(np.mean([r["distractor"] for r in rows])),
        "lookalike_image_rate": lookalike_images / len(image_ids),
        "lookalike_sentence_rate": float(np.mean([r["lookalike"] for r in rows])),
        "sentence_length": {
            "mean": float(np.mean(lengths)),
            "min": int(min(lengths)),
            "max": int(max(lengths)),
        },
        "template_mix": {t: templates.get(t, 0) / len(rows) for t in TEMPLATES},
        "false_negative_rate": _false_negative_rate(resolver, refs, image_ids),
        "overall": _chance(rows),
        "per_template": {
            t: {**_chance([r for r in rows if r["template"] == t]), "sentences": templates.get(t, 0)}
            for t in TEMPLATES
        },
    }


def _image_side(data_root: Path, dataset: str) -> int:
    from refbench.io import read_json

    return int(read_json(data_root / dataset / "info.json", "SynthRef info")["params"]["size"])


def resolver_version(data_root: Path, dataset: str) -> str:
    """The generator version recorded in the data set."""
    from refbench.io import read_json

    return str(read_json(data_root / dataset / "info.json", "SynthRef info")["version"])


def _false_negative_rate(resolver, refs: list[dict], image_ids: list[int]) -> float:
    """Share of (sentence, other image) pairs where the sentence also fits the other image."""
    pairs = [(s["sent_id"], r["image_id"]) for r in refs for s in r["sentences"]]
    rng = np.random.default_rng(0)
    if len(pairs) * len(image_ids) > _MAX_FALSE_NEGATIVE_PAIRS:
        images = sorted(rng.choice(image_ids, size=min(len(image_ids), 400), replace=False).tolist())
        pick = rng.choice(len(pairs), size=min(len(pairs), _MAX_FALSE_NEGATIVE_PAIRS // len(images)), replace=False)
        pairs = [pairs[k] for k in sorted(pick)]
    else:
        images = image_ids
    fits = resolver.matrix([s for s, _ in pairs], images)
    own = np.array([[img == other for other in images] for _, img in pairs])
    off = ~own
    return float(fits[off].mean()) if off.any() else float("nan")


def stats_identity(data_root: Path, split_id: str, refs_sha256: str) -> dict:
    """What `stats` of a split is computed from: the refs file's SHA-256, the split, the
    SHA-256 of the data set's info.json (generator version, image size) and `STATS_FORMAT`."""
    info_path = Path(data_root) / get_split(split_id).dataset / "info.json"
    try:
        info_sha256 = hashlib.sha256(info_path.read_bytes()).hexdigest()
    except OSError:
        raise DataError(f"SynthRef info {info_path} does not exist") from None
    return {"format": STATS_FORMAT, "split": split_id, "refs_sha256": refs_sha256,
            "info_sha256": info_sha256}


def cached_stats(
    data_root: Path, split_id: str, refs_sha256: str, cache_dir: str | Path | None = None
) -> dict:
    """`stats(data_root, split_id)`, computed once per data set identity (`stats_identity`).

    Memoised in-process, and stored as JSON under ``<cache_dir>/<split>-<16 hex>.json``
    (default ``cache_root()/synth-stats``) for later processes; the values returned are
    equal, key order and types included, to a fresh `stats` call. A stored file that is
    unreadable or records another identity is recomputed and replaced.
    """
    identity = stats_identity(data_root, split_id, refs_sha256)
    key = stable_hash(identity)
    if key in _MEMO:
        return copy.deepcopy(_MEMO[key])
    base = Path(cache_dir) if cache_dir is not None else cache_root() / "synth-stats"
    path = base / f"{split_id}-{stable_hash(identity, 16)}.json"
    summary = _read_stored(path, identity)
    if summary is None:
        summary = stats(data_root, split_id)
        try:
            atomic_write_json(path, {"identity": identity, "stats": summary})
        except (OSError, RefbenchError):
            pass  # a read-only cache only costs the next process a recomputation
    _MEMO[key] = summary
    return copy.deepcopy(summary)


def _read_stored(path: Path, identity: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        stored = read_json(path, "SynthRef statistics")
        if stored.get("identity") != identity:
            return None
        return _restore(stored["stats"])
    except (DataError, AttributeError, KeyError, TypeError, ValueError):
        return None


def _restore(stored: dict) -> dict:
    """The `stats` dict back from its JSON form: the computed key order, int histogram keys."""
    if set(stored) != set(_STATS_KEYS):
        raise KeyError("stored statistics have other keys")
    summary = {key: stored[key] for key in _STATS_KEYS}
    histogram = {int(k): int(v) for k, v in stored["objects_histogram"].items()}
    summary["objects_histogram"] = dict(sorted(histogram.items()))
    summary["sentence_length"] = {k: stored["sentence_length"][k] for k in ("mean", "min", "max")}
    summary["template_mix"] = {t: stored["template_mix"][t] for t in TEMPLATES}
    summary["overall"] = {k: stored["overall"][k] for k in CHANCE_KEYS}
    summary["per_template"] = {
        t: {**{k: stored["per_template"][t][k] for k in CHANCE_KEYS},
            "sentences": stored["per_template"][t]["sentences"]}
        for t in TEMPLATES
    }
    return summary
