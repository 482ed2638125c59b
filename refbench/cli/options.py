"""Click options that several commands share, defined once."""

from __future__ import annotations

import click

from refbench.data.roots import DATA_ROOT_ENV

data_root_option = click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    default=None,
    help=(
        f"Folder holding refcoco/, refcoco+/, refcocog/ and the COCO images (default "
        f"${DATA_ROOT_ENV}); for synth-* splits a folder from `refbench data synth` "
        "(default: generated into the cache)."
    ),
)
