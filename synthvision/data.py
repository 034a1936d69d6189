"""PyTorch datasets over a built synthvision dataset, in torchvision's detection format.

    from synthvision.data import SynthDetection
    ds = SynthDetection("outputs/quickstart", split="train")
    image, target = ds[0]  # image: float32 (3, H, W) in [0, 1]
                           # target: boxes float32 (N, 4) xyxy px, labels int64 (N,) 0-based,
                           #         masks bool (N, H, W), image_id, area, iscrowd

Reads the COCO export (annotations once, images lazily), so it works in DataLoader workers.
Masks come from each annotation's segmentation; a build exported with `coco_masks: none` has
none, and its masks are then the filled boxes (pass `with_masks=False` to leave them out).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from synthvision.errors import SpecError
from synthvision.formats.coco import annotation_record
from synthvision.formats.records import instances_from_records
from synthvision.structures import Instances


class SynthDetection:
    """A map-style dataset (torch.utils.data.Dataset protocol) of one split."""

    def __init__(self, root: str | Path, split: str = "train", with_masks: bool = True) -> None:
        root = Path(root)
        ann_path = root / "coco" / "annotations" / f"instances_{split}.json"
        if not ann_path.is_file():
            raise SpecError(
                f"{ann_path} not found: give a directory built by `synthvision build` with the "
                "coco export and an existing split"
            )
        data = json.loads(ann_path.read_text())
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.classes = [str(c["name"]) for c in categories]
        self._class_of = {int(c["id"]): i for i, c in enumerate(categories)}
        self.images_dir = root / "coco" / "images" / split
        self.with_masks = with_masks
        self.images: list[dict[str, Any]] = data["images"]
        self._anns: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            self._anns.setdefault(int(ann["image_id"]), []).append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        info = self.images[i]
        size_hw = (int(info["height"]), int(info["width"]))
        with Image.open(self.images_dir / info["file_name"]) as img:
            image = np.asarray(img.convert("RGB"))
        records = [
            annotation_record(a, self._class_of) for a in self._anns.get(int(info["id"]), [])
        ]
        inst = instances_from_records(records, size_hw, with_masks=self.with_masks)
        area = [float(r["area"]) for r in records]
        return image_tensor(image), detection_target(inst, area, int(info["id"]), self.with_masks)


def image_tensor(image: npt.NDArray[np.uint8]) -> Any:
    """uint8 (H, W, 3) RGB -> float32 tensor (3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0)


def detection_target(
    inst: Instances, area: list[float], image_id: int, with_masks: bool = True
) -> dict[str, Any]:
    """torchvision's detection target of one image: boxes float32 (N, 4) xyxy px, labels int64
    (N,) 0-based, masks bool (N, H, W) when asked for and present, image_id, iscrowd, and `area`
    (N,): the annotations' own areas (mask areas), as torchvision's CocoDetection gives them,
    also when masks are left out (COCOeval's size buckets read it)."""
    import torch

    target: dict[str, Any] = {
        "boxes": torch.from_numpy(inst.xyxy.copy()),
        "labels": torch.from_numpy(inst.class_id.copy()),
        "image_id": image_id,
        "area": torch.tensor(area, dtype=torch.float32).reshape(len(inst)),
        "iscrowd": torch.zeros(len(inst), dtype=torch.int64),
    }
    if with_masks and inst.masks is not None:
        target["masks"] = torch.from_numpy(inst.masks.copy())
    return target


def collate_detection(
    batch: list[tuple[Any, dict[str, Any]]],
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Keep images and targets as lists (detection images and targets differ in size)."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
