"""COCO instances files: a streaming writer and a symmetric reader.

Contract of what we write (checked by `synthvision.validate`):
- top-level keys in this order: `info`, `licenses`, `categories`, `images`, `annotations`;
- category id = class id + 1; image ids and annotation ids unique and >= 1 (the writer requires
  increasing image ids and numbers annotations 1, 2, ... in the order they are added);
- `bbox` = [x, y, w, h] floats in pixel-edge coordinates, `area` > 0 (mask pixel count when a
  mask exists; with polygons, the pixels they cover, holes filled), `iscrowd` 0;
- `segmentation`: compressed RLE `{"size": [H, W], "counts": str}` ("rle"), a list of polygons of
  >= 6 numbers ("polygon"), or `[]` ("none"). An empty list rather than no key: pycocotools'
  bbox evaluation ignores it, supervision reads a falsy segmentation as "no mask", and
  torchvision's `CocoDetection` helpers index `ann["segmentation"]` unconditionally;
- `score` is kept on annotations whose record has one (labeler confidence; COCO tools ignore it);
- compact JSON, plain Python numbers, no timestamps: the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple

from synthvision.errors import SpecError
from synthvision.formats.images import open_atomic_tmp, write_image
from synthvision.formats.masks import polygons_area
from synthvision.formats.records import (
    XYXY_DECIMALS,
    CocoMaskMode,
    Record,
    instance_records,
    instances_from_records,
)
from synthvision.structures import ClassMap, Instances, Sample

_MASK_MODES = ("rle", "polygon", "none")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _r(v: float) -> float:
    return round(float(v), XYXY_DECIMALS) + 0.0


def coco_annotation(
    record: Record,
    annotation_id: int,
    image_id: int,
    mask_mode: CocoMaskMode,
    size_hw: tuple[int, int] | None = None,
    category_id: int | None = None,
) -> dict[str, Any]:
    """One COCO annotation dict from an instance record (keys in a fixed order).

    `category_id` defaults to the record's class id + 1 (a build's categories).

    With polygons and the image's `size_hw` (H, W), `area` is the pixel count of the polygons
    as pycocotools rasterises them (holes filled), so it agrees with the written segmentation;
    otherwise it is the record's (mask) area.
    """
    x1, y1, x2, y2 = (float(v) for v in record["xyxy"])
    segmentation: Any = []
    area = float(record["area"])
    if mask_mode == "rle" and record.get("rle"):
        rle = record["rle"]
        segmentation = {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"]}
    elif mask_mode == "polygon" and record.get("polygons"):
        segmentation = [[float(v) for v in p] for p in record["polygons"] if len(p) >= 6]
        if size_hw is not None:
            area = float(polygons_area(segmentation, size_hw)) or area
    ann: dict[str, Any] = {
        "id": int(annotation_id),
        "image_id": int(image_id),
        "category_id": int(record["class_id"]) + 1 if category_id is None else int(category_id),
        "bbox": [_r(x1), _r(y1), _r(x2 - x1), _r(y2 - y1)],
        "area": area,
        "iscrowd": 0,
        "segmentation": segmentation,
    }
    if "score" in record:
        ann["score"] = float(record["score"])
    return ann


class CocoWriter:
    """Streams images and annotations into one COCO instances file with flat memory.

    Image and annotation entries are spooled, one JSON object per line, to anonymous temp files
    next to `path`; `close()` assembles the final file in a temp file and renames it over `path`,
    so readers never see a partial file. Use as a context manager: on an exception nothing is
    written.

        with CocoWriter(path, class_map, info={"description": "..."}) as w:
            w.add_image(index + 1, f"{index:09d}.jpg", (h, w), records)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        class_map: ClassMap,
        info: dict[str, Any] | None = None,
        licenses: list[dict[str, Any]] | None = None,
        mask_mode: CocoMaskMode = "rle",
    ) -> None:
        if mask_mode not in _MASK_MODES:
            raise ValueError(f"mask_mode must be one of {_MASK_MODES}, got {mask_mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.class_map = class_map
        self.info = dict(info or {})
        self.licenses = list(licenses or [])
        self.mask_mode: CocoMaskMode = mask_mode
        self.num_images = 0
        self.num_annotations = 0
        self._last_image_id = 0
        self._closed = False
        self._images: IO[str] = tempfile.TemporaryFile(
            "w+", encoding="utf-8", dir=self.path.parent, prefix=".coco-images-"
        )
        self._annotations: IO[str] = tempfile.TemporaryFile(
            "w+", encoding="utf-8", dir=self.path.parent, prefix=".coco-annotations-"
        )

    def add_image(
        self,
        image_id: int,
        file_name: str,
        size_hw: tuple[int, int],
        instance_records: Sequence[Record],
        mask_mode: CocoMaskMode | None = None,
    ) -> None:
        """Add one image and its instance records; `image_id` must exceed the previous one.

        Increasing ids make uniqueness a constant-memory check (the build adds images in index
        order with id = index + 1). `mask_mode` defaults to the writer's.
        """
        if self._closed:
            raise RuntimeError("CocoWriter is closed")
        if int(image_id) <= self._last_image_id:
            raise ValueError(
                f"image ids must increase (and start at >= 1): got {image_id} after "
                f"{self._last_image_id}"
            )
        mode = self.mask_mode if mask_mode is None else mask_mode
        if mode not in _MASK_MODES:
            raise ValueError(f"mask_mode must be one of {_MASK_MODES}, got {mode!r}")
        h, w = int(size_hw[0]), int(size_hw[1])
        self._last_image_id = int(image_id)
        entry = {"id": int(image_id), "file_name": str(file_name), "height": h, "width": w}
        self._images.write(_dumps(entry) + "\n")
        self.num_images += 1
        n_classes = len(self.class_map)
        for rec in instance_records:
            cid = int(rec["class_id"])
            if not 0 <= cid < n_classes:
                raise ValueError(f"class_id {cid} out of range for {n_classes} classes")
            self.num_annotations += 1
            category = self.class_map.coco_category_id(cid)
            ann = coco_annotation(rec, self.num_annotations, int(image_id), mode, (h, w), category)
            self._annotations.write(_dumps(ann) + "\n")

    def close(self) -> None:
        """Write the final JSON atomically (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            fd, tmp = open_atomic_tmp(self.path)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write('{"info":' + _dumps(self.info))
                    out.write(',"licenses":' + _dumps(self.licenses))
                    out.write(',"categories":' + _dumps(self.class_map.coco_categories()))
                    out.write(',"images":[')
                    self._copy_lines(self._images, out)
                    out.write('],"annotations":[')
                    self._copy_lines(self._annotations, out)
                    out.write("]}\n")
                os.replace(tmp, self.path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        finally:
            self._images.close()
            self._annotations.close()

    def abort(self) -> None:
        """Drop everything spooled; `path` is left untouched."""
        self._closed = True
        self._images.close()
        self._annotations.close()

    @staticmethod
    def _copy_lines(spool: IO[str], out: IO[str]) -> None:
        spool.flush()
        spool.seek(0)
        first = True
        for line in spool:
            if not first:
                out.write(",")
            out.write(line.rstrip("\n"))
            first = False

    def __enter__(self) -> CocoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class CocoImage(NamedTuple):
    image_id: int
    file_name: str
    size_hw: tuple[int, int]
    instances: Instances


def coco_class_map(categories: list[dict[str, Any]]) -> ClassMap:
    """A COCO file's categories -> ClassMap: ordered by id, renumbered 0..n-1 (as supervision
    does), keeping the file's ids and supercategories for writing them back."""
    try:
        cats = sorted(categories, key=lambda c: int(c["id"]))
        ids = tuple(int(c["id"]) for c in cats)
        supers = tuple(str(c.get("supercategory", "object")) for c in cats)
        # A file we wrote maps back to the plain ClassMap it came from.
        return ClassMap(
            tuple(str(c["name"]) for c in cats),
            coco_ids=() if ids == tuple(range(1, len(ids) + 1)) else ids,
            supercategories=() if set(supers) <= {"object"} else supers,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"categories need an int `id` and a `name` each ({exc!r})") from None


