"""Model discovery through the entry-point group ``refbench.models``.

Listing reads package metadata only (no plugin is imported, torch is not imported), so
`refbench list` stays fast. A plugin is imported when it is first used; one that fails to
import is reported with its distribution and error while the others keep working.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any

from refbench.errors import PluginError, UnknownNameError, did_you_mean

GROUP = "refbench.models"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, target, and the distribution that registered it."""

    name: str
    target: str  # "package.module:Class"
    distribution: str
    version: str
    entry_point: Any = None
    # Other registrations of the same name ("distribution (target)"): the name is unusable.
    clashes: tuple[str, ...] = ()

    @property
    def clash_message(self) -> str | None:
        """Why this name cannot be used when several distributions register it, else None."""
        if not self.clashes:
            return None
        others = " and by ".join(self.clashes)
        return (
            f"model name {self.name!r} is registered twice: by {self.distribution} "
            f"({self.target}) and by {others}; uninstall one of them to use it"
        )

    def load(self) -> type:
        """Import the model class; import failures become a `PluginError` naming the plugin."""
        if self.clash_message is not None:
            raise PluginError(self.clash_message)
        try:
            cls = self.entry_point.load()
        except Exception as error:  # noqa: BLE001 - any import failure is reported the same way
            raise PluginError(
                f"model {self.name!r} from {self.distribution} {self.version} failed to import "
                f"({_one_line(error)}); reinstall that plugin"
            ) from error
        return cls

    def missing_module(self) -> str | None:
        """The target's top-level package when it cannot be found (found without importing
        anything), else None."""
        package = self.target.split(":")[0].split(".")[0]
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else package

    def problem(self, check_import: bool = False) -> str | None:
        """One line on why this model cannot be used, or None: a name clash, a package that is
        not installed, or (with `check_import`, which imports the plugin) an import failure."""
        if self.clash_message is not None:
            return self.clash_message
        package = self.missing_module()
        if package is not None:
            return f"package {package!r} of {self.distribution} is not installed; reinstall it"
        if check_import:
            try:
                self.load()
            except PluginError as error:
                return str(error)
        return None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _distribution_of(entry_point: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"], dist.version


def discover() -> dict[str, ModelEntry]:
    """Every registered model by name.

    A name that two distributions register is kept with its `ModelEntry.clashes`: it cannot be
    used (`get_entry` says why), while every other model still can.
    """
    found: dict[str, ModelEntry] = {}
    for entry_point in metadata.entry_points(group=GROUP):
        dist, version = _distribution_of(entry_point)
        entry = ModelEntry(entry_point.name, entry_point.value, dist, version, entry_point)
        previous = found.get(entry.name)
        if previous is not None:
            if (previous.distribution, previous.target) == (dist, entry.target):
                continue  # the same distribution seen twice on sys.path
            other = f"{dist} ({entry.target})"
            if other not in previous.clashes:
                found[entry.name] = replace(previous, clashes=(*previous.clashes, other))
            continue
        found[entry.name] = entry
    return dict(sorted(found.items()))


def get_entry(name: str) -> ModelEntry:
    """The entry for `name`, or an `UnknownNameError` with close names."""
    entries = discover()
    if name not in entries:
        hint = did_you_mean(name, entries)
        known = ", ".join(entries) or "none (is a plugin installed?)"
        raise UnknownNameError(f"unknown model {name!r}.{hint} Registered models: {known}")
    entry = entries[name]
    if entry.clash_message is not None:
        raise PluginError(entry.clash_message)
    return entry


def get_model_class(name: str) -> type:
    """Import and return the class registered as `name`."""
    from refbench.api import RISModel

    entry = get_entry(name)
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, RISModel)):
        raise PluginError(
            f"entry point {name!r} of {entry.distribution} points to {entry.target}, "
            "which is not a refbench.api.RISModel subclass"
        )
    return cls


def load_model(name: str, checkpoint: str | None = None, **overrides: Any):
    """Build model `name`, from `checkpoint` when given, with config `overrides` applied."""
    cls = get_model_class(name)
    if checkpoint is not None:
        return cls.from_checkpoint(checkpoint, **overrides)
    return cls.from_config(overrides)
