"""The demo figure: per expression, the image, the ground truth and every model's maps.

A multi-stage model (PCNet) gets one panel per stage, each with its peak (PCNet Fig. 9); a
single-map model (TRIS) one panel. Panels reuse refbench.report.figures' drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from refbench.errors import DataError
from refbench.report.figures import MapItem, draw_inputs, draw_map, new_figure, save_figure


def draw_demo_figure(columns: Sequence[tuple[str, Sequence[MapItem]]], out: str | Path) -> int:
    """Draw `columns` = [(model label, items in one key order)] to `out`; returns panel count."""
    if not columns or not columns[0][1]:
        raise DataError("no expressions to draw")
    widths = []
    for _, items in columns:
        stages = max((0 if i.stage_maps is None else i.stage_maps.shape[0]) for i in items)
        widths.append(stages if stages > 1 else 1)
    first = columns[0][1]
    figure, axes = new_figure(len(first), 2 + sum(widths))
    for index, row in enumerate(axes):
        draw_inputs(row, first[index])
        col = 2
        for (label, items), width in zip(columns, widths):
            item = items[index]
            verdict = "hit" if item.hit else "miss"
            if width == 1:
                draw_map(row[col], item, item.response_map, f"{label} {verdict}")
            else:
                for stage in range(width):
                    last = stage == width - 1
                    title = f"{label} stage {stage + 1}" + (f" {verdict}" if last else "")
                    draw_map(row[col + stage], item, item.stage_maps[stage], title)
            col += width
    return save_figure(figure, out)
