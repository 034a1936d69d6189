"""Alpha-composite RGBA object crops onto a background, with exact visible-part labels.

Objects are painted in order, so later ones occlude earlier ones. An object's full mask is where
its (softened) alpha is at least 50%; its visible mask is the full mask minus the full masks of
everything painted after it; its box is the tight box of the visible mask. Instances whose visible
fraction is below `min_visibility`, or whose visible area is below `min_area_px`, are dropped from
the labels (their pixels stay; keep `max_iou` low so that is rare).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from synthvision.boxes import masks_to_xyxy
from synthvision.structures import Instances


@dataclass(frozen=True)
class PlacedCrop:
    """An RGBA crop (h, w, 4) uint8 to fit into the box (x, y, w, h) px, keeping its aspect."""

    rgba: npt.NDArray[np.uint8]
    class_id: int
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class ComposeResult:
    image: npt.NDArray[np.uint8]
    instances: Instances
    visibility: npt.NDArray[np.float64]  # (N_kept,) visible / full area of each kept instance
    dropped: int  # placed objects dropped by the visibility / area rules


def fit_crop(rgba: npt.NDArray[np.uint8], box_w: int, box_h: int) -> tuple[npt.NDArray[np.uint8], int, int]:
    """Resize `rgba` to fit a box_w x box_h box keeping its aspect; returns (crop, dx, dy) offsets.

    Resizing uses premultiplied alpha so transparent pixels do not bleed dark fringes.
    """
    h, w = rgba.shape[:2]
    scale = min(box_w / w, box_h / h)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (new_w, new_h) != (w, h):
        img = Image.fromarray(rgba, "RGBA").convert("RGBa")
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR).convert("RGBA")
        rgba = np.asarray(img)
    return rgba, (box_w - new_w) // 2, (box_h - new_h) // 2


def soften_alpha(alpha: npt.NDArray[np.uint8], sigma_px: float) -> npt.NDArray[np.uint8]:
    """Gaussian-feathered alpha (h, w) uint8: soft edges instead of a cut-out look."""
    if sigma_px <= 0:
        return alpha
    pad = int(np.ceil(2 * sigma_px))
    img = Image.fromarray(np.pad(alpha, pad), "L").filter(ImageFilter.GaussianBlur(sigma_px))
    return np.asarray(img)[pad:-pad, pad:-pad]


def compose(
    background: npt.NDArray[np.uint8],
    crops: Sequence[PlacedCrop],
    *,
    min_visibility: float,
    min_area_px: int,
    edge_softness_px: float,
) -> ComposeResult:
    """Paint `crops` in order on `background` (H, W, 3) uint8 and label their visible parts."""
    img_h, img_w = background.shape[:2]
    canvas = background.astype(np.float32)
    full_masks: list[npt.NDArray[np.bool_]] = []
    class_ids: list[int] = []
    for crop in crops:
        rgba, dx, dy = fit_crop(crop.rgba, crop.w, crop.h)
        ch, cw = rgba.shape[:2]
        x0, y0 = crop.x + dx, crop.y + dy
        # Clip to the image (layouts keep boxes inside, but sources may return any size).
        sx0, sy0 = max(0, -x0), max(0, -y0)
        x1, y1 = min(img_w, x0 + cw), min(img_h, y0 + ch)
        x0c, y0c = max(0, x0), max(0, y0)
        if x1 <= x0c or y1 <= y0c:
            continue
        rgba = rgba[sy0 : sy0 + (y1 - y0c), sx0 : sx0 + (x1 - x0c)]
        alpha = soften_alpha(rgba[..., 3], edge_softness_px)
        a = (alpha.astype(np.float32) / 255.0)[..., None]
        region = canvas[y0c:y1, x0c:x1]
        region *= 1.0 - a
        region += rgba[..., :3].astype(np.float32) * a
        full = np.zeros((img_h, img_w), dtype=bool)
        full[y0c:y1, x0c:x1] = alpha >= 128
        full_masks.append(full)
        class_ids.append(crop.class_id)

    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    n = len(full_masks)
    if n == 0:
        return ComposeResult(image, Instances.empty((img_h, img_w)), np.zeros(0), len(crops))
    full_stack = np.stack(full_masks)
    visible = np.empty_like(full_stack)
    occluder = np.zeros((img_h, img_w), dtype=bool)
    for k in range(n - 1, -1, -1):  # later objects occlude earlier ones
        np.logical_and(full_stack[k], ~occluder, out=visible[k])
        occluder |= full_stack[k]
    full_area = full_stack.reshape(n, -1).sum(axis=1)
    vis_area = visible.reshape(n, -1).sum(axis=1)
    fraction = np.where(full_area > 0, vis_area / np.maximum(full_area, 1), 0.0)
    keep = (full_area > 0) & (fraction >= min_visibility) & (vis_area >= min_area_px)
    masks = visible[keep]
    instances = Instances(
        xyxy=masks_to_xyxy(masks).astype(np.float32),
        class_id=np.asarray(class_ids, dtype=np.int64)[keep],
        masks=masks,
        scores=np.ones(int(keep.sum()), dtype=np.float32),
    )
    return ComposeResult(image, instances, fraction[keep], len(crops) - int(keep.sum()))
