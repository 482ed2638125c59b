"""The one family of exceptions that refbench raises for user mistakes.

The CLI turns any `RefbenchError` into a one-line message and exit code 2; every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RefbenchError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""


class ConfigError(RefbenchError):
    """An option, config key or value that cannot be used."""


class UnknownNameError(RefbenchError):
    """An unknown model, split, protocol or backend name."""


class DataError(RefbenchError):
    """A missing, unreadable or inconsistent data file."""


class CheckpointError(RefbenchError):
    """A checkpoint that cannot be loaded into the requested model."""


class PluginError(RefbenchError):
    """A plugin that failed to import or is registered twice."""


class PredictionError(RefbenchError):
    """A model output that cannot be scored (wrong shape, NaN or inf)."""


class OutputError(RefbenchError):
    """An output folder or file that cannot be written."""


def did_you_mean(
    name: str, choices: Iterable[str], *, n: int = 3, cutoff: float = 0.5, quote: bool = True
) -> str:
    """`` Did you mean 'a' or 'b'?`` naming the choices closest to `name`, or ``""`` if none is.

    The hint starts with a space so that it follows a sentence directly; `quote=False` names the
    choices bare and comma-separated (``Did you mean a, b?``), as config keys are written.
    """
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=cutoff)
    if not close:
        return ""
    named = " or ".join(repr(c) for c in close) if quote else ", ".join(close)
    return f" Did you mean {named}?"


def describe_differences(
    before: object, after: object, *, limit: int = 6, width: int = 40
) -> str:
    """The keys on which two configs differ, in one short line: ``lr 0.001 -> 0.002; ...``.

    Nested mappings are compared key by key (``model_config.lr``); values are cut to `width`
    characters and at most `limit` keys are named, then how many more differ.
    """
    changed: list[tuple[str, object, object]] = []

    def walk(prefix: str, old: object, new: object) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                walk(f"{prefix}.{key}" if prefix else str(key), old.get(key, _ABSENT),
                     new.get(key, _ABSENT))
        elif old != new:
            changed.append((prefix or "value", old, new))

    def short(value: object) -> str:
        text = "(absent)" if value is _ABSENT else repr(value)
        return text if len(text) <= width else text[: width - 3] + "..."

    walk("", before, after)
    shown = "; ".join(f"{key} {short(old)} -> {short(new)}" for key, old, new in changed[:limit])
    more = len(changed) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


_ABSENT = object()
