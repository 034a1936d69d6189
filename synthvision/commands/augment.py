"""`synthvision augment`: augment an existing COCO or YOLO dataset into a new COCO + YOLO one.

    synthvision augment SRC OUT --preset weather --variants 3 [--keep-original]

SRC (auto-detected):
- a COCO annotations file (`instances_train.json`), its images found next to it
  (`images/{split}/`, `images/`, `{split}/`, or `--images DIR`);
- a folder holding COCO annotation files (`annotations/instances_*.json`, one split each; a
  single `instances.json` is the train split);
- a YOLO folder with a `data.yaml` (`images/{split}/`, `labels/{split}/`);
- a synthvision build folder (its `coco/` is used, else its `yolo/`).

COCO category ids and supercategories are kept (COCO's ids 1..90 with gaps stay as they are);
crowd regions (`iscrowd: 1`) are not carried over, and the manifest counts them.

OUT gets the layout of a build (`coco/`, `yolo/`, `spec.yaml`, `manifest.json` last), so
`synthvision validate OUT` checks it, plus `provenance.jsonl` (one line per output image: its
source file, variant, seed, the drawn augmentation parameters, its size and labels). Source image
k (counted over splits in order) becomes output images k * (variants + keep_original) + slot,
named by that index; variant v of it is seeded from (--seed, k, v), so the output is
reproducible. An interrupted run is resumed by the same command: a provenance line is written
once its output's files exist, so the source images whose lines are all there are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from synthvision.errors import SpecError
from synthvision.outdir import PROVENANCE

if TYPE_CHECKING:  # numpy and the rest load only when the command runs: `--help` stays fast
    import numpy as np
    import numpy.typing as npt

    from synthvision.structures import ClassMap

ImageFormat = Literal["jpeg", "png"]
CocoMasks = Literal["rle", "polygon", "none"]
YoloTask = Literal["detect", "segment"]


# --------------------------------------------------------------------------------- sources


@dataclass
class SourceImage:
    split: str
    path: Path
    size_hw: tuple[int, int]
    instances: Any  # synthvision.structures.Instances (imported lazily)


@dataclass
class SourceDataset:
    kind: Literal["coco", "yolo"]
    root: Path
    class_map: ClassMap  # COCO sources keep their category ids and supercategories
    splits: list[str]
    has_masks: bool
    images: Iterator[SourceImage]  # split by split, in file order
    num_images: int
    crowd_regions: int = 0  # COCO `iscrowd: 1` annotations, which are not carried over
    # What the source is made of: COCO JSON files and image folders; YOLO's data.yaml, label
    # files and images.
    state_paths: list[Path] = field(default_factory=list)

    def state(self) -> str:
        """Digest of `state_paths`: names, and a file's size and modification time. A resume
        keeps earlier outputs only while it is the same."""
        import stat

        stats: list[list[Any]] = []
        for path in self.state_paths:  # one stat call each: YOLO lists every image
            st = path.stat()
            kind = [] if stat.S_ISDIR(st.st_mode) else [st.st_size, st.st_mtime_ns]
            stats.append([os.path.abspath(path), *kind])
        return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def _load_rgb(path: Path, size_hw: tuple[int, int] | None) -> npt.NDArray[np.uint8]:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise SpecError(f"{path}: cannot read the image ({exc})") from None
    if size_hw is not None and image.shape[:2] != tuple(size_hw):
        raise SpecError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but its annotations say "
            f"{size_hw[1]}x{size_hw[0]}; fix the annotation file"
        )
    return image


def _read_coco(ann_paths: list[Path], images: Path | None) -> SourceDataset:
    from synthvision.formats.coco import (
        annotation_record,
        coco_class_map,
        coco_images_dir,
        coco_split_name,
    )
    from synthvision.formats.records import instances_from_records

    docs: list[tuple[Path, str, dict[str, Any]]] = []
    class_map = None
    for ann_path in ann_paths:
        try:
            doc = json.loads(ann_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecError(f"{ann_path}: not a readable COCO JSON file ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise SpecError(f"{ann_path}: not a COCO instances file (no 'images' list)")
        if not doc.get("categories"):
            raise SpecError(f"{ann_path}: the COCO file has no categories")
        try:
            these = coco_class_map(doc["categories"])
        except SpecError as exc:
            raise SpecError(f"{ann_path}: {exc}") from None
        if class_map is not None and (these.names, these.coco_ids) != (
            class_map.names,
            class_map.coco_ids,
        ):
            raise SpecError(f"{ann_path}: categories differ from {ann_paths[0].name}'s")
        class_map = these
        docs.append((ann_path, coco_split_name(ann_path), doc))
    assert class_map is not None
    crowd = sum(bool(a.get("iscrowd", 0)) for _, _, d in docs for a in d.get("annotations", []))
    splits = [s for _, s, _ in docs]
    if len(set(splits)) != len(splits):
        raise SpecError(f"two COCO files map to the same split name: {splits}")
    has_masks = any(
        a.get("segmentation") and not a.get("iscrowd", 0)
        for _, _, d in docs
        for a in d.get("annotations", [])
    )

    # Found now, before OUT is claimed: a wrong --images is an error with nothing written.
    folders = [
        coco_images_dir(p, split, str(d["images"][0]["file_name"]) if d["images"] else None, images)
        for p, split, d in docs
    ]

    def _iter() -> Iterator[SourceImage]:
        for (ann_path, split, doc), folder in zip(docs, folders, strict=True):
            class_of = {class_map.coco_category_id(i): i for i in range(len(class_map))}
            by_image: dict[int, list[dict[str, Any]]] = {}
            for a in doc.get("annotations", []):
                if not a.get("iscrowd", 0):  # crowd regions are not instances: dropped
                    by_image.setdefault(int(a["image_id"]), []).append(a)
            entries = doc["images"]
            for img in entries:
                size_hw = (int(img["height"]), int(img["width"]))
                anns = sorted(by_image.get(int(img["id"]), []), key=lambda a: int(a["id"]))
                try:
                    records = [annotation_record(a, class_of) for a in anns]
                except SpecError as exc:
                    raise SpecError(f"{ann_path}: {exc}") from None
                # Masks when this image has any segmentation (others then get filled boxes).
                with_masks = any(r.get("rle") or r.get("polygons") for r in records)
                inst = instances_from_records(records, size_hw, with_masks=with_masks)
                yield SourceImage(split, folder / str(img["file_name"]), size_hw, inst)

    total = sum(len(d["images"]) for _, _, d in docs)
    root = ann_paths[0].parent
    state = [*ann_paths, *folders]
    return SourceDataset("coco", root, class_map, splits, has_masks, _iter(), total, crowd, state)


def _yolo_has_polygons(labels_dir: Path) -> bool:
    from synthvision.formats.yolo import read_label_text

    if not labels_dir.is_dir():
        return False
    for label in sorted(labels_dir.glob("*.txt")):
        for line in read_label_text(label).splitlines():
            if line.strip():
                return len(line.split()) > 5  # first row decides: files never mix row kinds
    return False


def _read_yolo(root: Path) -> SourceDataset:
    from synthvision.formats.yolo import DATA_YAML, list_images, load_yolo, read_class_map

    class_map = read_class_map(root / DATA_YAML)
    images_root = root / "images"
    splits = (
        sorted(p.name for p in images_root.iterdir() if p.is_dir()) if images_root.is_dir() else []
    )
    if not splits:
        raise SpecError(f"{root}: a YOLO dataset needs images/{{split}}/ folders next to data.yaml")
    polygons = {s: _yolo_has_polygons(root / "labels" / s) for s in splits}

    def _iter() -> Iterator[SourceImage]:
        for split in splits:
            _, items = load_yolo(root, split, with_masks=polygons[split])
            for item in items:
                path = images_root / split / item.file_name
                yield SourceImage(split, path, item.size_hw, item.instances)

    images = [path for s in splits for path in list_images(images_root / s)]
    labels = [root / DATA_YAML, *sorted((root / "labels").glob("*/*.txt"))]
    has_masks = any(polygons.values())
    state = [*labels, *images]
    return SourceDataset("yolo", root, class_map, splits, has_masks, _iter(), len(images), 0, state)


def _coco_files(folder: Path) -> list[Path]:
    """COCO annotation files of a dataset folder, one per split."""
    patterns = ("annotations/instances*.json", "instances*.json", "*/_annotations.coco.json")
    for pattern in patterns:  # instances.json (no split suffix) is the train split
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def detect_source(src: Path, images: Path | None = None, fmt: str = "auto") -> SourceDataset:
    """Open SRC as a COCO or YOLO dataset (see the module docstring); COCO first."""
    if not src.exists():
        raise SpecError(f"{src} does not exist: give a COCO annotations file or a dataset folder")
    if fmt not in ("auto", "coco", "yolo"):
        raise SpecError(f"--format must be auto, coco or yolo, got {fmt!r}")
    if src.is_file():
        if src.suffix.lower() == ".json" and fmt != "yolo":
            return _read_coco([src], images)
        if src.suffix.lower() in (".yaml", ".yml") and fmt != "coco":
            if src.name != "data.yaml":  # the reader takes the folder's data.yaml, not this file
                raise SpecError(
                    f"{src}: a YOLO dataset is read from its folder's data.yaml (with images/ and "
                    "labels/ beside it); give that folder, or name this file data.yaml"
                )
            return _read_yolo(src.parent)
        raise SpecError(f"{src}: give a COCO .json file, a YOLO data.yaml, or a dataset folder")
    coco_root = src / "coco" if (src / "coco").is_dir() else src  # a synthvision build folder
    coco_files = _coco_files(coco_root) if fmt != "yolo" else []
    if coco_files:
        return _read_coco(coco_files, images)
    yolo_root = src / "yolo" if (src / "yolo" / "data.yaml").is_file() else src
    if fmt != "coco" and (yolo_root / "data.yaml").is_file():
        return _read_yolo(yolo_root)
    wanted = {
        "auto": "COCO annotations (annotations/instances*.json) or a YOLO data.yaml",
        "coco": "COCO annotations (annotations/instances*.json)",
        "yolo": "a YOLO data.yaml",
    }[fmt]
    raise SpecError(f"{src}: found no {wanted}; give the dataset folder or the .json file")


# ---------------------------------------------------------------------------------- writing


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (the COCO and YOLO trees share image files), else copy."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _finished_prefix(out: Path, per_source: int) -> tuple[int, int]:
    """(source images whose outputs an interrupted run of the same settings finished, bytes of
    `provenance.jsonl` their lines fill).

    A line is written once its output's image and label files exist, in output order (output i
    on line i). A torn last line, a line missing its files or its labels (an older version's),
    and the lines of a half-done source image do not count: that image is made again.
    """
    path = out / PROVENANCE
    if not path.is_file():
        return 0, 0
    lines = end = done = done_end = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = json.loads(raw) if raw.endswith(b"\n") else None
            except ValueError:
                line = None
            if not (isinstance(line, dict) and line.get("index") == lines and _on_disk(out, line)):
                break
            lines, end = lines + 1, end + len(raw)
            if lines % per_source == 0:
                done, done_end = lines // per_source, end
    return done, done_end


def _recorded_source_state(out: Path) -> str | None:
    """The `SourceDataset.state` the run that wrote OUT's spec.yaml started from."""
    try:
        text = (out / "spec.yaml").read_text(encoding="utf-8")
        doc = json.loads(text[text.index("{") :])
    except (OSError, ValueError):
        return None
    return doc.get("source_state") if isinstance(doc, dict) else None


def _remove_unlisted_outputs(out: Path) -> None:
    """Remove the image and label files of OUT that no provenance line names (stale outputs of
    an interrupted run whose source images moved); index-named files only, as `own_files`."""
    from synthvision.outdir import own_files

    listed: set[tuple[str, str]] = set()
    with open(out / PROVENANCE, "rb") as f:
        for raw in f:
            line = json.loads(raw)
            listed.add((str(line["split"]), Path(str(line["file_name"])).stem))
    for path in own_files(out, trees=("coco", "yolo")):
        if path.parent.parent.name in ("images", "labels"):
            if (path.parent.name, path.stem) not in listed:
                path.unlink()


def _made_from(line: dict[str, Any], item: SourceImage) -> bool:
    """Whether a provenance line is an output of source image `item`."""
    return line.get("source_file") == str(item.path) and line.get("split") == item.split


def _on_disk(out: Path, line: dict[str, Any]) -> bool:
    if not {"split", "file_name", "height", "width", "instances"} <= line.keys():
        return False
    split, name = str(line["split"]), str(line["file_name"])
    label = out / "yolo" / "labels" / split / f"{Path(name).stem}.txt"
    images = (out / tree / "images" / split / name for tree in ("coco", "yolo"))
    return label.is_file() and all(p.is_file() for p in images)


def _fingerprint(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _refuse_overlap(src: Path, images: Path | None, out: Path) -> None:
    """OUT may not hold the source: writing (or --overwrite clearing) OUT would destroy it.
    Nor may it lie inside the source's folder: its images would join the source dataset (under
    images/train, Ultralytics trains on them) and a later augment of SRC would read them."""
    target = out.resolve()
    for given in (src, images):
        if given is None:
            continue
        path = given.resolve()
        if path == target or target in path.parents:
            raise SpecError(
                f"the output {str(out)!r} holds the source dataset {str(given)!r}: augmenting "
                "into it would overwrite the source; choose an OUT outside the source"
            )
        folder = (
            path
            if path.is_dir()
            else path.parent.parent  # root/annotations/instances_*.json
            if path.parent.name == "annotations"
            else path.parent
            if path.name == "data.yaml"
            else None  # a lone COCO file: its folder is not known to be a dataset
        )
        if folder is not None and folder in target.parents:
            raise SpecError(
                f"the output {str(out)!r} is inside the source dataset's folder {str(folder)!r}: "
                "its files would be added to the source; choose an OUT outside the source"
            )


def augment_dataset(
    src: Path,
    out: Path,
    *,
    preset: str | None = None,
    pipeline_file: Path | None = None,
    variants: int = 1,
    keep_original: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    images: Path | None = None,
    source_format: str = "auto",
    min_visibility: float | None = None,
    min_area_px: float | None = None,
    image_format: ImageFormat = "jpeg",
    jpeg_quality: int = 90,
    coco_masks: CocoMasks | None = None,
    yolo_task: YoloTask | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Augment the dataset at `src` into `out` (COCO + YOLO); returns the manifest.

    `min_visibility` / `min_area_px`: None keeps the box settings a pipeline file saved with
    `Augmenter.save` carries (else the defaults 0.3 / 16 px); a value given always wins.

    `coco_masks` defaults to "rle" when the source has masks (else "none"); `yolo_task` to
    "segment" for a YOLO source with polygon rows (else "detect").
    """
    from pydantic import ValidationError

    from synthvision import __version__
    from synthvision.augment import Augmenter, output_index
    from synthvision.build import command_line
    from synthvision.config import AugmentSpec
    from synthvision.formats.coco import CocoWriter
    from synthvision.formats.images import write_bytes_atomic, write_image
    from synthvision.formats.records import instance_records
    from synthvision.formats.yolo import write_data_yaml, yolo_label_text
    from synthvision.outdir import (
        MANIFEST,
        prepare_output_dir,
        read_manifest,
        release_output_dir,
        remove_own_outputs,
        remove_stale_tmp,
    )
    from synthvision.progress import progress_bar
    from synthvision.registry import format_validation_error
    from synthvision.structures import Sample

    t0 = time.perf_counter()
    if preset is None and pipeline_file is None:
        raise SpecError("give --preset NAME or --pipeline FILE (an albumentations YAML/JSON)")
    if image_format not in ("jpeg", "png"):
        raise SpecError(f"--image-format must be jpeg or png, got {image_format!r}")
    if seed < 0:  # found here, not by numpy once OUT is half-written
        raise SpecError(f"--seed must be >= 0 (got {seed})")
    fields: dict[str, Any] = {"variants": variants, "keep_original": keep_original}
    # Only options the user gave count as explicit: a pipeline saved by Augmenter.save keeps
    # its own box settings otherwise (Augmenter.from_spec), as in a build spec.
    if min_visibility is not None:
        fields["min_visibility"] = min_visibility
    if min_area_px is not None:
        fields["min_area_px"] = min_area_px
    if preset is not None:
        fields["preset"] = preset
    if pipeline_file is not None:
        fields["file"] = str(pipeline_file)
    try:
        aug_spec = AugmentSpec(**fields)
    except ValidationError as exc:
        raise SpecError(f"augment options: {format_validation_error(exc)}") from None
    try:
        augmenter = Augmenter.from_spec(aug_spec)
    except SpecError as exc:  # name the command's options, not the spec keys
        message = (
            str(exc).replace("augment.preset:", "--preset:").replace("augment.file:", "--pipeline:")
        )
        raise SpecError(
            message.replace("augment.pipeline / augment.file", "--pipeline FILE")
        ) from None
    _refuse_overlap(src, images, out)
    source = detect_source(src, images, source_format)
    masks_mode: CocoMasks = coco_masks or ("rle" if source.has_masks else "none")
    task: YoloTask = yolo_task or (
        "segment" if source.kind == "yolo" and source.has_masks else "detect"
    )
    if masks_mode != "none" and not source.has_masks:
        masks_mode = "none"  # nothing to write: boxes only
    class_map = source.class_map
    per_source = variants + int(keep_original)
    settings = {
        "source": str(src.resolve()),
        "source_format": source.kind,
        "augment": aug_spec.model_dump(mode="json"),
        "pipeline": augmenter.to_dict(),
        "seed": seed,
        "export": {
            "formats": ["coco", "yolo"],
            "image_format": image_format,
            "jpeg_quality": jpeg_quality,
            "coco_masks": masks_mode,
            "yolo_task": task,
        },
    }
    resumed = prepare_output_dir(out, _fingerprint(settings), overwrite, option="OUT")
    try:
        if resumed and (out / MANIFEST).is_file():  # the same run already finished: nothing to do
            return read_manifest(out / MANIFEST)
        # An interrupted run of these settings: its finished source images are kept (the same
        # settings make the same bytes) unless the source changed since; anything else it wrote
        # is made again.
        source_state = source.state()
        same_source = resumed and _recorded_source_state(out) == source_state
        kept_images, kept_bytes = _finished_prefix(out, per_source) if same_source else (0, 0)
        moved = False  # a kept line turned out to name another source image
        if not kept_images:  # the user's own files stay
            remove_own_outputs(out, trees=("coco", "yolo"), files=(PROVENANCE, MANIFEST))
        remove_stale_tmp(out)
        write_bytes_atomic(
            out / "spec.yaml",
            "# Written by `synthvision augment` (not a build spec): what was augmented, and how.\n"
            + json.dumps(
                {
                    "kind": "augment",
                    "synthvision_version": __version__,
                    **settings,
                    "source_state": source_state,
                },
                indent=2,
            )
            + "\n",
        )

        suffix = ".png" if image_format == "png" else ".jpg"
        polygons = task == "segment" or masks_mode == "polygon"
        info = {
            "description": f"augmented copy of {src.name} ({augmenter.name})",
            "version": __version__,
            "contributor": "synthvision augment",
            "url": "",
            "year": 0,
            "date_created": "",
        }
        writers: dict[str, CocoWriter] = {}
        images_per_split = dict.fromkeys(source.splits, 0)
        per_class = [0] * len(class_map)
        dropped = 0
        try:
            for split in source.splits:
                (out / "coco" / "images" / split).mkdir(parents=True, exist_ok=True)
                (out / "yolo" / "images" / split).mkdir(parents=True, exist_ok=True)
                (out / "yolo" / "labels" / split).mkdir(parents=True, exist_ok=True)
                writers[split] = CocoWriter(
                    out / "coco" / "annotations" / f"instances_{split}.json",
                    class_map,
                    info={**info, "description": f"{info['description']} ({split})"},
                    mask_mode=masks_mode,
                )
            total_out = source.num_images * per_source
            if kept_images:  # the kept lines stay; those of a half-done image go
                with open(out / PROVENANCE, "r+b") as f:
                    f.truncate(kept_bytes)
            with (
                open(out / PROVENANCE, "a" if kept_images else "w", encoding="utf-8") as provenance,
                open(out / PROVENANCE, "rb") as kept,
                progress_bar(progress, total_out, kept_images * per_source, "augment") as tick,
            ):
                for k, item in enumerate(source.images):
                    top = int(item.instances.class_id.max()) if len(item.instances) else -1
                    if top >= len(class_map):
                        raise SpecError(
                            f"{item.path}: class id {top} has no name ({len(class_map)} "
                            "classes); fix the labels or the class list"
                        )
                    if k < kept_images:  # finished by the interrupted run: its labels, in order
                        at = kept.tell()
                        done = [json.loads(kept.readline()) for _ in range(per_source)]
                        if all(_made_from(line, item) for line in done):
                            for line in done:
                                records = line["instances"]
                                size_hw = (int(line["height"]), int(line["width"]))
                                name = str(line["file_name"])
                                writers[item.split].add_image(
                                    line["index"] + 1, name, size_hw, records
                                )
                                dropped += len(item.instances) - len(records)
                                for r in records:
                                    per_class[int(r["class_id"])] += 1
                                images_per_split[item.split] += 1
                            continue
                        # Made from another source image (a change the source state missed):
                        # this one and all after it are made again, their lines appended here.
                        kept_images, moved = k, True
                        with open(out / PROVENANCE, "r+b") as f:
                            f.truncate(at)
                    image = _load_rgb(item.path, item.size_hw)
                    meta = {"source_file": str(item.path), "source_split": item.split}
                    sample = Sample(k, image, item.instances, meta)
                    outs: list[Sample] = []
                    if keep_original:
                        outs.append(
                            Sample(
                                output_index(k, -1, variants, True),
                                image,
                                item.instances,
                                dict(meta),
                            )
                        )
                    indices = [output_index(k, v, variants, keep_original) for v in range(variants)]
                    outs.extend(augmenter.apply_variants(sample, seed, variants, indices=indices))
                    for o in outs:
                        name = f"{o.index:09d}{suffix}"
                        coco_image = out / "coco" / "images" / item.split / name
                        write_image(coco_image, o.image, jpeg_quality=jpeg_quality)
                        _link_or_copy(coco_image, out / "yolo" / "images" / item.split / name)
                        records = instance_records(
                            o.instances, coco_masks=masks_mode, polygons=polygons, size_hw=o.size_hw
                        )
                        writers[item.split].add_image(o.index + 1, name, o.size_hw, records)
                        dropped += len(item.instances) - len(records)
                        label = out / "yolo" / "labels" / item.split / f"{o.index:09d}.txt"
                        write_bytes_atomic(label, yolo_label_text(records, o.size_hw, task))
                        for r in records:
                            per_class[int(r["class_id"])] += 1
                        images_per_split[item.split] += 1
                        line = {
                            "index": o.index,
                            "file_name": name,
                            "split": item.split,
                            "height": o.size_hw[0],
                            "width": o.size_hw[1],
                            **o.metadata,
                            "instances": records,  # what a resumed run needs of this output
                        }
                        provenance.write(json.dumps(line, allow_nan=False) + "\n")
                        provenance.flush()  # after the files: a line means a finished output
                        tick(1)
            for writer in writers.values():
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        if moved:  # outputs the interrupted run made of source images that moved since
            _remove_unlisted_outputs(out)
        write_data_yaml(out / "yolo", class_map, source.splits, images_per_split)

        total = sum(images_per_split.values())
        seconds = time.perf_counter() - t0
        manifest = {
            "synthvision_version": __version__,
            "kind": "augment",
            **settings,
            "command": command_line(),
            "counts": {
                "source_images": source.num_images,
                "images": {"total": total, **images_per_split},
                "images_per_source": per_source,
                "instances": {
                    "total": sum(per_class),
                    "per_class": dict(zip(class_map.names, per_class, strict=True)),
                },
                "dropped_instances": dropped,
                # Regions over a group of objects (COCO `iscrowd: 1`) are not instances to train on.
                "crowd_regions_not_carried": source.crowd_regions,
            },
            "this_run": {  # a re-run after an interruption keeps what was finished
                "images_written": total - kept_images * per_source,
                "images_kept": kept_images * per_source,
            },
            "timings_s": {
                "total": round(seconds, 3),
                "images_per_s": round(total / seconds, 2) if seconds else None,
            },
            "outputs": {
                "coco": {s: f"coco/annotations/instances_{s}.json" for s in source.splits},
                "yolo": "yolo/data.yaml",
                "provenance": PROVENANCE,
            },
        }
        write_bytes_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # last: complete
        return manifest
    finally:
        release_output_dir(out)


# -------------------------------------------------------------------------------------- CLI


def augment_command(
    src: Annotated[
        Path,
        typer.Argument(
            help="COCO annotations .json, a folder with annotations/instances*.json, a YOLO "
            "folder with data.yaml, or a synthvision build folder."
        ),
    ],
    out: Annotated[
        str,  # not Path: Path("") is ".", and an empty OUT must not mean the cwd
        typer.Argument(metavar="OUT", help="Output folder (COCO + YOLO)."),
    ],
    preset: Annotated[
        str | None,
        typer.Option(help="light, medium, heavy, weather, night, camera or viewpoint."),
    ] = None,
    pipeline_file: Annotated[
        Path | None,
        typer.Option("--pipeline", help="albumentations YAML/JSON (A.save or Augmenter.save)."),
    ] = None,
    variants: Annotated[int, typer.Option(help="Augmented copies per source image.")] = 1,
    keep_original: Annotated[bool, typer.Option(help="Also write each source image.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the augmentation draws.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace synthvision's outputs in OUT (other files stay).")
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option(help="Images folder of a COCO file (default: found next to the file)."),
    ] = None,
    source_format: Annotated[
        str, typer.Option("--format", help="auto, coco or yolo (when SRC has both).")
    ] = "auto",
    min_visibility: Annotated[
        float | None,
        typer.Option(
            help="Drop instances less visible than this (0..1; default 0.3, or the value saved "
            "in a --pipeline file)."
        ),
    ] = None,
    min_area_px: Annotated[
        float | None,
        typer.Option(
            help="Drop instances smaller than this (default 16, or the value saved in a "
            "--pipeline file)."
        ),
    ] = None,
    image_format: Annotated[str, typer.Option(help="jpeg or png.")] = "jpeg",
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality 1..100.")] = 90,
    coco_masks: Annotated[
        str | None,
        typer.Option(help="rle, polygon or none (default: rle when SRC has masks, else none)."),
    ] = None,
    yolo_task: Annotated[
        str | None, typer.Option(help="detect or segment (default: as SRC).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Augment an existing COCO or YOLO dataset SRC into a new dataset OUT (COCO + YOLO)."""
    from synthvision.outdir import output_path

    out_dir = output_path(out, "OUT")
    if coco_masks not in (None, "rle", "polygon", "none"):
        raise SpecError(f"--coco-masks must be rle, polygon or none, got {coco_masks!r}")
    if yolo_task not in (None, "detect", "segment"):
        raise SpecError(f"--yolo-task must be detect or segment, got {yolo_task!r}")
    if image_format not in ("jpeg", "png") or not 1 <= jpeg_quality <= 100:
        raise SpecError("--image-format must be jpeg or png, --jpeg-quality in 1..100")
    manifest = augment_dataset(
        src,
        out_dir,
        preset=preset,
        pipeline_file=pipeline_file,
        variants=variants,
        keep_original=keep_original,
        seed=seed,
        overwrite=overwrite,
        images=images,
        source_format=source_format,
        min_visibility=min_visibility,
        min_area_px=min_area_px,
        image_format=image_format,  # type: ignore[arg-type]
        jpeg_quality=jpeg_quality,
        coco_masks=coco_masks,  # type: ignore[arg-type]
        yolo_task=yolo_task,  # type: ignore[arg-type]
        progress=progress,
    )
    counts = manifest["counts"]
    per_split = ", ".join(f"{k} {v}" for k, v in counts["images"].items() if k != "total")
    typer.echo(
        f"dataset: {out_dir}  ({counts['images']['total']} images from {counts['source_images']} "
        f"{manifest['source_format'].upper()} images: {per_split}; "
        f"{counts['instances']['total']} instances, {counts['dropped_instances']} dropped)"
    )
    kept = manifest.get("this_run", {}).get("images_kept", 0)
    if kept:
        typer.echo(f"  resumed: {kept} images finished by the interrupted run were kept")
    if counts.get("crowd_regions_not_carried"):
        typer.echo(
            f"  note: {counts['crowd_regions_not_carried']} crowd region(s) (iscrowd: 1) of the "
            "source are not carried over: they mark groups, not instances to train on"
        )
    typer.echo(f"  COCO:    {out_dir / 'coco' / 'annotations'}")
    typer.echo(f"  YOLO:    {out_dir / 'yolo' / 'data.yaml'}")
    typer.echo(f"  manifest: {out_dir / 'manifest.json'}")
