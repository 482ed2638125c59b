"""SynthRef scenes: sampling objects (shape, colour, size, centre) and drawing them with NumPy.

Coordinates are continuous pixels: pixel (row y, column x) covers [x, x+1) x [y, y+1), and a
shape covers a pixel when the pixel's centre (x + 0.5, y + 0.5) lies inside it. Drawing has no
anti-aliasing, so an object's mask is exactly the set of pixels painted in its colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refbench.synth.variants import BASE_COLOURS, SynthParams


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene; `cx`, `cy` and `r` are in pixels, `rgb` the exact colour drawn."""

    shape: str
    colour: str
    size: str  # "small" | "large"
    cx: float
    cy: float
    r: float
    rgb: tuple[int, int, int]


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """[H, W] bool: the pixels whose centres lie inside `shape` of half-extent `r` at (cx, cy)."""
    dx = (np.arange(width, dtype=np.float64) + 0.5 - cx)[None, :]
    dy = (np.arange(height, dtype=np.float64) + 0.5 - cy)[:, None]
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex at the top, base 0.8 r below the centre
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
    if shape == "cross":
        arm = r / 3.0
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[S, S, 3] uint8: a grey, tinted, smoothly textured background within [70, 200]."""
    base = rng.uniform(100.0, 165.0) + rng.uniform(-12.0, 12.0, size=3)
    grid = rng.normal(0.0, 9.0, size=(7, 7, 3))
    # Bilinear upsampling of the 7x7 grid with elementwise arithmetic only (no BLAS), so the
    # result is bit-identical on every machine.
    t = np.linspace(0.0, 6.0, size)
    i0 = np.minimum(np.floor(t).astype(np.int64), 5)
    f = t - i0
    fy, fx = f[:, None, None], f[None, :, None]
    rows = grid[i0] * (1.0 - fy) + grid[i0 + 1] * fy  # [S, 7, 3]
    smooth = rows[:, i0] * (1.0 - fx) + rows[:, i0 + 1] * fx  # [S, S, 3]
    pixel = rng.integers(-1, 2, size=(size, size, 3))  # a faint grain
    image = smooth + pixel + base
    return np.clip(np.rint(image), 70, 200).astype(np.uint8)


def _sample_attributes(
    rng: np.random.Generator, params: SynthParams
) -> list[tuple[str, str, str]] | None:
    """(shape, colour, size) per object, every object sharing shape or colour with another."""
    count = int(rng.integers(params.min_objects, params.max_objects + 1))
    shapes = list(rng.choice(params.shapes, size=int(rng.integers(2, 4)), replace=False))
    colours = list(rng.choice(params.colours, size=int(rng.integers(2, 4)), replace=False))
    sizes = list(params.radius)
    objects: list[tuple[str, str, str]] = []
    if rng.random() < params.lookalike_rate:
        twin = (str(rng.choice(shapes)), str(rng.choice(colours)), str(rng.choice(sizes)))
        objects += [twin, twin]
    while len(objects) < count:
        objects.append((str(rng.choice(shapes)), str(rng.choice(colours)), str(rng.choice(sizes))))
    for i, (shape, colour, _) in enumerate(objects):
        others = objects[:i] + objects[i + 1 :]
        if not any(s == shape or c == colour for s, c, _ in others):
            return None
    # At most one group of same-colour-and-shape look-alikes, so that all of it can be referred.
    groups: dict[tuple[str, str], int] = {}
    for shape, colour, _ in objects:
        groups[(shape, colour)] = groups.get((shape, colour), 0) + 1
    if sum(1 for n in groups.values() if n >= 2) > 1 or max(groups.values()) > 3:
        return None
    order = rng.permutation(len(objects))
    return [objects[i] for i in order]


def _place(
    rng: np.random.Generator, radii: list[float], size: int, occlusion: bool
) -> list[tuple[float, float]] | None:
    """Centres for objects of half-extents `radii`; boxes 2 px apart unless occlusion is on."""
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(60):
            cx = round(float(rng.uniform(r + 1.0, size - r - 1.0)), 2)
            cy = round(float(rng.uniform(r + 1.0, size - r - 1.0)), 2)
            ok = True
            for (ox, oy), orad in zip(centres, radii):
                if occlusion:
                    if np.hypot(cx - ox, cy - oy) < 0.75 * (r + orad):
                        ok = False
                        break
                elif abs(cx - ox) < r + orad + 2.0 and abs(cy - oy) < r + orad + 2.0:
                    ok = False
                    break
            if ok:
                centres.append((cx, cy))
                break
        else:
            return None
    return centres


def sample_scene(rng: np.random.Generator, params: SynthParams, size: int) -> list[SceneObject]:
    """A scene's objects in drawing order (later objects are drawn on top)."""
    while True:
        attributes = _sample_attributes(rng, params)
        if attributes is None:
            continue
        radii = [round(params.radius[s] * size, 2) for _, _, s in attributes]
        centres = _place(rng, radii, size, params.occlusion)
        if centres is None:
            continue
        objects = []
        for (shape, colour, size_name), r, (cx, cy) in zip(attributes, radii, centres):
            jitter = rng.integers(-params.colour_jitter, params.colour_jitter + 1, size=3)
            rgb = tuple(int(v) for v in np.asarray(BASE_COLOURS[colour]) + jitter)
            objects.append(SceneObject(shape, colour, size_name, cx, cy, r, rgb))
        return objects


def visible_masks(objects: list[SceneObject], size: int) -> tuple[list[np.ndarray], list[int]]:
    """Each object's visible mask [S, S] bool (later objects cover earlier ones) and full area."""
    full = [shape_mask(o.shape, o.cx, o.cy, o.r, size, size) for o in objects]
    visible: list[np.ndarray] = []
    covered = np.zeros((size, size), dtype=bool)
    for mask in reversed(full):
        visible.append(mask & ~covered)
        covered |= mask
    visible.reverse()
    return visible, [int(m.sum()) for m in full]


def render(
    rng: np.random.Generator, objects: list[SceneObject], masks: list[np.ndarray], size: int
) -> np.ndarray:
    """The image [S, S, 3] uint8: background, then each object painted over its visible mask."""
    image = _background(rng, size)
    for obj, mask in zip(objects, masks):
        image[mask] = obj.rgb
    return image
