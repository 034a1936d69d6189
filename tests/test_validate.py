"""`validate_dataset`: silent on a good build folder, and finds each injected fault.

The build layout is written here by a small helper from hand-made samples (shard images
hard-linked into coco/ and yolo/), independent of build.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from synthvision.boxes import masks_to_xyxy
from synthvision.build import build as build_dataset
from synthvision.errors import SpecError
from synthvision.formats.coco import CocoWriter
from synthvision.formats.images import IMAGE_SUFFIX, encode_image, write_bytes_atomic
from synthvision.formats.records import instance_records
from synthvision.formats.yolo import write_data_yaml, yolo_label_text
from synthvision.structures import ClassMap, Instances, Sample
from synthvision.validate import validate_dataset

from .helpers import small_spec

CLASSES = ClassMap(("cat", "dog", "cone"))
SIZE_HW = (48, 64)


def _samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    h, w = SIZE_HW
    out = []
    for index in range(n):
        masks = []
        for _ in range(index % 3 + (index == 1)):
            m = np.zeros(SIZE_HW, np.uint8)
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, 14)), int(rng.integers(2, 14)))
            cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            if rng.random() < 0.5:  # a second part
                cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), 3, 1, -1)
            masks.append(m.astype(bool))
        stack = np.stack(masks) if masks else np.zeros((0, *SIZE_HW), bool)
        xyxy = masks_to_xyxy(stack).astype(np.float32)
        inst = Instances(xyxy, rng.integers(0, 3, len(masks)), masks=stack)
        image = rng.integers(0, 256, (*SIZE_HW, 3), dtype=np.uint8)
        out.append(Sample(index=index, image=image, instances=inst))
    return out


def write_build(
    out: Path,
    splits: dict[str, list[Sample]],
    coco_masks: str = "rle",
    yolo_task: str = "detect",
) -> Path:
    """The final build layout (see DESIGN.md), manifest written last."""
    shard = out / "shards" / "rank-00000" / "images"
    shard.mkdir(parents=True)
    suffix = IMAGE_SUFFIX["jpeg"]
    for split, samples in splits.items():
        coco_dir = out / "coco" / "images" / split
        yolo_img = out / "yolo" / "images" / split
        yolo_lbl = out / "yolo" / "labels" / split
        for d in (coco_dir, yolo_img, yolo_lbl):
            d.mkdir(parents=True)
        path = out / "coco" / "annotations" / f"instances_{split}.json"
        with CocoWriter(path, CLASSES, info={"description": "test"}, mask_mode=coco_masks) as w:  # type: ignore[arg-type]
            for s in samples:
                name = f"{s.index:09d}{suffix}"
                write_bytes_atomic(shard / name, encode_image(s.image, "jpeg"))
                os.link(shard / name, coco_dir / name)
                os.link(shard / name, yolo_img / name)
                recs = instance_records(
                    s.instances,
                    coco_masks=coco_masks,  # type: ignore[arg-type]
                    polygons=yolo_task == "segment",
                    size_hw=s.size_hw,
                )
                w.add_image(s.index + 1, name, s.size_hw, recs)
                text = yolo_label_text(recs, s.size_hw, yolo_task)  # type: ignore[arg-type]
                write_bytes_atomic(yolo_lbl / f"{s.index:09d}.txt", text)
    write_data_yaml(out / "yolo", CLASSES, list(splits))
    spec = {"name": "t", "export": {"formats": ["coco", "yolo"], "coco_masks": coco_masks,
                                    "yolo_task": yolo_task}}  # fmt: skip
    (out / "spec.yaml").write_text(yaml.safe_dump(spec))
    (out / "preview.png").write_bytes(encode_image(np.zeros((4, 4, 3), np.uint8), "png"))
    (out / "manifest.json").write_text(
        json.dumps({"counts": {k: len(v) for k, v in splits.items()}})
    )
    return out


@pytest.fixture
def build(tmp_path: Path) -> Path:
    samples = _samples(8)
    return write_build(tmp_path / "out", {"train": samples[:6], "val": samples[6:]})


def _edit_json(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _coco(build: Path, split: str = "train") -> Path:
    return build / "coco" / "annotations" / f"instances_{split}.json"


def _has(problems: list[str], *words: str) -> bool:
    return any(all(w in p for w in words) for p in problems)


@pytest.mark.parametrize(
    ("coco_masks", "yolo_task"), [("rle", "detect"), ("polygon", "segment"), ("none", "detect"),
                                  ("rle", "segment"), ("none", "segment")]
)  # fmt: skip
def test_good_build_is_valid(tmp_path: Path, coco_masks: str, yolo_task: str) -> None:
    samples = _samples(7, seed=1)
    out = write_build(tmp_path / "o", {"train": samples[:5], "val": samples[5:]}, coco_masks,
                      yolo_task)  # fmt: skip
    assert validate_dataset(out) == []


def test_bad_input_raises(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        validate_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError):
        validate_dataset(tmp_path / "file")


def test_missing_manifest(build: Path) -> None:
    (build / "manifest.json").unlink()
    problems = validate_dataset(build)
    assert len(problems) == 1 and "manifest.json" in problems[0]


def test_bad_bbox(build: Path) -> None:
    def shift(data: dict) -> None:  # type: ignore[type-arg]
        data["annotations"][0]["bbox"][0] += 1.0
        data["annotations"][1]["bbox"] = [60.0, 40.0, 10.0, 10.0]  # outside 64x48

    _edit_json(_coco(build), shift)
    problems = validate_dataset(build)
    assert _has(problems, "annotation 1", "tight box")
    assert _has(problems, "annotation 2", "outside")
    assert _has(problems, "COCO/YOLO disagree")  # the YOLO boxes no longer match either


def test_coco_contract_faults(build: Path) -> None:
    def break_it(data: dict) -> None:  # type: ignore[type-arg]
        del data["licenses"]

    _edit_json(_coco(build, "val"), break_it)

    def break_anns(data: dict) -> None:  # type: ignore[type-arg]
        a = data["annotations"]
        a[0]["area"] = 0
        a[1]["iscrowd"] = 1
        a[2]["id"] = a[3]["id"]
        a[4]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]

    _edit_json(_coco(build), break_anns)
    problems = validate_dataset(build)
    assert _has(problems, "instances_val.json", "licenses")
    assert _has(problems, "area 0")
    assert _has(problems, "iscrowd")
    assert _has(problems, "appears twice")
    assert _has(problems, "polygon has 4 numbers")


def test_category_ids_must_ascend(build: Path) -> None:
    def swap(data: dict) -> None:  # type: ignore[type-arg]
        cats = data["categories"]
        cats[0]["id"], cats[1]["id"] = cats[1]["id"], cats[0]["id"]

    _edit_json(_coco(build), swap)
    problems = validate_dataset(build)
    assert _has(problems, "instances_train.json", "positive and ascending, #1 is 1")


def test_missing_and_corrupt_images(build: Path) -> None:
    (build / "coco" / "images" / "train" / "000000002.jpg").unlink()
    shard = build / "shards" / "rank-00000" / "images" / "000000003.jpg"
    data = shard.read_bytes()
    with open(shard, "r+b") as f:  # in place: every hard link sees it
        f.truncate(len(data) // 2)
    problems = validate_dataset(build)
    assert _has(problems, "coco/images/train/000000002.jpg")
    assert _has(problems, "coco/images/train/000000003.jpg", "decode")
    assert _has(problems, "yolo/images/train/000000003.jpg", "decode")


def test_mixed_yolo_rows_and_orphans(build: Path) -> None:
    label = build / "yolo" / "labels" / "train" / "000000001.txt"
    assert label.read_text()
    label.write_text(label.read_text() + "0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    (build / "yolo" / "labels" / "train" / "000000099.txt").write_text("")
    (build / "yolo" / "labels" / "train" / "000000004.txt").unlink()
    bad = build / "yolo" / "labels" / "val" / "000000007.txt"
    bad.write_text("5 0.5 0.5 0.1 0.1\n0 0.5 0.5 1.5 0.1\n")
    problems = validate_dataset(build)
    assert _has(problems, "000000001.txt", "mixes")
    assert _has(problems, "000000099.txt", "no image")
    assert _has(problems, "000000004.txt", "missing")
    assert _has(problems, "000000007.txt", "out of range")


def test_data_yaml_faults(build: Path) -> None:
    data_yaml = build / "yolo" / "data.yaml"
    doc = yaml.safe_load(data_yaml.read_text())
    doc["download"] = "https://example.com/x.zip"
    doc["path"] = "somewhere"
    doc["names"] = {1: "cat", 2: "dog", 3: "cone"}
    del doc["val"]
    data_yaml.write_text(yaml.safe_dump(doc))
    problems = validate_dataset(build)
    assert _has(problems, "download")
    assert _has(problems, "path:")
    assert _has(problems, "0..n-1")
    assert _has(problems, "`val:`")


def test_data_yaml_split_without_images(build: Path) -> None:
    data_yaml = build / "yolo" / "data.yaml"
    doc = yaml.safe_load(data_yaml.read_text())
    (build / "yolo" / "images" / "empty").mkdir()
    doc["val"] = "images/empty"
    data_yaml.write_text(yaml.safe_dump(doc))
    assert _has(validate_dataset(build), "`val: images/empty` holds no images")


def test_a_bad_label_row_is_named_once(build: Path) -> None:
    (build / "yolo/labels/train/000000002.txt").write_text("0 0.5 0.5 1.5 0.2\n")
    problems = validate_dataset(build)
    assert len(problems) == 1 and "yolo/labels/train/000000002.txt" in problems[0]


def test_coco_yolo_disagreement(build: Path) -> None:
    label = build / "yolo" / "labels" / "train" / "000000002.txt"
    rows = label.read_text().splitlines()
    first = rows[0].split()
    first[0] = str((int(first[0]) + 1) % 3)
    label.write_text("\n".join([" ".join(first), *rows[1:]]) + "\n")
    moved = build / "yolo" / "labels" / "train" / "000000005.txt"
    vals = moved.read_text().split()
    vals[1] = f"{float(vals[1]) * 0.5:.6f}"  # move a box
    moved.write_text(" ".join(vals[:5]) + "\n" + "\n".join(moved.read_text().splitlines()[1:]))
    doc = yaml.safe_load((build / "yolo" / "data.yaml").read_text())
    doc["names"][2] = "traffic cone"
    (build / "yolo" / "data.yaml").write_text(yaml.safe_dump(doc))
    problems = validate_dataset(build)
    assert _has(problems, "000000002.jpg", "classes differ")
    assert _has(problems, "000000005.jpg", "no YOLO row")
    assert _has(problems, "class names differ")


def test_split_and_image_set_disagreement(build: Path) -> None:
    os.unlink(build / "yolo" / "images" / "val" / "000000007.jpg")
    os.unlink(build / "yolo" / "labels" / "val" / "000000007.txt")
    problems = validate_dataset(build)
    assert _has(problems, "000000007.jpg", "in COCO, not in YOLO")


def test_problems_are_capped(build: Path) -> None:
    def shift_all(data: dict) -> None:  # type: ignore[type-arg]
        for a in data["annotations"]:
            a["bbox"][2] += 0.5

    _edit_json(_coco(build), shift_all)
    n = len(json.loads(_coco(build).read_text())["annotations"])
    assert n > 3
    problems = validate_dataset(build, max_per_kind=3)
    bbox_lines = [p for p in problems if "tight box" in p]
    assert len(bbox_lines) == 3
    assert f"... and {n - 3} more coco-bbox-mask problems" in problems


def test_annotation_without_segmentation_key(build: Path) -> None:
    def drop(data: dict) -> None:  # type: ignore[type-arg]
        del data["annotations"][0]["segmentation"]

    _edit_json(_coco(build), drop)
    aid = json.loads(_coco(build).read_text())["annotations"][0]["id"]
    problems = validate_dataset(build)
    assert _has(problems, f"annotation {aid}:", "no `segmentation` key")


def test_loose_bbox_of_polygon_annotation(tmp_path: Path) -> None:
    out = tmp_path / "poly"
    spec = small_spec(num_images=6, export={"coco_masks": "polygon", "preview_images": 0})
    build_dataset(spec, out, show_progress=False)
    assert validate_dataset(out) == []  # an undamaged polygon build is clean
    grown: list[int] = []

    def grow(data: dict) -> None:  # type: ignore[type-arg]
        h, w = spec.image_size
        for a in data["annotations"]:
            x, y, bw, bh = a["bbox"]
            if a["segmentation"] and x >= 5 and y >= 5 and x + bw + 5 <= w and y + bh + 5 <= h:
                a["bbox"] = [x - 5, y - 5, bw + 10, bh + 10]  # still inside the image
                grown.append(a["id"])
                return

    _edit_json(_coco(out), grow)
    assert grown, "no polygon annotation with room to grow its bbox"
    problems = validate_dataset(out)
    assert _has(problems, f"annotation {grown[0]}:", "is not its polygons' tight box")
    assert not _has(problems, "extends outside")


def test_degenerate_yolo_polygon_row(tmp_path: Path) -> None:
    samples = _samples(4, seed=2)
    out = write_build(tmp_path / "o", {"train": samples[:3], "val": samples[3:]}, "rle", "segment")
    label = out / "yolo" / "labels" / "train" / "000000001.txt"
    assert label.read_text().strip()
    # zero width: every x is 0.5; zero height: every y is 0.25
    label.write_text("0 0.5 0.1 0.5 0.2 0.5 0.3\n")
    problems = validate_dataset(out)
    assert _has(problems, "labels/train/000000001.txt:1", "zero width or height")
    label.write_text("0 0.1 0.25 0.2 0.25 0.3 0.25\n")
    problems = validate_dataset(out)
    assert _has(problems, "labels/train/000000001.txt:1", "zero width or height")


def test_data_yaml_train_val_swapped(build: Path) -> None:
    data_yaml = build / "yolo" / "data.yaml"
    doc = yaml.safe_load(data_yaml.read_text())
    assert (doc["train"], doc["val"]) == ("images/train", "images/val")
    doc["train"], doc["val"] = doc["val"], doc["train"]
    data_yaml.write_text(yaml.safe_dump(doc))
    problems = validate_dataset(build)
    assert _has(problems, "`train: images/val`", "splits swapped")
    assert _has(problems, "`val: images/train`", "splits swapped")


def test_data_yaml_val_falling_back_to_train_is_clean(tmp_path: Path) -> None:
    out = tmp_path / "noval"
    spec = small_spec(num_images=2, splits={"train": 0.9, "val": 0.1})
    build_dataset(spec, out, show_progress=False)
    assert not any((out / "yolo" / "images" / "val").iterdir())  # val has no images
    doc = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert doc["val"] == "images/train"
    assert validate_dataset(out) == []
