"""SynthRef: the embedded, procedurally generated referring-expression benchmark.

It is written in the refer format (refs(synth).p, instances.json, PNG images) so the reader,
runner, metrics and training code serve it and RefCOCO alike. Generation is deterministic by
seed; the generator version and parameters are written into the data set (``info``).
"""

from refbench.synth.generate import (
    default_root,
    ensure_synthref,
    generate,
    is_complete,
    synth_info,
)
from refbench.synth.resolver import Resolver, compatibility, load_resolver
from refbench.synth.stats import CHANCE_KEYS, cached_stats, load_refs, stats
from refbench.synth.variants import SYNTH_VERSION, VARIANTS, SynthParams, get_variant

__all__ = [
    "CHANCE_KEYS",
    "SYNTH_VERSION",
    "VARIANTS",
    "Resolver",
    "SynthParams",
    "cached_stats",
    "compatibility",
    "default_root",
    "ensure_synthref",
    "generate",
    "get_variant",
    "is_complete",
    "load_refs",
    "load_resolver",
    "stats",
    "synth_info",
]