def annotation_record(ann: dict[str, Any], class_of_category: dict[int, int]) -> Record:
    """A COCO annotation -> an instance record (class ids remapped to 0..n-1)."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    category = class_of_category.get(int(ann["category_id"]))
    if category is None:
        raise SpecError(
            f"annotation {ann.get('id')!r}: category_id {ann['category_id']!r} is not one of the "
            "file's categories; fix the annotation or add the category"
        )
    rec: Record = {
        "class_id": category,
        "xyxy": [x, y, x + w, y + h],
        "area": float(ann.get("area", w * h)),
    }
    seg = ann.get("segmentation")
    if isinstance(seg, dict) and "counts" in seg:
        rec["rle"] = seg
    elif isinstance(seg, list) and seg:
        polys = seg if isinstance(seg[0], list) else [seg]
        rec["polygons"] = [p for p in polys if len(p) >= 6]
    if "score" in ann:
        rec["score"] = float(ann["score"])
    return rec


def load_coco(
    annotations_path: str | os.PathLike[str], with_masks: bool = True, include_crowd: bool = True
) -> tuple[ClassMap, Iterator[CocoImage]]:
    """Read a COCO instances file -> (ClassMap, iterator of CocoImage in file order).

    Categories are ordered by id and renumbered 0..n-1 (as supervision does), so for files we
    wrote class id = category id - 1. Masks are decoded lazily, one image at a time; an
    annotation without segmentation gets its filled box as mask when `with_masks`. Without
    `include_crowd`, `iscrowd: 1` annotations (one region over a group of objects) are skipped.
    """
    with open(annotations_path, encoding="utf-8") as f:
        data = json.load(f)
    class_map = coco_class_map(data.get("categories", []))
    class_of_category = {class_map.coco_category_id(i): i for i in range(len(class_map))}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        if include_crowd or not ann.get("iscrowd", 0):
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
    images = data.get("images", [])

    def _iter() -> Iterator[CocoImage]:
        for img in images:
            image_id = int(img["id"])
            size_hw = (int(img["height"]), int(img["width"]))
            anns = sorted(by_image.get(image_id, []), key=lambda a: int(a["id"]))
            records = [annotation_record(a, class_of_category) for a in anns]
            inst = instances_from_records(records, size_hw, with_masks=with_masks)
            yield CocoImage(image_id, str(img["file_name"]), size_hw, inst)

    return class_map, _iter()


def save_coco(
    path: str | os.PathLike[str],
    samples_with_file_names: Iterable[tuple[str, Sample]],
    class_map: ClassMap,
    mask_mode: CocoMaskMode = "rle",
    images_dir: str | os.PathLike[str] | None = None,
    info: dict[str, Any] | None = None,
) -> int:
    """Write `(file_name, sample)` pairs as one COCO file; returns the number of images.

    Image id = `sample.index + 1` (samples must come in increasing index order). With
    `images_dir`, each image is also encoded there (format from the file name's suffix: .jpg /
    .jpeg -> JPEG q90, .png -> PNG).
    """
    out_dir = None if images_dir is None else Path(images_dir)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    with CocoWriter(path, class_map, info=info, mask_mode=mask_mode) as writer:
        for file_name, sample in samples_with_file_names:
            records = instance_records(
                sample.instances, coco_masks=mask_mode, size_hw=sample.size_hw
            )
            writer.add_image(sample.index + 1, file_name, sample.size_hw, records)
            if out_dir is not None:
                write_image(out_dir / file_name, sample.image)
        return writer.num_images


def coco_split_name(ann_path: Path) -> str:
    """The split an annotations file holds: instances_val.json -> "val"; no suffix -> "train"."""
    if ann_path.name == "_annotations.coco.json":  # Roboflow: {split}/_annotations.coco.json
        return ann_path.parent.name
    stem = ann_path.stem
    if stem in ("instances", "annotations"):  # one file without a split suffix: all training
        return "train"
    name = stem[len("instances_") :] if stem.startswith("instances_") else stem
    ok = name and name.replace("_", "").replace("-", "").isalnum()
    return name if ok else "train"


def coco_image_dir_candidates(ann_path: Path, split: str, images: Path | None = None) -> list[Path]:
    """Where the images of an annotations file may be, most specific first.

    `images`, when the user gives it, and its `split` subfolder only: a mistyped folder must
    not silently pick up other images. Otherwise the common layouts: root/images/{split}
    (synthvision, Ultralytics' COCO), root/images, root/{split}, ..., where root is the folder
    above annotations/.
    """
    if images is not None:
        if not images.is_dir():
            raise SpecError(f"--images {images}: no such folder; give the folder of the images")
        return [images / split, images]
    parent = ann_path.parent
    root = parent.parent if parent.name == "annotations" else parent
    return [root / "images" / split, root / "images", root / split, parent / "images", parent]


def coco_images_dir(
    ann_path: Path, split: str, first_file: str | None, images: Path | None
) -> Path:
    """The first candidate folder that holds `first_file` (any existing one when None)."""
    candidates = coco_image_dir_candidates(ann_path, split, images)
    for cand in candidates:
        if cand.is_dir() and (first_file is None or (cand / first_file).is_file()):
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise SpecError(
        f"cannot find the images of {ann_path} (looked for {first_file!r} in {tried}); "
        "pass --images DIR"
    )


__all__ = [
    "CocoImage",
    "CocoWriter",
    "annotation_record",
    "coco_annotation",
    "coco_image_dir_candidates",
    "coco_images_dir",
    "coco_split_name",
    "load_coco",
    "save_coco",
]
