"""Check a finished build folder against every format contract (see DESIGN.md).

`validate_dataset(out_dir)` returns one readable line per problem (an empty list = valid). It
reads each split's COCO file and YOLO labels one split at a time, decodes every image once (the
COCO and YOLO trees hard-link the same files), and cross-checks COCO against YOLO. Repeated
problems of one kind are capped so a systematic fault does not bury the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from synthvision.errors import SpecError
from synthvision.formats.masks import (
    decode_rle,
    mask_to_polygons,
    polygon_xyxy,
    polygons_area,
    polygons_to_xywh,
    rle_area,
    rle_to_xywh,
)
from synthvision.formats.yolo import DATA_YAML, IMAGE_SUFFIXES
from synthvision.outdir import MANIFEST, MARKER
from synthvision.spec_yaml import yaml_problem

SPEC_YAML = "spec.yaml"
BOX_TOL_PX = 0.01  # COCO bbox vs RLE tight box / image bounds
AGREE_REL_TOL = 1e-5  # COCO vs YOLO boxes, as a fraction of the image's longer side
AGREE_ABS_TOL_PX = 1e-4  # plus the 4-decimal rounding of COCO pixel values
YOLO_EDGE_TOL = 1e-6  # a 6-decimal cx - w/2 may land 5e-7 outside [0, 1]


class _Problems:
    """Problem lines, at most `cap` per kind, then one '... and N more' line per kind."""

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.lines: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.cap:
            self.lines.append((kind, message))

    def result(self) -> list[str]:
        """Lines in first-seen order; a capped kind's summary follows its last shown line."""
        out: list[str] = []
        shown: Counter[str] = Counter()
        for kind, message in self.lines:
            out.append(message)
            shown[kind] += 1
            if shown[kind] == self.cap and self.counts[kind] > self.cap:
                out.append(f"... and {self.counts[kind] - self.cap} more {kind} problems")
        return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class _ImageCheck:
    """Decode each file once; COCO and YOLO entries of one image are hard links to it."""

    cache: dict[tuple[int, int], tuple[int, int] | str] = field(default_factory=dict)

    def size_hw(self, path: Path) -> tuple[int, int] | str:
        """(H, W) after a full decode, or an error message."""
        try:
            st = path.stat()
        except OSError as exc:
            return f"cannot read ({exc.strerror})"
        key = (st.st_dev, st.st_ino)
        if key not in self.cache:
            self.cache[key] = _decode(path)
        return self.cache[key]


def _decode(path: Path) -> tuple[int, int] | str:
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "JPEG":
                # DCT-domain downscale: still reads every entropy-coded byte (so truncation is
                # caught) at a fraction of the cost of a full-size decode.
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
        return int(h), int(w)
    except Exception as exc:  # any decoder failure is a problem to report, not a crash
        return f"does not decode ({type(exc).__name__}: {exc})"


@dataclass
class _Ann:
    class_id: int
    xyxy: tuple[float, float, float, float]
    segmentation: Any


