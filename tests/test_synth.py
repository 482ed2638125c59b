"""SynthRef: determinism, unique resolution under an independent checker, masks, chance levels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils

from refbench.errors import ConfigError, OutputError, UnknownNameError
from refbench.synth import compatibility, ensure_synthref, generate, stats

SMALL = {"train": 20, "val": 10, "test": 120}
SMALL_HARD = {"train": 5, "val": 5, "test": 40}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), seed=3, images=SMALL)


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth-hard"), seed=5, images=SMALL_HARD, variant="hard")


def _load(root: Path, dataset: str = "synthref"):
    folder = root / dataset
    with open(folder / "refs(synth).p", "rb") as handle:
        refs = pickle.load(handle)
    instances = json.loads((folder / "instances.json").read_text())
    scenes = json.loads((folder / "scenes.json").read_text())
    return refs, instances, scenes


# ----------------------------------------------------------------- an independent checker

SHAPES = "circle|square|triangle|cross|diamond|ring"
COLOURS = "red|green|blue|yellow|purple|orange|cyan"
NP = rf"(?:(small|large) )?(?:({COLOURS}) )?({SHAPES})"
NP2 = rf"(?:(?:small|large) )?(?:{COLOURS}) (?:{SHAPES})"
SIDE = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
        "on the left": "left", "at left": "left", "on the right": "right", "at right": "right",
        "at the top": "top", "on top": "top", "at the bottom": "bottom", "at bottom": "bottom",
        "leftmost": "left", "rightmost": "right", "topmost": "top", "highest": "top",
        "bottommost": "bottom", "lowest": "bottom"}
RELATION = {"left of": "left", "to the left of": "left", "right of": "right",
            "to the right of": "right", "above": "top", "over": "top", "below": "bottom",
            "under": "bottom", "beneath": "bottom", "closest to": "near", "nearest to": "near"}


def parse(text: str) -> dict:
    """Read a SynthRef sentence back into (template, target phrase, word, anchor phrase)."""
    def np_of(size, colour, shape):
        return {"size": size, "colour": colour, "shape": shape}

    if m := re.fullmatch(rf"(?:the )?{NP}", text):
        return {"template": "attribute", "target": np_of(*m.groups())}
    if m := re.fullmatch(rf"the ({SHAPES}) that is ({COLOURS})", text):
        return {"template": "attribute", "target": np_of(None, m[2], m[1])}
    if m := re.fullmatch(rf"the ({COLOURS}) ({SHAPES}) that is (small|large)", text):
        return {"template": "attribute", "target": np_of(m[3], m[1], m[2])}
    if m := re.fullmatch(rf"(?:the )?{NP} (on the left|on the right|at the top|at the bottom|at left|at right|on top|at bottom)", text):
        return {"template": "position", "target": np_of(*m.groups()[:3]), "word": SIDE[m[4]]}
    if m := re.fullmatch(rf"the (left|right|top|bottom) {NP}", text):
        return {"template": "position", "target": np_of(*m.groups()[1:]), "word": m[1]}
    if m := re.fullmatch(rf"(?:the )?(leftmost|rightmost|topmost|bottommost|highest|lowest) {NP}", text):
        return {"template": "superlative", "target": np_of(*m.groups()[1:]), "word": SIDE[m[1]]}
    if m := re.fullmatch(rf"the {NP} (?:furthest to the|nearest the) (left|right|top|bottom)", text):
        return {"template": "superlative", "target": np_of(*m.groups()[:3]), "word": m[4]}
    words = "|".join(sorted(RELATION, key=len, reverse=True))
    if m := re.fullmatch(rf"(?:the )?{NP} ({words}) (?:the )?({NP2})", text):
        anchor = re.fullmatch(NP, m[5])
        return {"template": "relation", "target": np_of(*m.groups()[:3]), "word": RELATION[m[4]],
                "anchor": np_of(*anchor.groups())}
    raise AssertionError(f"sentence {text!r} is not in the grammar")


def fits(phrase: dict, obj: dict) -> bool:
    return all(phrase[k] is None or phrase[k] == obj[k] for k in ("size", "colour", "shape"))


def checker(parsed: dict, objects: list[dict], margin: float) -> list[int]:
    """Indices of the objects the sentence can mean; a good sentence gives exactly one."""
    hits = [i for i, o in enumerate(objects) if fits(parsed["target"], o)]
    pos = np.array([[o["cx"], o["cy"]] for o in objects])
    unit = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}
    if parsed["template"] == "attribute":
        return hits
    if parsed["template"] in ("position", "superlative"):
        if len(hits) < 2 or (parsed["template"] == "position" and len(hits) != 2):
            return []
        along = pos[hits] @ np.array(unit[parsed["word"]], dtype=float)
        order = np.argsort(-along)
        return [hits[order[0]]] if along[order[0]] - along[order[1]] >= margin else []
    anchors = [i for i, o in enumerate(objects) if fits(parsed["anchor"], o)]
    if len(anchors) != 1:
        return []
    others = [i for i in hits if i != anchors[0]]
    offset = pos[others] - pos[anchors[0]]
    if parsed["word"] == "near":
        dist = np.sqrt((offset**2).sum(1))
        if len(others) < 2:
            return []
        order = np.argsort(dist)
        return [others[order[0]]] if dist[order[1]] - dist[order[0]] >= margin else []
    u = np.array(unit[parsed["word"]], dtype=float)
    d = offset @ u
    p = np.abs(offset @ np.array([-u[1], u[0]]))
    clear = [o for o, di, pi in zip(others, d, p) if di >= margin and di >= pi]
    loose = [o for o, di, pi in zip(others, d, p) if di > 0 and 2 * di >= pi and o not in clear]
    return clear if len(clear) == 1 and not loose else []


# ----------------------------------------------------------------- tests


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path):
    images = {"train": 4, "val": 2, "test": 4}
    first = _tree_digest(generate(tmp_path / "a", seed=7, images=images) / "synthref")
    second = _tree_digest(generate(tmp_path / "b", seed=7, images=images) / "synthref")
    other = _tree_digest(generate(tmp_path / "c", seed=8, images=images) / "synthref")
    assert len(first) == 4 + 2 + 4 + 4  # images + instances, refs, scenes, info
    assert first == second
    assert first["refs(synth).p"] != other["refs(synth).p"]


def test_worker_processes_do_not_change_a_byte(tmp_path, monkeypatch):
    images = {"train": 40, "val": 2, "test": 3}
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    parallel = _tree_digest(generate(tmp_path / "a", seed=3, images=images) / "synthref")
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    serial = _tree_digest(generate(tmp_path / "b", seed=3, images=images) / "synthref")
    assert parallel == serial


def test_test_split_does_not_depend_on_train_size(tmp_path):
    small = generate(tmp_path / "a", seed=1, images={"train": 2, "val": 2, "test": 3})
    large = generate(tmp_path / "b", seed=1, images={"train": 6, "val": 2, "test": 3})
    refs_a = [r for r in _load(small)[0] if r["split"] == "test"]
    refs_b = [r for r in _load(large)[0] if r["split"] == "test"]
    assert refs_a == refs_b
    for ref in refs_a:
        name = ref["file_name"]
        assert (small / "synthref/images" / name).read_bytes() == (large / "synthref/images" / name).read_bytes()


@pytest.mark.parametrize("variant", ["default", "hard"])
def test_every_sentence_resolves_to_its_target_only(variant, root, hard_root):
    data_root, dataset = (root, "synthref") if variant == "default" else (hard_root, "synthref-hard")
    refs, instances, scenes = _load(data_root, dataset)
    margin = 0.1 * instances["images"][0]["width"]
    checked = 0
    for ref in refs:
        objects = scenes["objects"][str(ref["image_id"])]
        target = [o["ann_id"] for o in objects].index(ref["ann_id"])
        for sentence in ref["sentences"]:
            parsed = parse(sentence["sent"])
            assert parsed["template"] == sentence["template"], sentence["sent"]
            assert checker(parsed, objects, margin) == [target], sentence["sent"]
            assert sentence["cues"][0] == parsed["target"]["shape"]
            assert sentence["cues"][-1] in (sentence["sent"], sentence["sent"].removeprefix("the "))
            assert sentence["tokens"] == sentence["sent"].split()
            checked += 1
    assert checked >= 150


def test_refs_have_refcoco_fields_and_scene_rules(root):
    refs, instances, scenes = _load(root)
    image_files = {im["id"]: im["file_name"] for im in instances["images"]}
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(sent_ids) == len(set(sent_ids))
    assert len({r["ref_id"] for r in refs}) == len(refs)
    by_image: dict[int, list[dict]] = {}
    for ref in refs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "split", "category_id", "sent_ids",
                            "file_name", "sentences"}
        assert ref["file_name"] == image_files[ref["image_id"]]
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert 1 <= len(ref["sentences"]) <= 3
        assert len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
        by_image.setdefault(ref["image_id"], []).append(ref)
    counts = {split: len({r["image_id"] for r in refs if r["split"] == split}) for split in SMALL}
    assert counts == SMALL
    pairs_referred = 0
    for image_id, image_refs in by_image.items():
        objects = scenes["objects"][str(image_id)]
        assert 3 <= len(objects) <= 5
        assert 2 <= len(image_refs) <= 3
        referred = {r["ann_id"] for r in image_refs}
        for obj in objects:  # every object has a distractor sharing its shape or colour
            assert any(o is not obj and (o["shape"] == obj["shape"] or o["colour"] == obj["colour"])
                       for o in objects)
            twins = [o["ann_id"] for o in objects if (o["shape"], o["colour"]) == (obj["shape"], obj["colour"])]
            if len(twins) > 1:  # look-alikes are all referred
                assert set(twins) <= referred
                pairs_referred += 1
    assert pairs_referred >= 0.3 * len(by_image)
    category = {c["id"]: c["name"] for c in instances["categories"]}
    shape_of = {o["ann_id"]: o["shape"] for objs in scenes["objects"].values() for o in objs}
    for ann in instances["annotations"]:
        assert category[ann["category_id"]] == shape_of[ann["id"]]
    assert instances["info"]["name"] == "SynthRef" and instances["info"]["seed"] == 3
    assert instances["info"]["params"]["images"] == SMALL


def _masks(instances) -> dict[int, np.ndarray]:
    return {a["id"]: mask_utils.decode({"size": a["segmentation"]["size"],
                                        "counts": a["segmentation"]["counts"].encode()}).astype(bool)
            for a in instances["annotations"]}


@pytest.mark.parametrize("variant", ["default", "hard"])
def test_masks_match_drawn_pixels(variant, root, hard_root):
    data_root, dataset = (root, "synthref") if variant == "default" else (hard_root, "synthref-hard")
    _, instances, scenes = _load(data_root, dataset)
    masks = _masks(instances)
    anns = {a["id"]: a for a in instances["annotations"]}
    for image in instances["images"]:
        pixels = np.asarray(Image.open(data_root / dataset / "images" / image["file_name"]))
        objects = scenes["objects"][str(image["id"])]
        union = np.zeros(pixels.shape[:2], dtype=bool)
        for obj in objects:
            mask = masks[obj["ann_id"]]
            assert not (mask & union).any()  # visible masks are disjoint
            union |= mask
            assert (pixels[mask] == obj["rgb"]).all()
            same_colour = np.zeros_like(mask)
            for other in objects:
                if other["rgb"] == obj["rgb"]:
                    same_colour |= masks[other["ann_id"]]
            assert np.array_equal((pixels == obj["rgb"]).all(-1), same_colour)
            ann = anns[obj["ann_id"]]
            assert ann["area"] == int(mask.sum()) == obj["area"]
            assert np.allclose(ann["bbox"], mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))))
            if variant == "default" and obj["shape"] in ("circle", "square"):
                ys, xs = np.mgrid[: pixels.shape[0], : pixels.shape[1]] + 0.5
                dx, dy = xs - obj["cx"], ys - obj["cy"]
                if obj["shape"] == "circle":
                    drawn = dx**2 + dy**2 <= obj["r"] ** 2
                else:
                    drawn = (np.abs(dx) <= 0.8 * obj["r"]) & (np.abs(dy) <= 0.8 * obj["r"])
                assert np.array_equal(mask, drawn)
        assert (pixels[~union] >= 70).all()  # background never takes an object colour


def test_chance_levels_closed_form_and_monte_carlo_agree(root):
    refs, instances, scenes = _load(root)
    masks = _masks(instances)
    result = stats(root, "synth-test")
    rng = np.random.default_rng(0)
    draws = 100
    rows = []
    for ref in (r for r in refs if r["split"] == "test"):
        objects = scenes["objects"][str(ref["image_id"])]
        target = [o["ann_id"] for o in objects].index(ref["ann_id"])
        mask = masks[ref["ann_id"]]
        for sentence in ref["sentences"]:
            named = parse(sentence["sent"])["target"]
            shape_pool = [i for i, o in enumerate(objects) if o["shape"] == named["shape"]]
            cs_pool = [i for i in shape_pool if named["colour"] in (None, objects[i]["colour"])]
            described = [i for i, o in enumerate(objects) if fits(named, o)]
            ys, xs = rng.integers(0, mask.shape[0], draws), rng.integers(0, mask.shape[1], draws)
            mc = {
                "random_point": mask[ys, xs].mean(),
                "random_object": (rng.integers(0, len(objects), draws) == target).mean(),
                "shape_only": (rng.choice(shape_pool, draws) == target).mean(),
                "colour_shape_only": (rng.choice(cs_pool, draws) == target).mean(),
                "attribute_only": (rng.choice(described, draws) == target).mean(),
            }
            exact = {"random_point": mask.mean(), "random_object": 1 / len(objects),
                     "shape_only": 1 / len(shape_pool), "colour_shape_only": 1 / len(cs_pool),
                     "attribute_only": 1 / len(described)}
            rows.append((sentence["template"], mc, exact))
    assert result["sentences"] == len(rows)
    for template in (None, "attribute", "position", "superlative", "relation"):
        chosen = [r for r in rows if template in (None, r[0])]
        levels = result["overall"] if template is None else result["per_template"][template]
        if not chosen:
            continue
        for key in ("random_point", "random_object", "shape_only", "colour_shape_only",
                    "attribute_only"):
            simulated = np.mean([r[1][key] for r in chosen])
            exact = np.mean([r[2][key] for r in chosen])
            assert levels[key] == pytest.approx(exact, abs=1e-9)
            assert levels[key] == pytest.approx(simulated, abs=0.5 / np.sqrt(len(chosen)))
    assert sum(result["template_mix"].values()) == pytest.approx(1.0)
    assert result["overall"]["random_object"] < result["overall"]["shape_only"]
    assert result["overall"]["shape_only"] <= result["overall"]["colour_shape_only"] < 1.0
    assert result["overall"]["colour_shape_only"] <= result["overall"]["attribute_only"] < 1.0
    # an attribute sentence names its target's attributes uniquely; the others need more words
    assert result["per_template"]["attribute"]["attribute_only"] == pytest.approx(1.0)
    assert result["per_template"]["position"]["attribute_only"] == pytest.approx(0.5)


def test_compatibility_matches_the_independent_checker(root):
    refs, instances, scenes = _load(root)
    margin = 0.1 * instances["images"][0]["width"]
    test_refs = [r for r in refs if r["split"] == "test"][:60]
    keys = [f"{r['image_id']}:{r['ref_id']}:{s['sent_id']}" for r in test_refs for s in r["sentences"]]
    texts = [s["sent"] for r in test_refs for s in r["sentences"]]
    image_ids = sorted({int(i) for i in scenes["objects"]})[:80] + [r["image_id"] for r in test_refs]
    matrix = compatibility(root, keys, image_ids)
    assert matrix.shape == (len(keys), len(image_ids)) and matrix.dtype == bool
    expected = np.array([[len(checker(parse(t), scenes["objects"][str(i)], margin)) == 1
                          for i in image_ids] for t in texts])
    assert np.array_equal(matrix, expected)
    own = [image_ids.index(int(k.split(":")[0])) for k in keys]
    assert matrix[np.arange(len(keys)), own].all()
    assert 0 < matrix.mean() < 0.5


def test_refer_reader_reads_synthref_without_special_cases(root):
    refer = pytest.importorskip("refbench.data.refer")
    refs, instances, _ = _load(root)
    dataset = refer.ReferDataset(root, "synth-test")
    expressions = dataset.expressions("all")
    test_sentences = [(r, s) for r in refs if r["split"] == "test" for s in r["sentences"]]
    assert [e.text for e in expressions] == [s["sent"] for _, s in
                                             sorted(test_sentences, key=lambda rs: (rs[0]["image_id"], rs[0]["ref_id"]))]
    masks = _masks(instances)
    first = expressions[0]
    assert np.array_equal(dataset.mask(first.ann_id), masks[first.ann_id])
    assert dataset.load_image(first.image_id).shape == (96, 96, 3)
    sentence = dataset.sentence(first.key)
    assert sentence.extra["template"] in ("attribute", "position", "superlative", "relation")
    assert tuple(sentence.extra["cues"]) == first.cues


def test_generate_rejects_bad_options(tmp_path, root):
    with pytest.raises(ConfigError, match="size"):
        generate(tmp_path, size=20)
    with pytest.raises(ConfigError, match="tran"):
        generate(tmp_path, images={"tran": 3})
    with pytest.raises(UnknownNameError, match="hard"):
        generate(tmp_path, variant="harder")
    with pytest.raises(OutputError, match="already exists"):
        generate(root, images={"train": 1, "val": 1, "test": 1})
    with pytest.raises(ConfigError, match="refcoco-val"):
        stats(root, "refcoco-val")


def test_ensure_synthref_generates_once_and_cleans_partial_work(tmp_path, monkeypatch):
    from refbench.synth import variants

    small = dataclasses.replace(variants.VARIANTS["default"], default_images={"train": 2, "val": 1, "test": 2})
    monkeypatch.setitem(variants.VARIANTS, "default", small)
    monkeypatch.setenv("REFBENCH_CACHE", str(tmp_path / "cache"))
    stale = tmp_path / "cache" / "synthref-v1" / ".synthref.tmp-crashed"
    stale.mkdir(parents=True)
    data_root = ensure_synthref()
    assert data_root == tmp_path / "cache" / "synthref-v1"
    assert not stale.exists()
    refs_file = data_root / "synthref" / "refs(synth).p"
    stamp = refs_file.stat().st_mtime_ns
    assert ensure_synthref() == data_root and refs_file.stat().st_mtime_ns == stamp
    (data_root / "synthref" / "scenes.json").unlink()  # an incomplete folder is regenerated
    ensure_synthref()
    assert (data_root / "synthref" / "scenes.json").is_file()
    assert not list(data_root.glob(".synthref.*-*"))


def test_cli_generates_and_prints_stats(tmp_path):
    from refbench.cli.synth import stats_command, synth_command

    runner = CliRunner()
    out = tmp_path / "data"
    result = runner.invoke(synth_command, ["--out", str(out), "--images", "3", "--val-images", "2",
                                           "--test-images", "6", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (out / "synthref" / "instances.json").is_file()
    again = runner.invoke(synth_command, ["--out", str(out), "--images", "3"])
    assert isinstance(again.exception, OutputError)
    shown = runner.invoke(stats_command, ["--split", "synth-test", "--data-root", str(out), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["overall"] == stats(out, "synth-test")["overall"]
    table = runner.invoke(stats_command, ["--split", "synth-test", "--data-root", str(out)])
    assert table.exit_code == 0 and "colour_shape_only" in table.output and "superlative" in table.output
    wrong = runner.invoke(stats_command, ["--split", "refcoco-val", "--data-root", str(out)])
    assert isinstance(wrong.exception, ConfigError)
