"""The refer-format reader against a tiny data set whose contents are known by construction."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refbench.data import refer
from refbench.data.refer import ReferDataset, safe_load_pickle, split_matches
from refbench.data.splits import get_split
from refbench.errors import ConfigError, DataError, UnknownNameError
from tests.refer_fixture import SPLIT_MEMBERS, make_tiny_refer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    refer.clear_cache()
    return make_tiny_refer(tmp_path_factory.mktemp("refer"))


@pytest.fixture()
def fresh(tmp_path: Path) -> dict:
    """A private copy for tests that damage files."""
    return make_tiny_refer(tmp_path / "data")


# ----------------------------------------------------------------- refs and sentences


@pytest.mark.parametrize("split_id", list(SPLIT_MEMBERS))
def test_every_split_has_the_expected_refs_and_sentences(tiny: dict, split_id: str) -> None:
    expected = tiny["splits"][split_id]
    dataset = ReferDataset(tiny["root"], split_id)
    assert [r.ref_id for r in dataset.refs] == expected["ref_ids"]
    assert dataset.image_ids == expected["image_ids"]
    got_all = [(e.image_id, e.ref_id, e.sent_id, e.text) for e in dataset.expressions("all")]
    assert got_all == expected["sentences"]
    got_first = [(e.image_id, e.ref_id, e.sent_id, e.text) for e in dataset.expressions("first")]
    assert got_first == expected["first"]
    meta = dataset.metadata()
    assert (meta["num_refs"], meta["num_sentences"], meta["num_images"]) == (
        expected["num_refs"],
        expected["num_sentences"],
        len(expected["image_ids"]),
    )


def test_ref_records_carry_every_field(tiny: dict) -> None:
    info = get_split("refcocog-val-g")
    dataset = ReferDataset(tiny["root"], info)
    expected = tiny["refs"][("refcocog", "google")]
    for ref in dataset.refs:
        want = expected[ref.ref_id]
        assert (ref.ann_id, ref.image_id, ref.category_id, ref.split) == (
            want["ann_id"],
            want["image_id"],
            want["category_id"],
            want["split"],
        )
        assert [(s.sent_id, s.text, s.extra) for s in ref.sentences] == want["sentences"]
    synth_like = dataset.ref(23).sentences[0]
    assert synth_like.extra["template"] == "the {color} {noun}"
    assert synth_like.extra["cues"] == ["dog", "small dog"]
    cues = [e.cues for e in dataset.expressions() if e.ref_id == 23]
    assert cues == [("dog", "small dog")]
    assert all(e.cues == () for e in dataset.expressions() if e.ref_id != 23)


def test_expressions_carry_ann_ids_and_keys_round_trip(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-testa")
    expected = tiny["refs"][("refcoco", "unc")]
    for expression in dataset.expressions():
        assert expression.ann_id == expected[expression.ref_id]["ann_id"]
        sentence = dataset.sentence(expression.key)
        assert (sentence.sent_id, sentence.text) == (expression.sent_id, expression.text)
    with pytest.raises(DataError, match="999"):
        dataset.sentence("102:3:999")
    with pytest.raises(DataError, match="image:ref:sent"):
        dataset.sentence("nonsense")


def test_python2_pickle_text_decodes(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-testa")
    sentence = dataset.ref(3).sentences[0]
    assert sentence.text == "caf\xe9 table"
    assert sentence.extra["raw"] == "Caf\xe9 table"
    assert sentence.extra["tokens"] == ["caf\xe9", "table"]


def test_expressions_by_image_groups_in_order(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-val")
    grouped = dataset.expressions_by_image("all")
    assert list(grouped) == tiny["splits"]["refcoco-val"]["image_ids"]
    flat = [(e.image_id, e.ref_id, e.sent_id, e.text) for g in grouped.values() for e in g]
    assert flat == tiny["splits"]["refcoco-val"]["sentences"]
    assert [r.ref_id for r in dataset.refs_of_image(101)] == [2, 7]
    assert dataset.refs_of_image(555) == []


def test_unknown_sentence_mode_is_a_config_error(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-val")
    with pytest.raises(ConfigError, match="'second'.*all, first"):
        dataset.expressions("second")


def test_unknown_split_lists_valid_ids(tiny: dict) -> None:
    with pytest.raises(UnknownNameError, match="refcoco-testa"):
        ReferDataset(tiny["root"], "refcoco-testA")


def test_split_matching_follows_the_refer_api() -> None:
    assert split_matches("testA", "testA") and split_matches("testAB", "testA")
    assert split_matches("testAB", "testB") and not split_matches("testB", "testA")
    assert split_matches("testA", "test") and split_matches("test", "test")
    assert not split_matches("train", "test") and not split_matches("val", "train")
    assert split_matches("testAB", "testAB") and not split_matches("testA", "testAB")


# ----------------------------------------------------------------- masks, boxes, annotations


@pytest.mark.parametrize("ann_id", [1001, 1002, 1003, 2001, 2002, 3001, 3002, 4001])
def test_masks_decode_exactly(tiny: dict, ann_id: int) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-train")
    mask = dataset.mask(ann_id)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, tiny["masks"][ann_id])


def test_overlapping_polygons_are_a_binary_union(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-val")
    mask = dataset.mask(1002)
    # 8*6 + 7*7 pixels minus the 4*3 overlap
    assert int(mask.sum()) == 48 + 49 - 12
    assert mask[6, 17] and not mask[0, 0]


def _rectangle(x0: int, y0: int, x1: int, y1: int, height: int = 16, width: int = 24) -> np.ndarray:
    """Columns x0..x1-1 and rows y0..y1-1: what a polygon with these integer corners covers."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_overlapping_polygons_once_keeps_pixels_covered_by_exactly_one(tiny: dict) -> None:
    # annotation 1002: polygons (12, 2)-(20, 8) and (16, 5)-(23, 12); they share (16, 5)-(20, 8)
    dataset = ReferDataset(tiny["root"], "refcoco-val")
    first, second = _rectangle(12, 2, 20, 8), _rectangle(16, 5, 23, 12)
    shared = _rectangle(16, 5, 20, 8)
    once = dataset.mask(1002, overlap="once")
    union = dataset.mask(1002, overlap="union")
    assert once.dtype == bool and union.dtype == bool
    np.testing.assert_array_equal(union, first | second)
    np.testing.assert_array_equal(once, (first | second) & ~shared)
    np.testing.assert_array_equal(dataset.mask(1002), union)  # the default is the union
    assert int(once.sum()) == 48 + 49 - 2 * 12 and int(union.sum()) == 48 + 49 - 12
    assert union[6, 17] and not once[6, 17]  # covered by both polygons
    assert once[3, 13] and once[10, 21]  # covered by one polygon each


