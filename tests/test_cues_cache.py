"""The cue cache: resume after a crash, corrupt lines, config keys, secrets, load, template and
the PCNet phrase importer."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from refbench.api import Expression
from refbench.cues import (
    CueBackend,
    CueResult,
    HeuristicBackend,
    TemplateBackend,
    build_cues,
    build_cues_with_stats,
    get_backend,
    import_pcnet_phrases,
    load_cues,
)
from refbench.errors import DataError, UnknownNameError

TEXTS = ["man on left", "woman in red shirt", "white car", "man on left", "dog on the bed"]


@dataclass(frozen=True)
class FakeInfo:
    id: str = "refcoco-val"
    dataset: str = "refcoco"
    split_by: str = "unc"


@dataclass(frozen=True)
class FakeSentence:
    sent_id: int
    text: str
    extra: dict = field(default_factory=dict)


class FakeDataset:
    """The ReferDataset methods the cue code uses: expressions, sentence, info."""

    def __init__(self, texts: list[str], cues: list[list[str]] | None = None,
                 refs_sha256: str = "refs-of-the-fake-data-set") -> None:
        self.info = FakeInfo()
        self.refs_sha256 = refs_sha256  # subsets of one fake refs file share their cues
        self._expressions = [
            Expression(text=t, image_id=7, ref_id=10 + i // 2, ann_id=i, sent_id=100 + i)
            for i, t in enumerate(texts)
        ]
        self._sentences = {
            e.key: FakeSentence(e.sent_id, e.text, {"cues": cues[i]} if cues else {})
            for i, e in enumerate(self._expressions)
        }

    def expressions(self, sentences: str = "all") -> list[Expression]:
        return list(self._expressions)

    def sentence(self, key: str) -> FakeSentence:
        return self._sentences[key]


class Counting(CueBackend):
    """A backend that splits on spaces and counts what it was asked."""

    name = "counting"

    def __init__(self, tag: str = "x") -> None:
        self.tag = tag
        self.asked: list[str] = []

    def config(self) -> dict:
        return {"backend": self.name, "tag": self.tag}

    def decompose_one(self, text: str) -> CueResult:
        self.asked.append(text)
        return CueResult(tuple(text.split()))


def cache_file(root: Path) -> Path:
    (path,) = list(root.rglob("*.jsonl"))
    return path


def test_layout_and_one_line_per_distinct_sentence(tmp_path: Path) -> None:
    data = FakeDataset(TEXTS)
    backend = Counting()
    cues, stats = build_cues_with_stats(data, backend, k=3, cache_dir=tmp_path, progress=False)
    path = cache_file(tmp_path)
    config = {"backend": "counting", "tag": "x"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    assert path.name == f"counting-{digest.hexdigest()[:12]}.jsonl"
    assert path.parent.parent == tmp_path
    assert re.fullmatch(r"refcoco-unc-[0-9a-f]{12}", path.parent.name)  # keyed by the refs
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["text"] for line in lines] == ["man on left", "woman in red shirt", "white car",
                                                "dog on the bed"]
    assert set(lines[0]) == {"hash", "key", "text", "cues", "fallback"}
    assert lines[0]["hash"] == hashlib.sha256(
        ("man on left\n" + json.dumps(config, sort_keys=True, separators=(",", ":"))).encode()
    ).hexdigest()
    assert backend.asked.count("man on left") == 1  # a repeated sentence is computed once
    keys = [e.key for e in data.expressions()]
    assert cues[keys[0]] == cues[keys[3]] == ("man", "on", "left")
    assert cues[keys[2]] == ("white", "car", "car")  # padded by repeating the last phrase
    assert (stats.total, stats.from_cache, stats.built, stats.fallback) == (5, 0, 5, 0)
    again, stats = build_cues_with_stats(data, Counting(), k=3, cache_dir=tmp_path,
                                         progress=False)
    assert again == cues and (stats.from_cache, stats.built) == (5, 0)


def test_resume_after_torn_last_line(tmp_path: Path) -> None:
    data = FakeDataset(TEXTS)
    build_cues(data, Counting(), cache_dir=tmp_path, progress=False)
    path = cache_file(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    # a crash after two records, in the middle of writing the third
    path.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    backend = Counting()
    cues = build_cues(data, backend, cache_dir=tmp_path, progress=False)
    assert backend.asked == ["white car", "dog on the bed"]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["text"] for r in records] == ["man on left", "woman in red shirt", "white car",
                                            "dog on the bed"]
    assert len(cues) == 5


def test_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    data = FakeDataset(TEXTS)
    build_cues(data, Counting(), cache_dir=tmp_path, progress=False)
    path = cache_file(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    with pytest.raises(DataError) as caught:
        build_cues(data, Counting(), cache_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert str(path) in message and "line 2" in message and "delete" in message
    path.write_text(lines[0] + '{"no": "cues"}\n' + "".join(lines[1:]))
    with pytest.raises(DataError, match="record 2"):
        load_cues(data, "counting", cache_dir=tmp_path)


def test_keys_change_with_backend_config(tmp_path: Path) -> None:
    data = FakeDataset(TEXTS)
    build_cues(data, HeuristicBackend(max_phrases=5), cache_dir=tmp_path, progress=False)
    build_cues(data, HeuristicBackend(max_phrases=2), cache_dir=tmp_path, progress=False)
    build_cues(data, HeuristicBackend(max_phrases=5), cache_dir=tmp_path, progress=False)
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert len(files) == 2
    hashes = [{json.loads(line)["hash"] for line in f.read_text().splitlines()} for f in files]
    assert not hashes[0] & hashes[1]
    assert all(len(f.read_text().splitlines()) == 4 for f in files)  # the rerun added nothing


def test_api_key_is_not_in_the_cache_key(tmp_path: Path, monkeypatch) -> None:
    secret = "sk-cache-test-SECRET-77"
    monkeypatch.setenv("REFBENCH_LLM_API_KEY", secret)
    monkeypatch.setenv("REFBENCH_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("REFBENCH_LLM_MODEL", "mistral-7b")
    llm = get_backend("llm")
    assert secret not in json.dumps(llm.config())
    monkeypatch.setenv("REFBENCH_LLM_API_KEY", "another-key")
    assert get_backend("llm").config() == llm.config()  # the key does not change the cache


def test_load_cues_missing_incomplete_and_complete(tmp_path: Path) -> None:
    data = FakeDataset(TEXTS)
    with pytest.raises(DataError, match="refbench cues build --split refcoco-val --backend "
                                        "heuristic"):
        load_cues(data, "heuristic", cache_dir=tmp_path)
    built = build_cues(FakeDataset(TEXTS[:2]), HeuristicBackend(), cache_dir=tmp_path,
                       progress=False)
    with pytest.raises(DataError, match="incomplete"):
        load_cues(data, "heuristic", cache_dir=tmp_path)
    built = build_cues(data, HeuristicBackend(), cache_dir=tmp_path, progress=False)
    assert load_cues(data, "heuristic", cache_dir=tmp_path) == built
    key = data.expressions()[1].key
    assert built[key] == ("a woman", "a woman in red shirt", "a woman in red shirt",
                          "a woman in red shirt", "a woman in red shirt")


def test_template_backend_reads_synthref_cues(tmp_path: Path) -> None:
    cues = [["a cube"], ["a sphere", "a red sphere", "a red sphere left of the cube"]]
    data = FakeDataset(["the cube", "the red sphere left of the cube"], cues)
    built = build_cues(data, get_backend("template"), k=3, cache_dir=tmp_path, progress=False)
    keys = [e.key for e in data.expressions()]
    assert built[keys[0]] == ("a cube", "a cube", "a cube")
    assert built[keys[1]] == ("a sphere", "a red sphere", "a red sphere left of the cube")
    with pytest.raises(DataError, match="SynthRef"):
        TemplateBackend(FakeDataset(["a man"]))
    with pytest.raises(UnknownNameError, match="Valid backends: auto, heuristic, llm"):
        get_backend("heuristik")


def five(tag: str) -> list[str]:
    return [f"{tag} {i}" for i in range(5)]


def test_import_pcnet_phrase_files(tmp_path: Path) -> None:
    data = FakeDataset(TEXTS)  # refs 10 (sents 100, 101), 11 (102, 103), 12 (104)
    folder = tmp_path / "Mistral_7B_Ref_Sents"
    folder.mkdir()
    phrases = {
        10: {"100": five("a"), "101": five("b")},
        # listed in reverse: the released loader pairs by position, so "103" goes to sent 102
        11: {"103": five("c"), "102": five("d")},
        12: {"104": five("e")},
        99: {"999": five("another split")},
    }
    for ref_id, content in phrases.items():
        (folder / f"{ref_id}.json").write_text(json.dumps(content))
    cache = tmp_path / "cache"
    assert import_pcnet_phrases(folder, data, cache_dir=cache) == 5
    cues = load_cues(data, "pcnet-import", cache_dir=cache)
    keys = [e.key for e in data.expressions()]
    # "man on left" is sentence 100 of ref 10 and sentence 103 of ref 11: each keeps its own
    assert [cues[k] for k in keys] == [tuple(five(t)) for t in "abcde"]
    assert import_pcnet_phrases(folder, data, cache_dir=cache) == 5
    assert len(cache_file(cache).read_text().splitlines()) == 5  # no duplicates on re-import

    (folder / "12.json").unlink()
    with pytest.raises(DataError, match=r"1 of 3 refs have no file \(e.g. 12.json\)"):
        import_pcnet_phrases(folder, data, cache_dir=tmp_path / "other")
    (folder / "12.json").write_text(json.dumps({"777": five("e"), "778": five("f")}))
    with pytest.raises(DataError, match="12.json has 2 entries but its ref has 1 sentences"):
        import_pcnet_phrases(folder, data, cache_dir=tmp_path / "other")
    (folder / "12.json").write_text(json.dumps({"104": five("e")[:4]}))
    with pytest.raises(DataError, match="12.json: entry '104' has 4 phrases, not 5"):
        import_pcnet_phrases(folder, data, cache_dir=tmp_path / "other")
    (folder / "12.json").write_text("{broken")
    with pytest.raises(DataError, match="12.json is not readable JSON"):
        import_pcnet_phrases(folder, data, cache_dir=tmp_path / "other")
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").rglob("*.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        import_pcnet_phrases(tmp_path / "nowhere", data, cache_dir=cache)


def test_with_the_real_reader_and_cli(tmp_path: Path, monkeypatch) -> None:
    refer = pytest.importorskip("refbench.data.refer")
    from refbench.cli import main

    root = tmp_path / "data"
    (root / "refcoco").mkdir(parents=True)
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 5, "category_id": 1, "split": "val",
         "sent_ids": [100, 101],
         "sentences": [{"sent_id": 100, "sent": "man on left", "raw": "Man on left"},
                       {"sent_id": 101, "sent": "guy in white shirt holding a bat",
                        "raw": "guy in white shirt holding a bat"}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 5, "category_id": 1, "split": "train",
         "sent_ids": [102], "sentences": [{"sent_id": 102, "sent": "woman", "raw": "woman"}]},
    ]
    with open(root / "refcoco" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    instances = {
        "images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": 4,
                    "width": 4}],
        "annotations": [{"id": i, "image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2],
                         "area": 4, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}
                        for i in (11, 12)],
        "categories": [{"id": 1, "name": "person"}],
    }
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    monkeypatch.setenv("REFBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REFBENCH_LLM_BASE_URL", raising=False)
    dataset = refer.ReferDataset(root, "refcoco-val")
    assert main(["cues", "build", "--split", "refcoco-val", "--data-root", str(root)]) == 0
    cues = load_cues(dataset, "heuristic")
    texts = {e.key: e.text for e in dataset.expressions("all")}
    assert sorted(texts.values()) == ["guy in white shirt holding a bat", "man on left"]
    by_text = {texts[k]: v for k, v in cues.items()}
    assert by_text["guy in white shirt holding a bat"] == (
        "a guy", "a guy in white shirt", "a guy in white shirt holding a bat",
        "a guy in white shirt holding a bat", "a guy in white shirt holding a bat")
    assert main(["cues", "build", "--split", "refcoco-vall", "--data-root", str(root)]) == 2
    # the fallback allowance is a fraction; 0 allows none, and heuristic cues never fall back
    assert main(["cues", "build", "--split", "refcoco-val", "--data-root", str(root),
                 "--max-fallback", "1.5"]) == 2
    assert main(["cues", "build", "--split", "refcoco-val", "--data-root", str(root),
                 "--max-fallback", "0"]) == 0


def test_caches_from_before_the_refs_id_keying(tmp_path: Path) -> None:
    """Text-keyed heuristic lines of a pre-identity folder are carried over; imported phrases
    (which belonged to expressions of unknown data) are not."""
    data = FakeDataset(TEXTS)
    built = build_cues(data, HeuristicBackend(), cache_dir=tmp_path, progress=False)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    folder.rename(tmp_path / "refcoco-unc")  # the layout before the refs id was in the name
    (tmp_path / "refcoco-unc" / "pcnet-import-0123456789ab.jsonl").write_text("")
    assert load_cues(data, "heuristic", cache_dir=tmp_path) == built
    with pytest.raises(DataError, match="built from other data under the same name"):
        load_cues(data, "pcnet-import", cache_dir=tmp_path)
