"""A tiny in-memory stand-in for refbench.data.refer.ReferDataset, for the proposal tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refbench.errors import DataError


@dataclass
class FakeInfo:
    id: str = "synth-val"
    dataset: str = "synthref"
    split_by: str = "synth"


@dataclass
class FakeDataset:
    """Images (uint8 [H, W, 3]), object masks and refs; `broken` image ids fail to load."""

    images: dict
    masks: dict = field(default_factory=dict)  # ann_id -> bool [H, W]
    refs: list = field(default_factory=list)  # {ref_id, ann_id, image_id}
    broken: set = field(default_factory=set)
    info: FakeInfo = field(default_factory=FakeInfo)
    loads: list = field(default_factory=list)

    @property
    def image_ids(self) -> list:
        return sorted(self.images)

    def image_info(self, image_id):
        height, width = self.images[image_id].shape[:2]
        name = f"img_{image_id:06d}.png"
        return {"file_name": name, "height": height, "width": width,
                "path": str(Path("/nonexistent") / name)}

    def load_image(self, image_id) -> np.ndarray:
        self.loads.append(image_id)
        if image_id in self.broken:
            raise DataError(f"cannot read image {self.image_info(image_id)['path']}")
        return self.images[image_id]

    def mask(self, ann_id) -> np.ndarray:
        return self.masks[ann_id]


def shapes_scene(height: int = 96, width: int = 96, seed: int = 0):
    """A flat grey image with three coloured shapes; returns (image, {name: bool mask})."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    image += rng.integers(0, 4, size=image.shape, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    shapes = {
        "square": (yy >= 8) & (yy < 38) & (xx >= 8) & (xx < 38),
        "disc": (yy - 65) ** 2 + (xx - 30) ** 2 < 18 ** 2,
        "bar": (yy >= 15) & (yy < 85) & (xx >= 60) & (xx < 80),
    }
    colours = {"square": (230, 30, 30), "disc": (30, 200, 40), "bar": (40, 60, 230)}
    for name, mask in shapes.items():
        image[mask] = colours[name]
    return image, shapes


