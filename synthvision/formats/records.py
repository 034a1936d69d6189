"""Instance records: the plain-JSON form of one image's labels, written to the shard JSONL.

The merge turns records into COCO and YOLO files without decoding any image, so a record carries
everything both formats need:

    {"class_id": int (0-based), "xyxy": [x1, y1, x2, y2] (pixel edges), "area": float,
     "rle": {"size": [H, W], "counts": str}   # optional
     "polygons": [[x, y, x, y, ...], ...]     # optional, each >= 6 numbers
     "score": float}                          # optional

All numbers are plain Python `int`/`float`, so `json.dumps` output is stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from synthvision.boxes import masks_to_xyxy
from synthvision.formats.masks import decode_rle, encode_rles, mask_to_polygons, polygons_to_mask
from synthvision.structures import Instances

CocoMaskMode = Literal["rle", "polygon", "none"]
Record = dict[str, Any]

XYXY_DECIMALS = 4  # 1e-4 px: far below annotation noise, keeps JSON short and stable
SCORE_DECIMALS = 6


def _round(v: float, ndigits: int) -> float:
    # `+ 0.0` turns -0.0 into 0.0 so equal boxes serialise to equal bytes.
    return round(float(v), ndigits) + 0.0


def instance_records(
    instances: Instances,
    coco_masks: CocoMaskMode = "rle",
    polygons: bool = False,
    size_hw: tuple[int, int] | None = None,
) -> list[Record]:
    """One record per instance that has a positive box and area, in instance order.

    - With masks: `xyxy` is the mask's tight pixel-edge box (recomputed, so box, RLE and polygons
      always agree), `area` the mask pixel count; `rle` when `coco_masks == "rle"`, `polygons`
      when `polygons` is true or `coco_masks == "polygon"`. Instances whose mask is empty (or
      whose outline yields no polygon when polygons are asked for) are dropped.
    - Without masks: `xyxy` is `instances.xyxy` clipped to the image when `size_hw` is given,
      `area` the box area; instances with zero width or height are dropped.
    - `score` when `instances.scores` is set.

    `size_hw` = (H, W) defaults to the mask size; it is needed only to clip mask-less boxes.
    """
    n = len(instances)
    if n == 0:
        return []
    masks = instances.masks
    if size_hw is None and masks is not None:
        size_hw = (int(masks.shape[1]), int(masks.shape[2]))
    want_polygons = polygons or coco_masks == "polygon"
    if masks is not None:
        xyxy = masks_to_xyxy(masks)
        areas = masks.reshape(n, -1).sum(axis=1).astype(np.float64)
        rles = encode_rles(masks) if coco_masks == "rle" else None
    else:
        xyxy = instances.xyxy.astype(np.float64)
        if size_hw is not None:
            h, w = size_hw
            xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
            xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        xyxy = np.round(xyxy, XYXY_DECIMALS)
        areas = (xyxy[:, 2] - xyxy[:, 0]).clip(min=0) * (xyxy[:, 3] - xyxy[:, 1]).clip(min=0)
        rles = None
    records: list[Record] = []
    for i in range(n):
        x1, y1, x2, y2 = (_round(v, XYXY_DECIMALS) for v in xyxy[i])
        if not (x2 > x1 and y2 > y1 and areas[i] > 0):
            continue  # COCO needs area > 0, YOLO w, h > 0: a degenerate label helps no one
        rec: Record = {
            "class_id": int(instances.class_id[i]),
            "xyxy": [x1, y1, x2, y2],
            "area": _round(areas[i], XYXY_DECIMALS),
        }
        if rles is not None:
            rec["rle"] = rles[i]
        if masks is not None and want_polygons:
            polys = mask_to_polygons(masks[i])
            if not polys:
                continue
            rec["polygons"] = polys
        if instances.scores is not None:
            rec["score"] = _round(instances.scores[i], SCORE_DECIMALS)
        records.append(rec)
    return records


def _box_mask(xyxy: Sequence[float], size_hw: tuple[int, int]) -> np.ndarray:
    """Filled box as a mask: pixels whose centres lie inside the box."""
    h, w = size_hw
    m = np.zeros((h, w), dtype=bool)
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    c0, c1 = max(0, int(np.ceil(x1 - 0.5))), min(w, int(np.ceil(x2 - 0.5)))
    r0, r1 = max(0, int(np.ceil(y1 - 0.5))), min(h, int(np.ceil(y2 - 0.5)))
    m[r0:r1, c0:c1] = True
    return m


def record_mask(record: Record, size_hw: tuple[int, int]) -> np.ndarray:
    """bool (H, W) mask of a record: its RLE, else its polygons, else its filled box."""
    if record.get("rle"):
        m = decode_rle(record["rle"])
        if m.shape != tuple(size_hw):
            raise ValueError(f"RLE size {list(m.shape)} does not match the image size {size_hw}")
        return m
    if record.get("polygons"):
        return polygons_to_mask(record["polygons"], size_hw)
    return _box_mask(record["xyxy"], size_hw)


def instances_from_records(
    records: Sequence[Record], size_hw: tuple[int, int], with_masks: bool = False
) -> Instances:
    """Records -> `Instances` (the inverse of `instance_records`).

    `with_masks`: masks (N, H, W) from each record's RLE, else its polygons, else its filled box
    (so a mask-less record still yields an aligned mask). `scores` only when every record has
    one.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    if not records:
        return Instances.empty((h, w) if with_masks else None)
    xyxy = np.asarray([r["xyxy"] for r in records], dtype=np.float32).reshape(-1, 4)
    class_id = np.asarray([int(r["class_id"]) for r in records], dtype=np.int64)
    masks = np.stack([record_mask(r, (h, w)) for r in records]) if with_masks else None
    scores = (
        np.asarray([float(r["score"]) for r in records], dtype=np.float32)
        if all("score" in r for r in records)
        else None
    )
    return Instances(xyxy=xyxy, class_id=class_id, masks=masks, scores=scores)
