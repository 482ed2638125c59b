"""Target-related cues: each referring expression decomposed into K short phrases (PCNet Sec.
3.1), computed once per data set by a backend and cached on disk.

Backends: ``heuristic`` (rule-based chunker, no model), ``llm`` (any OpenAI-compatible
endpoint), ``template`` (SynthRef's known decomposition) and ``auto`` (llm when
``REFBENCH_LLM_BASE_URL`` is set, else heuristic). Phrases published with PCNet's code load
with `import_pcnet_phrases` under the name ``pcnet-import``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from refbench.cues.base import CueBackend, CueResult, config_hash, sentence_hash, unknown_backend
from refbench.cues.heuristic import HeuristicBackend, chunk
from refbench.cues.llm import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, EndpointError, LLMBackend
from refbench.cues.padding import pad_cues
from refbench.cues.pcnet_import import IMPORT_BACKEND, import_pcnet_phrases
from refbench.cues.store import (
    BuildStats,
    CueStore,
    build_cues,
    build_cues_with_stats,
    ensure_cues,
    load_cues,
)
from refbench.cues.template import TemplateBackend
from refbench.errors import ConfigError

BACKENDS: dict[str, type[CueBackend]] = {
    "heuristic": HeuristicBackend,
    "llm": LLMBackend,
    "template": TemplateBackend,
}
BACKEND_NAMES = ("auto", *BACKENDS)


def check_backend_name(name: str) -> str:
    """`name` when cues can be built or imported under it, else an `UnknownNameError` with the
    closest names (``heuristc`` -> ``heuristic``) and the valid ones."""
    valid = (*BACKEND_NAMES, IMPORT_BACKEND)
    if name not in valid:
        raise unknown_backend(name, valid)
    return name


def get_backend(name: str, **options: Any) -> CueBackend:
    """Build the cue backend `name` with `options` (None values are ignored).

    ``auto`` is ``llm`` when ``REFBENCH_LLM_BASE_URL`` is set, else ``heuristic``; options the
    chosen backend does not take are dropped for ``auto`` and an error for a named backend.
    """
    options = {key: value for key, value in options.items() if value is not None}
    chosen = name
    if name == "auto":
        chosen = "llm" if os.environ.get(ENV_BASE_URL) or options.get("base_url") else "heuristic"
    if chosen not in BACKENDS:
        raise unknown_backend(name, BACKEND_NAMES)
    cls = BACKENDS[chosen]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown and name != "auto":
        raise ConfigError(
            f"cue backend {chosen!r} takes no option {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(accepted)) or 'no options'}"
        )
    return cls(**{key: value for key, value in options.items() if key in accepted})


__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_MODEL",
    "IMPORT_BACKEND",
    "BuildStats",
    "CueBackend",
    "CueResult",
    "CueStore",
    "EndpointError",
    "HeuristicBackend",
    "LLMBackend",
    "TemplateBackend",
    "build_cues",
    "ensure_cues",
    "build_cues_with_stats",
    "check_backend_name",
    "chunk",
    "config_hash",
    "get_backend",
    "import_pcnet_phrases",
    "load_cues",
    "pad_cues",
    "sentence_hash",
]
