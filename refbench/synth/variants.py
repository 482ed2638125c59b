"""SynthRef generator versions and variants: every parameter that shapes the data, in one place.

Each variant is its own split family (its own dataset folder and split ids), so numbers from
different variants are never mixed. The version changes whenever generated data would change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from refbench.errors import UnknownNameError

SYNTH_VERSION = "1"

# Each base colour has at least one channel <= 57 after jitter, while the background stays
# within [70, 200]: an object pixel can never equal a background pixel.
BASE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 45),
    "green": (45, 165, 65),
    "blue": (45, 85, 215),
    "yellow": (230, 205, 45),
    "purple": (145, 45, 180),
    "orange": (240, 130, 35),
    "cyan": (40, 190, 205),
}

DIRECTIONS = ("left", "right", "top", "bottom")
DIRECTIONAL_RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class SynthParams:
    """Everything that shapes one SynthRef variant (sizes are fractions of the image side)."""

    variant: str
    dataset: str  # folder under the data root
    split_prefix: str  # split ids are <split_prefix>-{train,val,test}
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    min_objects: int = 3
    max_objects: int = 5
    radius: dict[str, float] = field(default_factory=lambda: {"small": 0.085, "large": 0.145})
    lookalike_rate: float = 0.5  # share of scenes that start from a same-colour-and-shape pair
    margin: float = 0.1  # minimum centre offset for position, superlative and relation words
    colour_jitter: int = 12
    occlusion: bool = False
    relations: tuple[str, ...] = DIRECTIONAL_RELATIONS
    refs_per_image: tuple[int, int] = (2, 3)
    sentences_per_ref: tuple[int, int] = (1, 3)
    default_images: dict[str, int] = field(
        default_factory=lambda: {"train": 10000, "val": 100, "test": 200}
    )

    def as_dict(self) -> dict:
        """Plain JSON-able form, written into the data set and every run that uses it."""
        return asdict(self)


VARIANTS: dict[str, SynthParams] = {
    "default": SynthParams(
        variant="default",
        dataset="synthref",
        split_prefix="synth",
        shapes=("circle", "square", "triangle", "cross"),
        colours=("red", "green", "blue", "yellow", "purple"),
    ),
    # More objects, more shapes and colours, partial occlusion and a "closest to" relation.
    "hard": SynthParams(
        variant="hard",
        dataset="synthref-hard",
        split_prefix="synth-hard",
        shapes=("circle", "square", "triangle", "cross", "diamond", "ring"),
        colours=("red", "green", "blue", "yellow", "purple", "orange", "cyan"),
        min_objects=5,
        max_objects=7,
        radius={"small": 0.075, "large": 0.125},
        occlusion=True,
        relations=DIRECTIONAL_RELATIONS + ("closest to",),
        default_images={"train": 10000, "val": 100, "test": 200},
    ),
}

def get_variant(name: str) -> SynthParams:
    """The variant `name`, or an `UnknownNameError` listing the valid ones."""
    if name not in VARIANTS:
        raise UnknownNameError(
            f"unknown SynthRef variant {name!r}; valid variants: {', '.join(VARIANTS)}"
        )
    return VARIANTS[name]


def variant_of_dataset(dataset: str) -> SynthParams:
    """The variant whose data lives in folder `dataset` (e.g. ``synthref-hard``)."""
    for params in VARIANTS.values():
        if params.dataset == dataset:
            return params
    raise UnknownNameError(
        f"{dataset!r} is not a SynthRef dataset; known: "
        f"{', '.join(p.dataset for p in VARIANTS.values())}"
    )
