"""Python 2 ``str`` in refs pickles: UTF-8 bytes decode as UTF-8, other bytes as latin-1.

Python 3 cannot write a Python 2 ``str``, so the fixtures are protocol-2 pickles assembled
opcode by opcode (SHORT_BINSTRING / BINSTRING for ``str``, BINUNICODE for ``unicode``).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
from pathlib import Path

import pytest

from refbench.data.refer import ReferDataset, clear_cache, safe_load_pickle
from refbench.errors import DataError
from refbench.safe_pickle import RefusedGlobalError, restricted_load
from tests.refer_fixture import make_tiny_refer


class Py3Bytes(bytes):
    """A value Python 3 pickles (protocol 2) as ``_codecs.encode(text, 'latin1')``."""


def _py2(obj) -> bytes:
    """Protocol-2 pickle bytes of `obj`, writing `bytes` as a Python 2 ``str``."""
    if isinstance(obj, Py3Bytes):
        text = bytes(obj).decode("latin-1")
        return (b"c_codecs\nencode\n" + _py2(text) + _py2("latin1") + pickle.TUPLE2
                + pickle.REDUCE)
    if isinstance(obj, bytes):
        if len(obj) < 256:
            return pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj
        return pickle.BINSTRING + struct.pack("<i", len(obj)) + obj
    if isinstance(obj, str):
        data = obj.encode("utf-8")
        return pickle.BINUNICODE + struct.pack("<I", len(data)) + data
    if isinstance(obj, bool) or obj is None:
        return {True: pickle.NEWTRUE, False: pickle.NEWFALSE, None: pickle.NONE}[obj]
    if isinstance(obj, int):
        return pickle.BININT + struct.pack("<i", obj)
    if isinstance(obj, list):
        return pickle.EMPTY_LIST + pickle.MARK + b"".join(_py2(x) for x in obj) + pickle.APPENDS
    if isinstance(obj, dict):
        items = b"".join(_py2(k) + _py2(v) for k, v in obj.items())
        return pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS
    raise TypeError(type(obj))


def py2_pickle(obj) -> bytes:
    data = pickle.PROTO + b"\x02" + _py2(obj) + pickle.STOP
    pickletools.dis(data, out=io.StringIO())  # a well-formed pickle
    return data


UTF8 = "smörgåsbord"
LATIN1 = "café crème"


def test_utf8_bytes_of_a_python2_str_decode_as_utf8() -> None:
    data = py2_pickle([{b"sent": UTF8.encode("utf-8"), b"ref_id": 3}])
    assert restricted_load(io.BytesIO(data)) == [{"sent": UTF8, "ref_id": 3}]


def test_latin1_bytes_that_are_not_utf8_stay_latin1() -> None:
    data = py2_pickle([{b"sent": LATIN1.encode("latin-1"), b"tokens": [b"caf\xe9"]}])
    assert restricted_load(io.BytesIO(data)) == [{"sent": LATIN1, "tokens": ["café"]}]


def test_a_file_mixing_both_decodes_each_string_on_its_own() -> None:
    data = py2_pickle({b"a": UTF8.encode("utf-8"), b"b": LATIN1.encode("latin-1"),
                       b"ascii": b"the man on the left", b"u": "unicode ü",
                       b"raw": Py3Bytes(b"\xff\x00")})
    loaded = restricted_load(io.BytesIO(data))
    assert loaded == {"a": UTF8, "b": LATIN1, "ascii": "the man on the left",
                      "u": "unicode ü", "raw": b"\xff\x00"}
    assert type(loaded["raw"]) is bytes


def test_ascii_python2_refs_load_as_before() -> None:
    refs = [{b"ref_id": 1, b"split": b"val", b"sentences": [{b"sent": b"left dog"}]}]
    assert restricted_load(io.BytesIO(py2_pickle(refs))) == [
        {"ref_id": 1, "split": "val", "sentences": [{"sent": "left dog"}]}]


def test_a_refs_file_with_utf8_sentences_reads_them_right(tmp_path: Path) -> None:
    clear_cache()
    tiny = make_tiny_refer(tmp_path / "data")
    path = tiny["root"] / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes(), encoding="latin1")
    for ref in refs:
        for sentence in ref["sentences"]:
            sentence["sent"] = f"{UTF8} {sentence['sent']}"

    def as_py2(value):
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, list | tuple):
            return [as_py2(v) for v in value]
        if isinstance(value, dict):
            return {as_py2(k): as_py2(v) for k, v in value.items()}
        return value

    path.write_bytes(py2_pickle(as_py2(refs)))
    try:
        dataset = ReferDataset(tiny["root"], "refcoco-val")
        texts = [e.text for e in dataset.expressions()]
        assert texts and all(t.startswith(UTF8 + " ") for t in texts)
    finally:
        clear_cache()


def test_truncated_pickle_is_corrupt_and_a_global_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    data = py2_pickle([{b"sent": b"x" * 300}])
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as caught:
        safe_load_pickle(path)
    assert "truncated or corrupt" in str(caught.value) and "refusing" not in str(caught.value)
    path.write_bytes(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.")
    with pytest.raises(DataError, match="refusing to load .* global os.system"):
        safe_load_pickle(path)
    with pytest.raises(RefusedGlobalError):
        restricted_load(io.BytesIO(path.read_bytes()))