# --------------------------------------------------------------------------- tests
import json  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from refbench.errors import ConfigError, UnknownNameError  # noqa: E402
from refbench.proposals import (  # noqa: E402
    SYNTH_FELZENSZWALB,
    ProposalStore,
    default_options,
    get_backend,
    import_pcnet_proposals,
    import_sam_rle_folder,
    load_proposals,
    oracle_scores,
    postprocess,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFBENCH_CACHE", str(tmp_path / "cache"))


def rect(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def np_iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 0.0


class StaticBackend:
    """Returns fixed RLEs per image size; counts calls."""

    name = "static"
    batch_size = 2

    def __init__(self, masks_for):
        self.masks_for = masks_for
        self.calls = []

    def propose_batch(self, images):
        from refbench.proposals.postprocess import encode_masks

        self.calls.append(len(images))
        return [encode_masks(self.masks_for(image)) for image in images]


# --- post-processing -------------------------------------------------------------------------

def test_min_area_drops_small_masks_and_keeps_the_threshold():
    h, w = 100, 100
    small = rect(h, w, 0, 10, 0, 99)  # 990 px
    exact = rect(h, w, 20, 40, 0, 50)  # 1000 px
    big = rect(h, w, 50, 100, 0, 100)  # 5000 px
    out = postprocess([small, exact, big], max_proposals=5, pad=False)
    assert len(out) == 2
    assert np.array_equal(out[0], big) and np.array_equal(out[1], exact)


def test_min_area_fraction_scales_with_the_image():
    h, w = 96, 96
    a = rect(h, w, 0, 5, 0, 5)  # 25 px < ceil(0.0033 * 9216) = 31
    b = rect(h, w, 10, 16, 10, 16)  # 36 px
    out = postprocess([a, b], max_proposals=3, min_area=0.0033, pad=False)
    assert len(out) == 1 and np.array_equal(out[0], b)


def test_max_area_drops_large_masks_in_pixels_or_as_a_fraction():
    h, w = 100, 100
    ground = rect(h, w, 0, 100, 0, 60)  # 6000 px: 60% of the image
    shape = rect(h, w, 70, 90, 70, 90)  # 400 px
    assert len(postprocess([ground, shape], max_proposals=5, min_area=100, pad=False)) == 2
    for max_area in (0.3, 3000):
        out = postprocess([ground, shape], max_proposals=5, min_area=100, max_area=max_area,
                          pad=False)
        assert len(out) == 1 and np.array_equal(out[0], shape)
    with pytest.raises(ConfigError, match="max_area"):
        get_backend("felzenszwalb", max_area=0)


def test_synthref_felzenszwalb_defaults_find_the_objects_not_the_ground(tmp_path):
    """On SynthRef scenes the defaults give object proposals; the paper-style ones do not."""
    refer = pytest.importorskip("refbench.data.refer")
    from refbench.synth import generate

    root = generate(tmp_path / "data", images={"train": 2, "val": 6, "test": 2})
    dataset = refer.ReferDataset(root, "synth-val")
    assert default_options("felzenszwalb", False) == {"min_area": 1000.0}
    tuned = get_backend("felzenszwalb", workers=1, **default_options("felzenszwalb", True))
    paper_style = get_backend("felzenszwalb", workers=1, min_area=1000 / (640 * 480))
    shares = {}
    for name, backend in (("tuned", tuned), ("paper_style", paper_style)):
        on_objects = total = 0
        for image_id in dataset.image_ids:
            rles = backend.propose(dataset.load_image(image_id))
            masks = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()}
                                       for r in rles]).transpose(2, 0, 1).astype(bool)
            objects = [np.asarray(dataset.mask(a), dtype=bool)
                       for a in dataset.annotation_ids(image_id)]
            for obj in objects:  # every object still has a close proposal
                assert max(np_iou(m, obj) for m in masks) > 0.8, (name, image_id)
            on_objects += sum(max(np_iou(m, obj) for obj in objects) > 0.5 for m in masks)
            total += len(masks)
        shares[name] = on_objects / total
    assert shares["tuned"] > 0.75 and shares["paper_style"] < 0.3, shares


def test_dedup_keeps_the_larger_of_two_overlapping_masks():
    h, w = 100, 100
    large = rect(h, w, 0, 50, 0, 50)  # 2500
    near = rect(h, w, 0, 50, 0, 45)  # 2250, IoU 0.9 with large
    apart = rect(h, w, 0, 50, 0, 39)  # 1950, IoU 0.78 with large, 0.867 with near
    other = rect(h, w, 60, 100, 60, 100)  # 1600, disjoint
    assert np_iou(large, near) > 0.8 and np_iou(large, apart) < 0.8
    out = postprocess([near, apart, other, large], max_proposals=10, min_area=1, pad=False)
    # near is dropped (IoU 0.9 with large); apart is compared only with the kept ones
    assert [int(m.sum()) for m in out] == [2500, 1950, 1600]
    assert np.array_equal(out[0], large) and np.array_equal(out[1], apart)


def test_keeps_the_largest_and_pads_with_empty_masks():
    h, w = 64, 64
    masks = [rect(h, w, i, i + 1, 0, 1 + i) for i in range(50)]  # disjoint rows, areas 1..50
    out = postprocess(masks, max_proposals=40, min_area=1)
    assert len(out) == 40
    assert [int(m.sum()) for m in out] == list(range(50, 10, -1))
    few = postprocess(masks[:3], max_proposals=5, min_area=1)
    assert len(few) == 5 and [int(m.sum()) for m in few] == [3, 2, 1, 0, 0]
    assert all(m.shape == (h, w) and m.dtype == bool for m in few)


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(UnknownNameError, match="felzenszwalb"):
        get_backend("felzenswalb")


