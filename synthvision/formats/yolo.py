"""Ultralytics YOLO datasets: label text, `data.yaml`, and a symmetric reader.

Layout (Ultralytics finds a label by replacing the last `/images/` of the image path with
`/labels/` and the suffix with `.txt`):

    root/data.yaml
    root/images/{split}/{name}.jpg
    root/labels/{split}/{name}.txt     # one per image; empty file = no objects

Rows: `class cx cy w h` (task "detect") or `class x1 y1 x2 y2 ...` (task "segment", >= 3 points,
Ultralytics derives the box from the polygon). All coordinates are normalised to [0, 1] with 6
decimals; class ids are 0-based. A file never mixes box rows and polygon rows (Ultralytics
would then drop every polygon of the file).

`data.yaml` has `names` (mapping 0..n-1), `nc`, and one key per split (`train: images/train`).
It has no `path:` key: without one Ultralytics resolves split folders against the yaml's own
folder, whereas a relative `path:` is resolved against its global datasets dir. There is never
a `download:` key (Ultralytics would run it). Ultralytics requires `val` and stops on a split
folder without images: with no `val` images, `val` points at the train images (and `train` at
the first split with images when `train` has none).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import yaml
from PIL import Image

from synthvision.errors import SpecError
from synthvision.formats.images import write_bytes_atomic, write_image
from synthvision.formats.masks import merge_polygons, polygon_xyxy
from synthvision.formats.records import Record, instance_records, instances_from_records
from synthvision.spec_yaml import yaml_problem
from synthvision.structures import ClassMap, Instances, Sample

YoloTask = Literal["detect", "segment"]

DATA_YAML = "data.yaml"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_MIN_NORM = 1e-6  # smallest positive value at 6 decimals: keeps w, h > 0 for sub-pixel boxes


def _fmt(values: Iterable[float]) -> str:
    return " ".join(f"{v:.6f}" for v in values)


def _box_polygon(xyxy: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def yolo_polygon(record: Record) -> list[float]:
    """The polygon a segment row holds: all parts joined into one, or the box outline if none."""
    poly = merge_polygons(record.get("polygons") or [])
    return poly if poly is not None else _box_polygon(record["xyxy"])


def yolo_label_text(
    instance_records: Sequence[Record], size_hw: tuple[int, int], task: YoloTask = "detect"
) -> str:
    """Label file contents for one image ("" when there are no objects -> an empty file).

    "detect": `class cx cy w h` per record from its clipped box. "segment": `class x y x y ...`
    from the record's polygons joined into one (`merge_polygons`: a row holds one polygon), or
    its box outline when it has none, so a file is all polygon rows.
    """
    if task not in ("detect", "segment"):
        raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
    h, w = float(size_hw[0]), float(size_hw[1])
    rows: list[str] = []
    for rec in instance_records:
        cid = int(rec["class_id"])
        if task == "detect":
            x1, y1, x2, y2 = (float(v) for v in rec["xyxy"])
            x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
            y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
            bw, bh = max((x2 - x1) / w, _MIN_NORM), max((y2 - y1) / h, _MIN_NORM)
            cx, cy = (x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h
            rows.append(f"{cid} {_fmt((cx, cy, bw, bh))}")
        else:
            pts = np.asarray(yolo_polygon(rec), dtype=np.float64).reshape(-1, 2)
            pts = (pts / np.array([w, h])).clip(0.0, 1.0)
            rows.append(f"{cid} {_fmt(pts.reshape(-1).tolist())}")
    return "".join(row + "\n" for row in rows)


def data_yaml_text(class_map: ClassMap, splits: Sequence[str]) -> str:
    """`data.yaml` contents for the given split names (see the module docstring)."""
    names = list(dict.fromkeys(splits))
    if not names:
        raise ValueError("give at least one split")
    doc: dict[str, Any] = {
        "names": dict(enumerate(class_map.names)),
        "nc": len(class_map),
    }
    train = "train" if "train" in names else names[0]
    doc["train"] = f"images/{train}"
    doc["val"] = f"images/{'val' if 'val' in names else train}"
    for s in names:
        if s not in ("train", "val"):
            doc[s] = f"images/{s}"
    header = [
        "# YOLO dataset written by synthvision.",
        "# Split folders are relative to this file. No `path:` key on purpose: Ultralytics",
        "# resolves a relative `path:` against its global datasets dir, not against this file.",
    ]
    if "val" not in names:
        header.append(f"# No val images: val points at {doc['val']} so training can start.")
    if "train" not in names:
        header.append(f"# No train images: train points at {doc['train']}.")
    body = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return "\n".join(header) + "\n" + body


def write_data_yaml(
    root: str | os.PathLike[str],
    class_map: ClassMap,
    splits: Sequence[str],
    images_per_split: Mapping[str, int] | None = None,
) -> Path:
    """Write `root/data.yaml` atomically; returns its path.

    With `images_per_split`, splits that hold no image are left out (unless all are empty):
    Ultralytics stops training on a split folder without images ("No images found"), whereas a
    missing `val` falls back to the train images.
    """
    if images_per_split is not None:
        splits = [s for s in splits if images_per_split.get(s, 0) > 0] or list(splits)
    path = Path(root) / DATA_YAML
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data_yaml_text(class_map, splits))
    return path


def read_class_map(data_yaml: str | os.PathLike[str]) -> ClassMap:
    """Class names from a data.yaml `names` (mapping 0..n-1 or list)."""
    path = Path(data_yaml)
    if not path.is_file():
        raise SpecError(f"{path} does not exist: a YOLO dataset needs a data.yaml")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = "".join(yaml_problem(exc))
        raise SpecError(f"{path}: not valid YAML ({problem}); fix the file") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list):
        return ClassMap(tuple(str(n) for n in names))
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise SpecError(f"{path}: `names` keys must be class ids 0..n-1") from None
        if keys != list(range(len(keys))):
            raise SpecError(f"{path}: `names` keys must be 0..{len(keys) - 1}, got {keys}")
        by_int = {int(k): str(v) for k, v in names.items()}
        return ClassMap(tuple(by_int[i] for i in keys))
    raise SpecError(f"{path}: `names` must be a list or a mapping of class id -> name")


class YoloImage(NamedTuple):
    file_name: str
    size_hw: tuple[int, int]
    instances: Instances


def parse_label_text(text: str, size_hw: tuple[int, int], source: str = "label") -> list[Record]:
    """Label rows -> instance records in pixels (`polygons` for polygon rows)."""
    h, w = float(size_hw[0]), float(size_hw[1])
    records: list[Record] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cid_value = float(tokens[0])
            vals = [float(t) for t in tokens[1:]]
        except ValueError:
            raise SpecError(f"{source}:{line_no}: not numbers: {line.strip()!r}") from None
        # A damaged row is an error, not a box: int() would read class 1.5 as 1, and NaN
        # coordinates would become a label that silently vanishes.
        if not (cid_value.is_integer() and cid_value >= 0):
            raise SpecError(f"{source}:{line_no}: class {tokens[0]!r} is not an id 0, 1, 2, ...")
        if not all(np.isfinite(vals)):
            raise SpecError(f"{source}:{line_no}: coordinates must be finite numbers (got NaN/inf)")
        cid = int(cid_value)
        if len(vals) == 4:
            cx, cy, bw, bh = vals
            xyxy = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            records.append({"class_id": cid, "xyxy": xyxy, "area": bw * w * bh * h})
        elif len(vals) >= 6 and len(vals) % 2 == 0:
            pts = (np.asarray(vals, dtype=np.float64).reshape(-1, 2) * np.array([w, h])).reshape(-1)
            poly = [float(v) for v in pts]
            box = polygon_xyxy([poly])
            records.append(
                {
                    "class_id": cid,
                    "xyxy": [float(v) for v in box],
                    "area": float((box[2] - box[0]) * (box[3] - box[1])),
                    "polygons": [poly],
                }
            )
        else:
            raise SpecError(
                f"{source}:{line_no}: expected 5 values (class cx cy w h) or an odd number >= 7 "
                f"(class x y x y ...), got {len(tokens)}"
            )
    return records


def read_label_text(path: Path) -> str:
    """The text of a YOLO label file; one that is not UTF-8 is a SpecError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file of label rows") from None


