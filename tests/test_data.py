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
