"""The on-disk proposal cache: per image, up to P masks as COCO RLE at the original image size.

Layout: ``cache_root()/proposals/<dataset>-<split_by>-<data id>/<backend>-<confighash>/``
holding ``config.json`` (the backend config and the data identity, written atomically) and
``proposals.jsonl`` (append-only, one record ``{height, image_id, rles, sha256, width}`` per
image). An in-memory index of byte offsets gives random access by image id; a torn last line (a
crash mid-write) is dropped and overwritten by the next build, a corrupt record elsewhere is a
`DataError`. ``sha256`` is the SHA-256 of the record's payload (`record_checksum`), checked on
every read, so damaged RLE strings that still decode are refused rather than scored. Records
written before checksums existed are read with one warning per store (see docs/proposals.md).

``<data id>`` is 12 hex digits of the SHA-256 of the refs file and the image table
(`refbench.data.identity`): a store built from other data with the same data-set name is a
different folder and is never read. Stores written before this keying (``<dataset>-<split_by>``
without the id) are not read (what they were built from is unknown); build or import again.

Per-sentence proposal scores (PCNet's imported SAM masks carry them): ``sentence_scores.npz``
beside the records, with ``ref_ids`` int64 [R], ``num_sentences`` int64 [R], ``clip_score``
float32 [N, P] and ``candidate`` bool [N, P] (N = the summed sentence counts, rows in ref
order, then sentence order within the ref). Read them with `ProposalStore.clip_scores(ref_id)`
-> float32 [n_sentences, P] and `ProposalStore.candidates(ref_id)` -> bool [n_sentences, P]:
row s is the ref's s-th sentence (its position in the refs file), column p is mask p of
`ProposalStore.load(image_id)`.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from refbench.data.identity import data_identity, data_key, name_key
from refbench.errors import ConfigError, DataError
from refbench.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    cache_root,
    ensure_dir,
    exclusive_lock,
    read_json,
    stable_hash,
)
from refbench.proposals.postprocess import decode_masks
from refbench.proposals.rle import decode_resized_columns

RECORDS_FILE = "proposals.jsonl"
CONFIG_FILE = "config.json"
SCORES_FILE = "sentence_scores.npz"
_IMAGE_ID = re.compile(rb'"image_id":\s*("(?:[^"\\]|\\.)*"|-?\d+)')
CHECKSUM_FIELD = "sha256"
_WARNED_UNCHECKED: set[str] = set()


def record_checksum(image_id: Any, height: int, width: int, rles: list) -> str:
    """SHA-256 (hex) of one proposal record's payload: its id, size and RLE strings."""
    return stable_hash({"height": int(height), "image_id": image_id, "rles": list(rles),
                        "width": int(width)}, strict=True)


class Dataset(Protocol):
    """What the store needs of a dataset (refbench.data.refer.ReferDataset fits)."""

    image_ids: list
    info: Any

    def image_info(self, image_id: Any) -> Any: ...
    def load_image(self, image_id: Any) -> np.ndarray: ...


def dataset_key(dataset: Any) -> str:
    """``<dataset>-<split_by>-<data id>``: splits of one refs file and image set share their
    proposals; other data under the same name gets another folder."""
    return data_key(dataset, images=True)


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able config."""
    return stable_hash(config, 10)


def build_command(dataset: Any, backend_name: str) -> str:
    """The command that builds (or imports) a dataset's proposals, for error messages."""
    split_id = getattr(dataset.info, "id", None) or f"<{name_key(dataset)} split>"
    if backend_name.startswith("pcnet-"):
        generator = backend_name[len("pcnet-"):]
        folder = "SOLO_Mask" if generator == "freesolo" else "SAM_Mask"
        return (f"refbench proposals import --split {split_id} --format pcnet --generator "
                f"{generator} --from <refer/{dataset.info.dataset}/{folder}>")
    if backend_name == "sam-rle":
        return f"refbench proposals import --split {split_id} --format sam-rle --from <folder>"
    return f"refbench proposals build --split {split_id} --backend {backend_name}"


