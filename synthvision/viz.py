"""Preview drawing: labeled overlays and image grids (numpy + Pillow only).

`draw_instances` paints masks, boxes and class names onto an RGB image; `preview_grid` tiles
images (RGB, grey or RGBA over a checkerboard) into one picture; `save_preview` writes that grid
as a PNG atomically. Colours are stable per class id, so a class looks the same in every preview.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from synthvision.formats.images import write_bytes_atomic
from synthvision.structures import Instances

_GOLDEN = 0.618033988749895
MASK_OPACITY = 0.45
GRID_GAP_PX = 4  # gap between grid cells and around the border
_GRID_BG = (24, 24, 24)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for a class id (golden-ratio hue walk)."""
    hue = (0.05 + class_id * _GOLDEN) % 1.0
    sat = 0.8 if class_id % 2 == 0 else 0.6
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


@lru_cache(maxsize=16)
def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _drawable(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> str:
    """`text` as the font can draw it: Pillow's bitmap fallback font only encodes Latin-1."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("\u2026", "...").encode("latin-1", "replace").decode("latin-1")


def _text_wh(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return math.ceil(x1 - min(x0, 0)), math.ceil(y1 - min(y0, 0))


def draw_instances(
    image: npt.NDArray[np.uint8], instances: Instances, class_names: Sequence[str]
) -> npt.NDArray[np.uint8]:
    """Overlay masks, boxes and class labels on a copy of `image`.

    image: uint8 (H, W, 3) RGB. instances: boxes in absolute xyxy px, masks (N, H, W) optional.
    Returns a new uint8 (H, W, 3); the input is not modified. Class ids without a name are
    labelled by their number.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    out = image.copy()
    colours = [class_colour(int(c)) for c in instances.class_id]

    if instances.masks is not None:
        if instances.masks.shape[1:] != (h, w):
            raise ValueError(f"masks {instances.masks.shape[1:]} do not match image {(h, w)}")
        for mask, colour in zip(instances.masks, colours, strict=True):
            if not mask.any():
                continue
            # Blend only the masked pixels: cost is proportional to the object, not the image.
            px = out[mask].astype(np.float32)
            px += MASK_OPACITY * (np.asarray(colour, np.float32) - px)
            out[mask] = px.astype(np.uint8)

    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    line_px = max(1, round(min(h, w) / 320))
    font = _font(max(10, min(16, round(min(h, w) / 40))))
    for box, cid, colour in zip(instances.xyxy, instances.class_id, colours, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        # xyxy are pixel edges; the rectangle's last pixel is at x2 - 1.
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=line_px)
        cid_int = int(cid)
        label = class_names[cid_int] if 0 <= cid_int < len(class_names) else str(cid_int)
        label = _drawable(font, label)
        tw, th = _text_wh(font, label)
        # Label above the box, or inside its top edge when the box touches the image top.
        ty = y1 - th - 3 if y1 - th - 3 >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, w - tw - 4))
        draw.rectangle([tx, ty, tx + tw + 3, ty + th + 2], fill=colour)
        luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text(
            (tx + 2, ty + 1), label, fill=(0, 0, 0) if luma > 140 else (255, 255, 255), font=font
        )
    return np.asarray(pil, dtype=np.uint8).copy()


def _checkerboard(w: int, h: int, cell_px: int = 8) -> Image.Image:
    yy, xx = np.ogrid[:h, :w]
    board = np.where(((yy // cell_px) + (xx // cell_px)) % 2 == 0, 200, 150).astype(np.uint8)
    return Image.fromarray(board, "L").convert("RGB")


def _tile_image(tile: npt.NDArray[np.uint8], tile_px: int) -> Image.Image:
    """One tile as RGB, resized to fit a tile_px square keeping its aspect."""
    arr = np.asarray(tile)
    if arr.dtype != np.uint8:
        raise ValueError(f"tiles must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        img = Image.fromarray(arr, "L").convert("RGB")
    elif arr.ndim == 3 and arr.shape[2] == 3:
        img = Image.fromarray(arr, "RGB")
    elif arr.ndim == 3 and arr.shape[2] == 4:
        img = Image.fromarray(arr, "RGBA")
    else:
        raise ValueError(f"tiles must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    scale = tile_px / max(img.width, img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    if img.mode == "RGBA":  # show transparency over a checkerboard
        board = _checkerboard(*img.size)
        board.paste(img, (0, 0), img)
        img = board
    return img


def preview_grid(
    tiles: Sequence[npt.NDArray[np.uint8]],
    cols: int | None = None,
    tile_px: int = 256,
    captions: Sequence[str] | None = None,
) -> Image.Image:
    """Arrange images into a grid, each fitted (aspect kept) and centred in a tile_px cell.

    cols defaults to ceil(sqrt(n)). With captions (one per tile), each cell gets a text line
    below it. Size: width = cols * tile_px + (cols + 1) * GRID_GAP_PX, height =
    rows * (tile_px + caption_px) + (rows + 1) * GRID_GAP_PX, caption_px = 0 without captions.
    """
    n = len(tiles)
    if n == 0:
        raise ValueError("preview_grid needs at least one tile")
    if tile_px < 8:
        raise ValueError(f"tile_px must be at least 8, got {tile_px}")
    if captions is not None and len(captions) != n:
        raise ValueError(f"got {len(captions)} captions for {n} tiles")
    cols = max(1, min(cols if cols is not None else math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / cols)
    font = _font(max(10, min(14, tile_px // 16)))
    caption_px = (_text_wh(font, "Ag")[1] + 6) if captions is not None else 0
    gap = GRID_GAP_PX
    grid = Image.new(
        "RGB",
        (cols * tile_px + (cols + 1) * gap, rows * (tile_px + caption_px) + (rows + 1) * gap),
        _GRID_BG,
    )
    draw = ImageDraw.Draw(grid)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x0 = gap + c * (tile_px + gap)
        y0 = gap + r * (tile_px + caption_px + gap)
        img = _tile_image(tile, tile_px)
        grid.paste(img, (x0 + (tile_px - img.width) // 2, y0 + (tile_px - img.height) // 2))
        if captions is not None:
            text = _drawable(font, captions[i])
            # Trim long captions so they stay inside their cell.
            if _text_wh(font, text)[0] > tile_px - 4:
                ellipsis = _drawable(font, "…")
                body = text
                while body and _text_wh(font, body + ellipsis)[0] > tile_px - 4:
                    body = body[:-1]
                text = body + ellipsis if body else ""
            draw.text((x0 + 2, y0 + tile_px + 3), text, fill=(230, 230, 230), font=font)
    return grid


def save_preview(
    path: str | os.PathLike[str],
    tiles: Sequence[npt.NDArray[np.uint8]],
    cols: int | None = None,
    tile_px: int = 256,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write `preview_grid(...)` as a PNG at `path` atomically (temp file + os.replace)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = preview_grid(tiles, cols=cols, tile_px=tile_px, captions=captions)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    write_bytes_atomic(out, buf.getvalue())
    return out
