"""`synthvision preview DIR`: a PNG grid of a built dataset's images with their labels.

Reads the COCO export (masks included) when present, else the YOLO export, so it shows what a
consumer of the files would see, not what the generator meant to write.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from synthvision.errors import SpecError
from synthvision.viz import draw_instances, save_preview


def preview_dataset(
    dataset: Path, out: Path | None = None, *, split: str | None = None, num: int = 16
) -> Path:
    """Write the preview PNG of `dataset` (a `synthvision build` output); returns its path."""
    if dataset.is_file():
        raise SpecError(f"{str(dataset)!r} is a file: give the dataset's folder (a build output)")
    if not dataset.is_dir():
        raise SpecError(f"dataset directory {str(dataset)!r} does not exist")
    if num < 1:
        raise SpecError(f"--num must be at least 1 (got {num})")
    _check_out(out if out is not None else dataset / "preview.png", dataset)
    tiles: list[np.ndarray] = []
    captions: list[str] = []
    coco_files = sorted((dataset / "coco" / "annotations").glob("instances_*.json"))
    yolo_yaml = dataset / "yolo" / "data.yaml"
    if split is not None:
        coco_files = [p for p in coco_files if p.stem == f"instances_{split}"]
    if coco_files:
        from synthvision.formats.coco import load_coco

        for ann_path in coco_files:
            split_name = ann_path.stem.removeprefix("instances_")
            class_map, coco_images = load_coco(ann_path)
            for item in islice(coco_images, num - len(tiles)):
                path = dataset / "coco" / "images" / split_name / item.file_name
                tiles.append(_draw(path, item.instances, class_map.names))
                captions.append(f"{split_name}/{item.file_name} ({len(item.instances)})")
    elif yolo_yaml.is_file():
        from synthvision.formats.yolo import load_yolo

        # Split folders under images/ (labels/ also holds Ultralytics' `{split}.cache` files).
        images_root = dataset / "yolo" / "images"
        splits = (
            [split]
            if split
            else sorted(p.name for p in images_root.iterdir() if p.is_dir())
            if images_root.is_dir()
            else []
        )
        for split_name in splits:
            class_map, yolo_images = load_yolo(dataset / "yolo", split_name)
            for yolo_item in islice(yolo_images, num - len(tiles)):
                path = dataset / "yolo" / "images" / split_name / yolo_item.file_name
                tiles.append(_draw(path, yolo_item.instances, class_map.names))
                captions.append(f"{split_name}/{yolo_item.file_name} ({len(yolo_item.instances)})")
    else:
        raise SpecError(
            f"{dataset} has no coco/annotations/instances_*.json or yolo/data.yaml"
            + (f" for split {split!r}" if split else "")
            + "; give a directory written by `synthvision build`"
        )
    if not tiles:
        raise SpecError(
            f"{dataset}: no images to preview" + (f" in split {split!r}" if split else "")
        )
    path = out if out is not None else dataset / "preview.png"
    try:
        save_preview(path, tiles, captions=captions)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:  # not the dataset's fault
        on_path = isinstance(exc, (FileExistsError, NotADirectoryError))
        why = "a folder on its path is a file" if on_path else exc.strerror
        raise SpecError(
            f"cannot write --out {str(path)!r}: {why}; choose a writable --out"
        ) from None
    return path


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DATASET_TREES = ("coco", "yolo", "shards")


def _check_out(out: Path, dataset: Path) -> None:
    """The preview replaces an earlier preview, never another file, and stays out of the
    dataset's own trees, where a consumer would take it for part of the dataset (Ultralytics
    trains on every image under yolo/images/train)."""
    if out.suffix.lower() != ".png":
        raise SpecError(f"--out {str(out)!r}: give a file name ending in .png (a PNG is written)")
    if out.is_dir():
        raise SpecError(f"--out {str(out)!r} is a folder; give the path of a .png file")
    if out.exists() or out.is_symlink():
        try:
            with open(out, "rb") as f:
                is_png = f.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
        except OSError:
            is_png = False
        if not is_png:
            raise SpecError(
                f"--out {str(out)!r} exists and is not a PNG image, so it is not an earlier "
                "preview; choose another --out (the file is left as it is)"
            )
    target = out.resolve()
    for tree in _DATASET_TREES:
        root = (dataset / tree).resolve()
        if target == root or root in target.parents:
            raise SpecError(
                f"--out {str(out)!r} is inside the dataset's {tree}/ folder, where it would be "
                "read as part of the dataset; write the preview elsewhere"
            )


def _draw(path: Path, instances, names) -> np.ndarray:  # type: ignore[no-untyped-def]
    with Image.open(path) as img:
        image = np.asarray(img.convert("RGB"))
    return draw_instances(image, instances, names)
