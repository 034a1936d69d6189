"""Image encoding and atomic file writes.

Images are encoded once (in the rank that generated them) and never re-encoded: the COCO and
YOLO trees hold hard links to the shard files, so encoding settings decide the bytes on disk.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

ImageFormat = Literal["jpeg", "png"]

IMAGE_SUFFIX: dict[str, str] = {"jpeg": ".jpg", "png": ".png"}


def encode_image(
    image: npt.NDArray[np.uint8],
    fmt: ImageFormat = "jpeg",
    jpeg_quality: int = 90,
    png_compress_level: int = 1,
) -> bytes:
    """Encode an RGB image uint8 (H, W, 3) to JPEG or PNG bytes (deterministic for given inputs).

    JPEG: baseline, no `optimize`/`progressive` passes (each costs a second encode), 4:2:0
    chroma subsampling (PIL's default for quality < 95). PNG: `png_compress_level` 0..9, no
    `optimize` (a slow search over filters).
    """
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    pil = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        pil.save(buf, format="JPEG", quality=int(jpeg_quality))
    elif fmt == "png":
        if not 0 <= png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be in 0..9, got {png_compress_level}")
        pil.save(buf, format="PNG", compress_level=int(png_compress_level))
    else:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {sorted(IMAGE_SUFFIX)}")
    return buf.getvalue()


def _process_umask() -> int:
    # Read once at import, before any writer thread exists: os.umask can only be read by
    # setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()  # what open() would give; mkstemp alone gives 0600


def open_atomic_tmp(target: Path) -> tuple[int, str]:
    """A temp file next to `target` (fd, path) with the mode a plain `open()` would create.

    tempfile.mkstemp makes files 0600, which would leave a dataset unreadable to other users
    or to a training container running as another uid.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.

    The temp file lives in the destination folder, so `os.replace` is a same-filesystem rename.
    `str` data is written as UTF-8. The parent folder must exist.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = open_atomic_tmp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)
    except BaseException:
        # No stray temp file on a failure or a Ctrl-C here. One landing between mkstemp and this
        # try can still leave one; the next run's `remove_stale_tmp` deletes those.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_image(
    path: str | os.PathLike[str],
    image: npt.NDArray[np.uint8],
    jpeg_quality: int = 90,
    png_compress_level: int = 1,
) -> None:
    """Encode `image` as its suffix says (.jpg/.jpeg or .png) and write it atomically."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        raise ValueError(f"image file names must end in .jpg, .jpeg or .png, got {target.name!r}")
    fmt: ImageFormat = "png" if suffix == ".png" else "jpeg"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, encode_image(image, fmt, jpeg_quality, png_compress_level))
