"""PCNet's phrase files and SAM masks, written in exactly the official formats
(tests/reference_fixture.write_pcnet_files), imported through the CLI and read back: the
phrase pairing, every mask at its index, the clip scores, and the refusals."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from refbench.cli import main
from refbench.cues import ensure_cues, load_cues
from refbench.data.refer import ReferDataset
from refbench.errors import DataError
from refbench.proposals import ProposalStore, load_proposals
from tests.reference_fixture import (
    CANDIDATE_FILE,
    GOOGLE_REF_IDS,
    IMAGES,
    REVERSED_PHRASE_FILES,
    write_pcnet_files,
    write_reference_refer,
)

SPLITS = ("refcocog-val-u", "refcocog-train-u")


@pytest.fixture()
def official(tmp_path: Path) -> dict:
    """The fixture data set (JPEG images) with PCNet's files beside it."""
    root = tmp_path / "data"
    write_reference_refer(root, image_format="jpg")
    expected = write_pcnet_files(root)
    return {"root": root, "data": root / "refcocog", **expected}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (lock files aside) with its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def load_official_dict(path: Path) -> dict:
    return np.load(path, allow_pickle=True).item()


def save_official_dict(path: Path, content: dict) -> None:
    np.save(path, content, allow_pickle=True)


# --- phrases ---------------------------------------------------------------------------------

def test_phrases_pair_by_position_through_the_google_id_map(official, capsys, isolated_cache):
    root = official["root"]
    folder = official["data"] / "Mistral_7B_Ref_Sents"
    for split in SPLITS:
        code, out, err = run_cli(["cues", "import", "--split", split, "--from", str(folder),
                                  "--data-root", str(root)], capsys)
        assert code == 0, err
        assert "umd_2_google_ref.npy" in out  # the map found beside the refs file is named
    checked = set()
    for split in SPLITS:
        dataset = ReferDataset(root, split)
        cues = load_cues(dataset, "pcnet-import", k=5)
        backend, ensured = ensure_cues(dataset, "pcnet-import", 5)
        assert backend == "pcnet-import" and ensured == cues
        for ref in dataset.refs:
            for index, sentence in enumerate(ref.sentences):
                key = f"{ref.image_id}:{ref.ref_id}:{sentence.sent_id}"
                assert cues[key] == tuple(official["phrases"][(ref.ref_id, index)])
                checked.add((ref.ref_id, index))
    assert checked == set(official["phrases"])
    # ref 13's file lists its sentences in reverse: position, not sentence id, decides
    ref_13 = official["phrases"][(REVERSED_PHRASE_FILES[0], 0)]
    content = json.loads((folder / f"{GOOGLE_REF_IDS[13]}.json").read_text())
    assert ref_13 == list(content.values())[0] != content[str(min(map(int, content)))]


