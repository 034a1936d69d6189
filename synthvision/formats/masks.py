"""Instance masks <-> COCO RLE and polygons.

Coordinates are pixel edges, as everywhere in synthvision: pixel (row r, column c) covers
[c, c+1] x [r, r+1]. pycocotools rasterises polygons in the same convention, so the polygons
from `mask_to_polygons` rasterise back to the mask exactly (holes filled: COCO `iscrowd=0`
polygons cannot carry holes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

Rle = dict[str, Any]  # {"size": [H, W], "counts": str}
Polygon = list[float]  # flat [x1, y1, x2, y2, ...] in pixel-edge coordinates


def encode_rle(mask: npt.ArrayLike) -> Rle:
    """bool mask (H, W) -> COCO compressed RLE `{"size": [H, W], "counts": str}`."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {m.shape}")
    # pycocotools counts runs in column-major order and wants a Fortran-ordered uint8 array.
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def encode_rles(masks: npt.ArrayLike) -> list[Rle]:
    """bool masks (N, H, W) -> N compressed RLEs (one pycocotools call for all)."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}")
    if m.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode()}
        for r in rles
    ]


def _to_pycoco_rle(rle: Rle) -> dict[str, Any]:
    """Accept compressed (str/bytes counts) or uncompressed (list counts) RLE."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)  # type: ignore[no-any-return]
    if isinstance(counts, str):
        counts = counts.encode()
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: Rle) -> npt.NDArray[np.bool_]:
    """COCO RLE (compressed or uncompressed counts) -> bool mask (H, W)."""
    return mask_utils.decode(_to_pycoco_rle(rle)).astype(bool)


def rle_area(rle: Rle) -> int:
    return int(mask_utils.area(_to_pycoco_rle(rle)))


def rle_to_xywh(rle: Rle) -> list[float]:
    """Tight [x, y, w, h] box of an RLE in pixel-edge coordinates (pycocotools `toBbox`)."""
    return [float(v) for v in mask_utils.toBbox(_to_pycoco_rle(rle))]