@dataclass
class _Split:
    """What one format says about one split, for the COCO/YOLO cross-check."""

    images: dict[str, tuple[tuple[int, int], list[_Ann]]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# entry point


def validate_dataset(out_dir: str | os.PathLike[str], max_per_kind: int = 20) -> list[str]:
    """Every contract violation in a build folder, one line each; [] means valid.

    Raises SpecError when `out_dir` is not a directory.
    """
    out = Path(out_dir)
    if not out.exists():
        raise SpecError(f"{out} does not exist: give the output folder of a build")
    if not out.is_dir():
        raise SpecError(f"{out} is not a folder: give the output folder of a build")
    ours = (MANIFEST, SPEC_YAML, "coco", "yolo", MARKER)
    if not any((out / name).exists() for name in ours):
        raise SpecError(
            f"{out} is not a synthvision dataset (no manifest.json, spec.yaml, coco/ or yolo/): "
            "give the output folder of `synthvision build` or `synthvision augment`"
        )
    p = _Problems(max_per_kind)

    manifest = out / MANIFEST
    if not manifest.is_file():
        p.add("manifest", f"{MANIFEST} is missing: the build did not finish")
    else:
        try:
            if not isinstance(json.loads(manifest.read_text(encoding="utf-8")), dict):
                p.add("manifest", f"{MANIFEST} is not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            p.add("manifest", f"{MANIFEST} is not valid JSON ({exc})")

    export = _read_export_spec(out, p)
    formats = export.get("formats")
    if not isinstance(formats, list):
        formats = [f for f in ("coco", "yolo") if (out / f).is_dir()]
    for f in formats:
        if not (out / f).is_dir():
            p.add("layout", f"{f}/ is missing although the spec exports {f}")
    formats = [f for f in formats if (out / f).is_dir()]
    if not formats:
        p.add("layout", "neither coco/ nor yolo/ exists: nothing was exported")
        return p.result()

    coco_splits = _coco_splits(out) if "coco" in formats else []
    yolo_names: list[str] | None = None
    yolo_splits: list[str] = []
    if "yolo" in formats:
        yolo_names, yolo_splits = _check_data_yaml(out / "yolo", p)
    if "coco" in formats and not coco_splits:
        p.add("layout", "coco/annotations/ has no instances_{split}.json file")
    both = "coco" in formats and "yolo" in formats
    if both:
        for s in sorted(set(coco_splits) - set(yolo_splits)):
            p.add("agree", f"COCO/YOLO disagree: split {s!r} is in COCO, not in YOLO")
        for s in sorted(set(yolo_splits) - set(coco_splits)):
            p.add("agree", f"COCO/YOLO disagree: split {s!r} is in YOLO, not in COCO")

    coco_names: list[str] | None = None
    yolo_task = export.get("yolo_task")
    for split in sorted(set(coco_splits) | set(yolo_splits)):
        images = _ImageCheck()  # per split: both trees of a split share their files
        coco = yolo = None
        if split in coco_splits:
            names, coco = _check_coco_split(out / "coco", split, images, p)
            if names is not None:
                if coco_names is None:
                    coco_names = names
                elif names != coco_names:
                    p.add("coco-categories", f"instances_{split}.json: categories differ")
        if split in yolo_splits and yolo_names is not None:
            yolo = _check_yolo_split(out / "yolo", split, len(yolo_names), yolo_task, images, p)
        if both and coco is not None and yolo is not None:
            _compare(split, coco, yolo, p)
    if both and coco_names is not None and yolo_names is not None and coco_names != yolo_names:
        p.add(
            "agree",
            f"COCO/YOLO disagree: class names differ: COCO categories {coco_names} vs YOLO "
            f"names {yolo_names}",
        )
    return p.result()


def _read_export_spec(out: Path, p: _Problems) -> dict[str, Any]:
    path = out / SPEC_YAML
    if not path.is_file():
        p.add("layout", f"{SPEC_YAML} is missing")
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        p.add("layout", f"{SPEC_YAML} is not valid YAML ({''.join(yaml_problem(exc))})")
        return {}
    export = doc.get("export") if isinstance(doc, dict) else None
    return export if isinstance(export, dict) else {}


# ----------------------------------------------------------------------------------------------
# COCO


def _coco_splits(out: Path) -> list[str]:
    ann_dir = out / "coco" / "annotations"
    if not ann_dir.is_dir():
        return []
    return sorted(
        f.name[len("instances_") : -len(".json")]
        for f in ann_dir.glob("instances_*.json")
        if f.is_file()
    )


def _load_with_pycocotools(data: dict[str, Any]) -> str | None:
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_coco_split(
    coco_dir: Path, split: str, images: _ImageCheck, p: _Problems
) -> tuple[list[str] | None, _Split | None]:
    rel = f"coco/annotations/instances_{split}.json"
    try:
        with open(coco_dir / "annotations" / f"instances_{split}.json", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        p.add("coco-json", f"{rel}: cannot be read as JSON ({exc})")
        return None, None
    if not isinstance(data, dict):
        p.add("coco-json", f"{rel}: top level is not a JSON object")
        return None, None
    ok = True
    for key, typ in (
        ("info", dict),
        ("licenses", list),
        ("categories", list),
        ("images", list),
        ("annotations", list),
    ):
        if not isinstance(data.get(key), typ):
            p.add("coco-json", f"{rel}: `{key}` is missing or not a {typ.__name__}")
            ok = False
    if not ok:
        return None, None
    err = _load_with_pycocotools(data)
    if err is not None:
        p.add("coco-json", f"{rel}: pycocotools COCO() cannot load it ({err})")

    # categories: unique names, ids ascending (a build writes 1..n; an augmented COCO dataset
    # keeps its source's ids); class id = position, as every COCO reader renumbers them
    names: list[str] = []
    cat_ids: dict[int, int] = {}
    last_id = 0
    for i, cat in enumerate(data["categories"]):
        if (
            not isinstance(cat, dict)
            or not _is_int(cat.get("id"))
            or not isinstance(cat.get("name"), str)
        ):
            p.add("coco-categories", f"{rel}: category #{i} needs an int `id` and a str `name`")
            continue
        if cat["id"] < 1 or cat["id"] <= last_id:
            p.add(
                "coco-categories",
                f"{rel}: category ids must be positive and ascending, #{i} is {cat['id']}",
            )
        if cat["name"] in names:
            p.add("coco-categories", f"{rel}: category name {cat['name']!r} appears twice")
        cat_ids.setdefault(cat["id"], len(names))
        last_id = max(last_id, cat["id"])
        names.append(cat["name"])
    if not names:
        p.add("coco-categories", f"{rel}: no categories")

    result = _Split()
    image_dir = coco_dir / "images" / split
    if not image_dir.is_dir():
        p.add("coco-images", f"coco/images/{split}/ is missing")
    sizes: dict[int, tuple[int, int]] = {}
    names_of: dict[int, str] = {}
    for entry in data["images"]:
        _check_coco_image(entry, rel, split, image_dir, images, sizes, names_of, result, p)
    if image_dir.is_dir():
        listed = set(names_of.values())
        for img in sorted(image_dir.iterdir()):
            if img.name not in listed:
                p.add("coco-orphans", f"coco/images/{split}/{img.name} is not in {rel}")

    ann_ids: set[int] = set()
    for ann in data["annotations"]:
        _check_coco_annotation(ann, rel, sizes, cat_ids, ann_ids, names_of, result, p)
    return names, result


def _check_coco_image(
    entry: Any,
    rel: str,
    split: str,
    image_dir: Path,
    images: _ImageCheck,
    sizes: dict[int, tuple[int, int]],
    names_of: dict[int, str],
    result: _Split,
    p: _Problems,
) -> None:
    if not isinstance(entry, dict):
        p.add("coco-images", f"{rel}: an image entry is not an object")
        return
    iid: Any = entry.get("id")
    fname: Any = entry.get("file_name")
    h: Any = entry.get("height")
    w: Any = entry.get("width")
    if not _is_int(iid) or iid < 1:
        p.add("coco-images", f"{rel}: image id {iid!r} is not an int >= 1")
        return
    if iid in sizes:
        p.add("coco-images", f"{rel}: image id {iid} appears twice")
        return
    if (
        not isinstance(fname, str)
        or not fname
        or "/" in fname
        or "\\" in fname
        or fname
        in (
            ".",
            "..",
        )
    ):
        p.add("coco-images", f"{rel}: image {iid}: file_name {fname!r} is not a plain file name")
        return
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        p.add("coco-images", f"{rel}: image {iid}: height/width {h!r}/{w!r} are not ints > 0")
        return
    stem = Path(fname).stem
    if stem.isdigit() and iid != int(stem) + 1:
        p.add("coco-images", f"{rel}: image {fname}: id {iid} is not index + 1 = {int(stem) + 1}")
    if fname in result.images:
        p.add("coco-images", f"{rel}: file_name {fname} appears twice")
    sizes[iid] = (h, w)
    names_of[iid] = fname
    result.images[fname] = ((h, w), [])
    size = images.size_hw(image_dir / fname)
    if isinstance(size, str):
        p.add("images", f"coco/images/{split}/{fname}: {size}")
    elif size != (h, w):
        p.add(
            "images",
            f"coco/images/{split}/{fname}: image is {size[1]}x{size[0]} (WxH) but {rel} says "
            f"{w}x{h}",
        )


def _check_coco_annotation(
    ann: Any,
    rel: str,
    sizes: dict[int, tuple[int, int]],
    cat_ids: dict[int, int],  # category id -> class id
    ann_ids: set[int],
    names_of: dict[int, str],
    result: _Split,
    p: _Problems,
) -> None:
    if not isinstance(ann, dict):
        p.add("coco-annotations", f"{rel}: an annotation is not an object")
        return
    aid: Any = ann.get("id")
    where = f"{rel}: annotation {aid!r}"
    if not _is_int(aid) or aid < 1:
        p.add("coco-annotations", f"{where}: id is not an int >= 1")
        return
    if aid in ann_ids:
        p.add("coco-annotations", f"{where}: id appears twice")
    ann_ids.add(aid)
    iid: Any = ann.get("image_id")
    if not _is_int(iid) or iid not in sizes:
        p.add("coco-annotations", f"{where}: image_id {iid!r} is not an image of this file")
        return
    h, w = sizes[iid]
    cid: Any = ann.get("category_id")
    if not _is_int(cid) or cid not in cat_ids:
        p.add("coco-annotations", f"{where}: category_id {cid!r} is not a category")
        return
    if ann.get("iscrowd") != 0 or isinstance(ann.get("iscrowd"), bool):
        p.add("coco-annotations", f"{where}: iscrowd is {ann.get('iscrowd')!r}, expected 0")
    area: Any = ann.get("area")
    if not _is_num(area) or area <= 0:
        p.add("coco-area", f"{where}: area {area!r} is not a number > 0")
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
        p.add("coco-bbox", f"{where}: bbox {bbox!r} is not [x, y, w, h] of 4 finite numbers")
        return
    x, y, bw, bh = (float(v) for v in bbox)
    if bw <= 0 or bh <= 0:
        p.add("coco-bbox", f"{where}: bbox {bbox} has width or height <= 0")
    elif x < -BOX_TOL_PX or y < -BOX_TOL_PX or x + bw > w + BOX_TOL_PX or y + bh > h + BOX_TOL_PX:
        p.add("coco-bbox-bounds", f"{where}: bbox {bbox} extends outside the {w}x{h} (WxH) image")
    if "segmentation" not in ann:
        # pycocotools' annToMask/COCOeval("segm") raise KeyError, and torchvision's v2 wrapper
        # silently skips the mask, so boxes and masks no longer line up.
        p.add("coco-segmentation", f"{where}: no `segmentation` key (write [] for no mask)")
    seg = ann.get("segmentation", [])
    _check_segmentation(seg, where, (h, w), (x, y, bw, bh), area, p)
    result.images[names_of[iid]][1].append(_Ann(cat_ids[cid], (x, y, x + bw, y + bh), seg))


def _check_segmentation(
    seg: Any,
    where: str,
    size_hw: tuple[int, int],
    xywh: tuple[float, float, float, float],
    area: Any,
    p: _Problems,
) -> None:
    if isinstance(seg, list):
        if not seg:
            return  # boxes only
        x, y, bw, bh = xywh
        for poly in seg:
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                p.add("coco-segmentation", f"{where}: polygons must be lists of finite numbers")
                return
            if len(poly) < 6 or len(poly) % 2:
                p.add(
                    "coco-segmentation",
                    f"{where}: a polygon has {len(poly)} numbers (needs an even count >= 6)",
                )
                return
        ext = polygon_xyxy(seg)
        if (
            ext[0] < x - BOX_TOL_PX
            or ext[1] < y - BOX_TOL_PX
            or ext[2] > x + bw + BOX_TOL_PX
            or ext[3] > y + bh + BOX_TOL_PX
        ):
            p.add("coco-segmentation", f"{where}: polygons reach outside the bbox {list(xywh)}")
        else:
            tight = polygons_to_xywh(seg, size_hw)
            if any(abs(a - b) > BOX_TOL_PX for a, b in zip(tight, xywh, strict=True)):
                p.add(
                    "coco-bbox-mask",
                    f"{where}: bbox {list(xywh)} is not its polygons' tight box {tight}",
                )
        pixels = polygons_area(seg, size_hw)
        if _is_num(area) and abs(float(area) - pixels) > 0.5:
            p.add(
                "coco-area", f"{where}: area {area} is not the {pixels} pixels its polygons cover"
            )
        return
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(counts, str):
            p.add("coco-segmentation", f"{where}: RLE counts must be a str (compressed RLE)")
            return
        if size != [size_hw[0], size_hw[1]]:
            p.add(
                "coco-segmentation",
                f"{where}: RLE size {size!r} is not the image size {list(size_hw)} (H, W)",
            )
            return
        try:
            tight = rle_to_xywh(seg)
            pixels = rle_area(seg)
        except Exception as exc:
            p.add("coco-segmentation", f"{where}: RLE does not decode ({exc})")
            return
        if pixels == 0:
            p.add("coco-segmentation", f"{where}: RLE mask is empty")
        elif any(abs(a - b) > BOX_TOL_PX for a, b in zip(tight, xywh, strict=True)):
            p.add(
                "coco-bbox-mask",
                f"{where}: bbox {list(xywh)} is not the mask's tight box {tight}",
            )
        if _is_num(area) and abs(float(area) - pixels) > 0.5:
            p.add("coco-area", f"{where}: area {area} is not the mask's {pixels} pixels")
        return
    p.add("coco-segmentation", f"{where}: segmentation is neither polygons, RLE nor []")


# ----------------------------------------------------------------------------------------------
# YOLO


def _check_data_yaml(yolo_dir: Path, p: _Problems) -> tuple[list[str] | None, list[str]]:
    """Class names (None when unusable) and the split folders under yolo/images."""
    splits = (
        sorted(d.name for d in (yolo_dir / "images").iterdir() if d.is_dir())
        if (yolo_dir / "images").is_dir()
        else []
    )
    if not splits:
        p.add("yolo-layout", "yolo/images/ has no split folders")
    path = yolo_dir / DATA_YAML
    if not path.is_file():
        p.add("yolo-yaml", f"yolo/{DATA_YAML} is missing")
        return None, splits
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        p.add("yolo-yaml", f"yolo/{DATA_YAML} is not valid YAML ({''.join(yaml_problem(exc))})")
        return None, splits
    if not isinstance(doc, dict):
        p.add("yolo-yaml", f"yolo/{DATA_YAML} is not a mapping")
        return None, splits
    if "download" in doc:
        p.add("yolo-yaml", f"yolo/{DATA_YAML} has a `download:` key (Ultralytics would run it)")
    if "path" in doc:
        p.add(
            "yolo-yaml",
            f"yolo/{DATA_YAML} has a `path:` key (a relative one resolves against Ultralytics' "
            "datasets dir; leave it out so paths resolve against the yaml's folder)",
        )
    names_raw = doc.get("names")
    names: list[str] | None = None
    if isinstance(names_raw, list):
        names = [str(n) for n in names_raw]
    elif isinstance(names_raw, dict):
        keys = list(names_raw)
        if all(_is_int(k) for k in keys) and sorted(keys) == list(range(len(keys))):
            names = [str(names_raw[i]) for i in range(len(keys))]
        else:
            p.add("yolo-yaml", f"yolo/{DATA_YAML}: `names` keys must be 0..n-1, got {keys}")
    else:
        p.add("yolo-yaml", f"yolo/{DATA_YAML}: `names` is missing or not a list/mapping")
    if names is not None:
        if not names:
            p.add("yolo-yaml", f"yolo/{DATA_YAML}: `names` is empty")
        if len(set(names)) != len(names):
            p.add("yolo-yaml", f"yolo/{DATA_YAML}: class names repeat")
        if "nc" in doc and doc["nc"] != len(names):
            p.add("yolo-yaml", f"yolo/{DATA_YAML}: nc {doc['nc']!r} != {len(names)} names")
    referenced: set[str] = set()
    for key in ("train", "val"):
        if key not in doc:
            p.add("yolo-yaml", f"yolo/{DATA_YAML} has no `{key}:` key (Ultralytics needs it)")
    for key, value in doc.items():
        if key in ("names", "nc", "path", "download"):
            continue
        if not isinstance(value, str):
            if key in ("train", "val", "test") or key in splits:
                p.add("yolo-yaml", f"yolo/{DATA_YAML}: `{key}` is not a relative folder path")
            continue
        if os.path.isabs(value):
            p.add("yolo-yaml", f"yolo/{DATA_YAML}: `{key}: {value}` is absolute (not portable)")
            continue
        if not (yolo_dir / value).is_dir():
            p.add("yolo-yaml", f"yolo/{DATA_YAML}: `{key}: {value}` is not a folder")
            continue
        parts = Path(value).parts
        if len(parts) == 2 and parts[0] == "images":
            referenced.add(parts[1])
        if key in ("train", "val") and not _has_images(yolo_dir / value):
            p.add(
                "yolo-yaml",
                f"yolo/{DATA_YAML}: `{key}: {value}` holds no images (Ultralytics stops with "
                '"No images found"; point it at a split that has images)',
            )
    for key in ("train", "val"):
        own = yolo_dir / "images" / key
        if (
            own.is_dir()
            and _has_images(own)
            and doc.get(key) not in (f"images/{key}", f"./images/{key}")
        ):
            p.add(
                "yolo-yaml",
                f"yolo/{DATA_YAML}: `{key}: {doc.get(key)}` but images/{key} holds the {key} "
                "images (splits swapped or mislabeled)",
            )
    for s in splits:
        if s not in referenced and _has_images(yolo_dir / "images" / s):
            p.add("yolo-yaml", f"yolo/images/{s} is not listed in yolo/{DATA_YAML}")
    return names, splits


def _has_images(folder: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir() if f.is_file())


@dataclass
class _Row:
    class_id: int
    xyxy: tuple[float, float, float, float]
    polygon: bool


def _check_yolo_split(
    yolo_dir: Path,
    split: str,
    num_classes: int,
    task: Any,
    images: _ImageCheck,
    p: _Problems,
) -> dict[str, tuple[tuple[int, int], list[_Row]] | None] | None:
    image_dir = yolo_dir / "images" / split
    label_dir = yolo_dir / "labels" / split
    if not label_dir.is_dir():
        p.add("yolo-layout", f"yolo/labels/{split}/ is missing")
        return None
    result: dict[str, tuple[tuple[int, int], list[_Row]] | None] = {}
    stems: dict[str, str] = {}
    for f in sorted(image_dir.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
            p.add("yolo-layout", f"yolo/images/{split}/{f.name} is not an image file")
            continue
        if f.stem in stems:
            p.add("yolo-layout", f"yolo/images/{split}: {stems[f.stem]} and {f.name} share a label")
            continue
        stems[f.stem] = f.name
        result[f.name] = None  # present; None until its label file checks out
        size = images.size_hw(f)
        if isinstance(size, str):
            p.add("images", f"yolo/images/{split}/{f.name}: {size}")
            continue
        label = label_dir / f"{f.stem}.txt"
        if not label.is_file():
            p.add("yolo-labels", f"yolo/labels/{split}/{f.stem}.txt is missing (one per image)")
            continue
        rows = _check_label_file(label, f"yolo/labels/{split}/{label.name}", size, num_classes, p)
        if rows is None:
            continue
        if task in ("detect", "segment") and rows:
            want_poly = task == "segment"
            if any(r.polygon != want_poly for r in rows):
                p.add(
                    "yolo-rows",
                    f"yolo/labels/{split}/{label.name}: rows are not {task} rows as the spec says",
                )
        result[f.name] = (size, rows)
    for lbl in sorted(label_dir.iterdir()):
        if lbl.suffix != ".txt" or lbl.stem not in stems:
            p.add("yolo-orphans", f"yolo/labels/{split}/{lbl.name} has no image")
    return result


def _check_label_file(
    path: Path, rel: str, size_hw: tuple[int, int], num_classes: int, p: _Problems
) -> list[_Row] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        p.add("yolo-rows", f"{rel}: cannot be read ({exc})")
        return None
    h, w = size_hw
    rows: list[_Row] = []
    kinds: set[bool] = set()
    for n, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{rel}:{n}"
        if not tokens[0].isdigit():
            p.add("yolo-rows", f"{where}: class {tokens[0]!r} is not a non-negative integer")
            return None
        cid = int(tokens[0])
        if cid >= num_classes:
            p.add("yolo-rows", f"{where}: class {cid} is out of range (nc = {num_classes})")
        try:
            vals = [float(t) for t in tokens[1:]]
        except ValueError:
            p.add("yolo-rows", f"{where}: values are not numbers")
            return None
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in vals):
            p.add("yolo-rows", f"{where}: values must be finite and within [0, 1]")
            return None
        if len(tokens) == 5:
            cx, cy, bw, bh = vals
            if bw <= 0 or bh <= 0:
                p.add("yolo-rows", f"{where}: box width and height must be > 0")
                return None
            if (
                cx - bw / 2 < -YOLO_EDGE_TOL
                or cy - bh / 2 < -YOLO_EDGE_TOL
                or cx + bw / 2 > 1 + YOLO_EDGE_TOL
                or cy + bh / 2 > 1 + YOLO_EDGE_TOL
            ):
                p.add("yolo-rows", f"{where}: box reaches outside the image")
            xyxy = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            rows.append(_Row(cid, xyxy, polygon=False))
            kinds.add(False)
        elif len(tokens) >= 7 and len(tokens) % 2 == 1:
            xs, ys = vals[0::2], vals[1::2]
            if max(xs) <= min(xs) or max(ys) <= min(ys):
                p.add("yolo-rows", f"{where}: polygon has zero width or height (a degenerate box)")
                return None
            xyxy = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
            rows.append(_Row(cid, xyxy, polygon=True))
            kinds.add(True)
        else:
            p.add(
                "yolo-rows",
                f"{where}: {len(tokens)} values; expected 5 (class cx cy w h) or an odd count "
                ">= 7 (class x y x y ...)",
            )
            return None
    if len(kinds) > 1:
        p.add("yolo-rows", f"{rel}: mixes box rows and polygon rows (Ultralytics drops polygons)")
        return None
    return rows


# ----------------------------------------------------------------------------------------------
# COCO vs YOLO


def _segment_box(
    ann: _Ann, size_hw: tuple[int, int]
) -> tuple[tuple[float, float, float, float], bool]:
    """The box a YOLO-seg row should have, and whether it is exact.

    Exact: the extent of the COCO mask's polygons (a YOLO-seg row joins every part into one).
    Without a COCO mask (boxes-only COCO next to YOLO-seg) only containment in the COCO box can
    be checked.
    """
    seg = ann.segmentation
    polys: list[list[float]] = []
    if isinstance(seg, list) and seg:
        polys = seg
    elif isinstance(seg, dict):
        try:
            polys = mask_to_polygons(decode_rle(seg))
        except Exception:
            polys = []
    parts = [p for p in polys if len(p) >= 6]
    if not parts:
        return ann.xyxy, False
    x1, y1, x2, y2 = (float(v) for v in polygon_xyxy(parts))
    h, w = size_hw
    return (max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))), True


def _box_matches(got: tuple[float, ...], want: tuple[float, ...], exact: bool, tol: float) -> bool:
    if exact:
        return all(abs(a - b) <= tol for a, b in zip(got, want, strict=True))
    return (
        got[0] >= want[0] - tol
        and got[1] >= want[1] - tol
        and got[2] <= want[2] + tol
        and got[3] <= want[3] + tol
    )


def _compare(
    split: str,
    coco: _Split,
    yolo: dict[str, tuple[tuple[int, int], list[_Row]] | None],
    p: _Problems,
) -> None:
    """`yolo[name]` is None for an image whose label file has a problem (already reported)."""
    for name in sorted(set(coco.images) - set(yolo)):
        p.add("agree", f"COCO/YOLO disagree: split {split}: {name} is in COCO, not in YOLO")
    for name in sorted(set(yolo) - set(coco.images)):
        p.add("agree", f"COCO/YOLO disagree: split {split}: {name} is in YOLO, not in COCO")
    for name in sorted(set(coco.images) & set(yolo)):
        checked = yolo[name]
        if checked is None:
            continue
        (size, anns), (_, rows) = coco.images[name], checked
        where = f"COCO/YOLO disagree: split {split}: {name}"
        if len(anns) != len(rows):
            p.add("agree", f"{where}: {len(anns)} COCO annotations vs {len(rows)} YOLO rows")
            continue
        if Counter(a.class_id for a in anns) != Counter(r.class_id for r in rows):
            p.add("agree", f"{where}: classes differ between COCO and YOLO")
            continue
        tol = AGREE_REL_TOL * max(size) + AGREE_ABS_TOL_PX
        unused = list(rows)
        for ann in anns:
            want, exact = _segment_box(ann, size) if rows and rows[0].polygon else (ann.xyxy, True)
            match = next(
                (
                    r
                    for r in unused
                    if r.class_id == ann.class_id and _box_matches(r.xyxy, want, exact, tol)
                ),
                None,
            )
            if match is None:
                p.add(
                    "agree",
                    f"{where}: COCO box {[round(v, 4) for v in want]} (class {ann.class_id}) has "
                    "no YOLO row with the same class and box",
                )
                break
            unused.remove(match)
