"""Throughput of the heuristic cue chunker and of a cached build (prints figures, no asserts)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from refbench.api import Expression
from refbench.cues import HeuristicBackend, build_cues

SAMPLES = [
    "man on left", "guy in white shirt holding a bat", "bottom left pizza",
    "the woman in white shirt looking down at laptop computer",
    "a woman with long blonde hair wearing a black dress and holding a glass of wine",
    "teddy bear on right", "the dog whose head is on the pillow", "second from left",
]


@dataclass(frozen=True)
class _Info:
    id: str = "bench"
    dataset: str = "bench"
    split_by: str = "bench"


class _Data:
    def __init__(self, n: int) -> None:
        self.info = _Info()
        self._e = [Expression(f"{SAMPLES[i % len(SAMPLES)]} {i}", ref_id=i, sent_id=i)
                   for i in range(n)]

    def expressions(self, sentences: str = "all") -> list[Expression]:
        return self._e


def main(n: int = 20000) -> None:
    data = _Data(n)
    texts = [e.text for e in data.expressions()]
    start = time.perf_counter()
    HeuristicBackend().decompose(texts)
    chunk_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        build_cues(data, HeuristicBackend(), cache_dir=cache, progress=False)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        build_cues(data, HeuristicBackend(), cache_dir=cache, progress=False)
        cached_s = time.perf_counter() - start
    print(f"chunker: {n / chunk_s:,.0f} expressions/s ({n} in {chunk_s:.2f} s)")
    print(f"first build with cache writes: {n / build_s:,.0f} expressions/s")
    print(f"rebuild from cache: {n / cached_s:,.0f} expressions/s "
          f"({build_s / cached_s:.1f}x faster than building)")


if __name__ == "__main__":
    main()