def polygons_to_mask(
    polygons: Sequence[Sequence[float]], size_hw: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """Rasterise flat pixel-edge polygons (union of parts) with pycocotools -> bool (H, W)."""
    rle = _union_rle(polygons, size_hw)
    if rle is None:
        return np.zeros(size_hw, dtype=bool)
    return mask_utils.decode(rle).astype(bool)


def polygons_area(polygons: Sequence[Sequence[float]], size_hw: tuple[int, int]) -> int:
    """Pixels (int) the union of flat polygons covers when pycocotools rasterises them.

    The COCO `area` of a polygon annotation: consumers derive masks from the polygons (holes
    filled), and COCOeval buckets objects into small/medium/large by this number.
    """
    rle = _union_rle(polygons, size_hw)
    return 0 if rle is None else int(mask_utils.area(rle))


def polygons_to_xywh(polygons: Sequence[Sequence[float]], size_hw: tuple[int, int]) -> list[float]:
    """Tight [x, y, w, h] box of the pixels the polygons cover (pycocotools), zeros if none."""
    rle = _union_rle(polygons, size_hw)
    return [0.0] * 4 if rle is None else [float(v) for v in mask_utils.toBbox(rle)]


def _union_rle(polygons: Sequence[Sequence[float]], size_hw: tuple[int, int]) -> Any:
    """pycocotools RLE of the union of the polygons' parts (>= 6 numbers each); None if none."""
    h, w = size_hw
    parts = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not parts:
        return None
    return mask_utils.merge(mask_utils.frPyObjects(parts, h, w))


def _simplify_closed(points_xy: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Drop repeated and collinear vertices of a closed integer path (P, 2)."""
    # Consecutive duplicates (including the wrap-around pair).
    keep = np.any(points_xy != np.roll(points_xy, 1, axis=0), axis=1)
    pts = points_xy[keep] if keep.any() else points_xy[:1]
    if len(pts) < 3:
        return pts
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    d1, d2 = pts - prev, nxt - pts
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    dot = (d1 * d2).sum(axis=1)
    # Straight-through vertices add nothing; reversals (dot < 0) are kept: they mark where a
    # contour touches itself, and dropping them would change the traced region.
    return pts[(cross != 0) | (dot < 0)]


def mask_to_polygons(mask: npt.ArrayLike, min_points: int = 3) -> list[Polygon]:
    """Outer outlines of every part of a bool mask (H, W), as flat pixel-edge polygons.

    Each polygon traces the pixel edges of one 8-connected part (holes are filled), so its
    extent equals the part's tight pixel-edge box and pycocotools rasterises it back to the
    part exactly. Polygons with fewer than `min_points` vertices (after dropping collinear
    ones) are omitted; every returned polygon has >= 2 * max(min_points, 3) numbers.

    How: cv2.findContours traces pixel *centres*. On the mask upsampled 2x, each original
    pixel is a 2x2 block whose sub-pixel (2r+a, 2c+b) sits at the pixel's corner (r+a, c+b); the
    outer contour only visits outward-facing sub-pixels, so mapping each contour point s to
    the corner ceil(s / 2) gives the exact pixel-edge outline.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(m.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = m[y0:y1, x0:x1].astype(np.uint8)
    up = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    # A 1-px border keeps contours off the array edge (findContours treats it as background).
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    min_vertices = max(int(min_points), 3)
    polygons: list[Polygon] = []
    for contour in contours:
        sub_xy = contour.reshape(-1, 2).astype(np.int64) - 1  # undo the padding
        corner_xy = (sub_xy + 1) // 2  # ceil(s / 2): sub-pixel -> pixel corner
        pts = _simplify_closed(corner_xy)
        if len(pts) < min_vertices:
            continue
        pts = pts + np.array([x0, y0], dtype=np.int64)
        polygons.append([float(v) for v in pts.reshape(-1)])
    return polygons


def polygon_area(polygon: Sequence[float]) -> float:
    """Absolute shoelace area of a flat polygon in px^2."""
    p = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def merge_polygons(polygons: Sequence[Sequence[float]]) -> Polygon | None:
    """All parts of an object as one flat polygon (YOLO-seg rows hold one per object); None if none.

    Parts are joined by zero-width bridges: starting from the largest part, the part nearest to
    the outline so far is spliced in at the closest pair of vertices (out along the bridge,
    around the part, back the same way). The result covers the union of the parts, and its
    extent is the union's extent, so Ultralytics derives the same box as COCO's. Ultralytics'
    own COCO converter joins parts the same way (`merge_multi_segment`).
    """
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6]
    if not parts:
        return None
    # Largest first (ties keep the given order), so the result does not depend on part order
    # beyond ties.
    parts.sort(key=lambda pts: -polygon_area(pts.reshape(-1).tolist()))
    path, rest = parts[0], parts[1:]
    while rest:
        best: tuple[float, int, int, int] | None = None
        for k, part in enumerate(rest):
            d2 = ((path[:, None, :] - part[None, :, :]) ** 2).sum(axis=-1)  # (len(path), len(part))
            pi, pj = np.unravel_index(int(np.argmin(d2)), d2.shape)
            if best is None or d2[pi, pj] < best[0]:
                best = (float(d2[pi, pj]), k, int(pi), int(pj))
        assert best is not None
        _, k, i, j = best
        loop = np.roll(rest.pop(k), -j, axis=0)  # the part, starting at its bridge vertex
        path = np.concatenate([path[: i + 1], loop, loop[:1], path[i : i + 1], path[i + 1 :]])
    return [float(v) for v in path.reshape(-1)]


def polygon_xyxy(polygons: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """Extent (4,) [x1, y1, x2, y2] of all vertices of flat polygons; zeros if none."""
    pts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons if len(p) >= 2]
    if not pts:
        return np.zeros(4, dtype=np.float64)
    allp = np.concatenate(pts)
    return np.array([*allp.min(axis=0), *allp.max(axis=0)], dtype=np.float64)