def image_size_hw(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) from the image header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read the image ({exc})") from None
    return int(h), int(w)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_yolo(
    root: str | os.PathLike[str], split: str, with_masks: bool = False
) -> tuple[ClassMap, Iterator[YoloImage]]:
    """Read `root/{images,labels}/{split}` -> (ClassMap, iterator of YoloImage by file name).

    Image sizes come from file headers. A missing label file means no objects. Boxes of polygon
    rows are the polygon's extent; `with_masks` rasterises polygons (box rows: filled boxes).
    """
    base = Path(root)
    class_map = read_class_map(base / DATA_YAML)
    images_dir = base / "images" / split
    if not images_dir.is_dir():
        raise SpecError(f"{images_dir} does not exist: no split {split!r} in {base}")
    labels_dir = base / "labels" / split

    def _iter() -> Iterator[YoloImage]:
        for image_path in list_images(images_dir):
            size_hw = image_size_hw(image_path)
            label_path = labels_dir / (image_path.stem + ".txt")
            text = read_label_text(label_path) if label_path.is_file() else ""
            records = parse_label_text(text, size_hw, source=str(label_path))
            inst = instances_from_records(records, size_hw, with_masks=with_masks)
            yield YoloImage(image_path.name, size_hw, inst)

    return class_map, _iter()


def save_yolo(
    root: str | os.PathLike[str],
    split: str,
    samples_with_file_names: Iterable[tuple[str, Sample]],
    class_map: ClassMap,
    task: YoloTask = "detect",
    write_images: bool = True,
) -> int:
    """Write `(file_name, sample)` pairs as `root/{images,labels}/{split}`; returns the count.

    `data.yaml` is (re)written to list every split folder now under `root/images`. Images are
    encoded from their suffix (.jpg/.jpeg -> JPEG q90, .png -> PNG) when `write_images`.
    """
    base = Path(root)
    labels_dir = base / "labels" / split
    images_dir = base / "images" / split
    labels_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for file_name, sample in samples_with_file_names:
        records = instance_records(
            sample.instances,
            coco_masks="none",
            polygons=task == "segment",
            size_hw=sample.size_hw,
        )
        text = yolo_label_text(records, sample.size_hw, task)
        write_bytes_atomic(labels_dir / (Path(file_name).stem + ".txt"), text)
        if write_images:
            write_image(images_dir / file_name, sample.image)
        count += 1
    splits = sorted(p.name for p in (base / "images").iterdir() if p.is_dir())
    write_data_yaml(base, class_map, splits)
    return count


__all__ = [
    "DATA_YAML",
    "YoloImage",
    "data_yaml_text",
    "load_yolo",
    "parse_label_text",
    "read_class_map",
    "save_yolo",
    "write_data_yaml",
    "yolo_label_text",
    "yolo_polygon",
]