def test_explicit_ref_id_map_and_the_error_without_one(official, capsys, tmp_path):
    root, data = official["root"], official["data"]
    folder = data / "Mistral_7B_Ref_Sents"
    moved = tmp_path / "maps" / "umd_2_google_ref.npy"
    moved.parent.mkdir()
    shutil.move(data / "umd_2_google_ref.npy", moved)
    code, out, err = run_cli(["cues", "import", "--split", "refcocog-val-u", "--from",
                              str(folder), "--data-root", str(root)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "named by google ref ids" in err and "--ref-id-map" in err  # no silent decoys
    code, out, err = run_cli(["cues", "import", "--split", "refcocog-val-u", "--from",
                              str(folder), "--data-root", str(root), "--ref-id-map", str(moved)],
                             capsys)
    assert code == 0, err
    assert str(moved) in out
    dataset = ReferDataset(root, "refcocog-val-u")
    cues = load_cues(dataset, "pcnet-import")
    for expression in dataset.expressions("all"):
        index = [s.sent_id for s in dataset.ref(expression.ref_id).sentences].index(
            expression.sent_id)
        assert cues[expression.key] == tuple(official["phrases"][(expression.ref_id, index)])


@pytest.mark.parametrize("damage, message", [
    (lambda c: {**c, "12345": c[next(iter(c))]}, "has 3 entries but its ref has 2 sentences"),
    (lambda c: {k: v[:4] for k, v in c.items()}, "has 4 phrases, not 5"),
    (lambda c: {k: [*v, "a sixth"] for k, v in c.items()}, "has 6 phrases, not 5"),
])
def test_bad_phrase_files_are_refused_whole(official, capsys, isolated_cache, damage, message):
    root = official["root"]
    folder = official["data"] / "Mistral_7B_Ref_Sents"
    args = ["cues", "import", "--split", "refcocog-val-u", "--from", str(folder), "--data-root",
            str(root)]
    assert run_cli(args, capsys)[0] == 0
    before = snapshot(isolated_cache)
    path = folder / f"{GOOGLE_REF_IDS[16]}.json"  # ref 16: two sentences
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    (folder / f"{GOOGLE_REF_IDS[11]}.json").write_text(
        json.dumps({"1": ["x"] * 5, "2": ["y"] * 5}))  # a valid but new file for ref 11
    code, out, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert path.name in err and message in err and "Traceback" not in err
    assert snapshot(isolated_cache) == before  # ref 11's new phrases were not written either


# --- SAM masks -------------------------------------------------------------------------------

def test_sam_masks_every_index_and_clip_scores_round_trip(official, capsys):
    root, sam = official["root"], official["data"] / "SAM_Mask"
    candidates = load_official_dict(sam / CANDIDATE_FILE)
    for split, source in zip(SPLITS, (sam, sam / "SAM_out")):  # the official folder, or SAM_out
        code, out, err = run_cli(["proposals", "import", "--split", split, "--data-root",
                                  str(root), "--format", "pcnet", "--from", str(source)], capsys)
        assert code == 0, err
        assert CANDIDATE_FILE in out
    seen_images, seen_refs = set(), set()
    for split in SPLITS:
        dataset = ReferDataset(root, split)
        store = load_proposals(dataset, "pcnet-sam")
        for image_id in dataset.image_ids:
            info = dataset.image_info(image_id)
            official_masks = np.load(sam / "SAM_out" / f"{Path(info.file_name).stem}.npy")
            got = store.load(image_id).numpy()
            assert got.shape == (40, info.height, info.width)
            assert np.array_equal(got, official_masks != 0)
            assert not got[5].any() and got[6].any()  # the empty mask keeps its index
            seen_images.add(image_id)
        for ref in dataset.refs:
            clip = store.clip_scores(ref.ref_id).numpy()
            assert clip.dtype == np.float32 and clip.shape == (len(ref.sentences), 40)
            assert np.array_equal(clip, official["clip_scores"][ref.ref_id])
            assert np.array_equal(clip, candidates[ref.ref_id]["clip_score"])
            flags = store.candidates(ref.ref_id).numpy()
            assert flags.dtype == bool
            assert np.array_equal(flags, candidates[ref.ref_id]["candidate_2"] != 0)
            seen_refs.add(ref.ref_id)
    assert seen_images == set(IMAGES) and seen_refs == set(official["clip_scores"])
    assert store.scored_ref_ids() == seen_refs  # both splits share one store


def _drop_ref(path: Path) -> None:
    content = load_official_dict(path)
    del content[14]
    save_official_dict(path, content)


def _extra_sentence(path: Path) -> None:
    content = load_official_dict(path)
    for field in ("clip_score", "candidate_2"):
        content[15][field] = np.concatenate([content[15][field]] * 2)
    save_official_dict(path, content)


def _fewer_masks(path: Path) -> None:
    content = load_official_dict(path)
    for field in ("clip_score", "candidate_2"):
        content[16][field] = content[16][field][:, :39]
    save_official_dict(path, content)


def _mask_file(image_id: int) -> str:
    return f"SAM_out/COCO_train2014_{image_id:012d}.npy"


@pytest.mark.parametrize("target, damage, message", [
    (_mask_file(203), lambda p: np.save(p, np.load(p)[:39]),
     r"COCO_train2014_000000000203\.npy holds uint8 masks of shape \[39, 60, 80\]; image 203 "
     r"needs \[40, 60, 80\]"),
    (_mask_file(204), lambda p: np.save(p, np.load(p)[:, :44]),
     r"000000000204\.npy holds uint8 masks of shape \[40, 44, 45\]; image 204 needs "
     r"\[40, 45, 45\]"),
    (_mask_file(202), lambda p: p.unlink(), r"no proposals for image 202 .*SAM_out"),
    (CANDIDATE_FILE, _drop_ref, rf"{CANDIDATE_FILE} lacks 1 of 6 refs of refcocog-val-u "
                                r"\(e\.g\. ref 14\)"),
    (CANDIDATE_FILE, _extra_sentence, r"ref 15 has clip_score of shape \[2, 40\], expected "
                                      r"\[1, 40\]"),
    (CANDIDATE_FILE, _fewer_masks, r"ref 16 has clip_score of shape \[2, 39\], expected "
                                   r"\[2, 40\]"),
])
def test_bad_sam_inputs_are_refused_and_leave_the_cache(official, capsys, isolated_cache,
                                                        target, damage, message):
    root, sam = official["root"], official["data"] / "SAM_Mask"
    args = ["proposals", "import", "--split", "refcocog-train-u", "--data-root", str(root),
            "--format", "pcnet", "--from", str(sam)]
    assert run_cli(args, capsys)[0] == 0  # another split already in the shared store
    before = snapshot(isolated_cache)
    assert before
    damage(sam / target)
    args[3] = "refcocog-val-u"
    code, out, err = run_cli(args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert snapshot(isolated_cache) == before


def test_a_failure_part_way_puts_the_store_back(official, isolated_cache):
    """A mask file whose header is fine but whose data is cut short fails while reading, after
    earlier batches may be written: the records file and scores are put back."""
    root, sam = official["root"], official["data"] / "SAM_Mask"
    from refbench.proposals import import_pcnet_proposals

    path = sam / _mask_file(207)
    path.write_bytes(path.read_bytes()[:-100])
    dataset = ReferDataset(root, "refcocog-train-u")
    with pytest.raises(DataError, match=r"000000000207\.npy \(image 207\) is not a NumPy"):
        import_pcnet_proposals(sam, dataset)
    assert snapshot(isolated_cache) == {}  # the folder it created is gone


# --- caches keyed by the data, not the name ----------------------------------------------------

def _other_refer(root: Path, drop_ref: int) -> None:
    """The fixture data set, less one ref: same name, another refs file."""
    write_reference_refer(root, image_format="jpg")
    path = root / "refcocog" / "refs(umd).p"
    refs = [r for r in pickle.loads(path.read_bytes()) if r["ref_id"] != drop_ref]
    path.write_bytes(pickle.dumps(refs, protocol=2))


def test_proposals_of_other_data_under_the_same_name_are_never_used(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    write_reference_refer(first, image_format="jpg")
    write_pcnet_files(first)
    _other_refer(second, drop_ref=25)
    code, out, err = run_cli(["proposals", "import", "--split", "refcocog-val-u", "--data-root",
                              str(first), "--format", "pcnet", "--from",
                              str(first / "refcocog" / "SAM_Mask")], capsys)
    assert code == 0, err
    dataset = ReferDataset(second, "refcocog-val-u")
    assert dataset.image_ids == ReferDataset(first, "refcocog-val-u").image_ids
    with pytest.raises(DataError, match="built from other data .*`refbench proposals import "
                                        "--split refcocog-val-u --format pcnet --generator sam"):
        load_proposals(dataset, "pcnet-sam")
    code, out, err = run_cli(["proposals", "oracle", "--split", "refcocog-val-u", "--data-root",
                              str(second), "--backend", "pcnet-sam"], capsys)
    assert code == 2 and "built from other data" in err and len(err.strip().splitlines()) == 1
    assert ProposalStore(dataset, "pcnet-sam", {"max_proposals": 40}).folder.parent != \
        load_proposals(ReferDataset(first, "refcocog-val-u"), "pcnet-sam").folder.parent


def test_synthref_under_another_root_does_not_supply_proposals(tmp_path, capsys):
    """Two SynthRef roots with different data: the second sees none of the first's proposals."""
    from refbench.synth import generate

    first = generate(tmp_path / "first", images={"train": 2, "val": 2, "test": 2})
    second = generate(tmp_path / "second", images={"train": 2, "val": 2, "test": 3})
    code, out, err = run_cli(["proposals", "build", "--split", "synth-test", "--data-root",
                              str(first)], capsys)
    assert code == 0, err
    assert len(load_proposals(ReferDataset(first, "synth-test"), "felzenszwalb")) == 2
    code, out, err = run_cli(["proposals", "oracle", "--split", "synth-test", "--data-root",
                              str(second)], capsys)
    assert code == 2 and "built from other data" in err
    assert "refbench proposals build --split synth-test --backend felzenszwalb" in err
    code, out, err = run_cli(["proposals", "build", "--split", "synth-test", "--data-root",
                              str(second)], capsys)
    assert code == 0 and "computed 3 images" in out  # nothing taken from the first root


def test_cues_of_other_data_under_the_same_name_are_never_used(official, tmp_path, capsys):
    root = official["root"]
    folder = official["data"] / "Mistral_7B_Ref_Sents"
    assert run_cli(["cues", "import", "--split", "refcocog-val-u", "--from", str(folder),
                    "--data-root", str(root)], capsys)[0] == 0
    second = tmp_path / "second"
    _other_refer(second, drop_ref=25)
    with pytest.raises(DataError, match="built from other data under the same name"):
        load_cues(ReferDataset(second, "refcocog-val-u"), "pcnet-import")
