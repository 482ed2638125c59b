"""Cues for SynthRef: the generator already knows each sentence's decomposition."""

from __future__ import annotations

from typing import Any

from refbench.cues.base import CueBackend, CueResult
from refbench.errors import DataError


class TemplateBackend(CueBackend):
    """Reads ``extra["cues"]`` (head noun to full description) that SynthRef stores per sentence."""

    name = "template"
    VERSION = 1

    def __init__(self, dataset: Any = None) -> None:
        self._by_text: dict[str, tuple[str, ...]] = {}
        self._split = "?"
        if dataset is not None:
            self.bind(dataset)

    def config(self) -> dict[str, Any]:
        """Only the format version: the phrases come from the data itself."""
        return {"backend": self.name, "version": self.VERSION}

    def bind(self, dataset: Any) -> None:
        """Index the stored decomposition of every sentence of `dataset` by its text."""
        self._split = getattr(getattr(dataset, "info", None), "id", "?")
        for expression in dataset.expressions("all"):
            cues = dataset.sentence(expression.key).extra.get("cues")
            if not cues:
                raise DataError(
                    f"sentence {expression.key} ({expression.text!r}) of split {self._split} has "
                    "no stored cues; the template backend serves SynthRef splits only, use "
                    "--backend heuristic or llm for real data"
                )
            if not isinstance(cues, list | tuple) or not all(isinstance(c, str) for c in cues):
                raise DataError(
                    f"sentence {expression.key} of split {self._split} stores cues that are not "
                    "a list of strings; regenerate the SynthRef data"
                )
            self._by_text.setdefault(expression.text, tuple(cues))

    def decompose_one(self, text: str) -> CueResult:
        """The stored phrases of the sentence with this text."""
        try:
            return CueResult(self._by_text[text])
        except KeyError:
            raise DataError(
                f"no SynthRef sentence {text!r} in split {self._split}; the template backend "
                "only decomposes the sentences of the split it was given"
            ) from None
