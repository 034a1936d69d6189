"""COCO / YOLO / masks / records: contracts, round trips, and third-party readers agreeing.

Built from hand-made samples (seeded random ellipses as masks); nothing here depends on build.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from synthvision.boxes import mask_to_xyxy, masks_to_xyxy
from synthvision.formats.coco import CocoWriter, load_coco, save_coco
from synthvision.formats.images import IMAGE_SUFFIX, encode_image, write_bytes_atomic
from synthvision.formats.masks import (
    decode_rle,
    encode_rle,
    mask_to_polygons,
    merge_polygons,
    polygon_xyxy,
    polygons_to_mask,
)
from synthvision.formats.records import instance_records, instances_from_records
from synthvision.formats.yolo import (
    data_yaml_text,
    load_yolo,
    save_yolo,
    write_data_yaml,
    yolo_label_text,
)
from synthvision.structures import ClassMap, Instances, Sample

CLASSES = ClassMap(("cat", "dog", "traffic cone"))
SIZE_HW = (60, 80)


def _filled(mask: np.ndarray) -> np.ndarray:
    """The mask with holes filled (what outer polygons can represent)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=-1)
    return out.astype(bool) | mask


def _blob(rng: np.random.Generator, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    m = np.zeros((h, w), np.uint8)
    center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    axes = (int(rng.integers(1, max(w // 4, 2))), int(rng.integers(1, max(h // 4, 2))))
    cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def make_samples(n: int = 6, size_hw: tuple[int, int] = SIZE_HW, seed: int = 0) -> list[Sample]:
    """Seeded samples: sample 0 has no objects; others have 1-3, incl. multi-part and holes."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(n):
        image = rng.integers(0, 256, (*size_hw, 3), dtype=np.uint8)
        masks = []
        for k in range(index % 4):
            m = _blob(rng, size_hw)
            while not m.any():
                m = _blob(rng, size_hw)
            if k == 0 and index % 2 == 1:
                m |= _blob(rng, size_hw)  # possibly two parts
            if k == 1:
                ys, xs = np.nonzero(m)
                m[ys[len(ys) // 2], xs[len(xs) // 2]] = False  # a hole (or a notch)
                if not m.any():
                    m[0, 0] = True
            masks.append(m)
        stack = np.stack(masks) if masks else np.zeros((0, *size_hw), bool)
        inst = Instances(
            xyxy=masks_to_xyxy(stack).astype(np.float32),
            class_id=rng.integers(0, len(CLASSES), len(masks)),
            masks=stack,
        )
        samples.append(Sample(index=index, image=image, instances=inst))
    return samples


def _named(samples: list[Sample], suffix: str = ".jpg") -> list[tuple[str, Sample]]:
    return [(f"{s.index:09d}{suffix}", s) for s in samples]


def coco_self_ap(path: Path, iou_type: str) -> float:
    """COCOeval of the ground truth against itself (every GT as a detection, score 1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        dets: list[dict[str, Any]] = []
        for ann in gt.dataset["annotations"]:
            det = {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": 1.0,
            }
            if iou_type == "segm":
                det["segmentation"] = gt.annToRLE(ann)
            dets.append(det)
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


# ---------------------------------------------------------------------------------------------
# masks


def test_rle_round_trip_and_pixel_edges() -> None:
    m = np.zeros((10, 12), bool)
    m[2:5, 3:7] = True
    rle = encode_rle(m)
    assert rle["size"] == [10, 12] and isinstance(rle["counts"], str)
    assert (decode_rle(rle) == m).all()
    polys = mask_to_polygons(m)
    assert polys == [[3.0, 2.0, 3.0, 5.0, 7.0, 5.0, 7.0, 2.0]]  # pixel edges, not centres
    assert polygon_xyxy(polys).tolist() == [3.0, 2.0, 7.0, 5.0]
    assert (polygons_to_mask(polys, (10, 12)) == m).all()
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []


def test_polygons_rasterise_back_exactly() -> None:
    rng = np.random.default_rng(3)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.uniform(0.05, 0.9) if i % 2 else _blob(rng, (h + 8, w + 8))
        polys = mask_to_polygons(m)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
        assert (polygons_to_mask(polys, m.shape) == _filled(m)).all()
        if m.any():
            assert polygon_xyxy(polys).tolist() == mask_to_xyxy(m).tolist()


def test_merge_polygons_covers_every_part() -> None:
    """One polygon per object (YOLO-seg): it rasterises to the union of the parts, and its
    extent is theirs, so Ultralytics derives the same box as COCO's from the row."""
    rng = np.random.default_rng(5)
    for _ in range(80):
        m = np.zeros((40, 56), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            center = (int(rng.integers(0, 56)), int(rng.integers(0, 40)))
            axes = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
            cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        polys = mask_to_polygons(m.astype(bool))
        merged = merge_polygons(polys)
        assert merged is not None and len(merged) % 2 == 0
        assert np.array_equal(polygons_to_mask([merged], m.shape), _filled(m.astype(bool)))
        assert polygon_xyxy([merged]).tolist() == mask_to_xyxy(m.astype(bool)).tolist()
    assert merge_polygons([]) is None and merge_polygons([[1.0, 2.0, 3.0, 4.0]]) is None


# ---------------------------------------------------------------------------------------------
# records


def _plain(obj: Any) -> None:
    """Only JSON-native Python types, recursively."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) is str
            _plain(v)
    elif isinstance(obj, list):
        for v in obj:
            _plain(v)
    else:
        assert type(obj) in (int, float, str, bool), type(obj)


def test_instance_records_round_trip() -> None:
    for s in make_samples(6):
        recs = instance_records(s.instances, coco_masks="rle", polygons=True)
        _plain(recs)
        json.dumps(recs, allow_nan=False)
        assert len(recs) == len(s.instances)
        for rec, m in zip(recs, s.instances.masks, strict=True):  # type: ignore[arg-type]
            assert rec["xyxy"] == mask_to_xyxy(m).tolist()
            assert rec["area"] == float(m.sum())
            assert all(len(p) >= 6 for p in rec["polygons"])
        back = instances_from_records(recs, s.size_hw, with_masks=True)
        assert (back.class_id == s.instances.class_id).all()
        assert np.array_equal(back.xyxy, s.instances.xyxy)
        assert back.masks is not None and (back.masks == s.instances.masks).all()
    none = instance_records(make_samples(2)[1].instances, coco_masks="none")
    assert none and all("rle" not in r and "polygons" not in r for r in none)


def test_records_without_masks_clip_and_drop_degenerate() -> None:
    inst = Instances(
        xyxy=np.array([[-5, 2, 10.25, 8], [3, 3, 3, 9], [70, 50, 90, 70]], np.float32),
        class_id=np.array([0, 1, 2]),
        scores=np.array([0.5, 1, 0.25], np.float32),
    )
    recs = instance_records(inst, coco_masks="rle", size_hw=SIZE_HW)
    assert [r["xyxy"] for r in recs] == [[0.0, 2.0, 10.25, 8.0], [70.0, 50.0, 80.0, 60.0]]
    assert [r["class_id"] for r in recs] == [0, 2] and recs[0]["score"] == 0.5
    assert recs[0]["area"] == 10.25 * 6
    back = instances_from_records(recs, SIZE_HW, with_masks=True)
    assert back.scores is not None and back.masks is not None
    assert back.masks[1].sum() == 100  # filled box
    assert len(instances_from_records([], SIZE_HW)) == 0


# ---------------------------------------------------------------------------------------------
# images


def test_encode_image_and_atomic_write(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    png = encode_image(img, "png")
    assert (np.asarray(Image.open(io.BytesIO(png))) == img).all()
    jpg = encode_image(img, "jpeg", jpeg_quality=80)
    assert jpg == encode_image(img, "jpeg", jpeg_quality=80)  # deterministic
    assert Image.open(io.BytesIO(jpg)).size == (30, 20)
    target = tmp_path / f"a{IMAGE_SUFFIX['jpeg']}"
    write_bytes_atomic(target, jpg)
    write_bytes_atomic(target, jpg)
    assert target.read_bytes() == jpg and os.listdir(tmp_path) == [target.name]
    with pytest.raises(ValueError):
        encode_image(img[..., 0], "png")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# COCO


@pytest.mark.parametrize("mask_mode", ["rle", "polygon", "none"])
def test_coco_contract_self_ap_and_round_trip(tmp_path: Path, mask_mode: str) -> None:
    samples = make_samples(6)
    path = tmp_path / "instances_train.json"
    assert save_coco(path, _named(samples), CLASSES, mask_mode=mask_mode) == 6  # type: ignore[arg-type]
    data = json.loads(path.read_text())
    assert list(data) == ["info", "licenses", "categories", "images", "annotations"]
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert [im["id"] for im in data["images"]] == [s.index + 1 for s in samples]
    anns = data["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for a in anns:
        assert a["iscrowd"] == 0 and a["area"] > 0 and all(type(v) is float for v in a["bbox"])
        seg = a["segmentation"]
        if mask_mode == "rle":
            assert isinstance(seg["counts"], str) and seg["size"] == list(SIZE_HW)
        elif mask_mode == "polygon":
            assert seg and all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
        else:
            assert seg == []

    assert coco_self_ap(path, "bbox") == pytest.approx(1.0)
    if mask_mode != "none":
        assert coco_self_ap(path, "segm") == pytest.approx(1.0)
        # `area` is what pycocotools rasterises from the segmentation (holes filled for
        # polygons): COCOeval buckets small/medium/large by it.
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        areas = [a["area"] for a in anns]
        assert areas == [float(coco.annToMask(a).sum()) for a in anns]
        mask_px = [float(m.sum()) for s in samples for m in s.instances.masks]  # type: ignore[union-attr]
        if mask_mode == "rle":
            assert areas == mask_px
        else:  # the holes made in make_samples are filled
            assert all(a >= m for a, m in zip(areas, mask_px, strict=True))
            assert any(a > m for a, m in zip(areas, mask_px, strict=True))

    # deterministic bytes
    again = tmp_path / "again.json"
    save_coco(again, _named(samples), CLASSES, mask_mode=mask_mode)  # type: ignore[arg-type]
    assert again.read_bytes() == path.read_bytes()

    class_map, images = load_coco(path, with_masks=mask_mode != "none")
    assert class_map == CLASSES
    for s, img in zip(samples, images, strict=True):
        assert (img.image_id, img.file_name, img.size_hw) == (
            s.index + 1,
            f"{s.index:09d}.jpg",
            SIZE_HW,
        )
        assert np.array_equal(img.instances.xyxy, s.instances.xyxy)
        assert np.array_equal(img.instances.class_id, s.instances.class_id)
        assert s.instances.masks is not None
        if mask_mode == "rle":
            assert img.instances.masks is not None
            assert np.array_equal(img.instances.masks, s.instances.masks)
        elif mask_mode == "polygon":
            assert img.instances.masks is not None
            for got, want in zip(img.instances.masks, s.instances.masks, strict=True):
                assert np.array_equal(got, _filled(want))


def test_coco_writer_streams_and_rejects_bad_ids(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with CocoWriter(path, CLASSES, info={"description": "x"}) as w:
            w.add_image(1, "a.jpg", (4, 4), [])
            raise RuntimeError("boom")
    assert not path.exists() and os.listdir(tmp_path) == []  # nothing half-written
    with CocoWriter(path, CLASSES, info={"description": "x"}) as w:
        w.add_image(3, "a.jpg", (4, 4), [{"class_id": 0, "xyxy": [0, 0, 2, 2], "area": 4.0}])
        with pytest.raises(ValueError):
            w.add_image(3, "b.jpg", (4, 4), [])
        with pytest.raises(ValueError):
            w.add_image(4, "b.jpg", (4, 4), [{"class_id": 3, "xyxy": [0, 0, 1, 1], "area": 1}])
    data = json.loads(path.read_text())
    assert data["info"] == {"description": "x"} and data["licenses"] == []
    assert data["annotations"][0]["bbox"] == [0.0, 0.0, 2.0, 2.0]
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


# ---------------------------------------------------------------------------------------------
# YOLO


def test_yolo_label_text() -> None:
    recs = [
        {"class_id": 2, "xyxy": [8.0, 6.0, 24.0, 30.0], "area": 1.0},
        {"class_id": 0, "xyxy": [0.0, 0.0, 80.0, 60.0], "area": 1.0, "polygons": [
            [0, 0, 0, 6, 8, 6, 8, 0], [10, 10, 10, 60, 80, 60, 80, 10]]},
    ]  # fmt: skip
    det = yolo_label_text(recs, SIZE_HW, "detect").splitlines()
    assert det[0] == "2 0.200000 0.300000 0.200000 0.400000"
    assert det[1] == "0 0.500000 0.500000 1.000000 1.000000"
    seg = yolo_label_text(recs, SIZE_HW, "segment").splitlines()
    assert seg[0] == "2 " + " ".join(
        f"{v:.6f}" for v in [0.1, 0.1, 0.3, 0.1, 0.3, 0.5, 0.1, 0.5]
    )  # box outline: never a box row among polygon rows
    assert seg[1].split()[1:3] == ["0.125000", "0.166667"]  # the larger part
    assert all(len(r.split()) % 2 == 1 and len(r.split()) >= 7 for r in seg)
    assert yolo_label_text([], SIZE_HW, "detect") == ""


def test_data_yaml(tmp_path: Path) -> None:
    path = write_data_yaml(tmp_path, CLASSES, ["train", "val", "test"])
    doc = yaml.safe_load(path.read_text())
    assert doc["names"] == {0: "cat", 1: "dog", 2: "traffic cone"} and doc["nc"] == 3
    assert (doc["train"], doc["val"], doc["test"]) == ("images/train", "images/val", "images/test")
    assert "path" not in doc and "download" not in doc
    only_train = yaml.safe_load(data_yaml_text(CLASSES, ["train"]))
    assert only_train["val"] == "images/train"
    # A split without images is left out: Ultralytics stops on an empty split folder.
    counts = {"train": 3, "val": 0, "test": 1}
    doc = yaml.safe_load(write_data_yaml(tmp_path, CLASSES, list(counts), counts).read_text())
    assert (doc["train"], doc["val"], doc["test"]) == (
        "images/train",
        "images/train",
        "images/test",
    )
    no_train = {"train": 0, "val": 2}
    doc = yaml.safe_load(write_data_yaml(tmp_path, CLASSES, list(no_train), no_train).read_text())
    assert (doc["train"], doc["val"]) == ("images/val", "images/val")


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_yolo_round_trip(tmp_path: Path, task: str) -> None:
    samples = make_samples(5)
    assert save_yolo(tmp_path, "train", _named(samples), CLASSES, task=task) == 5  # type: ignore[arg-type]
    assert (tmp_path / "labels" / "train" / "000000000.txt").read_text() == ""
    class_map, images = load_yolo(tmp_path, "train", with_masks=True)
    assert class_map == CLASSES
    h, w = SIZE_HW
    for s, img in zip(samples, images, strict=True):
        assert img.file_name == f"{s.index:09d}.jpg" and img.size_hw == SIZE_HW
        assert np.array_equal(img.instances.class_id, s.instances.class_id)
        assert s.instances.masks is not None and img.instances.masks is not None
        for got_box, got_mask, mask in zip(
            img.instances.xyxy, img.instances.masks, s.instances.masks, strict=True
        ):
            if task == "detect":
                want = mask_to_xyxy(mask)
            else:
                want = mask_to_xyxy(mask)  # every part counts, as in COCO
                assert np.array_equal(got_mask, _filled(mask))
            assert np.abs(got_box - want).max() <= 1e-6 * max(h, w) + 1e-5


# ---------------------------------------------------------------------------------------------
# supervision reads what we write


def test_supervision_reads_coco_and_yolo(tmp_path: Path) -> None:
    sv = pytest.importorskip("supervision")
    samples = make_samples(6)
    by_name = {f"{s.index:09d}.jpg": s for s in samples}
    coco_images = tmp_path / "coco" / "images" / "train"
    coco_json = tmp_path / "coco" / "annotations" / "instances_train.json"
    save_coco(coco_json, _named(samples), CLASSES, mask_mode="rle", images_dir=coco_images)
    save_yolo(tmp_path / "yolo", "train", _named(samples), CLASSES, task="detect")

    ds = sv.DetectionDataset.from_coco(
        images_directory_path=str(coco_images),
        annotations_path=str(coco_json),
        force_masks=True,
    )
    # supervision: classes = category names by id; class_id = position in that list, which
    # for our files is category_id - 1 = our class id.
    assert list(ds.classes) == list(CLASSES.names)
    assert len(ds.annotations) == len(samples)
    for path, det in ds.annotations.items():
        s = by_name[Path(path).name]
        assert np.abs(det.xyxy - s.instances.xyxy).max(initial=0) <= 1e-3
        assert np.array_equal(det.class_id, s.instances.class_id)
        if len(s.instances):
            assert det.mask is not None and s.instances.masks is not None
            assert np.array_equal(det.mask, s.instances.masks)

    ds_yolo = sv.DetectionDataset.from_yolo(
        images_directory_path=str(tmp_path / "yolo" / "images" / "train"),
        annotations_directory_path=str(tmp_path / "yolo" / "labels" / "train"),
        data_yaml_path=str(tmp_path / "yolo" / "data.yaml"),
    )
    assert list(ds_yolo.classes) == list(CLASSES.names)
    assert len(ds_yolo.annotations) == len(samples)
    for path, det in ds_yolo.annotations.items():
        s = by_name[Path(path).name]
        assert np.abs(det.xyxy - s.instances.xyxy).max(initial=0) <= 1e-3
        assert np.array_equal(det.class_id, s.instances.class_id)