@pytest.mark.parametrize("ann_id", [1001, 1003, 2001, 2002, 4001])
def test_once_equals_union_for_one_polygon_or_rle(tiny: dict, ann_id: int) -> None:
    # 1001 and 2002 are one polygon each; 1003, 2001 and 4001 are (compressed or not) RLE
    dataset = ReferDataset(tiny["root"], "refcoco-train")
    np.testing.assert_array_equal(dataset.mask(ann_id, overlap="once"), tiny["masks"][ann_id])


def test_unknown_overlap_is_refused(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-val")
    with pytest.raises(ValueError, match="union, once"):
        dataset.mask(1002, overlap="sum")


def test_once_matches_the_refer_api_sum_on_random_polygons(fresh: dict) -> None:
    """Three to five random fractional polygons per annotation, against refer's getMask recipe:
    pycocotools frPyObjects + decode, summed over polygons, cast to uint8, kept where == 1."""
    import json

    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(21)
    path = fresh["root"] / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    height, width = 16, 24  # image 101
    segmentations = {}
    for ann in instances["annotations"]:
        if ann["image_id"] != 101:
            continue
        polygons = []
        for _ in range(int(rng.integers(3, 6))):
            corners = int(rng.integers(3, 7))
            xs, ys = rng.uniform(0, width, corners), rng.uniform(0, height, corners)
            polygons.append([float(v) for xy in zip(xs, ys) for v in xy])
        ann["segmentation"] = polygons
        segmentations[ann["id"]] = polygons
    path.write_text(json.dumps(instances))
    dataset = ReferDataset(fresh["root"], "refcoco-val")
    for ann_id, polygons in segmentations.items():
        layers = mask_utils.decode(mask_utils.frPyObjects(polygons, height, width))
        summed = np.sum(layers, axis=2).astype(np.uint8)
        np.testing.assert_array_equal(dataset.mask(ann_id, overlap="once"), summed == 1)
        np.testing.assert_array_equal(dataset.mask(ann_id, overlap="union"), summed > 0)
        assert (summed > 1).any()  # the polygons do overlap somewhere


def test_boxes_annotation_ids_and_categories(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-testb")
    for ann_id, box in tiny["boxes"].items():
        assert dataset.box(ann_id) == box
    for image_id, ann_ids in tiny["annotation_ids"].items():
        assert dataset.annotation_ids(image_id) == ann_ids
    assert dataset.category_name(62) == "chair"
    with pytest.raises(DataError, match="annotation 42"):
        dataset.mask(42)


# ----------------------------------------------------------------- images


@pytest.mark.parametrize("image_id", [101, 102, 103, 104])
def test_images_load_as_rgb_uint8(tiny: dict, image_id: int) -> None:
    dataset = ReferDataset(tiny["root"], "refcoco-train")
    want = tiny["images"][image_id]
    image = dataset.load_image(image_id)
    assert image.dtype == np.uint8
    assert image.shape == (want["height"], want["width"], 3)
    if want["lossless"]:
        np.testing.assert_array_equal(image, want["pixels"])
    else:
        assert np.abs(image.astype(int) - want["pixels"].astype(int)).mean() < 4
    info = dataset.image_info(image_id)
    assert (info.file_name, info.path) == (want["file_name"], want["path"])


def test_grayscale_becomes_three_equal_channels(tiny: dict) -> None:
    image = ReferDataset(tiny["root"], "refcoco-testa").load_image(102)
    assert (image[:, :, 0] == image[:, :, 1]).all() and (image[:, :, 1] == image[:, :, 2]).all()


def test_dataset_local_images_come_first(tiny: dict) -> None:
    dataset = ReferDataset(tiny["root"], "refcocog-val-g")
    np.testing.assert_array_equal(dataset.load_image(104), tiny["refcocog_image_104"])
    assert dataset.image_info(104).path == tiny["root"] / "refcocog" / "images" / tiny["images"][104]["file_name"]


def test_cmyk_images_are_converted(fresh: dict) -> None:
    path = fresh["images"][103]["path"]
    cmyk = np.zeros((12, 16, 4), dtype=np.uint8)
    cmyk[..., 0] = 255  # full cyan -> RGB (0, 255, 255) in PIL's conversion
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    image = ReferDataset(fresh["root"], "refcoco-testb").load_image(103)
    assert image.shape == (12, 16, 3)
    assert np.abs(image.astype(int) - np.array([0, 255, 255])).max() <= 3


def test_missing_image_names_every_path_tried(fresh: dict) -> None:
    path = fresh["images"][101]["path"]
    path.unlink()
    dataset = ReferDataset(fresh["root"], "refcoco-train")
    with pytest.raises(DataError) as caught:
        dataset.load_image(101)
    message = str(caught.value)
    for candidate in dataset.image_candidates(fresh["images"][101]["file_name"]):
        assert str(candidate) in message


def test_corrupt_image_names_the_file(fresh: dict) -> None:
    path = fresh["images"][102]["path"]
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match=str(path).replace("+", r"\+")):
        ReferDataset(fresh["root"], "refcoco-testa").load_image(102)


def test_image_size_disagreeing_with_instances_is_reported(fresh: dict) -> None:
    path = fresh["images"][101]["path"]
    Image.fromarray(np.zeros((5, 7, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match=r"7x5.*24x16"):
        ReferDataset(fresh["root"], "refcoco-train").load_image(101)


# ----------------------------------------------------------------- missing and hostile files


def test_missing_root_and_files_name_the_path(tmp_path: Path, fresh: dict) -> None:
    with pytest.raises(DataError, match="docs/data.md") as caught:
        ReferDataset(tmp_path / "nowhere", "refcoco-val")
    assert str(tmp_path / "nowhere") in str(caught.value)

    refs = fresh["root"] / "refcocog" / "refs(umd).p"
    refs.unlink()
    with pytest.raises(DataError, match="docs/data.md") as caught:
        ReferDataset(fresh["root"], "refcocog-val-u")
    assert str(refs) in str(caught.value)

    instances = fresh["root"] / "refcoco+" / "instances.json"
    instances.unlink()
    with pytest.raises(DataError) as caught:
        ReferDataset(fresh["root"], "refcoco+-val")
    assert str(instances) in str(caught.value)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Exploit(marker)}], protocol=2))
    with pytest.raises(DataError, match="refs\\(unc\\).p") as caught:
        safe_load_pickle(path)
    assert "system" in str(caught.value)
    assert not marker.exists()
    # the same payload would run under plain pickle: the test would catch a permissive loader
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_malicious_refs_file_is_refused_by_the_dataset(fresh: dict) -> None:
    marker = fresh["root"] / "pwned"
    path = fresh["root"] / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Exploit(marker)]))
    with pytest.raises(DataError, match="refusing"):
        ReferDataset(fresh["root"], "refcoco-val")
    assert not marker.exists()


