"""Import the phrase files published with PCNet's code into the cue cache.

Format, as read by the released loader (github.com/zaiquanyang/Boosting_WRIS,
``dataset/ReferDataset.py`` and ``dataset/llm_ali_qianwen.py``): one folder per data set (the
authors used ``refer/<dataset>/Mistral_7B_Ref_Sents``) holding ``<ref_id>.json`` per referred
object, each a JSON object mapping a sentence id (a string) to its list of phrases, e.g.
``{"12345": ["a woman", "the woman in white shirt", ...]}``. The released loader keeps the
first five phrases; their generator padded missing ones with the full sentence. For RefCOCOg
(umd) the authors named files by the google-split ref id; pass `ref_id_map` to translate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refbench.cues.base import CueResult
from refbench.cues.store import CueStore
from refbench.errors import DataError
from refbench.io import append_jsonl, exclusive_lock

IMPORT_BACKEND = "pcnet-import"
IMPORT_CONFIG = {"backend": IMPORT_BACKEND, "source": "pcnet-released-phrases", "version": 1}


def _read_phrase_file(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"PCNet phrase file {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and v and all(isinstance(p, str) and p.strip() for p in v)
        for v in data.values()
    ):
        raise DataError(
            f"PCNet phrase file {path} must map sentence ids to non-empty lists of phrases"
        )
    return data


def import_pcnet_phrases(
    folder: str | Path,
    dataset: Any,
    cache_dir: str | Path | None = None,
    ref_id_map: Mapping[int, int] | None = None,
) -> int:
    """Write the phrases of every expression of `dataset` from PCNet's files into the cache.

    Every ref of the split needs its ``<ref_id>.json`` and every sentence its entry; otherwise
    nothing is written and a `DataError` lists what is missing. Files for refs outside the split
    are ignored (one folder serves all splits). Returns the number of expressions imported.
    """
    folder = Path(folder)
    split = getattr(dataset.info, "id", "?")
    if not folder.is_dir():
        raise DataError(f"PCNet phrase folder {folder} does not exist; pass the folder of "
                        "<ref_id>.json files with --from")
    expressions = dataset.expressions("all")
    by_ref: dict[int, list[Any]] = {}
    for expression in expressions:
        by_ref.setdefault(expression.ref_id, []).append(expression)

    missing_files: list[str] = []
    missing_sentences: list[str] = []
    results: list[tuple[Any, CueResult]] = []
    for ref_id, ref_expressions in by_ref.items():
        file_id = ref_id_map.get(ref_id, ref_id) if ref_id_map else ref_id
        path = folder / f"{file_id}.json"
        if not path.is_file():
            missing_files.append(path.name)
            continue
        phrases = _read_phrase_file(path)
        for expression in ref_expressions:
            found = phrases.get(str(expression.sent_id))
            if found is None:
                known = ", ".join(sorted(phrases)) or "none"
                missing_sentences.append(
                    f"{path.name} has no sentence {expression.sent_id} (it has {known})"
                )
                continue
            results.append((expression, CueResult(tuple(p.strip() for p in found))))
    if missing_files or missing_sentences:
        problems = []
        if missing_files:
            problems.append(
                f"{len(missing_files)} of {len(by_ref)} refs have no file "
                f"(e.g. {', '.join(missing_files[:5])})"
            )
        if missing_sentences:
            problems.append(
                f"{len(missing_sentences)} sentences are missing "
                f"(e.g. {'; '.join(missing_sentences[:3])})"
            )
        raise DataError(
            f"PCNet phrases in {folder} do not match split {split}: {'; '.join(problems)}. "
            "Is this the folder for this data set (and, for refcocog-umd, a ref id map)?"
        )

    store = CueStore.for_backend(dataset, IMPORT_BACKEND, IMPORT_CONFIG, cache_dir)
    with exclusive_lock(store.lock_path, f"cue cache {store.path}"):
        store.load()
        new = []
        for expression, result in results:
            if store.hash(expression.text) in store.records:
                continue
            record = store.record(expression.key, expression.text, result)
            store.records[record["hash"]] = record
            new.append(record)
        with store.open_for_append() as handle:
            append_jsonl(handle, new)
    return len(results)
