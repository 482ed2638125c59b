"""The identity of a data set's files, which keys every cache built from them.

Caches (cues, proposals) are keyed by what they were computed from, never by the data set's
name alone: two data roots that both hold a ``synthref`` or ``refcocog`` but different files
get different cache folders, so one never silently serves the other.

- `refs_sha256`: SHA-256 of the refs pickle (all splits): the refs, their sentences and ids.
- `images_sha256`: SHA-256 of the image table of ``instances.json`` (id, file name, height,
  width of every image, sorted by id). The pixels are not hashed (too slow for COCO); a
  different image set under the same names and sizes is not told apart.
- `data_key`: ``<dataset>-<split_by>-<12 hex>``, the cache folder name; cues use the refs
  alone (a phrase depends only on the sentence and its ids), proposals the refs and images.
"""

from __future__ import annotations

from typing import Any

from refbench.io import stable_hash

_IMAGES_CACHE: dict[tuple[Any, ...], str] = {}


def _field(record: Any, key: str) -> Any:
    return record[key] if isinstance(record, dict) else getattr(record, key)


def refs_sha256(dataset: Any) -> str:
    """SHA-256 of the refs file `dataset` was read from.

    A `ReferDataset` knows it; an in-memory stand-in without a refs file is hashed from its
    expressions (ref id, sentence id, text) or, lacking those, its ``refs`` list.
    """
    for name in ("refs_sha256", "_refs_sha256"):
        value = getattr(dataset, name, None)
        if isinstance(value, str) and value:
            return value
    if hasattr(dataset, "expressions"):
        rows = [(e.ref_id, e.sent_id, e.text) for e in dataset.expressions("all")]
        return stable_hash(["expressions", rows])
    return stable_hash(["refs", getattr(dataset, "refs", [])])


def images_sha256(dataset: Any) -> str:
    """SHA-256 of the image table (id, file name, height, width) `dataset`'s images come from.

    For a `ReferDataset` that is every image of its ``instances.json`` (all splits share it);
    for a stand-in without one, the images of the split.
    """
    instances_path = getattr(dataset, "instances_path", None)
    if instances_path is not None and hasattr(dataset, "_instances"):
        try:
            stat = instances_path.stat()
            key: tuple[Any, ...] = (str(instances_path.resolve()), stat.st_mtime_ns,
                                    stat.st_size)
        except OSError:
            key = ()
        if key and key in _IMAGES_CACHE:
            return _IMAGES_CACHE[key]
        images = dataset._instances.images
        rows = [[image_id, str(r.get("file_name")), int(r.get("height", 0)),
                 int(r.get("width", 0))] for image_id, r in sorted(images.items())]
        digest = stable_hash(["images", rows])
        if key:
            _IMAGES_CACHE[key] = digest
        return digest
    rows = []
    for image_id in sorted(dataset.image_ids):
        info = dataset.image_info(image_id)
        rows.append([image_id, str(_field(info, "file_name")), int(_field(info, "height")),
                     int(_field(info, "width"))])
    return stable_hash(["images", rows])


def data_identity(dataset: Any, images: bool = True) -> dict[str, str]:
    """{"refs_sha256", "images_sha256"} (the latter only with `images`): what a cache records."""
    identity = {"refs_sha256": refs_sha256(dataset)}
    if images:
        identity["images_sha256"] = images_sha256(dataset)
    return identity


def name_key(dataset: Any) -> str:
    """``<dataset>-<split_by>``: the data set's name, shared by every copy of it."""
    return f"{dataset.info.dataset}-{dataset.info.split_by}"


def data_key(dataset: Any, images: bool = True) -> str:
    """``<dataset>-<split_by>-<12 hex of the data identity>``: a cache folder name."""
    return f"{name_key(dataset)}-{stable_hash(data_identity(dataset, images), 12)}"
