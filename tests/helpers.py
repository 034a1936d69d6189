"""Small specs and file comparisons shared by the build tests."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Any

from synthvision.config import Spec, parse_spec

SHAPES = ["disc", "square", "triangle", "star", "ring", "hexagon"]


def small_spec(**over: Any) -> Spec:
    data: dict[str, Any] = {
        "name": "tiny",
        "seed": 7,
        "num_images": 9,
        "image_size": [96, 128],
        "splits": {"train": 0.7, "val": 0.3},
        "classes": [{"name": n} for n in SHAPES],
        "objects_per_image": [0, 5],
        "layout": {"scale": [0.15, 0.45]},
        "export": {"preview_images": 4},
    }
    data.update(over)
    return parse_spec(data)


def dataset_digests(out: Path) -> dict[str, str]:
    """sha256 of every annotation and image file of a finished build (not the manifest/logs)."""
    digests = {}
    for sub in ("coco", "yolo"):
        for path in sorted((out / sub).rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def coco_self_eval_ap(ann_path: Path, iou_type: str) -> float:
    """pycocotools COCOeval of a COCO file's ground truth against itself (each GT a detection
    with score 1); a correct file gives AP = 1.0 for "bbox" and "segm"."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        dets = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "score": 1.0,
                **({"segmentation": gt.annToRLE(a)} if iou_type == "segm" else {}),
            }
            for a in gt.dataset["annotations"]
        ]
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def kill_after_lines(proc: Any, path: Path, lines: int, timeout_s: float = 120) -> None:
    """SIGKILL the process `proc` (a Popen) once `path` holds `lines` complete lines: a run
    interrupted at an arbitrary point of its work. Fails if it finished first."""
    import os
    import signal
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"{path.name}: the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
