"""Preview drawing: overlays, grids and atomic PNG writes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

import synthvision.preview
import synthvision.viz
from synthvision.build import build
from synthvision.preview import preview_dataset
from synthvision.structures import Instances
from synthvision.viz import GRID_GAP_PX, class_colour, draw_instances, preview_grid, save_preview

from .helpers import small_spec


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


def _bitmap_font() -> ImageFont.ImageFont:
    """Pillow's Latin-1-only bitmap font, which `_font` falls back to without FreeType."""
    if hasattr(ImageFont, "load_default_imagefont"):
        return ImageFont.load_default_imagefont()
    font = ImageFont.load_default()
    assert isinstance(font, ImageFont.ImageFont), "this Pillow's default font is FreeType"
    return font


@pytest.fixture
def bitmap_font(monkeypatch: pytest.MonkeyPatch) -> ImageFont.ImageFont:
    font = _bitmap_font()
    assert not isinstance(font, ImageFont.FreeTypeFont)
    monkeypatch.setattr(synthvision.viz, "_font", lambda size_px: font)
    return font


def test_bitmap_font_draws_non_latin1_class_names(bitmap_font: ImageFont.ImageFont) -> None:
    img = _image()
    inst = Instances(xyxy=[[10, 20, 60, 70], [70, 30, 120, 90]], class_id=[0, 1])
    out = draw_instances(img, inst, ["\u2192 left", "\u732b"])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[45, 10] != 60).any(), "box outline drawn"


def test_bitmap_font_trims_long_captions(bitmap_font: ImageFont.ImageFont) -> None:
    tiles = [_image() for _ in range(3)]
    captions = [
        "train/000000001.jpg (3) " + "x" * 200,
        "\u732b\u2192" * 40,  # nothing Latin-1 in it
        "val/\u2026" + "y" * 100 + "\u2026",
    ]
    result: dict[str, Image.Image | BaseException] = {}

    def run() -> None:
        try:
            result["grid"] = preview_grid(tiles, cols=3, tile_px=40, captions=captions)
        except BaseException as exc:  # re-raised below, in the test's thread
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "caption trimming did not terminate"
    if "error" in result:
        raise result["error"]
    grid = result["grid"]
    assert isinstance(grid, Image.Image)
    plain = preview_grid(tiles, cols=3, tile_px=40)
    assert grid.mode == "RGB"
    assert grid.width == plain.width == 3 * 40 + 4 * GRID_GAP_PX
    assert grid.height > plain.height
    # Trimmed captions stay inside their cells: the gaps between cells, beside the captions,
    # are the grid background.
    band = np.asarray(grid)[GRID_GAP_PX + 40 :]
    for col in (1, 2):
        gap_x = col * (40 + GRID_GAP_PX)
        assert (band[:, gap_x : gap_x + GRID_GAP_PX] == 24).all()


def test_preview_of_yolo_only_build_skips_label_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    spec = small_spec(num_images=4, export={"formats": ["yolo"], "preview_images": 0})
    build(spec, out, show_progress=False)
    assert not (out / "coco").exists()
    (out / "yolo" / "labels" / "train.cache").touch()  # as Ultralytics leaves it
    (out / "yolo" / "labels" / "val.cache").touch()
    seen: list[list[str]] = []
    real_save = synthvision.preview.save_preview

    def spy(path, tiles, captions=None, **kw):  # type: ignore[no-untyped-def]
        seen.append(list(captions))
        return real_save(path, tiles, captions=captions, **kw)

    monkeypatch.setattr(synthvision.preview, "save_preview", spy)
    path = preview_dataset(out, tmp_path / "p.png", num=16)
    assert path == tmp_path / "p.png" and path.stat().st_size > 0
    images = sorted(
        f"{d.name}/{f.name}" for d in (out / "yolo" / "images").iterdir() for f in d.iterdir()
    )
    assert len(images) == 4
    assert sorted(c.split(" ")[0] for c in seen[0]) == images
