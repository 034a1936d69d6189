"""Where objects go: boxes for a list of classes, with scale, aspect and overlap rules.

Sizes: an object's size is sqrt(w * h) as a fraction of the image's shorter side, drawn
log-uniformly from `scale` (small objects are as common as large ones). Aspect is w / h, drawn
log-uniformly from `aspect`. Boxes lie fully inside the image; a box whose IoU with any earlier
box exceeds `max_iou` is redrawn, up to `placement_tries` times, then the object is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthvision.boxes import iou_xyxy
from synthvision.config import LayoutSpec


@dataclass(frozen=True)
class Placement:
    """One placed object: `slot` is its position in the plan's class list (paint order)."""

    slot: int
    class_id: int
    x: int
    y: int
    w: int
    h: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.w, self.y + self.h


def _log_uniform(gen: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(gen.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def place_objects(
    class_ids: Sequence[int],
    size_hw: tuple[int, int],
    layout: LayoutSpec,
    gen: np.random.Generator,
) -> list[Placement]:
    """Boxes for `class_ids` in paint order; objects that do not fit are left out."""
    img_h, img_w = size_hw
    short = min(img_h, img_w)
    placed: list[Placement] = []
    boxes = np.zeros((0, 4))
    for slot, class_id in enumerate(class_ids):
        for _ in range(layout.placement_tries):
            size = _log_uniform(gen, *layout.scale) * short
            aspect = _log_uniform(gen, *layout.aspect)
            w = round(min(img_w, size * np.sqrt(aspect)))
            h = round(min(img_h, size / np.sqrt(aspect)))
            if w < 2 or h < 2:
                continue
            x = int(gen.integers(0, img_w - w + 1))
            y = int(gen.integers(0, img_h - h + 1))
            box = np.array([[x, y, x + w, y + h]], dtype=np.float64)
            if len(boxes) and iou_xyxy(box, boxes).max() > layout.max_iou:
                continue
            placed.append(Placement(slot, int(class_id), x, y, w, h))
            boxes = np.concatenate([boxes, box])
            break
    return placed
