"""Preview drawing: overlays, grids and atomic PNG writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synthvision.structures import Instances
from synthvision.viz import GRID_GAP_PX, class_colour, draw_instances, preview_grid, save_preview


def _image(h: int = 96, w: int = 128) -> np.ndarray:
    return np.full((h, w, 3), 60, dtype=np.uint8)


def test_grid_size_without_captions() -> None:
    tiles = [
        _image(),
        _image(50, 20),
        np.zeros((30, 30, 4), np.uint8),
        np.zeros((10, 40), np.uint8),
    ]
    grid = preview_grid(tiles, cols=3, tile_px=64)
    assert grid.mode == "RGB"
    assert grid.size == (3 * 64 + 4 * GRID_GAP_PX, 2 * 64 + 3 * GRID_GAP_PX)


def test_grid_default_cols_and_captions() -> None:
    tiles = [_image() for _ in range(5)]
    plain = preview_grid(tiles, tile_px=40)
    assert plain.size == (3 * 40 + 4 * GRID_GAP_PX, 2 * 40 + 3 * GRID_GAP_PX)  # ceil(sqrt(5)) = 3
    captioned = preview_grid(
        tiles, tile_px=40, captions=[f"tile {i} long caption" for i in range(5)]
    )
    assert captioned.width == plain.width
    assert captioned.height > plain.height


def test_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        preview_grid([])
    with pytest.raises(ValueError):
        preview_grid([_image()], captions=["a", "b"])


def test_draw_returns_new_image_of_same_shape() -> None:
    img = _image()
    inst = Instances(xyxy=[[10, 20, 60, 70]], class_id=[1])
    out = draw_instances(img, inst, ["a", "b"])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 60).all(), "input untouched"
    assert (out[45, 10] != 60).any(), "box outline drawn on the left edge"
    assert (out[45, 35] == 60).all(), "no mask: box interior unchanged"


def test_masks_drawn_change_pixels() -> None:
    img = _image()
    masks = np.zeros((2, 96, 128), dtype=bool)
    masks[0, 30:50, 30:50] = True
    masks[1, 60:80, 90:110] = True
    inst = Instances(xyxy=[[30, 30, 50, 50], [90, 60, 110, 80]], class_id=[0, 3], masks=masks)
    out = draw_instances(img, inst, ["x"])  # class 3 has no name: labelled by id
    assert (out[40, 40] != 60).any()
    assert (out[70, 100] != 60).any()
    assert (out[5, 120] == 60).all()
    assert not np.array_equal(out[40, 40], out[70, 100]), "per-class colours differ"


def test_empty_instances_and_stable_colours() -> None:
    img = _image()
    out = draw_instances(img, Instances.empty((96, 128)), [])
    assert np.array_equal(out, img)
    assert class_colour(2) == class_colour(2)
    assert len({class_colour(i) for i in range(10)}) == 10


def test_save_preview_writes_png_atomically(tmp_path) -> None:
    path = tmp_path / "sub" / "preview.png"
    out = save_preview(path, [_image(), _image()], cols=2, tile_px=32, captions=["a", "b"])
    assert out == path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width == 2 * 32 + 3 * GRID_GAP_PX
    assert sorted(p.name for p in path.parent.iterdir()) == ["preview.png"]
