"""What every cue backend provides: phrases per expression, and the config that keys its cache."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from refbench.errors import UnknownNameError, did_you_mean
from refbench.io import canonical_json, sha256_hex, stable_hash


@dataclass(frozen=True)
class CueResult:
    """The phrases for one expression; `fallback` says the heuristic stood in for the backend."""

    phrases: tuple[str, ...]
    fallback: bool = False
    note: str = ""  # why a fallback happened (the last parse error), for the log


class CueBackend:
    """Decomposes referring expressions into short target-related phrases (PCNet Sec. 3.1).

    Subclasses set `name` and implement `decompose_one` (or override `iter_results` to run many
    at once). `config()` is everything that changes the output and nothing secret: it keys the
    on-disk cache.
    """

    name: str = "base"

    def config(self) -> dict[str, Any]:
        """The settings that change this backend's output (never secrets)."""
        return {"backend": self.name}

    def bind(self, dataset: Any) -> None:
        """Give the backend the data set being decomposed (only `template` needs it)."""

    def decompose_one(self, text: str) -> CueResult:  # pragma: no cover - abstract
        """Phrases for one expression, from the head noun phrase to the full description."""
        raise NotImplementedError

    def iter_results(self, texts: Sequence[str]) -> Iterator[tuple[int, CueResult]]:
        """(index into `texts`, result) pairs in completion order; errors raise after the rest."""
        for index, text in enumerate(texts):
            yield index, self.decompose_one(text)

    def decompose(self, texts: list[str]) -> list[list[str]]:
        """Phrases for each text, in the order given (not padded; see `pad_cues`)."""
        out: list[list[str]] = [[] for _ in texts]
        for index, result in self.iter_results(texts):
            out[index] = list(result.phrases)
        return out


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a backend config (sorted-key JSON), used in cache file names."""
    return stable_hash(config, 12, strict=True)


def sentence_hash(text: str, config: dict[str, Any]) -> str:
    """The cache key of one sentence under one backend config."""
    return sha256_hex(f"{text}\n{canonical_json(config, strict=True)}")


def unknown_backend(name: str, valid: Sequence[str]) -> UnknownNameError:
    """An `UnknownNameError` for backend `name` with close names and the valid list."""
    hint = did_you_mean(name, valid)
    return UnknownNameError(
        f"unknown cue backend {name!r}.{hint} Valid backends: {', '.join(valid)}"
    )
