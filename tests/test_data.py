import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthvision.build import build
from synthvision.data import SynthDetection, collate_detection
from synthvision.errors import SpecError

from .helpers import small_spec


def test_torch_dataset_matches_the_export(tmp_path: Path) -> None:
    build(small_spec(num_images=5), tmp_path / "ds", show_progress=False)
    ds = SynthDetection(tmp_path / "ds", "train")
    assert len(ds) == 3 and ds.classes[0] == "disc"
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 96, 128)
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, 96, 128)
    for box, mask in zip(target["boxes"].numpy(), target["masks"].numpy(), strict=True):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    images, targets = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_detection)))
    assert len(images) == len(targets) == 2
    with pytest.raises(SpecError, match=r"instances_nope\.json"):
        SynthDetection(tmp_path / "ds", "nope")


@pytest.mark.parametrize("coco_masks", ["rle", "polygon"])
@pytest.mark.parametrize("with_masks", [False, True])
def test_target_area_is_the_annotation_area(
    tmp_path: Path, coco_masks: str, with_masks: bool
) -> None:
    out = tmp_path / "ds"
    spec = small_spec(num_images=6, export={"coco_masks": coco_masks, "preview_images": 0})
    build(spec, out, show_progress=False)
    checked, differs_from_box = 0, False
    for split in ("train", "val"):
        data = json.loads((out / "coco" / "annotations" / f"instances_{split}.json").read_text())
        ds = SynthDetection(out, split, with_masks=with_masks)
        for i in range(len(ds)):
            _, target = ds[i]
            anns = [a for a in data["annotations"] if a["image_id"] == target["image_id"]]
            want = torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32)
            assert target["area"].dtype == torch.float32
            assert target["area"].shape == (len(anns),)
            assert torch.equal(target["area"], want)
            assert ("masks" in target) == with_masks
            boxes = target["boxes"]
            box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            differs_from_box |= bool((box_area - want).abs().gt(1).any())
            checked += len(anns)
    assert checked > 0
    assert differs_from_box, "mask areas should differ from box areas for these shapes"
