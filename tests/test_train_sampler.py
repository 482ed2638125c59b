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


# --- unit="refs": one item per ref, negatives from the same image (TRIS's released sampling) ---


class ListRefer:
    """A split given as {image_id: [[sentence text, ...] per ref]}; ref_id = image_id * 10 + j."""

    def __init__(self, texts: dict[int, list[list[str]]]) -> None:
        self.image_ids = sorted(texts)
        self._refs: dict[int, list[Ref]] = {}
        sent_id = 0
        for image_id, refs in texts.items():
            self._refs[image_id] = []
            for j, sentences in enumerate(refs):
                records = tuple(Sentence(sent_id + k, text, {}) for k, text in enumerate(sentences))
                sent_id += len(records)
                self._refs[image_id].append(
                    Ref(image_id * 10 + j, image_id * 100 + j, image_id, 1, "train", records)
                )

    def refs_of_image(self, image_id: int) -> list[Ref]:
        return self._refs[image_id]


def all_refs(dataset) -> dict[int, Ref]:
    return {r.ref_id: r for i in dataset.image_ids for r in dataset.refs_of_image(i) if r.sentences}


def items_of(sampler: TrainingSampler, epochs) -> list:
    return [item for epoch in epochs for batch in sampler.global_batches(epoch) for item in batch]


