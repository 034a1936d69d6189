"""Pure numpy box maths.

Conventions: boxes are float arrays of shape (N, 4). `xyxy` is absolute pixels with pixel-edge
coordinates (a mask covering columns 3..5 has x1=3, x2=6), `xywh` is COCO's top-left + size,
`cxcywh_norm` is YOLO's centre + size divided by the image width/height.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def _as_boxes(boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def xyxy_to_xywh(xyxy: npt.ArrayLike) -> npt.NDArray[np.float64]:
    b = _as_boxes(xyxy)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def xywh_to_xyxy(xywh: npt.ArrayLike) -> npt.NDArray[np.float64]:
    b = _as_boxes(xywh)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def xyxy_to_cxcywh_norm(xyxy: npt.ArrayLike, size_hw: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Absolute xyxy -> YOLO (cx, cy, w, h) in [0, 1] for an image of `size_hw` = (H, W)."""
    b = _as_boxes(xyxy)
    h, w = size_hw
    cx = (b[:, 0] + b[:, 2]) / 2.0 / w
    cy = (b[:, 1] + b[:, 3]) / 2.0 / h
    return np.stack([cx, cy, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], axis=1)


def cxcywh_norm_to_xyxy(cxcywh: npt.ArrayLike, size_hw: tuple[int, int]) -> npt.NDArray[np.float64]:
    b = _as_boxes(cxcywh)
    h, w = size_hw
    cx, cy, bw, bh = b[:, 0] * w, b[:, 1] * h, b[:, 2] * w, b[:, 3] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def clip_xyxy(xyxy: npt.ArrayLike, size_hw: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Clip boxes to the image rectangle [0, W] x [0, H]."""
    b = _as_boxes(xyxy).copy()
    h, w = size_hw
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b


def area_xyxy(xyxy: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Box areas in px^2; inverted boxes count as 0."""
    b = _as_boxes(xyxy)
    return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)


def iou_xyxy(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Pairwise IoU, shape (len(a), len(b))."""
    ba, bb = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(ba[:, None, :2], bb[None, :, :2])
    rb = np.minimum(ba[:, None, 2:], bb[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_xyxy(ba)[:, None] + area_xyxy(bb)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_to_xyxy(mask: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Tight pixel-edge box of a bool mask (H, W) -> (4,); all zeros for an empty mask."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {m.shape}")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return np.zeros(4, dtype=np.float64)
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def masks_to_xyxy(masks: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Tight boxes of bool masks (N, H, W) -> (N, 4)."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}")
    if m.shape[0] == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return np.stack([mask_to_xyxy(x) for x in m])
