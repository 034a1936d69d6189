"""Cut RGBA object crops out of labeled datasets (COCO, YOLO) or the built-in procedural objects.

A crop is the object's tight box with alpha from its instance mask (COCO with masks) or a
rectangular alpha of 255 (boxes only: COCO without masks, YOLO detect labels). Training code
then fits every crop into an R x R square, aspect preserved, padding transparent (`to_square`).

numpy + Pillow only (pycocotools for RLE/polygon masks); no torch here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from synthvision.errors import SpecError
from synthvision.structures import Instances

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Crop:
    """One object: `rgba` uint8 (h, w, 4), its class name and a stable `key` (image/annotation)."""

    rgba: npt.NDArray[np.uint8]
    class_name: str
    key: str


@dataclass(frozen=True)
class DataSource:
    """Where training crops come from; JSON-serialisable so a run can re-cut the same crops.

    kind: "coco" (path = instances JSON), "yolo" (path = dataset root with data.yaml) or
    "procedural" (path unused; `count_per_class` crops per class from `seed`).
    """

    kind: str
    path: str = ""
    images: str = ""  # COCO image folder ("" = next to the annotations: ../images, or same dir)
    split: str = "train"  # YOLO split
    classes: tuple[str, ...] = ()  # () = every class in the dataset
    min_size: int = 16
    use_masks: bool = True
    count_per_class: int = 500
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        d = dict(d)
        d["classes"] = tuple(d.get("classes", ()))
        return cls(**d)


def resolve_source(
    data: str,
    *,
    kind: str = "auto",
    images: str = "",
    split: str = "train",
    classes: Sequence[str] = (),
    min_size: int = 16,
    use_masks: bool = True,
    count_per_class: int = 500,
    seed: int = 0,
) -> DataSource:
    """Work out the data kind from `data` (a COCO JSON, a COCO/YOLO folder, or "procedural")."""
    if min_size < 1:
        raise SpecError(f"--min-size must be at least 1 px (got {min_size})")
    if kind not in ("auto", "coco", "yolo", "procedural"):
        raise SpecError(f"--format must be auto, coco, yolo or procedural (got {kind!r})")
    common: dict[str, Any] = dict(
        classes=tuple(classes),
        min_size=min_size,
        use_masks=use_masks,
        seed=seed,
        count_per_class=count_per_class,
    )
    if kind == "procedural" or (kind == "auto" and data == "procedural"):
        return DataSource(kind="procedural", **common)
    p = Path(data)
    if not data.strip() or not p.exists():  # Path("") is ".": an empty DATA is not the cwd
        raise SpecError(
            f"training data {data!r} does not exist (give a COCO instances JSON, a COCO or YOLO "
            "dataset folder, or 'procedural')"
        )
    if kind in ("auto", "yolo") and p.is_dir() and (p / "data.yaml").is_file():
        return DataSource(kind="yolo", path=str(p.resolve()), split=split, **common)
    if kind == "yolo":
        raise SpecError(f"{data}: not a YOLO dataset (no data.yaml in it)")
    if p.is_dir() and (p / "coco" / "annotations").is_dir():  # a synthvision build folder
        p = p / "coco"
    if p.is_dir():  # a COCO dataset folder: annotations/instances*.json
        from synthvision.formats.coco import coco_split_name

        found = (
            sorted((p / "annotations").glob("instances*.json"))
            if (p / "annotations").is_dir()
            else []
        )
        if not found:
            raise SpecError(
                f"{data}: found neither data.yaml (YOLO) nor annotations/instances*.json (COCO)"
            )
        # The file of --split (instances_train2017.json is "train"); never another split's file
        # in silence: training on val when asked for train would also leak it into the audit.
        names = {f: coco_split_name(f) for f in found}
        preferred = [f for f in found if names[f] == split] or [
            f for f in found if names[f].startswith(split)
        ]
        if not preferred:
            have = ", ".join(names.values())
            raise SpecError(
                f"{data}: no COCO annotations of split {split!r} (it has: {have}); "
                "choose one with --split"
            )
        p = preferred[0]
    if p.suffix.lower() != ".json":
        raise SpecError(f"{data}: expected a COCO instances .json file")
    return DataSource(kind="coco", path=str(p.resolve()), images=images, **common)


def load_crops(source: DataSource) -> list[Crop]:
    """All crops of `source` passing the class filter and minimum size, in a stable order."""
    if source.kind == "coco":
        crops = crops_from_coco(
            source.path, source.images or None, source.classes, source.min_size, source.use_masks
        )
    elif source.kind == "yolo":
        crops = crops_from_yolo(source.path, source.split, source.classes, source.min_size)
    elif source.kind == "procedural":
        crops = crops_from_procedural(source.classes, source.count_per_class, source.seed)
    else:
        raise SpecError(f"unknown data kind {source.kind!r}")
    if not crops:
        raise SpecError(
            f"no crops of at least {source.min_size} px in {source.path or source.kind}"
            + (f" for classes {', '.join(source.classes)}" if source.classes else "")
        )
    return crops


def _check_classes(wanted: Sequence[str], available: Iterable[str], where: str) -> None:
    avail = list(available)
    repeated = sorted({c for c in wanted if list(wanted).count(c) > 1})
    if repeated:
        raise SpecError(f"{where}: class(es) {', '.join(map(repr, repeated))} given more than once")
    missing = [c for c in wanted if c not in avail]
    if missing:
        raise SpecError(
            f"{where}: unknown class(es) {', '.join(map(repr, missing))}; "
            f"the dataset has: {', '.join(avail)}"
        )


def cut_crop(
    image: npt.NDArray[np.uint8], xyxy: Sequence[float], mask: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.uint8] | None:
    """RGBA (h, w, 4) of the box (pixel-edge coords) in an RGB image; alpha = mask or 255.

    With a mask the box is tightened to the mask's extent inside the box; None if empty.
    """
    h_img, w_img = image.shape[:2]
    x0, y0 = max(0, int(np.floor(xyxy[0]))), max(0, int(np.floor(xyxy[1])))
    x1, y1 = min(w_img, int(np.ceil(xyxy[2]))), min(h_img, int(np.ceil(xyxy[3])))
    if x1 <= x0 or y1 <= y0:
        return None
    if mask is not None:
        sub = mask[y0:y1, x0:x1]
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        if rows.size == 0:
            return None
        y0, y1, x0, x1 = y0 + rows[0], y0 + rows[-1] + 1, x0 + cols[0], x0 + cols[-1] + 1
        alpha = mask[y0:y1, x0:x1].astype(np.uint8) * 255
    else:
        alpha = np.full((y1 - y0, x1 - x0), 255, np.uint8)
    return np.dstack([image[y0:y1, x0:x1, :3], alpha]).astype(np.uint8)


def _read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _crops_of_image(
    rgb: npt.NDArray[np.uint8],
    inst: Instances,
    names: Sequence[str],
    wanted: set[str],
    min_size: int,
    key_prefix: str,
) -> list[Crop]:
    """Crops of the wanted classes' instances of one (H, W, 3) image; keys `<prefix>:<k>`."""
    masks = inst.masks
    out = []
    for k in range(len(inst.xyxy)):
        name = names[int(inst.class_id[k])]
        x0, y0, x1, y1 = (float(v) for v in inst.xyxy[k])
        if name not in wanted or min(x1 - x0, y1 - y0) < min_size:
            continue
        rgba = cut_crop(rgb, (x0, y0, x1, y1), None if masks is None else masks[k])
        if rgba is None or min(rgba.shape[:2]) < min_size:
            continue
        out.append(Crop(rgba=rgba, class_name=name, key=f"{key_prefix}:{k}"))
    return out


