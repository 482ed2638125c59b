"""``refbench proposals``: build, import and score class-agnostic mask proposals (PCNet App. D)."""

from __future__ import annotations

from typing import Any

import click

from refbench.cli.options import data_root_option
from refbench.data.roots import open_split
from refbench.errors import ConfigError


def _open_dataset(split: str, data_root: str | None) -> Any:
    return open_split(split, data_root)


def _min_area(dataset: Any, min_area: float | None) -> float:
    from refbench.proposals import default_min_area

    if min_area is not None:
        return min_area
    return default_min_area(getattr(dataset.info, "split_by", "") == "synth")


def _report(store: Any) -> None:
    click.echo(f"{len(store)} images in {store.folder}; "
               f"{store.bytes_per_image() / 1024:.1f} KiB per image")


min_area_option = click.option(
    "--min-area", type=float, default=None,
    help="Drop proposals under this many pixels (a value < 1 is a fraction of the image area). "
         "Default: 1000 px (the paper), 1000/(640*480) of the image on SynthRef (where felzenszwalb "
         "also uses refbench.proposals.SYNTH_FELZENSZWALB).")


@click.group("proposals")
def proposals_group() -> None:
    """Class-agnostic mask proposals: computed once per data set, cached on disk."""


@proposals_group.command("build")
@click.option("--split", required=True, help="Split id, e.g. refcoco-train or synth-train.")
@data_root_option
@click.option("--backend", type=click.Choice(["felzenszwalb", "sam"]), default="felzenszwalb",
              show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="segment-anything checkpoint (.pth) for --backend sam.")
@click.option("--model-type", type=click.Choice(["vit_h", "vit_l", "vit_b"]), default="vit_h",
              show_default=True)
@click.option("--max-proposals", type=click.IntRange(min=1), default=40, show_default=True)
@min_area_option
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda (sam only).")
@click.option("--batch-size", type=int, default=4, show_default=True,
              help="Images per image-encoder forward (sam only).")
def build_command(split: str, data_root: str | None, backend: str, checkpoint: str | None,
                  model_type: str, max_proposals: int, min_area: float | None, device: str,
                  batch_size: int) -> None:
    """Compute the proposals of every image of a split not cached yet (resumable)."""
    from refbench.proposals import ProposalStore, default_options, get_backend

    dataset = _open_dataset(split, data_root)
    synthetic = getattr(dataset.info, "split_by", "") == "synth"
    options: dict[str, Any] = {"max_proposals": max_proposals,
                               **default_options(backend, synthetic)}
    if min_area is not None:
        options["min_area"] = min_area
    if backend == "sam":
        if checkpoint is None:
            raise ConfigError("--backend sam needs --checkpoint (a segment-anything .pth file)")
        options.update(checkpoint=checkpoint, model_type=model_type, device=device,
                       batch_size=batch_size)
    elif checkpoint is not None:
        raise ConfigError("--checkpoint is only used by --backend sam")
    engine = get_backend(backend, **options)
    store = ProposalStore(dataset, backend, engine.config())
    added = store.build(dataset, engine, progress=True)
    click.echo(f"computed {added} images")
    _report(store)


@proposals_group.command("import")
@click.option("--split", required=True)
@data_root_option
@click.option("--from", "source", required=True, type=click.Path(exists=True, file_okay=False),
              help="sam-rle: folder of per-image JSON files. pcnet: PCNet's SAM_Mask (or "
                   "SOLO_Mask) folder, or its SAM_out subfolder.")
@click.option("--format", "file_format", type=click.Choice(["sam-rle", "pcnet"]), required=True)
@click.option("--generator", type=click.Choice(["sam", "freesolo"]), default="sam",
              show_default=True, help="Which PCNet proposals (--format pcnet).")
@click.option("--candidates", type=click.Path(dir_okay=False), default=None,
              help="pcnet: PCNet's <splitBy>_candidate_2_4_6_8.npy (default: the one beside "
                   "SAM_out/, when present).")
@click.option("--max-proposals", type=click.IntRange(min=1), default=40, show_default=True)
@min_area_option
def import_command(split: str, data_root: str | None, source: str, file_format: str,
                   generator: str, candidates: str | None, max_proposals: int,
                   min_area: float | None) -> None:
    """Import proposals computed elsewhere (SAM RLE JSON, or PCNet's published files)."""
    from refbench.proposals import import_pcnet_proposals, import_sam_rle_folder

    dataset = _open_dataset(split, data_root)
    if file_format == "sam-rle":
        if candidates is not None:
            raise ConfigError("--candidates is only read with --format pcnet")
        store = import_sam_rle_folder(source, dataset, max_proposals=max_proposals,
                                      min_area=_min_area(dataset, min_area), progress=True)
    else:
        store = import_pcnet_proposals(source, dataset, generator=generator,
                                       max_proposals=max_proposals, progress=True,
                                       candidates=candidates)
    click.echo(f"store {store.backend_name}")
    if file_format == "pcnet":
        used = store.config.get("candidates")
        if used:
            click.echo(f"clip scores and candidate flags of {len(store.scored_ref_ids())} refs "
                       f"from {used}")
        else:
            click.echo("no candidate file found: masks imported without clip scores")
    _report(store)


@proposals_group.command("oracle")
@click.option("--split", required=True)
@data_root_option
@click.option("--backend", default="felzenszwalb", show_default=True,
              help="Store name: felzenszwalb, sam, sam-rle, pcnet-sam, pcnet-freesolo.")
def oracle_command(split: str, data_root: str | None, backend: str) -> None:
    """Print the Oracle mIoU/oIoU of a proposal set: the best proposal per referred object."""
    from refbench.proposals import load_proposals, oracle_scores

    dataset = _open_dataset(split, data_root)
    store = load_proposals(dataset, backend)
    scores = oracle_scores(dataset, store)
    click.echo(f"Oracle {backend} on {split}: mIoU {scores['mIoU']:.2f}  "
               f"oIoU {scores['oIoU']:.2f}  (n={scores['n']})")
    _report(store)