def test_refs_unit_visits_every_ref_once_and_a_batch_may_repeat_an_image() -> None:
    dataset = FakeRefer()
    refs = all_refs(dataset)
    sampler = TrainingSampler(dataset, batch_size=4, num_distinct=2, seed=3, unit="refs")
    shared = 0
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == -(-len(refs) // 4)  # last batch kept (3 of 4)
        positives = [item.positive for batch in batches for item in batch]
        assert Counter(p.ref_id for p in positives) == Counter(list(refs))  # every ref exactly once
        for batch in batches:
            shared += len({item.image_id for item in batch}) < len(batch)
            for item in batch:
                ref = refs[item.positive.ref_id]
                assert item.image_id == item.positive.image_id == ref.image_id
                assert item.positive.sent_id in {s.sent_id for s in ref.sentences}
                assert item.expressions == [item.positive, *item.extras]
    assert shared > 0  # two refs of one image land in one batch now and then


def test_refs_unit_negatives_come_from_other_refs_of_the_image_with_replacement() -> None:
    dataset = FakeRefer()  # images with 2 or 3 refs; refs have 1, 2 or 3 sentences
    refs = all_refs(dataset)
    sampler = TrainingSampler(dataset, batch_size=5, num_distinct=3, seed=0, unit="refs")
    same_ref_twice = 0
    checked = 0
    for item in items_of(sampler, range(30)):
        image_refs = {r.ref_id for r in dataset.refs_of_image(item.image_id)}
        others = image_refs - {item.positive.ref_id}
        if not others:
            continue
        checked += 1
        assert len(item.extras) == 3
        for negative in item.extras:
            assert negative.image_id == item.image_id and negative.ref_id in others
            ref = refs[negative.ref_id]
            assert (negative.sent_id, negative.text) in {(s.sent_id, s.text) for s in ref.sentences}
        if len(others) == 1:  # one other ref: all N negatives are sentences of it
            assert {n.ref_id for n in item.extras} == others
        else:
            same_ref_twice += len({n.ref_id for n in item.extras[:2]}) == 1
    assert checked > 100
    assert same_ref_twice > 0  # two other refs, yet the first two negatives share one: replacement


def test_refs_unit_lone_ref_takes_negatives_of_another_text_from_the_split() -> None:
    # ref 10 and ref 30 are alone in their image; "the dog" is also ref 20's only sentence.
    dataset = ListRefer({
        1: [["the dog"]],
        2: [["the dog"], ["red cup", "a red cup", "cup on the left"]],
        3: [["the cat"]],
    })
    refs = all_refs(dataset)
    sampler = TrainingSampler(dataset, batch_size=1, num_distinct=4, seed=2, unit="refs")
    sources: dict[int, Counter] = {10: Counter(), 30: Counter()}
    for item in items_of(sampler, range(400)):
        if item.positive.ref_id not in sources:
            continue
        assert len(item.extras) == 4
        for negative in item.extras:
            assert negative.text != item.positive.text
            ref = refs[negative.ref_id]
            assert negative.image_id == ref.image_id
            assert (negative.sent_id, negative.text) in {(s.sent_id, s.text) for s in ref.sentences}
            sources[item.positive.ref_id][negative.ref_id] += 1
    # A uniform ref first, then a sentence, redrawn on the positive's text: for "the dog" refs
    # 10 and 20 are always redrawn, so refs 21 and 30 share the negatives evenly (a draw uniform
    # over sentences would give ref 21 three quarters); for "the cat" refs 10, 20, 21 get a third.
    dog = sources[10]
    assert set(dog) == {21, 30}
    assert abs(dog[30] / sum(dog.values()) - 0.5) < 0.08
    cat = sources[30]
    assert set(cat) == {10, 20, 21}
    for ref_id in (10, 20, 21):
        assert abs(cat[ref_id] / sum(cat.values()) - 1 / 3) < 0.08


def test_refs_unit_positive_is_uniform_over_the_sentences_of_its_ref() -> None:
    dataset = FakeRefer(4)  # image 103 has refs 1030, 1031, 1032 with 1, 2, 3 sentences
    sampler = TrainingSampler(dataset, batch_size=2, num_distinct=1, seed=1, unit="refs")
    counts: dict[int, Counter] = {1031: Counter(), 1032: Counter()}
    for item in items_of(sampler, range(1500)):
        if item.positive.ref_id in counts:
            counts[item.positive.ref_id][item.positive.sent_id] += 1
    refs = all_refs(dataset)
    for ref_id, counter in counts.items():
        sentences = [s.sent_id for s in refs[ref_id].sentences]
        assert sum(counter.values()) == 1500  # each ref is the positive once per epoch
        for sent_id in sentences:
            assert abs(counter[sent_id] / 1500 - 1 / len(sentences)) < 0.05


def test_refs_unit_is_deterministic_and_resumes_exactly() -> None:
    dataset = FakeRefer()
    a = TrainingSampler(dataset, batch_size=4, num_distinct=2, seed=7, unit="refs")
    b = TrainingSampler(dataset, batch_size=4, num_distinct=2, seed=7, unit="refs")
    c = TrainingSampler(dataset, batch_size=4, num_distinct=2, seed=8, unit="refs")
    assert a.global_batches(2) == b.global_batches(2)
    assert a.global_batches(2) != a.global_batches(3)
    assert a.global_batches(2) != c.global_batches(2)
    a.set_epoch(2)
    first = list(a)
    a.set_epoch(2)
    a.set_start(3)
    assert list(a) == first[3:] == b.global_batches(2)[3:]


def test_refs_unit_ddp_ranks_union_is_the_single_process_batch() -> None:
    dataset = FakeRefer(26)  # 37 refs: batches 8+8+8+8+5, the last trimmed to 4 for 2 ranks
    assert len(all_refs(dataset)) == 37
    single = TrainingSampler(dataset, batch_size=8, num_distinct=2, seed=5, unit="refs")
    ranks = [
        TrainingSampler(dataset, batch_size=8, num_distinct=2, seed=5, rank=r, world_size=2,
                        unit="refs")
        for r in range(2)
    ]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    per_rank = [list(s) for s in ranks]
    full = list(single)
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == len(full) == 5
    for step, (part0, part1) in enumerate(zip(*per_rank)):
        assert len(part0) == len(part1)
        assert part0 + part1 == full[step][: len(part0) + len(part1)]
    assert [len(b) for b in per_rank[0]] == [4, 4, 4, 4, 2]
    assert len(full[-1]) == 5  # one process keeps the whole last batch (drop_last False)
    dropping = TrainingSampler(dataset, batch_size=8, seed=5, unit="refs", drop_last=True)
    assert len(dropping) == len(dropping.global_batches(1)) == 4


def test_refs_unit_errors_are_one_line_config_errors() -> None:
    from refbench.errors import DataError

    dataset = FakeRefer(8)  # 12 refs over 6 images
    with pytest.raises(ConfigError, match=r"batch_size 13 .* 12 refs .*--batch-size 12"):
        TrainingSampler(dataset, batch_size=13, unit="refs")
    TrainingSampler(dataset, batch_size=12, unit="refs")  # more items than images is fine
    with pytest.raises(ConfigError, match="'sampling' must be one of 'images', 'refs'"):
        TrainingSampler(dataset, batch_size=2, unit="objects")
    same = ListRefer({1: [["the dog"]], 2: [["the dog", "the dog"], ["the dog"]]})
    with pytest.raises(DataError, match="every sentence of the training split reads 'the dog'"):
        TrainingSampler(same, batch_size=2, num_distinct=1, unit="refs")
    TrainingSampler(same, batch_size=2, num_distinct=0, unit="refs")  # no negatives: no need


def test_for_model_reads_sampling_num_distinct_and_batch_size() -> None:
    dataset = FakeRefer()
    images = TrainingSampler.for_model(dataset, {"batch_size": 4, "num_distinct": 2}, seed=3)
    assert (images.unit, images.batch_size, images.num_distinct) == ("images", 4, 2)
    assert images.global_batches(0) == TrainingSampler(
        dataset, 4, num_distinct=2, seed=3).global_batches(0)
    refs = TrainingSampler.for_model(dataset, {"batch_size": 4, "sampling": "refs"}, batch_size=6)
    assert (refs.unit, refs.batch_size, refs.num_distinct) == ("refs", 6, 0)
    assert all(item.extras == () for item in items_of(refs, [0]))


def test_refs_unit_on_the_real_refer_reader(tmp_path) -> None:
    from refbench.data import refer
    from tests.refer_fixture import make_tiny_refer

    refer.clear_cache()
    make_tiny_refer(tmp_path)
    dataset = refer.ReferDataset(tmp_path, "refcoco-train")
    with_sentences = [r for r in dataset.refs if r.sentences]
    sampler = TrainingSampler(dataset, batch_size=len(with_sentences), num_distinct=2, seed=0,
                              unit="refs")
    (batch,) = sampler.global_batches(0)
    assert sorted(i.positive.ref_id for i in batch) == sorted(r.ref_id for r in with_sentences)
    known = {e.key: e for e in dataset.expressions("all")}
    for item in batch:
        for expression in item.expressions:
            assert known[expression.key] == expression  # same ids and text as the reader's
        if len(dataset.refs_of_image(item.image_id)) > 1:
            assert all(e.image_id == item.image_id != e.ref_id for e in item.extras)
            assert all(e.ref_id != item.positive.ref_id for e in item.extras)
    with pytest.raises(ConfigError, match="refs"):
        TrainingSampler(dataset, batch_size=len(with_sentences) + 1, unit="refs")
