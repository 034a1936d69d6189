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

from synthvision.boxes import mask_to_xyxy
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


def fit_crop(
    rgba: npt.NDArray[np.uint8], box_w: int, box_h: int
) -> tuple[npt.NDArray[np.uint8], int, int]:
    """Resize `rgba` to fit a box_w x box_h box keeping its aspect; returns (crop, dx, dy) offsets.

    Resizing uses premultiplied alpha so transparent pixels do not bleed dark fringes.
    """
    h, w = rgba.shape[:2]
    scale = min(box_w / w, box_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
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
    """Paint `crops` in order on `background` (H, W, 3) uint8 and label their visible parts.

    Works on each object's own region only (no full-image float canvas, no full-size mask per
    object until the kept instances are assembled), so cost grows with object area, not image area.
    """
    img_h, img_w = background.shape[:2]
    image = background.copy()
    # Per painted object: its region (y0, y1, x0, x1) and full mask (alpha >= 50%) inside it.
    regions: list[tuple[int, int, int, int]] = []
    local_masks: list[npt.NDArray[np.bool_]] = []
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
        a = (alpha.astype(np.float32) * (1.0 / 255.0))[..., None]
        region = image[y0c:y1, x0c:x1]
        blended = region + (rgba[..., :3].astype(np.float32) - region) * a
        np.add(blended, 0.5, out=blended)
        region[...] = blended.astype(np.uint8)  # in [0, 255]: a convex mix of two uint8 values
        regions.append((y0c, y1, x0c, x1))
        local_masks.append(alpha >= 128)
        class_ids.append(crop.class_id)

    n = len(local_masks)
    # Later objects occlude earlier ones: walk back to front, subtracting what is already covered.
    occluder = np.zeros((img_h, img_w), dtype=bool)
    visible: list[npt.NDArray[np.bool_]] = [np.empty(0, bool)] * n
    full_area = np.zeros(n, dtype=np.int64)
    vis_area = np.zeros(n, dtype=np.int64)
    for k in range(n - 1, -1, -1):
        y0, y1, x0, x1 = regions[k]
        occ = occluder[y0:y1, x0:x1]
        visible[k] = local_masks[k] & ~occ
        occ |= local_masks[k]
        full_area[k] = local_masks[k].sum()
        vis_area[k] = visible[k].sum()
    fraction = np.where(full_area > 0, vis_area / np.maximum(full_area, 1), 0.0)
    keep = (full_area > 0) & (fraction >= min_visibility) & (vis_area >= min_area_px)
    kept = np.flatnonzero(keep)
    masks = np.zeros((len(kept), img_h, img_w), dtype=bool)
    xyxy = np.zeros((len(kept), 4), dtype=np.float32)
    for j, k in enumerate(kept.tolist()):
        y0, y1, x0, x1 = regions[k]
        masks[j, y0:y1, x0:x1] = visible[k]
        bx0, by0, bx1, by1 = mask_to_xyxy(visible[k])
        xyxy[j] = (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1)
    instances = Instances(
        xyxy=xyxy,
        class_id=np.asarray(class_ids, dtype=np.int64)[kept],
        masks=masks,
        scores=np.ones(len(kept), dtype=np.float32),
    )
    return ComposeResult(image, instances, fraction[kept], len(crops) - len(kept))
