"""The one family of exceptions that refbench raises for user mistakes.

The CLI turns any `RefbenchError` into a one-line message and exit code 2; every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


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
