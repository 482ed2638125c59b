"""``refbench data check`` opens what it checks: every data set found, instances.json, every
image the refs use; absent data sets are named; each problem is one line and exits 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from refbench.cli import cli
from refbench.cli import data as data_cli
from refbench.data import published
from refbench.data.published import PublishedCount
from refbench.data.refer import clear_cache
from tests.refer_fixture import IMAGES, make_tiny_refer


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch) -> dict:
    clear_cache()
    made = make_tiny_refer(tmp_path / "data")
    table = {split_id: PublishedCount(v["num_refs"], v["num_sentences"])
             for split_id, v in made["splits"].items()}
    monkeypatch.setattr(published, "PUBLISHED", table)  # counts match: only files can fail
    yield made
    clear_cache()


def _check(root: Path, *args: str):
    return CliRunner().invoke(cli, ["data", "check", "--data-root", str(root), *args])


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_the_intact_fixture_passes_and_says_what_was_decoded(tiny) -> None:
    result = _check(tiny["root"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    for name in ("refcoco:", "refcoco+:", "refcocog:"):
        assert name in text
    assert "instances.json parsed" in text and "0 failed" in text and "(all)" in text


def test_a_root_with_only_refcoco_and_no_images_fails_and_names_the_absent_sets(tiny) -> None:
    root = tiny["root"]
    shutil.rmtree(root / "refcoco+")
    shutil.rmtree(root / "refcocog")
    shutil.rmtree(root / "images")
    result = _check(root)
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "absent" in text and "refcoco+, refcocog" in text
    problems = [line for line in result.output.splitlines() if "not found; tried" in line]
    assert problems and all(line.startswith("refcoco: image ") for line in problems)


def test_a_corrupt_jpeg_is_one_line_naming_the_file(tiny) -> None:
    root = tiny["root"]
    jpeg = next(root / folder / name for name, _, _, kind, folder in IMAGES.values()
                if kind == "jpeg")
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])  # cut short
    result = _check(root)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if jpeg.name in line]
    assert lines and all("cannot decode image" in line for line in lines)


def test_a_truncated_instances_json_is_reported(tiny) -> None:
    instances = tiny["root"] / "refcoco" / "instances.json"
    text = instances.read_text()
    instances.write_text(text[: len(text) // 2])
    result = _check(tiny["root"], "--split", "refcoco-val")
    assert result.exit_code == 2, result.output
    assert any(line.startswith("refcoco: ") and "not valid JSON" in line
               for line in result.output.splitlines())


def test_a_truncated_refs_pickle_says_corrupt_not_refused(tiny) -> None:
    refs = tiny["root"] / "refcoco" / "refs(unc).p"
    data = refs.read_bytes()
    refs.write_bytes(data[: len(data) // 2])
    result = _check(tiny["root"], "--split", "refcoco-val")
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "truncated or corrupt" in text and "re-download" in text
    assert "refusing" not in text and "plain data" not in text


def test_quick_decodes_an_even_sample(tiny, monkeypatch) -> None:
    monkeypatch.setattr(data_cli, "QUICK_SAMPLE", 1)
    result = _check(tiny["root"], "--split", "refcoco-val", "--quick")
    assert result.exit_code == 0, result.output
    assert "decoded 1 of the" in _flat(result.output) and "--quick" in result.output
