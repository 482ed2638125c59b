"""``refbench cues``: build target-related cue phrases for a split, or import PCNet's."""

from __future__ import annotations

import click

from refbench.cli.options import data_root_option
from refbench.data.roots import open_split


@click.group("cues")
def cues_group() -> None:
    """Decompose referring expressions into K short target-related phrases (cached)."""


@cues_group.command("build")
@click.option("--split", "split", required=True, help="split id, e.g. refcocog-train-g")
@data_root_option
@click.option(
    "--backend",
    type=click.Choice(["auto", "heuristic", "llm", "template"]),
    default="auto",
    show_default=True,
    help="auto = llm when REFBENCH_LLM_BASE_URL is set, else heuristic",
)
@click.option("--k", "k", type=click.IntRange(1, 32), default=5, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=None, help="llm: requests")
@click.option("--base-url", default=None, help="llm: overrides REFBENCH_LLM_BASE_URL")
@click.option("--llm-model", default=None, help="llm: overrides REFBENCH_LLM_MODEL")
@click.option("--timeout", type=float, default=None, help="llm: seconds per request")
@click.option("--max-fallback", type=click.FloatRange(0, 1), default=None,
              help="Fraction of sentences allowed to fall back to heuristic phrases "
                   "(default 0.05, or REFBENCH_CUES_MAX_FALLBACK).")
def build_command(
    split: str,
    data_root: str | None,
    backend: str,
    k: int,
    concurrency: int | None,
    base_url: str | None,
    llm_model: str | None,
    timeout: float | None,
    max_fallback: float | None,
) -> None:
    """Build (or finish) the cue cache of a split; the API key comes from REFBENCH_LLM_API_KEY."""
    from refbench.cues import build_cues_with_stats, get_backend

    dataset = open_split(split, data_root)
    cue_backend = get_backend(
        backend, concurrency=concurrency, base_url=base_url, model=llm_model, timeout=timeout
    )
    cues, stats = build_cues_with_stats(dataset, cue_backend, k=k, progress=True,
                                        max_fallback=max_fallback)
    click.echo(
        f"{len(cues)} expressions of {split} have {k} {cue_backend.name} cues: "
        f"{stats.from_cache} from cache, {stats.built} built ({stats.retried} fallbacks asked "
        f"again), {stats.fallback} fell back to the heuristic ({stats.path})"
    )


@cues_group.command("import")
@click.option("--split", "split", required=True, help="split id, e.g. refcocog-val-u")
@click.option("--from", "source", required=True,
              help="PCNet's folder of <ref_id>.json phrase files (Mistral_7B_Ref_Sents)")
@click.option("--ref-id-map", "ref_id_map", type=click.Path(dir_okay=False), default=None,
              help="umd_2_google_ref.npy: the file id of each ref (default for refcocog-umd: "
                   "the one in the data set folder, when present)")
@data_root_option
def import_command(split: str, source: str, ref_id_map: str | None,
                   data_root: str | None) -> None:
    """Import the phrase files released with PCNet's code as backend ``pcnet-import``."""
    from refbench.cues import import_pcnet_phrases
    from refbench.cues.pcnet_import import find_ref_id_map

    dataset = open_split(split, data_root)
    map_path = ref_id_map if ref_id_map is not None else find_ref_id_map(dataset)
    count = import_pcnet_phrases(source, dataset, ref_id_map=map_path)
    used = f"ref id map {map_path}" if map_path is not None else "no ref id map (files by ref id)"
    click.echo(f"imported PCNet phrases for {count} expressions of {split} ({used})")