# --- felzenszwalb ----------------------------------------------------------------------------

def test_felzenszwalb_recovers_each_coloured_shape():
    image, shapes = shapes_scene()
    backend = get_backend("felzenszwalb", min_area=0.0033)
    rles = backend.propose(image)
    assert 3 <= len(rles) <= 40
    masks = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    masks = masks.transpose(2, 0, 1).astype(bool)
    for name, shape in shapes.items():
        best = max(np_iou(m, shape) for m in masks)
        assert best > 0.8, (name, best)


def test_felzenszwalb_workers_give_the_same_proposals_as_one_process():
    image, _ = shapes_scene()
    images = [image, np.ascontiguousarray(image[::-1]), np.ascontiguousarray(image[:, ::-1])]
    serial = get_backend("felzenszwalb", min_area=0.0033, workers=1)
    parallel = get_backend("felzenszwalb", min_area=0.0033, workers=2)
    assert parallel.batch_size > 1 and parallel.config() == serial.config()
    assert parallel.propose_batch(images) == serial.propose_batch(images)


def test_felzenszwalb_on_a_real_photo_downscaled_work():
    from skimage import data

    image = data.coffee()  # 400 x 600
    rles = get_backend("felzenszwalb", max_side=160).propose(image)
    assert 1 <= len(rles) <= 40
    areas = mask_utils.area([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    assert all(r["size"] == [400, 600] for r in rles)
    assert (areas >= 1000).all() and list(areas) == sorted(areas, reverse=True)


# --- store -----------------------------------------------------------------------------------

def make_dataset(n=5, size=(30, 40)):
    images = {i: np.full((*size, 3), i, dtype=np.uint8) for i in range(1, n + 1)}
    return FakeDataset(images=images)


def masks_of(image):
    h, w = image.shape[:2]
    k = int(image[0, 0, 0])
    return [rect(h, w, 0, 10 + k, 0, 7), rect(h, w, 5, h, 20, 20 + k), rect(h, w, 3, 4, 3, 30)]


CONFIG = {"max_proposals": 6, "what": "test"}


def test_store_round_trip_at_original_and_requested_size():
    dataset = make_dataset()
    store = ProposalStore(dataset, "static", CONFIG)
    assert store.build(dataset, StaticBackend(masks_of), progress=False) == 5
    for image_id in dataset.image_ids:
        expected = np.stack(masks_of(dataset.images[image_id]))  # [3, 30, 40]
        full = store.load(image_id)
        assert full.dtype == torch.bool and full.shape == (6, 30, 40)
        assert np.array_equal(full[:3].numpy(), expected) and not full[3:].any()
        for size in ((320, 320), (17, 23), (30, 40), (61, 97), (1, 1)):
            got = store.load(image_id, size=size)
            ref = torch.nn.functional.interpolate(
                torch.from_numpy(expected)[None].float(), size=size, mode="nearest")[0] > 0.5
            assert got.shape == (6, *size)
            assert torch.equal(got[:3], ref) and not got[3:].any()
    assert store.bytes_per_image() > 0
    assert re.fullmatch(r"synthref-synth-[0-9a-f]{12}", store.folder.parent.name)


def test_resume_after_a_torn_line_computes_only_the_missing_images():
    dataset = make_dataset(n=5)
    store = ProposalStore(dataset, "static", CONFIG)
    store.build(dataset, StaticBackend(masks_of), progress=False, image_ids=[1, 2, 3])
    path = store.records_path
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"height":30,"image_id":4,"rles":["ab')  # crash mid-append
    fresh = ProposalStore(dataset, "static", CONFIG)
    assert fresh.images_done() == {1, 2, 3}
    dataset.loads.clear()
    backend = StaticBackend(masks_of)
    assert fresh.build(dataset, backend, progress=False) == 2
    assert dataset.loads == [4, 5]
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert [json.loads(line)["image_id"] for line in lines[:-1]] == [1, 2, 3, 4, 5]
    assert np.array_equal(fresh.load(4)[:3].numpy(), np.stack(masks_of(dataset.images[4])))
    assert fresh.build(dataset, backend, progress=False) == 0


def test_unreadable_image_names_the_file_and_keeps_finished_work():
    dataset = make_dataset(n=6)
    dataset.broken = {5}
    store = ProposalStore(dataset, "static", CONFIG)
    with pytest.raises(DataError, match="img_000005.png"):
        store.build(dataset, StaticBackend(masks_of), progress=False)
    assert store.images_done() == {1, 2, 3, 4}  # batches of 2: 1-2 and 3-4 were appended
    dataset.broken = set()
    dataset.loads.clear()
    assert store.build(dataset, StaticBackend(masks_of), progress=False) == 2
    assert dataset.loads == [5, 6]


def test_corrupt_record_in_the_middle_is_an_error_naming_file_and_image():
    dataset = make_dataset(n=3)
    store = ProposalStore(dataset, "static", CONFIG)
    store.build(dataset, StaticBackend(masks_of), progress=False)
    lines = store.records_path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"rles":[', b'"rles":[[')  # broken JSON, id still readable
    store.records_path.write_bytes(b"\n".join(lines))
    fresh = ProposalStore(dataset, "static", CONFIG)
    assert np.array_equal(fresh.load(1)[:3].numpy(), np.stack(masks_of(dataset.images[1])))
    with pytest.raises(DataError, match=r"proposals\.jsonl.*image 2"):
        fresh.load(2)
    lines[1] = b"garbage"
    store.records_path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"proposals\.jsonl line 2"):
        ProposalStore(dataset, "static", CONFIG).images_done()


def test_load_proposals_names_the_build_command_when_missing():
    dataset = make_dataset(n=2)
    with pytest.raises(DataError, match="refbench proposals build --split synth-val --backend static"):
        load_proposals(dataset, "static")
    store = ProposalStore(dataset, "static", CONFIG)
    store.build(dataset, StaticBackend(masks_of), progress=False, image_ids=[1])
    with pytest.raises(DataError, match="proposals build"):
        load_proposals(dataset, "static")
    store.build(dataset, StaticBackend(masks_of), progress=False)
    assert load_proposals(dataset, "static").folder == store.folder
    with pytest.raises(ConfigError):
        ProposalStore(dataset, "static", {"no": "max"})


def test_load_proposals_prefers_the_default_store_among_several():
    image, _ = shapes_scene()
    dataset = FakeDataset(images={7: image})
    default = get_backend("felzenszwalb", max_proposals=40, workers=1,
                          **default_options("felzenszwalb", True))
    other = get_backend("felzenszwalb", max_proposals=40, workers=1, min_area=0.0033)
    stores = [ProposalStore(dataset, "felzenszwalb", b.config()) for b in (other, default)]
    for store, backend in zip(stores, (other, default)):
        store.build(dataset, backend, progress=False)
    assert load_proposals(dataset, "felzenszwalb").folder == stores[1].folder
    # with no default store among them, the choice is the user's
    stores[1].close()
    import shutil

    shutil.rmtree(stores[1].folder)
    third = get_backend("felzenszwalb", max_proposals=8, workers=1, min_area=0.0033)
    ProposalStore(dataset, "felzenszwalb", third.config()).build(dataset, third, progress=False)
    with pytest.raises(ConfigError, match="several felzenszwalb proposal stores"):
        load_proposals(dataset, "felzenszwalb")


# --- oracle ----------------------------------------------------------------------------------

def test_oracle_matches_a_hand_computation():
    h, w = 10, 10
    images = {1: np.zeros((h, w, 3), np.uint8), 2: np.zeros((h, w, 3), np.uint8)}
    gt_a = rect(h, w, 0, 4, 0, 5)  # 20 px
    gt_b = rect(h, w, 5, 10, 5, 10)  # 25 px
    gt_c = rect(h, w, 0, 2, 0, 2)  # 4 px
    dataset = FakeDataset(images=images, masks={10: gt_a, 11: gt_b, 20: gt_c},
                          refs=[{"ref_id": 1, "ann_id": 10, "image_id": 1},
                                {"ref_id": 2, "ann_id": 11, "image_id": 1},
                                {"ref_id": 3, "ann_id": 20, "image_id": 2}])
    p1 = [rect(h, w, 0, 4, 0, 4), rect(h, w, 5, 10, 5, 10), rect(h, w, 0, 10, 0, 10)]
    p2 = [rect(h, w, 0, 4, 0, 4)]
    store = ProposalStore(dataset, "static", {"max_proposals": 4})
    store.build(dataset, StaticBackend(lambda im: p1 if im is images[1] else p2), progress=False)
    # ref 1: best is p1[0]: I=16, U=20 -> 0.8 (p1[2]: 20/100); ref 2: p1[1] exact: 25/25
    # ref 3: p2[0]: I=4, U=16 -> 0.25
    scores = oracle_scores(dataset, store)
    assert scores["n"] == 3
    assert scores["mIoU"] == pytest.approx(100 * (0.8 + 1.0 + 0.25) / 3)
    assert scores["oIoU"] == pytest.approx(100 * (16 + 25 + 4) / (20 + 25 + 16))


# --- importers -------------------------------------------------------------------------------

def test_import_sam_rle_folder_applies_the_post_processing(tmp_path):
    dataset = make_dataset(n=2, size=(60, 50))
    folder = tmp_path / "sam_json"
    folder.mkdir()
    h, w = 60, 50
    big, dup, small = rect(h, w, 0, 40, 0, 40), rect(h, w, 0, 40, 0, 38), rect(h, w, 50, 52, 0, 2)
    for image_id in dataset.image_ids:
        anns = []
        for m in (small, dup, big):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "area": int(m.sum()), "predicted_iou": 0.9, "stability_score": 0.9})
        name = f"img_{image_id:06d}.json" if image_id == 1 else f"{image_id}.json"
        (folder / name).write_text(json.dumps(anns))
    store = import_sam_rle_folder(folder, dataset, min_area=100)
    assert store.images_done() == {1, 2}
    got = store.load(2)
    assert got.shape == (40, 60, 50)
    assert np.array_equal(got[0].numpy(), big) and not got[1:].any()
    (folder / "2.json").write_text("[{]")
    with pytest.raises(DataError, match=r"2\.json.*image 2"):  # another image set: a new store
        import_sam_rle_folder(folder, make_dataset(n=3, size=(60, 50)), min_area=100)
    assert np.array_equal(import_sam_rle_folder(folder, dataset, min_area=100).load(2)[0].numpy(),
                          big)  # the finished store is not read again


def test_import_pcnet_npy_files_keeps_every_mask_at_its_index(tmp_path):
    dataset = make_dataset(n=2, size=(30, 40))
    out = tmp_path / "refcoco" / "SAM_Mask" / "SAM_out"
    out.mkdir(parents=True)
    arrays = {}
    for image_id in dataset.image_ids:
        array = np.zeros((40, 30, 40), dtype=np.float32)  # a zero-padded 40-stack
        array[0, :5, :5] = 1
        array[2, 5:, 10:] = 1  # after an empty mask at index 1
        arrays[image_id] = array
        np.save(out / f"img_{image_id:06d}.npy", array)
    store = import_pcnet_proposals(tmp_path / "refcoco", dataset, generator="sam")
    assert store.backend_name == "pcnet-sam" and not store.has_sentence_scores()
    assert np.array_equal(store.load(1).numpy(), arrays[1] > 0)
    with pytest.raises(DataError, match="SOLO_out"):
        import_pcnet_proposals(tmp_path / "refcoco", dataset, generator="freesolo")
    np.save(out / "img_000002.npy", np.zeros((40, 15, 20), dtype=np.uint8))  # half size
    with pytest.raises(DataError, match=r"img_000002\.npy .*shape \[40, 15, 20\].*"
                                        r"needs \[40, 30, 40\]"):
        import_pcnet_proposals(out, make_dataset(n=2, size=(30, 40)), name="other")


# --- the real reader (run by the lead after merging) -----------------------------------------

def test_store_with_the_real_reader_on_synthref(tmp_path):
    refer = pytest.importorskip("refbench.data.refer")
    from refbench.synth import generate

    root = generate(tmp_path / "data", images={"train": 2, "val": 3, "test": 2})
    dataset = refer.ReferDataset(root, "synth-val")
    store = ProposalStore(dataset, "felzenszwalb", {"max_proposals": 40})
    ids = dataset.image_ids[:3]
    store.build(dataset, get_backend("felzenszwalb", min_area=0.0033), progress=False, image_ids=ids)
    for image_id in ids:
        info = dataset.image_info(image_id)
        height = info["height"] if isinstance(info, dict) else info.height
        assert store.load(image_id).shape[1] == height


# --- CLI -------------------------------------------------------------------------------------

def test_cli_build_then_oracle(monkeypatch, capsys):
    from refbench.cli import main
    from refbench.cli import proposals as cli_proposals

    image, shapes = shapes_scene()
    dataset = FakeDataset(images={7: image}, masks={70: shapes["disc"], 71: shapes["bar"]},
                          refs=[{"ref_id": 1, "ann_id": 70, "image_id": 7},
                                {"ref_id": 2, "ann_id": 71, "image_id": 7}])
    monkeypatch.setattr(cli_proposals, "_open_dataset", lambda split, root: dataset)
    assert main(["proposals", "build", "--split", "synth-val"]) == 0
    out = capsys.readouterr().out
    assert "computed 1 images" in out and "KiB per image" in out
    assert main(["proposals", "build", "--split", "synth-val"]) == 0
    assert "computed 0 images" in capsys.readouterr().out
    assert main(["proposals", "oracle", "--split", "synth-val"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "(n=2)" in out
    store = load_proposals(dataset, "felzenszwalb")
    assert store.config["min_area"] == pytest.approx(1000 / (640 * 480))  # SynthRef default
    assert store.config["max_area"] == SYNTH_FELZENSZWALB["max_area"]
    assert main(["proposals", "build", "--split", "synth-val", "--backend", "sam",
                 "--checkpoint", "/nonexistent/sam.pth"]) == 2
    assert "sam.pth does not exist" in capsys.readouterr().err
    # A refused build leaves the cache as it was: no empty store beside the good one.
    folders = sorted(p for p in store.folder.parent.iterdir())
    assert main(["proposals", "build", "--split", "synth-val", "--max-proposals", "0"]) == 2
    assert sorted(p for p in store.folder.parent.iterdir()) == folders
    with pytest.raises(ConfigError, match="max_proposals=0"):
        ProposalStore(dataset, "felzenszwalb", {"max_proposals": 0})
    assert main(["proposals", "oracle", "--split", "synth-val"]) == 0


def test_fast_rle_decoder_matches_pycocotools_and_torch_nearest():
    from refbench.proposals.rle import decode_resized

    rng = np.random.default_rng(1)
    masks = rng.random((6, 37, 53)) < 0.4
    masks[0] = True
    masks[1] = False
    masks[2, 0, 0] = True
    masks[3, -1, -1] = True
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    strings = [r["counts"].decode() for r in rles]
    for size in ((37, 53), (20, 20), (80, 11), (100, 160)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(masks)[None].float(), size=size,
                                              mode="nearest")[0] > 0.5
        assert np.array_equal(decode_resized(strings, 37, 53, *size), ref.numpy()), size
