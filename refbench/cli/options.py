"""Click options that several commands share, defined once, and the parsing of ``--set``."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from refbench.data.roots import DATA_ROOT_ENV
from refbench.errors import ConfigError

data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help=(
        f"Folder holding refcoco/, refcoco+/, refcocog/ and the COCO images (default "
        f"${DATA_ROOT_ENV}); for synth-* splits a folder from `refbench data synth` "
        "(default: generated into the cache)."
    ),
)

# A value that starts like JSON (a number, list, object or quoted string) must be JSON.
_JSON_START = re.compile(r'[\[{"\-+.0-9]')

SET_HELP = (
    "Model config override KEY=VALUE; repeatable. VALUE is JSON (320, 1e-4, true, null, "
    "'[0.5,0.5,0.5]'); a bare word such as small is taken as a string. Quote lists for the "
    "shell: --set 'mean=[0.5,0.5,0.5]'."
)


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> dict; values are JSON, and a bare word (``small``) is a string.

    A value that starts like JSON (digit, sign, ``[``, ``{``, ``"``) but is not valid JSON is a
    `ConfigError` naming the key and showing how to quote it.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is not KEY=VALUE; write e.g. --set input_size=448")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError as error:
            if raw.strip() and not _JSON_START.match(raw.strip()):
                overrides[key] = raw  # a bare word: a string
                continue
            raise ConfigError(
                f"--set {key}={raw}: the value is not valid JSON ({error.msg} at character "
                f"{error.pos}); write numbers as 448 or 1e-4, lists quoted for the shell as "
                f"--set '{key}=[0.5,0.5,0.5]', strings as a bare word or --set '{key}=\"text\"'"
            ) from None
    return overrides


def check_overrides(cls: Any, overrides: dict[str, Any]) -> None:
    """Refuse unknown keys and badly typed values of `overrides` before anything is built."""
    from refbench.api import merge_config

    cls.validate_config(merge_config(cls.default_config(), overrides, f"model {cls.name!r}"))
