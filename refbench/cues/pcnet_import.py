"""Import the phrase files published with PCNet's code into the cue cache.

Format, as read by the released loader (github.com/zaiquanyang/Boosting_WRIS,
``dataset/ReferDataset.py``, ``llm_out``): one folder per data set
(``refer/<dataset>/Mistral_7B_Ref_Sents``) holding ``<ref_id>.json`` per referred object, a
JSON object {sentence id string: [5 phrases]}. The loader pairs the file's i-th entry (in file
order) with the ref's i-th sentence: by position, not by the sentence-id key, so this importer
does the same. Their generator wrote exactly five phrases per sentence (the full sentence
filling missing ones); a file with another count, or with another number of entries than the
ref has sentences, is refused. For RefCOCOg (umd) the files are named by the google-split ref
id: ``refer/refcocog/umd_2_google_ref.npy`` maps umd ref ids to them (`find_ref_id_map`).

Imported phrases are stored per expression, keyed by (ref id, sentence id): two refs with the
same sentence keep their own phrases.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refbench.cues.base import CueResult
from refbench.cues.store import CueStore
from refbench.data.pcnet_files import REF_ID_MAP_FILE, load_ref_id_map
from refbench.errors import DataError
from refbench.io import append_jsonl, exclusive_lock

IMPORT_BACKEND = "pcnet-import"
IMPORT_CONFIG = {"backend": IMPORT_BACKEND, "source": "pcnet-released-phrases", "version": 2}
NUM_PHRASES = 5  # K in PCNet Sec. 3.1; every released file holds five per sentence


def find_ref_id_map(dataset: Any) -> Path | None:
    """``<data set folder>/umd_2_google_ref.npy`` for a refcocog-umd split when it exists."""
    info = dataset.info
    refs_path = getattr(dataset, "refs_path", None)
    if (info.dataset, info.split_by) != ("refcocog", "umd") or refs_path is None:
        return None
    path = Path(refs_path).parent / REF_ID_MAP_FILE
    return path if path.is_file() else None


def _read_phrase_file(path: Path, sentences: int) -> list[list[str]]:
    """The phrase lists of one file in file order, checked against the ref's sentence count."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"PCNet phrase file {path} is not readable JSON ({error}); replace it "
                        "with the released file") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) and p.strip() for p in v)
        for v in data.values()
    ):
        raise DataError(f"PCNet phrase file {path} must map sentence ids to lists of non-empty "
                        "phrases; replace it with the released file")
    if len(data) != sentences:
        raise DataError(
            f"PCNet phrase file {path} has {len(data)} entries but its ref has {sentences} "
            "sentences; entries pair with sentences by position, so it needs one per sentence "
            "(is it another ref's file? refcocog-umd needs --ref-id-map umd_2_google_ref.npy)"
        )
    for key, phrases in data.items():
        if len(phrases) != NUM_PHRASES:
            raise DataError(
                f"PCNet phrase file {path}: entry {key!r} has {len(phrases)} phrases, not "
                f"{NUM_PHRASES}; regenerate it with {NUM_PHRASES} (PCNet's generator fills "
                "missing ones with the full sentence)"
            )
    return [[p.strip() for p in phrases] for phrases in data.values()]


def import_pcnet_phrases(
    folder: str | Path,
    dataset: Any,
    cache_dir: str | Path | None = None,
    ref_id_map: Mapping[int, int] | str | Path | None = None,
) -> int:
    """Write the phrases of every expression of `dataset` from PCNet's files into the cache.

    `ref_id_map` ({ref id: file id}, or the path of ``umd_2_google_ref.npy``) names the file of
    each ref; refcocog-umd needs one, by default `find_ref_id_map`'s (as the released loader). Every ref of the split needs its file, with one five-phrase entry per sentence;
    otherwise nothing is written and a one-line `DataError` says what is wrong. Files of refs
    outside the split are ignored. Returns the number of expressions imported.
    """
    folder = Path(folder)
    split = getattr(dataset.info, "id", "?")
    if not folder.is_dir():
        raise DataError(f"PCNet phrase folder {folder} does not exist; pass the folder of "
                        "<ref_id>.json files (Mistral_7B_Ref_Sents) with --from")
    map_path = None
    if ref_id_map is None and (dataset.info.dataset, dataset.info.split_by) == ("refcocog", "umd"):
        ref_id_map = find_ref_id_map(dataset)
        if ref_id_map is None:
            raise DataError(
                f"PCNet's refcocog-umd phrase files are named by google ref ids (a file named "
                f"by a umd ref id belongs to another ref); pass --ref-id-map with PCNet's "
                f"{REF_ID_MAP_FILE}, or put it in the data set folder"
            )
    if isinstance(ref_id_map, (str, Path)):
        map_path = Path(ref_id_map)
        ref_id_map = load_ref_id_map(map_path)
    by_ref: dict[int, list[Any]] = {}
    for expression in dataset.expressions("all"):
        by_ref.setdefault(expression.ref_id, []).append(expression)

    missing_files: list[str] = []
    results: list[tuple[Any, CueResult]] = []
    for ref_id, ref_expressions in by_ref.items():
        file_id = ref_id
        if ref_id_map is not None:
            if ref_id not in ref_id_map:
                raise DataError(f"ref id map {map_path or ''} has no entry for ref {ref_id} of "
                                f"{split}; is it the map of this data set?")
            file_id = ref_id_map[ref_id]
        path = folder / f"{file_id}.json"
        if not path.is_file():
            missing_files.append(path.name)
            continue
        for expression, phrases in zip(ref_expressions,
                                       _read_phrase_file(path, len(ref_expressions))):
            results.append((expression, CueResult(tuple(phrases))))
    if missing_files:
        hint = ("; refcocog-umd files are named by google ref ids: pass --ref-id-map "
                "umd_2_google_ref.npy" if ref_id_map is None else "")
        raise DataError(
            f"PCNet phrases in {folder} do not match split {split}: {len(missing_files)} of "
            f"{len(by_ref)} refs have no file (e.g. {', '.join(missing_files[:5])}){hint}"
        )

    store = CueStore.for_backend(dataset, IMPORT_BACKEND, IMPORT_CONFIG, cache_dir)
    with exclusive_lock(store.lock_path, f"cue cache {store.path}"):
        store.load()
        new = []
        for expression, result in results:
            record = store.expression_record(expression, result)
            old = store.records.get(record["hash"])
            if old is not None and old.get("cues") == record["cues"]:
                continue
            store.records[record["hash"]] = record
            new.append(record)
        with store.open_for_append() as handle:
            append_jsonl(handle, new)
    return len(results)
