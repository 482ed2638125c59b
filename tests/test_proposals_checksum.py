"""Proposal stores carry a checksum per record and refuse records damaged after writing."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from refbench.errors import DataError
from refbench.proposals import ProposalStore
from refbench.proposals.postprocess import decode_masks, encode_masks
from tests.test_proposals import FakeDataset

CONFIG = {"max_proposals": 4, "what": "checksum-test"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFBENCH_CACHE", str(tmp_path / "cache"))


def _masks(image):
    h, w = image.shape[:2]
    k = int(image[0, 0, 0])
    first = np.zeros((h, w), bool)
    first[2:20, 3 + k:30] = True
    second = np.zeros((h, w), bool)
    second[10:h, 5:9] = True
    return [first, second]


class _Backend:
    name = "static"
    batch_size = 2

    def propose_batch(self, images):
        return [encode_masks(_masks(image)) for image in images]


def _built_store(n: int = 3):
    images = {i: np.full((24, 36, 3), i, dtype=np.uint8) for i in range(1, n + 1)}
    dataset = FakeDataset(images=images)
    store = ProposalStore(dataset, "static", CONFIG)
    store.build(dataset, _Backend(), progress=False)
    store.close()
    return dataset, store


def _rewrite(store, image_id, change):
    lines = store.records_path.read_text().splitlines()
    out = []
    for line in lines:
        record = json.loads(line)
        if record["image_id"] == image_id:
            change(record)
        out.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
    store.records_path.write_text("\n".join(out) + "\n")


def test_every_record_is_written_with_a_checksum_and_reads_back():
    dataset, store = _built_store()
    for line in store.records_path.read_text().splitlines():
        assert len(json.loads(line)["sha256"]) == 64
    fresh = ProposalStore(dataset, "static", CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = fresh.load(2)[:2].numpy()
    assert np.array_equal(got, np.stack(_masks(dataset.images[2])))


def test_truncated_rle_strings_in_valid_json_are_refused_naming_file_image_and_command():
    dataset, store = _built_store()

    def truncate(record):  # cut where the strings still decode, to other masks
        record["rles"] = [counts[: len(counts) // 2] for counts in record["rles"]]

    _rewrite(store, 2, truncate)
    damaged = json.loads(store.records_path.read_text().splitlines()[1])["rles"]
    decoded = decode_masks([{"size": [24, 36], "counts": c} for c in damaged], 24, 36)
    assert decoded.shape == (2, 24, 36)  # decodable: only the checksum can tell
    fresh = ProposalStore(dataset, "static", CONFIG)
    assert np.array_equal(fresh.load(1)[:2].numpy(), np.stack(_masks(dataset.images[1])))
    with pytest.raises(DataError) as caught:
        fresh.load(2)
    message = str(caught.value)
    assert "\n" not in message
    assert "proposals.jsonl" in message and "image 2" in message
    assert "refbench proposals build --split synth-val --backend static" in message


def test_a_changed_size_is_refused_too():
    dataset, store = _built_store()
    _rewrite(store, 3, lambda record: record.update(height=record["height"] - 1))
    with pytest.raises(DataError, match="image 3.*checksum"):
        ProposalStore(dataset, "static", CONFIG).record(3)


def test_records_without_checksums_are_read_with_one_warning_per_store():
    dataset, store = _built_store()
    for image_id in (1, 2, 3):
        _rewrite(store, image_id, lambda record: record.pop("sha256"))
    fresh = ProposalStore(dataset, "static", CONFIG)
    with pytest.warns(UserWarning, match="without checksums.*refbench proposals build") as seen:
        for image_id in (1, 2, 3):
            assert np.array_equal(fresh.load(image_id)[:2].numpy(),
                                  np.stack(_masks(dataset.images[image_id])))
    assert len([w for w in seen if "without checksums" in str(w.message)]) == 1