def test_truncated_and_wrong_shape_pickles(tmp_path: Path) -> None:
    path = tmp_path / "refs(umd).p"
    path.write_bytes(pickle.dumps([{"a": 1}] * 3)[:-5])
    with pytest.raises(DataError, match="refs\\(umd\\).p"):
        safe_load_pickle(path)
    (tmp_path / "refcocog").mkdir()
    (tmp_path / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps({"not": "a list"}))
    (tmp_path / "refcocog" / "instances.json").write_text("{}")
    with pytest.raises(DataError, match="not a list of refs"):
        ReferDataset(tmp_path, "refcocog-val-u")


# ----------------------------------------------------------------- caching and provenance


def test_files_are_parsed_once_and_reparsed_when_changed(fresh: dict, monkeypatch) -> None:
    calls: list[Path] = []
    original = refer._load_refs

    def counting(path: Path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(refer, "_load_refs", counting)
    refer.clear_cache()
    for split_id in ("refcoco-train", "refcoco-val", "refcoco-testa"):
        ReferDataset(fresh["root"], split_id)
    assert len(calls) == 1
    path = fresh["root"] / "refcoco" / "refs(unc).p"
    records = safe_load_pickle(path)
    path.write_bytes(pickle.dumps(records[:2]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(ReferDataset(fresh["root"], "refcoco-train").refs) + len(
        ReferDataset(fresh["root"], "refcoco-val").refs
    ) <= 2
    assert len(calls) == 2


def test_metadata_records_hash_and_info_block(tiny: dict) -> None:
    import hashlib

    dataset = ReferDataset(tiny["root"], "refcocog-test-u")
    meta = dataset.metadata()
    refs_path = tiny["root"] / "refcocog" / "refs(umd).p"
    assert meta["refs_sha256"] == hashlib.sha256(refs_path.read_bytes()).hexdigest()
    assert (meta["dataset"], meta["split_by"], meta["split_id"]) == ("refcocog", "umd", "refcocog-test-u")
    assert meta["instances_info"]["description"] == "refbench tiny refer fixture"
