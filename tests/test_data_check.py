"""``refbench data check`` on the tiny refer set: mismatches exit 2, matching counts exit 0."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from refbench.cli import COMMANDS, LazyGroup, cli, main
from refbench.data import published
from refbench.data.published import PublishedCount
from tests.refer_fixture import SPLIT_MEMBERS, make_tiny_refer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tiny_refer(tmp_path_factory.mktemp("check"))


def _statuses(output: str) -> dict[str, str]:
    """split id -> status column of the printed table."""
    rows = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return {cells[1].strip(): cells[-2].strip() for cells in rows}


def _tiny_table(tiny: dict) -> dict[str, PublishedCount]:
    return {
        split_id: PublishedCount(v["num_refs"], v["num_sentences"])
        for split_id, v in tiny["splits"].items()
    }


def test_published_table_covers_every_refcoco_family_split() -> None:
    assert set(published.PUBLISHED) == set(SPLIT_MEMBERS)
    # totals quoted by the data-set papers
    total = lambda ids: sum(published.PUBLISHED[i].sentences for i in ids)  # noqa: E731
    assert total(["refcoco+-train", "refcoco+-val", "refcoco+-testa", "refcoco+-testb"]) == 141564
    assert total(["refcocog-train-g", "refcocog-val-g"]) == total(
        ["refcocog-train-u", "refcocog-val-u", "refcocog-test-u"]
    )


def test_tiny_counts_differ_from_published_and_exit_2(tiny: dict) -> None:
    result = CliRunner().invoke(cli, ["data", "check", "--data-root", str(tiny["root"])])
    assert result.exit_code == 2, result.output
    assert _statuses(result.output) == {split_id: "MISMATCH" for split_id in SPLIT_MEMBERS}


def test_matching_counts_report_ok_and_exit_0(tiny: dict, monkeypatch) -> None:
    monkeypatch.setattr(published, "PUBLISHED", _tiny_table(tiny))
    result = CliRunner().invoke(cli, ["data", "check", "--data-root", str(tiny["root"])])
    assert result.exit_code == 0, result.output
    assert _statuses(result.output) == {split_id: "ok" for split_id in SPLIT_MEMBERS}


def test_one_wrong_count_is_flagged(tiny: dict, monkeypatch) -> None:
    table = _tiny_table(tiny)
    real = table["refcocog-val-u"]
    table["refcocog-val-u"] = PublishedCount(real.refs, real.sentences + 1)
    monkeypatch.setattr(published, "PUBLISHED", table)
    args = ["data", "check", "--data-root", str(tiny["root"])]
    result = CliRunner().invoke(cli, [*args, "--split", "refcocog-val-u", "--split", "refcoco-val"])
    assert result.exit_code == 2
    assert _statuses(result.output) == {"refcocog-val-u": "MISMATCH", "refcoco-val": "ok"}


def test_missing_files_for_a_requested_split_exit_2(tmp_path: Path, monkeypatch) -> None:
    tiny = make_tiny_refer(tmp_path / "data")
    monkeypatch.setattr(published, "PUBLISHED", _tiny_table(tiny))
    refs = tiny["root"] / "refcocog" / "refs(umd).p"
    refs.unlink()
    result = CliRunner().invoke(
        cli,
        ["data", "check", "--data-root", str(tiny["root"]), "--split", "refcocog-val-u"],
    )
    assert result.exit_code == 2
    assert _statuses(result.output) == {"refcocog-val-u": "MISSING"}
    assert str(refs) in result.output.replace("\n", "")
    # without --split the remaining splits are checked and the absent ones left out
    result = CliRunner().invoke(cli, ["data", "check", "--data-root", str(tiny["root"])])
    assert result.exit_code == 0, result.output
    statuses = _statuses(result.output)
    assert "refcocog-val-u" not in statuses and "refcocog-test-u" not in statuses
    assert statuses["refcocog-val-g"] == "ok" and len(statuses) == len(SPLIT_MEMBERS) - 3


def test_user_errors_are_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["data", "check", "--data-root", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "absent" in err and "docs/data.md" in err and "Traceback" not in err
    assert main(["data", "check", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no RefCOCO-family files" in err
    assert main(["data", "check", "--data-root", str(tmp_path), "--split", "refcoco-vall"]) == 2
    assert "refcoco-val" in capsys.readouterr().err
    assert main(["data", "check", "--data-root", str(tmp_path), "--split", "synth-val"]) == 2
    assert "no published counts" in capsys.readouterr().err


def test_data_group_is_lazy_and_skips_absent_modules() -> None:
    assert COMMANDS["data"] == "data:data_group"
    from refbench.cli.data import DATA_COMMANDS, data_group

    assert isinstance(data_group, LazyGroup) and data_group.lazy_commands is DATA_COMMANDS
    ctx = click.Context(data_group)
    listed = data_group.list_commands(ctx)
    assert "check" in listed
    group = LazyGroup(lazy_commands={"ghost": "no_such_module:command"})
    assert group.list_commands(ctx) == [] and group.get_command(ctx, "ghost") is None
    result = CliRunner().invoke(cli, ["data", "--help"])
    assert result.exit_code == 0 and "check" in result.output