def crops_from_coco(
    annotations: str | Path,
    images_dir: str | Path | None = None,
    classes: Sequence[str] = (),
    min_size: int = 16,
    use_masks: bool = True,
) -> list[Crop]:
    """Crops of a COCO instances file (read by `formats.coco.load_coco`).

    Alpha is the instance mask (RLE or polygons) with `use_masks`, else the filled box; an
    annotation without segmentation gets its box. Crowd annotations (`iscrowd: 1`) are skipped.
    Images are looked up under `images_dir` (and its split subfolder), else in the usual
    layouts next to the annotations (`coco_image_dir_candidates`: `../images/{split}`, ...).
    Keys are `coco:<image id>:<k>`, k the annotation's rank by id within its image.
    """
    from synthvision.formats.coco import (
        coco_image_dir_candidates,
        coco_split_name,
        load_coco,
    )

    ann_path = Path(annotations)
    if not ann_path.is_file():
        raise SpecError(f"{ann_path}: COCO annotations file not found")
    try:
        # a crowd region covers a group of objects: not one object's appearance
        class_map, images = load_coco(ann_path, with_masks=use_masks, include_crowd=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{ann_path}: cannot read COCO annotations ({exc})") from None
    _check_classes(classes, class_map.names, str(ann_path))
    wanted = set(classes) if classes else set(class_map.names)
    wanted_ids = {class_map.id(n) for n in wanted}
    split = coco_split_name(ann_path)
    given = Path(images_dir) if images_dir else None
    roots = [r for r in coco_image_dir_candidates(ann_path, split, given) if r.is_dir()]
    out: list[Crop] = []
    for img in images:
        inst = img.instances
        if not np.isin(inst.class_id, list(wanted_ids)).any():
            continue
        path = next((r / img.file_name for r in roots if (r / img.file_name).is_file()), None)
        if path is None:
            raise SpecError(
                f"image {img.file_name!r} not found under {', '.join(map(str, roots))} "
                "(give the image folder with --images)"
            )
        rgb = _read_rgb(path)
        out += _crops_of_image(rgb, inst, class_map.names, wanted, min_size, f"coco:{img.image_id}")
    return out


def crops_from_yolo(
    root: str | Path, split: str = "train", classes: Sequence[str] = (), min_size: int = 16
) -> list[Crop]:
    """Crops of a YOLO dataset (read by `formats.yolo.load_yolo`): box rows give rectangular
    alpha, polygon rows their rasterised polygon. Keys are `yolo:<split>/<file name>:<row>`."""
    from synthvision.formats.yolo import load_yolo

    root = Path(root)
    class_map, images = load_yolo(root, split, with_masks=True)
    _check_classes(classes, class_map.names, str(root))
    wanted = set(classes) if classes else set(class_map.names)
    wanted_ids = {class_map.id(n) for n in wanted}
    out: list[Crop] = []
    for img in images:
        inst = img.instances
        if not np.isin(inst.class_id, list(wanted_ids)).any():
            continue
        rgb = _read_rgb(root / "images" / split / img.file_name)
        out += _crops_of_image(
            rgb, inst, class_map.names, wanted, min_size, f"yolo:{split}/{img.file_name}"
        )
    return out


def procedural_class_names() -> tuple[str, ...]:
    from synthvision.generators.procedural import PROCEDURAL_CLASSES

    return tuple(PROCEDURAL_CLASSES)


def crops_from_procedural(
    classes: Sequence[str] = (), count_per_class: int = 500, seed: int = 0, size: int = 64
) -> list[Crop]:
    """`count_per_class` crops per class from the built-in procedural object source.

    Request sizes vary in [size/2, size] x aspect [0.75, 1.33] so the crops look like those the
    compose stage asks for. Keys are `procedural:<seed>:<class>:<k>`.
    """
    from synthvision import randomness
    from synthvision.generators.base import OBJECT_SOURCES, CropRequest

    names = tuple(classes) or procedural_class_names()
    _check_classes(names, procedural_class_names(), "procedural objects")
    source = OBJECT_SOURCES.create("procedural", {}, "objects", class_names=names)
    out: list[Crop] = []
    for ci, name in enumerate(names):
        requests = []
        for k in range(count_per_class):
            gen = randomness.rng(seed, ci * count_per_class + k, "cvae.procedural.size")
            side = float(gen.uniform(size / 2, size))
            aspect = float(gen.uniform(0.75, 1.333))
            hw = (max(4, round(side / np.sqrt(aspect))), max(4, round(side * np.sqrt(aspect))))
            req_seed = randomness.derive_seed(
                seed, ci * count_per_class + k, f"cvae.procedural.{name}"
            )
            requests.append(CropRequest(class_name=name, size_hw=hw, seed=req_seed, index=k))
        for k, rgba in enumerate(source.crops(requests)):
            out.append(
                Crop(
                    rgba=np.asarray(rgba, np.uint8),
                    class_name=name,
                    key=f"procedural:{seed}:{name}:{k}",
                )
            )
    return out


def to_square(rgba: npt.NDArray[np.uint8], resolution: int) -> npt.NDArray[np.uint8]:
    """Fit an RGBA crop (h, w, 4) into (R, R, 4): aspect kept, centred, transparent padding.

    Colour is premultiplied while resampling so transparent pixels do not bleed into edges.
    """
    h, w = rgba.shape[:2]
    scale = resolution / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    premul = np.dstack([rgba[..., :3].astype(np.float32) * a, a[..., 0] * 255.0])
    chans = [
        np.asarray(
            Image.fromarray(premul[..., i]).resize(
                (nw, nh), Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX
            ),
            dtype=np.float32,
        )
        for i in range(4)
    ]
    res = np.stack(chans, axis=-1)  # (nh, nw, 4), colour premultiplied
    alpha = res[..., 3:4] / 255.0
    rgb = np.where(alpha > 1e-3, res[..., :3] / np.maximum(alpha, 1e-3), 0.0)
    out = np.zeros((resolution, resolution, 4), np.uint8)
    y0, x0 = (resolution - nh) // 2, (resolution - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw, :3] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    out[y0 : y0 + nh, x0 : x0 + nw, 3] = np.clip(np.rint(res[..., 3]), 0, 255).astype(np.uint8)
    return out


def squares(crops: Sequence[Crop], resolution: int) -> npt.NDArray[np.uint8]:
    """(N, R, R, 4) uint8 of every crop fitted by `to_square`."""
    if not crops:
        return np.zeros((0, resolution, resolution, 4), np.uint8)
    return np.stack([to_square(c.rgba, resolution) for c in crops])


def fingerprint(crops: Sequence[Crop]) -> str:
    """sha256 over class names, keys and pixels: identifies the exact training data."""
    h = hashlib.sha256()
    for c in crops:
        h.update(f"{c.key}\0{c.class_name}\0{c.rgba.shape}\0".encode())
        h.update(np.ascontiguousarray(c.rgba).tobytes())
    return h.hexdigest()


def split_holdout(
    crops: Sequence[Crop], fraction: float, seed: int
) -> tuple[list[Crop], list[Crop]]:
    """(train, held_out): a per-class random `fraction` held out for the memorization audit.

    Per class, so every class keeps training data; draws come from (seed, "cvae.holdout").
    """
    from synthvision import randomness

    if not 0.0 <= fraction < 1.0:
        raise SpecError(f"--holdout must be in [0, 1) (got {fraction})")
    train: list[Crop] = []
    held: list[Crop] = []
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(crops):
        by_class.setdefault(c.class_name, []).append(i)
    held_idx: set[int] = set()
    for ci, (_name, idx) in enumerate(sorted(by_class.items())):
        n_held = round(len(idx) * fraction) if len(idx) > 1 else 0
        n_held = min(n_held, len(idx) - 1)
        perm = randomness.rng(seed, ci, "cvae.holdout").permutation(len(idx))
        held_idx.update(idx[j] for j in perm[:n_held])
    for i, c in enumerate(crops):
        (held if i in held_idx else train).append(c)
    return train, held


def composite_on(
    rgba: npt.NDArray[np.uint8], background: tuple[int, int, int] = (128, 128, 128)
) -> npt.NDArray[np.uint8]:
    """RGB (h, w, 3) of an RGBA crop over a flat colour (for pictures and features)."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32)
    return np.clip(np.rint(rgba[..., :3] * a + bg * (1 - a)), 0, 255).astype(np.uint8)


def grid_image(
    rows: Sequence[Sequence[npt.NDArray[np.uint8]]],
    cell: int = 64,
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """A PNG-ready grid of RGBA crops over a checkerboard, one list per row, optional row labels."""
    from PIL import ImageDraw

    n_cols = max((len(r) for r in rows), default=1)
    label_w = 0 if not labels else 8 + 6 * max(len(s) for s in labels)
    width = label_w + n_cols * (cell + pad) + pad
    height = len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, max(height, 1)), (255, 255, 255))
    yy, xx = np.mgrid[0:cell, 0:cell]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 200, 235).astype(np.uint8)
    checker_rgb = np.dstack([checker] * 3)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (cell + pad)
        if labels:
            draw.text((4, y + cell // 2 - 5), labels[r], fill=(0, 0, 0))
        for c, crop in enumerate(row):
            sq = to_square(crop, cell) if crop.shape[:2] != (cell, cell) else crop
            a = sq[..., 3:4].astype(np.float32) / 255.0
            tile = np.clip(sq[..., :3] * a + checker_rgb * (1 - a), 0, 255).astype(np.uint8)
            canvas.paste(Image.fromarray(tile), (label_w + pad + c * (cell + pad), y))
    return canvas
