"""Properties of the training sampler, against a small stand-in of ReferDataset."""

from __future__ import annotations

from collections import Counter

import pytest

from refbench.data.refer import Ref, Sentence
from refbench.errors import ConfigError
from refbench.train.sampler import TrainingSampler


class FakeRefer:
    """image i has (i % 4) referred objects (image 0,4,... none), object j has j+1 sentences."""

    def __init__(self, num_images: int = 23) -> None:
        self.image_ids = list(range(100, 100 + num_images))
        self._refs: dict[int, list[Ref]] = {}
        sent_id = 0
        for image_id in self.image_ids:
            refs = []
            for j in range(image_id % 4):
                sentences = []
                for _ in range(j + 1):
                    sentences.append(Sentence(sent_id, f"object {j} of {image_id} s{sent_id}", {}))
                    sent_id += 1
                refs.append(Ref(image_id * 10 + j, image_id * 100 + j, image_id, 1, "train", tuple(sentences)))
            self._refs[image_id] = refs

    def refs_of_image(self, image_id: int) -> list[Ref]:
        return self._refs[image_id]


def referred(dataset: FakeRefer) -> set[int]:
    return {i for i in dataset.image_ids if dataset.refs_of_image(i)}


def test_batches_hold_distinct_images_and_cover_each_image_once() -> None:
    dataset = FakeRefer()
    sampler = TrainingSampler(dataset, batch_size=4, num_distinct=2, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        seen = [item.image_id for batch in batches for item in batch]
        for batch in batches:
            assert len({item.image_id for item in batch}) == len(batch)
        assert Counter(seen) == Counter(referred(dataset))  # every referred image exactly once
        assert len(batches) == len(sampler) == -(-len(referred(dataset)) // 4)


def test_positive_and_extras_are_about_the_right_objects() -> None:
    dataset = FakeRefer()
    sampler = TrainingSampler(dataset, batch_size=5, num_distinct=2, seed=0)
    sampler.set_epoch(0)
    for batch in sampler:
        for item in batch:
            refs = {r.ann_id: r for r in dataset.refs_of_image(item.image_id)}
            pos = item.positive
            assert pos.image_id == item.image_id and pos.ann_id in refs
            assert pos.sent_id in {s.sent_id for s in refs[pos.ann_id].sentences}
            others = set(refs) - {pos.ann_id}
            if not others:
                assert item.extras == ()  # no other object: no extras, never the target
                continue
            assert len(item.extras) == 2
            for extra in item.extras:
                assert extra.ann_id in others and extra.image_id == item.image_id
                assert extra.text in {s.text for s in refs[extra.ann_id].sentences}
            if len(others) >= 2:  # enough objects: drawn without repetition
                assert len({e.ann_id for e in item.extras}) == 2
            assert item.expressions == [pos, *item.extras]


def test_positive_is_uniform_over_sentences() -> None:
    dataset = FakeRefer(4)  # image 103 has objects with 1, 2, 3 sentences
    sampler = TrainingSampler(dataset, batch_size=1, seed=1)
    counts: Counter = Counter()
    for epoch in range(1200):
        for item in (i for batch in sampler.global_batches(epoch) for i in batch):
            if item.image_id == 103:
                counts[item.positive.ann_id] += 1
    total = sum(counts.values())
    # 1/6, 2/6, 3/6 of the sentences belong to objects 0, 1, 2
    for j, share in enumerate((1 / 6, 2 / 6, 3 / 6)):
        assert abs(counts[10300 + j] / total - share) < 0.05


def test_deterministic_per_seed_and_epoch() -> None:
    dataset = FakeRefer()
    a = TrainingSampler(dataset, batch_size=4, num_distinct=1, seed=7)
    b = TrainingSampler(dataset, batch_size=4, num_distinct=1, seed=7)
    c = TrainingSampler(dataset, batch_size=4, num_distinct=1, seed=8)
    assert a.global_batches(2) == b.global_batches(2)
    assert a.global_batches(2) != a.global_batches(3)
    assert a.global_batches(2) != c.global_batches(2)
    a.set_epoch(2)
    a.set_start(2)
    assert list(a) == b.global_batches(2)[2:]


def test_ddp_ranks_are_disjoint_and_union_is_the_single_process_batch() -> None:
    dataset = FakeRefer(26)  # 19 referred images: last batch of 3 trimmed to 2 for 2 ranks
    single = TrainingSampler(dataset, batch_size=4, num_distinct=1, seed=5)
    ranks = [
        TrainingSampler(dataset, batch_size=4, num_distinct=1, seed=5, rank=r, world_size=2)
        for r in range(2)
    ]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    per_rank = [list(s) for s in ranks]
    full = list(single)
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
    for step, (part0, part1) in enumerate(zip(*per_rank)):
        assert len(part0) == len(part1)
        assert not {i.image_id for i in part0} & {i.image_id for i in part1}
        assert part0 + part1 == full[step][: len(part0) + len(part1)]
    assert [len(b) for b in per_rank[0]][-1] == 1  # trimmed last batch, split evenly


def test_batch_larger_than_images_is_a_clear_error() -> None:
    dataset = FakeRefer(8)  # 6 images have refs
    with pytest.raises(ConfigError, match=r"batch_size 7 .* 6 distinct images.*--batch-size 6"):
        TrainingSampler(dataset, batch_size=7)
    with pytest.raises(ConfigError, match="multiple of the 4 processes"):
        TrainingSampler(dataset, batch_size=6, world_size=4)


def test_on_the_real_refer_reader(tmp_path) -> None:
    from refbench.data import refer
    from tests.refer_fixture import make_tiny_refer

    refer.clear_cache()
    make_tiny_refer(tmp_path)
    dataset = refer.ReferDataset(tmp_path, "refcoco-train")
    sampler = TrainingSampler(dataset, batch_size=len(dataset.image_ids), num_distinct=1, seed=0)
    sampler.set_epoch(0)
    (batch,) = list(sampler)
    assert sorted(i.image_id for i in batch) == sorted(dataset.image_ids)
    known = {e.key: e for e in dataset.expressions("all")}
    for item in batch:
        for expression in item.expressions:
            assert known[expression.key] == expression  # same ids and text as the reader's
        assert all(e.ann_id != item.positive.ann_id for e in item.extras)
    with pytest.raises(ConfigError, match="--batch-size"):
        TrainingSampler(dataset, batch_size=len(dataset.image_ids) + 1)