class ProposalStore:
    """Class-agnostic mask proposals of one dataset from one backend config, cached on disk."""

    def __init__(
        self,
        dataset: Any,
        backend_name: str,
        config: dict[str, Any],
        root: str | Path | None = None,
    ) -> None:
        if "max_proposals" not in config:
            raise ConfigError("a proposal config needs 'max_proposals' (PCNet uses 40)")
        if isinstance(config["max_proposals"], bool) or not isinstance(
            config["max_proposals"], int
        ) or config["max_proposals"] < 1:
            raise ConfigError(
                f"max_proposals={config['max_proposals']!r}: keep at least one proposal per "
                "image (PCNet uses 40)"
            )
        self.dataset_key = dataset_key(dataset)
        self.data_identity = data_identity(dataset, images=True)
        self.backend_name = backend_name
        self.config = dict(config)
        self.max_proposals = int(config["max_proposals"])
        base = Path(root) if root is not None else cache_root() / "proposals"
        self.folder = base / self.dataset_key / f"{backend_name}-{config_hash(self.config)}"
        self.records_path = self.folder / RECORDS_FILE
        self._build_hint = build_command(dataset, backend_name)
        self._index: dict[Any, tuple[int, int]] = {}
        self._valid_bytes = 0
        self._index_state: tuple[int, int] | None = None
        self._handle = None
        self._scores_cache: tuple[tuple[int, int], dict] | None = None

    # ----------------------------------------------------------------- index
    def _refresh(self) -> None:
        """(Re)build the offset index when the records file changed since the last look."""
        try:
            stat = self.records_path.stat()
        except FileNotFoundError:
            self._index, self._valid_bytes, self._index_state = {}, 0, None
            return
        state = (stat.st_size, stat.st_mtime_ns)
        if state == self._index_state:
            return
        with open(self.records_path, "rb") as handle:
            data = handle.read()
        index: dict[Any, tuple[int, int]] = {}
        offset = 0
        number = 0
        valid = 0
        while offset < len(data):
            number += 1
            end = data.find(b"\n", offset)
            if end < 0:  # a torn last line: an append that did not finish
                break
            line = data[offset:end]
            if line.strip():
                match = _IMAGE_ID.search(line)
                if match is None:
                    raise DataError(
                        f"{self.records_path} line {number} is corrupt (no image_id); delete that "
                        f"file and rerun `{self._build_hint}`"
                    )
                index[json.loads(match.group(1))] = (offset, end - offset)
            offset = end + 1
            valid = offset
        self._index, self._valid_bytes, self._index_state = index, valid, state
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def images_done(self) -> set:
        """Ids of the images whose proposals are stored."""
        self._refresh()
        return set(self._index)

    def bytes_per_image(self) -> float:
        """Mean size on disk of one image's record, in bytes (0 when empty)."""
        self._refresh()
        return self._valid_bytes / len(self._index) if self._index else 0.0

    def __contains__(self, image_id: Any) -> bool:
        self._refresh()
        return image_id in self._index

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    # ------------------------------------------------------------------ read
    def record(self, image_id: Any) -> dict[str, Any]:
        """The stored record of one image: height, width and the RLEs (counts as str)."""
        self._refresh()
        if image_id not in self._index:
            raise DataError(
                f"image {image_id!r} has no proposals in {self.folder}; run `{self._build_hint}`"
            )
        offset, length = self._index[image_id]
        if self._handle is None:
            self._handle = open(self.records_path, "rb")
        self._handle.seek(offset)
        line = self._handle.read(length)
        try:
            record = json.loads(line)
            rles = record["rles"]
            height, width = int(record["height"]), int(record["width"])
            checksum = record.get(CHECKSUM_FIELD)
            expected = record_checksum(record["image_id"], height, width, rles)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise DataError(
                f"{self.records_path}: the record of image {image_id!r} is corrupt; delete that "
                f"file and rerun `{self._build_hint}`"
            ) from None
        if checksum is None:
            self._warn_unchecked()
        elif checksum != expected:
            raise DataError(
                f"{self.records_path}: the record of image {image_id!r} fails its checksum (its "
                f"masks were damaged after writing); delete that file and rerun "
                f"`{self._build_hint}`"
            )
        return {"image_id": image_id, "height": height, "width": width, "rles": rles}

    def _warn_unchecked(self) -> None:
        """Warn once per store that it holds records written without a checksum."""
        key = str(self.records_path)
        if key in _WARNED_UNCHECKED:
            return
        _WARNED_UNCHECKED.add(key)
        warnings.warn(
            f"{self.records_path} holds records without checksums (written by an older "
            f"refbench), so damaged masks cannot be detected; to verify them, delete that file "
            f"and rerun `{self._build_hint}`",
            UserWarning,
            stacklevel=3,
        )

    def load(self, image_id: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Proposals of one image as a bool tensor [P, H, W] (original size, or `size` by nearest).

        P is the config's `max_proposals`; missing proposals are empty masks at the end. Nearest
        resizing follows PyTorch's rule. The tensor is a transposed view of column-major
        storage (call ``.contiguous()`` if a kernel needs row-major memory).
        """
        record = self.record(image_id)
        height, width = record["height"], record["width"]
        out_h, out_w = (height, width) if size is None else (int(size[0]), int(size[1]))
        strings = record["rles"][: self.max_proposals]
        try:
            if (out_h, out_w) == (height, width):
                rles = [{"size": [height, width], "counts": c} for c in strings]
                masks = decode_masks(rles, height, width).transpose(0, 2, 1)  # [N, W, H]
            else:
                masks = decode_resized_columns(strings, height, width, out_h, out_w)
        except Exception as error:  # noqa: BLE001 - a damaged RLE string fails in many ways
            raise DataError(
                f"{self.records_path}: the masks of image {image_id!r} cannot be decoded "
                f"({type(error).__name__}); delete that file and rerun `{self._build_hint}`"
            ) from None
        # filled column-major (how RLE runs), returned as a transposed view: no extra copy
        out = np.zeros((self.max_proposals, out_w, out_h), dtype=bool)
        out[: len(masks)] = masks
        return torch.from_numpy(out).transpose(1, 2)

    # ------------------------------------------------------ per-sentence scores
    @property
    def scores_path(self) -> Path:
        """``sentence_scores.npz`` in the store folder (see the module docstring)."""
        return self.folder / SCORES_FILE

    def has_sentence_scores(self) -> bool:
        """Whether this store holds per-sentence proposal scores (PCNet's imports do)."""
        return self.scores_path.is_file()

    def _sentence_scores(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """ref id -> (clip_score float32 [S, P], candidate bool [S, P]), re-read when changed."""
        try:
            stat = self.scores_path.stat()
        except FileNotFoundError:
            raise DataError(
                f"the {self.backend_name} proposals in {self.folder} have no per-sentence clip "
                f"scores; import PCNet's SAM masks with their candidate file: `{self._build_hint}`"
            ) from None
        state = (stat.st_size, stat.st_mtime_ns)
        cached = self._scores_cache
        if cached is not None and cached[0] == state:
            return cached[1]
        try:
            with np.load(self.scores_path, allow_pickle=False) as data:
                ref_ids, counts = data["ref_ids"], data["num_sentences"]
                clip, flags = data["clip_score"], data["candidate"]
            offsets = np.concatenate([[0], np.cumsum(counts)])
            if clip.shape != flags.shape or clip.shape[0] != offsets[-1]:
                raise ValueError("array shapes disagree")
        except (OSError, KeyError, ValueError) as error:
            raise DataError(f"{self.scores_path} is not a sentence-score file ({error}); delete "
                            f"it and rerun `{self._build_hint}`") from None
        table = {int(r): (clip[offsets[i]:offsets[i + 1]], flags[offsets[i]:offsets[i + 1]])
                 for i, r in enumerate(ref_ids)}
        self._scores_cache = (state, table)
        return table

    def _ref_scores(self, ref_id: int) -> tuple[np.ndarray, np.ndarray]:
        table = self._sentence_scores()
        if int(ref_id) not in table:
            raise DataError(f"ref {ref_id} has no sentence scores in {self.scores_path}; import "
                            f"its split: `{self._build_hint}`")
        return table[int(ref_id)]

    def scored_ref_ids(self) -> set[int]:
        """Ids of the refs whose per-sentence scores are stored."""
        return set(self._sentence_scores())

    def clip_scores(self, ref_id: int) -> torch.Tensor:
        """float32 [n_sentences, P]: row s scores every mask p of `load` for the ref's s-th
        sentence (PCNet's ``clip_score``; its trainer takes the argmax as the target)."""
        return torch.from_numpy(np.array(self._ref_scores(ref_id)[0], dtype=np.float32))

    def candidates(self, ref_id: int) -> torch.Tensor:
        """bool [n_sentences, P]: PCNet's ``candidate_2`` flags, per sentence and mask."""
        return torch.from_numpy(np.array(self._ref_scores(ref_id)[1], dtype=bool))

    def write_sentence_scores(
        self, scores: dict[int, tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Store {ref id: (clip_score [S, P], candidate [S, P])}, replacing those refs' rows and
        keeping the others (splits of one refs file share a store); written atomically."""
        table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.has_sentence_scores():
            table.update(self._sentence_scores())
        for ref_id, (clip, flags) in scores.items():
            clip = np.asarray(clip, dtype=np.float32)
            flags = np.asarray(flags) != 0
            if clip.ndim != 2 or clip.shape != flags.shape or clip.shape[1] != self.max_proposals:
                raise ValueError(f"ref {ref_id}: scores of shape {clip.shape} and {flags.shape}; "
                                 f"expected [n_sentences, {self.max_proposals}] twice")
            table[int(ref_id)] = (clip, flags)
        ids = sorted(table)
        empty = np.zeros((0, self.max_proposals))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            ref_ids=np.asarray(ids, dtype=np.int64),
            num_sentences=np.asarray([len(table[r][0]) for r in ids], dtype=np.int64),
            clip_score=np.concatenate([table[r][0] for r in ids] or [empty]).astype(np.float32),
            candidate=np.concatenate([table[r][1] for r in ids] or [empty]).astype(bool),
        )
        self._prepare()
        atomic_write_bytes(self.scores_path, buffer.getvalue())

    # ----------------------------------------------------------------- write
    def _prepare(self) -> None:
        ensure_dir(self.folder, "proposal cache folder")
        config_path = self.folder / CONFIG_FILE
        wanted = {"backend": self.backend_name, "dataset": self.dataset_key,
                  "data": self.data_identity, "config": self.config}
        if config_path.exists():
            if read_json(config_path, "proposal config") != json.loads(json.dumps(wanted, default=str)):
                raise DataError(
                    f"{config_path} does not match this store's config; delete {self.folder}"
                )
        else:
            atomic_write_json(config_path, json.loads(json.dumps(wanted, default=str)))

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append whole image records {image_id, height, width, rles} (one flush per call); each
        is written with its `record_checksum`."""
        records = [{**r, CHECKSUM_FIELD: record_checksum(r["image_id"], r["height"], r["width"],
                                                         r["rles"])} for r in records]
        self._prepare()
        self._refresh()
        if self.records_path.exists() and self.records_path.stat().st_size > self._valid_bytes:
            os.truncate(self.records_path, self._valid_bytes)  # drop a torn last line first
        with open(self.records_path, "a", encoding="utf-8") as handle:
            append_jsonl(handle, records)
        self._refresh()

    def build(
        self,
        dataset: Any,
        backend: Any,
        progress: bool = True,
        image_ids: Iterable[Any] | None = None,
    ) -> int:
        """Compute proposals for every image of `dataset` not stored yet; returns how many.

        `backend.propose_batch(images) -> list[list[RLE]]` gives each image's post-processed
        proposals. Each finished batch is appended and flushed, so an interrupted build keeps
        its work and the next call continues where it stopped.
        """
        wanted = list(dataset.image_ids if image_ids is None else image_ids)
        with exclusive_lock(self.folder / ".lock", f"proposal cache {self.folder}"):
            self._prepare()
            done = self.images_done()
            todo = [i for i in wanted if i not in done]
            batch_size = max(1, int(getattr(backend, "batch_size", 1)))
            with _progress(progress, len(todo), f"proposals {self.backend_name}") as advance:
                for start in range(0, len(todo), batch_size):
                    ids = todo[start:start + batch_size]
                    images = [dataset.load_image(i) for i in ids]
                    results = backend.propose_batch(images)
                    records = []
                    for image_id, image, rles in zip(ids, images, results):
                        records.append({"image_id": image_id, "height": int(image.shape[0]),
                                        "width": int(image.shape[1]),
                                        "rles": [r["counts"] for r in rles]})
                    self.append(records)
                    advance(len(ids))
        return len(todo)

    def close(self) -> None:
        """Close the read handle (reopened on demand)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class _progress:
    """A rich progress bar (or nothing) yielding an `advance(n)` callable."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._bar = None

    def __enter__(self):
        if not self.enabled or self.total == 0:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.update(task, advance=n)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _stores_in(base: Path, backend_name: str) -> list[Path]:
    if not base.is_dir():
        return []
    prefix = f"{backend_name}-"
    return sorted(p for p in base.iterdir()
                  if p.is_dir() and p.name.startswith(prefix)
                  and re.fullmatch(r"[0-9a-f]{10}", p.name[len(prefix):])
                  and (p / CONFIG_FILE).is_file())


def find_stores(dataset: Any, backend_name: str, root: str | Path | None = None) -> list[Path]:
    """Folders of the stores of `backend_name` built from `dataset`'s refs file and images."""
    base = Path(root) if root is not None else cache_root() / "proposals"
    return _stores_in(base / dataset_key(dataset), backend_name)


def stores_of_other_data(
    dataset: Any, backend_name: str, root: str | Path | None = None
) -> list[Path]:
    """Stores of `backend_name` under `dataset`'s name but built from other data (another refs
    file or image set, or written before caches were keyed by data); never read."""
    base = Path(root) if root is not None else cache_root() / "proposals"
    if not base.is_dir():
        return []
    name, own = name_key(dataset), dataset_key(dataset)
    folders = [p for p in base.iterdir()
               if p.is_dir() and p.name != own
               and (p.name == name or re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", p.name))]
    return [store for folder in sorted(folders) for store in _stores_in(folder, backend_name)]


def open_store(folder: Path, dataset: Any) -> ProposalStore:
    """The store kept in `folder` (its config read from config.json)."""
    saved = read_json(folder / CONFIG_FILE, "proposal config")
    try:
        backend_name, config = saved["backend"], saved["config"]
    except (KeyError, TypeError):
        raise DataError(f"{folder / CONFIG_FILE} is not a proposal config; delete {folder}") from None
    return ProposalStore(dataset, backend_name, config, root=folder.parent.parent)


def _default_folder(dataset: Any, backend_name: str, root: str | Path | None) -> Path | None:
    """The store folder of `refbench proposals build`'s default config (felzenszwalb only: the
    other backends' configs depend on a checkpoint)."""
    if backend_name != "felzenszwalb":
        return None
    from refbench.proposals import default_options, get_backend

    synthetic = getattr(getattr(dataset, "info", None), "split_by", "") == "synth"
    engine = get_backend(backend_name, max_proposals=40, workers=1,
                         **default_options(backend_name, synthetic))
    return ProposalStore(dataset, backend_name, engine.config(), root=root).folder


def load_proposals(
    dataset: Any,
    backend_name: str,
    config: dict[str, Any] | None = None,
    root: str | Path | None = None,
    require_complete: bool = True,
) -> ProposalStore:
    """The proposals of `dataset` from `backend_name`; a `DataError` naming the build command if missing.

    Without `config`, the single store of that backend is used; when there are several (e.g.
    one built before refbench's SynthRef settings changed), the one `refbench proposals build`
    makes by default, and otherwise a `ConfigError` asking for `config`.
    """
    hint = build_command(dataset, backend_name)
    if config is not None:
        store = ProposalStore(dataset, backend_name, config, root=root)
        if not (store.folder / CONFIG_FILE).is_file():
            raise DataError(f"no {backend_name} proposals with this config at {store.folder}; "
                            f"run `{hint}`")
    else:
        folders = find_stores(dataset, backend_name, root)
        if not folders:
            others = stores_of_other_data(dataset, backend_name, root)
            if others:
                raise DataError(
                    f"no {backend_name} proposals built from this data ({dataset_key(dataset)}); "
                    f"the {backend_name} proposals in {', '.join(str(p) for p in others[:3])} "
                    f"were built from other data under the same name (another refs file or image "
                    f"set) and are not used; run `{hint}`")
            raise DataError(f"no {backend_name} proposals for {dataset_key(dataset)}; run `{hint}`")
        if len(folders) > 1:
            default = _default_folder(dataset, backend_name, root)
            folders = [p for p in folders if p == default] or folders
        if len(folders) > 1:
            names = ", ".join(p.name for p in folders)
            raise ConfigError(f"several {backend_name} proposal stores for {dataset_key(dataset)} "
                              f"({names}); pass the config to choose one or delete the others")
        store = open_store(folders[0], dataset)
    if require_complete:
        done = store.images_done()
        missing = [i for i in dataset.image_ids if i not in done]
        if missing:
            raise DataError(f"{len(missing)} images of {getattr(dataset.info, 'id', '')} "
                            f"(first: {missing[0]!r}) have no {backend_name} proposals in "
                            f"{store.folder}; run `{hint}`")
    return store
