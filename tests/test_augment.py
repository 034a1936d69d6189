"""Unit tests of the augmentation stage: sources, errors, round trip, seeding, label rules."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthvision import boxes
from synthvision.augment import (
    Augmenter,
    BoxSettings,
    augment_seed,
    output_index,
    preset_names,
)
from synthvision.config import AugmentSpec
from synthvision.errors import SpecError
from synthvision.structures import Instances, Sample

from .helpers import coco_self_eval_ap, dataset_digests, kill_after_lines, small_spec

A = pytest.importorskip("albumentations")


def _sample(size_hw: tuple[int, int] = (64, 80), masked: bool = True, index: int = 3) -> Sample:
    h, w = size_hw
    gen = np.random.default_rng(0)
    image = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((3, h, w), bool)
    masks[0, 5:25, 4:30] = True
    masks[1, 30:60, 40:75] = True
    masks[2, 10:20, 50:60] = True
    xyxy = boxes.masks_to_xyxy(masks).astype(np.float32)
    inst = Instances(
        xyxy,
        np.array([2, 0, 1]),
        masks=masks if masked else None,
        scores=np.array([1.0, 0.5, 0.25], np.float32),
    )
    return Sample(index=index, image=image, instances=inst, metadata={"generator": "test"})


def _same(a: Sample, b: Sample) -> bool:
    ma, mb = a.instances.masks, b.instances.masks
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.instances.xyxy, b.instances.xyxy)
        and np.array_equal(a.instances.class_id, b.instances.class_id)
        and ((ma is None and mb is None) or np.array_equal(ma, mb))  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------- sources, errors


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("masked", [True, False])
def test_presets_run_and_record_provenance(name: str, masked: bool) -> None:
    aug = Augmenter.from_preset(name)
    src = _sample(masked=masked)
    out = aug.apply_variant(src, spec_seed=7, variant=1, index=42)
    assert out.index == 42
    assert out.image.dtype == np.uint8 and out.image.shape == src.image.shape
    record = out.metadata["augment"]
    assert record["source_index"] == src.index and record["variant"] == 1
    assert record["seed"] == augment_seed(7, src.index, 1)
    assert record["pipeline"] == name
    assert isinstance(record["params"], list)
    assert out.metadata["generator"] == "test"  # the source's metadata is kept
    json.dumps(out.metadata, allow_nan=False)  # plain JSON, no numpy types or NaN
    assert "augment" not in src.metadata  # the source is not modified


def test_recorded_params_are_the_drawn_ones() -> None:
    aug = Augmenter([A.Affine(rotate=(10, 20), p=1.0), A.HorizontalFlip(p=0.0)])
    out = aug.apply(_sample(), seed=1)
    (entry,) = out.metadata["augment"]["params"]  # the p=0 flip did not run: not recorded
    assert entry["name"] == "Affine"
    assert 10 <= entry["params"]["rotate"] <= 20


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (AugmentSpec(preset="foggy"), "augment.preset: unknown preset 'foggy'"),
        (AugmentSpec(file="/nonexistent/pipe.yaml"), "augment.file: pipeline file"),
        (AugmentSpec(pipeline={"x": 1}), "augment.pipeline: missing the 'transform' entry"),
        (
            AugmentSpec(pipeline={"transform": {"__class_fullname__": "NoSuchBlur", "p": 1}}),
            "augment.pipeline: unknown albumentations transform",
        ),
        (
            AugmentSpec(
                pipeline={
                    "transform": {
                        "__class_fullname__": "Compose",
                        "transforms": [{"__class_fullname__": "HorizontalFlip", "pp": 1}],
                    }
                }
            ),
            "HorizontalFlip got unknown argument(s) pp",
        ),
        (
            AugmentSpec(
                pipeline={
                    "transform": {
                        "__class_fullname__": "Compose",
                        "transforms": [
                            {"__class_fullname__": "GaussNoise", "std_range": [3, 1], "p": 1}
                        ],
                    }
                }
            ),
            "transforms[0] (GaussNoise): std_range",
        ),
        (AugmentSpec(), "augment: no pipeline given"),
    ],
)
def test_bad_sources_raise_one_clear_line(spec: AugmentSpec, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        Augmenter.from_spec(spec)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_bad_file_content(tmp_path: Path) -> None:
    bad = tmp_path / "pipe.yaml"
    bad.write_text("transform: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"augment\.file: .* is not valid YAML/JSON"):
        Augmenter.from_spec(AugmentSpec(file=str(bad)))


def test_float_output_pipelines_are_rejected() -> None:
    aug = Augmenter([A.ToFloat(p=1.0)])
    with pytest.raises(SpecError, match="uint8"):
        aug.apply(_sample(), seed=0)


def test_inline_dict_and_bare_transform_dict() -> None:
    full = A.to_dict(A.Compose([A.HorizontalFlip(p=1.0)]))
    bare = {"__class_fullname__": "HorizontalFlip", "p": 1.0}
    src = _sample()
    for data in (full, bare):
        out = Augmenter.from_spec(AugmentSpec(pipeline=data)).apply(src, seed=0)
        assert np.array_equal(out.image, src.image[:, ::-1])


def test_user_bbox_params_are_replaced_by_ours() -> None:
    # A user pipeline written for COCO-format boxes with no filtering still gets our settings.
    user = A.Compose(
        [A.HorizontalFlip(p=1.0)], bbox_params=A.BboxParams(format="coco", label_fields=["c"])
    )
    aug = Augmenter.from_spec(AugmentSpec(pipeline=A.to_dict(user), min_visibility=0.4))
    params = aug.compose.processors["bboxes"].params
    assert params.format == "pascal_voc"
    assert params.clip and params.filter_invalid_bboxes
    assert params.min_visibility == 0.4 and params.min_area == 16.0


# -------------------------------------------------------------------------------- round trip


@pytest.mark.filterwarnings("ignore:Argument.*not valid for transform RGBShift")
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip_keeps_outputs_and_box_settings(tmp_path: Path, suffix: str) -> None:
    box = BoxSettings(min_visibility=0.55, min_area_px=9.0, min_width_px=2.0, max_accept_ratio=6.0)
    aug = Augmenter.from_preset("heavy", box)
    before = [aug.apply_variant(_sample(), 11, v) for v in range(4)]
    path = tmp_path / f"pipeline{suffix}"
    aug.save(path)  # saving must not change the augmenter itself
    assert all(_same(b, aug.apply_variant(_sample(), 11, v)) for v, b in enumerate(before))
    loaded = Augmenter.load(path)
    assert loaded.box == box
    p = loaded.compose.processors["bboxes"].params
    assert (p.format, p.clip, p.filter_invalid_bboxes) == ("pascal_voc", True, True)
    assert (p.min_visibility, p.min_area, p.min_width, p.max_accept_ratio) == (0.55, 9.0, 2.0, 6.0)
    assert loaded.to_dict() == aug.to_dict()
    for masked in (True, False):
        src = _sample(masked=masked)
        for variant in range(4):
            assert _same(
                aug.apply_variant(src, 11, variant), loaded.apply_variant(src, 11, variant)
            )
    # The file stays albumentations' own format: plain albumentations can load it.
    fmt = "yaml" if suffix == ".yaml" else "json"
    assert isinstance(A.load(str(path), data_format=fmt), A.Compose)


def test_spec_file_uses_saved_box_settings_unless_spec_sets_them(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    Augmenter.from_preset("light", BoxSettings(min_visibility=0.7, min_area_px=3.0)).save(path)
    assert Augmenter.from_spec(AugmentSpec(file=str(path))).box.min_visibility == 0.7
    explicit = Augmenter.from_spec(AugmentSpec(file=str(path), min_area_px=50.0)).box
    assert (explicit.min_visibility, explicit.min_area_px) == (0.7, 50.0)
    relative = Augmenter.from_spec(AugmentSpec(file="p.json"), base_dir=tmp_path)
    assert relative.box.min_area_px == 3.0


def test_saved_section_rejects_unknown_box_keys() -> None:
    data = Augmenter.from_preset("light").to_dict()
    data["synthvision"]["box"]["min_visiblity"] = 0.2
    with pytest.raises(SpecError, match="unknown setting"):
        Augmenter.from_dict(data)


# ---------------------------------------------------------------------------------- seeding


def test_transforms_are_not_seeded_alike() -> None:
    # Compose.set_random_seed gives every transform the same generator: with p=0.5 each, they
    # would all run or all skip. Our seeding must mix them.
    aug = Augmenter(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.ToGray(p=0.5),
            A.InvertImg(p=0.5),
            A.ChannelShuffle(p=0.5),
        ]
    )
    counts = {len(aug.apply(_sample(), seed=s).metadata["augment"]["params"]) for s in range(30)}
    assert counts & {1, 2, 3, 4}


def test_global_rngs_are_neither_read_nor_advanced() -> None:
    src = _sample()
    np.random.seed(1)  # noqa: NPY002 (the global RNGs, on purpose)
    random.seed(1)
    first = Augmenter.from_preset("heavy").apply(src, seed=5)
    after = (np.random.random(), random.random())  # noqa: NPY002
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    assert after == (np.random.random(), random.random())  # noqa: NPY002 (not advanced)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    assert _same(first, Augmenter.from_preset("heavy").apply(src, seed=5))


@pytest.mark.parametrize("masked", [True, False])
def test_apply_variants_equals_single_calls(masked: bool) -> None:
    aug = Augmenter.from_preset("heavy")
    src = _sample(masked=masked)
    many = aug.apply_variants(src, 5, [0, 3, 1], indices=[10, 13, 11])
    for out, v, i in zip(many, [0, 3, 1], [10, 13, 11], strict=True):
        single = aug.apply_variant(src, 5, v, index=i)
        assert _same(out, single) and out.metadata == single.metadata and out.index == i


def _digest(out: Sample) -> str:
    import hashlib

    h = hashlib.sha256(out.image.tobytes())
    h.update(out.instances.xyxy.tobytes())
    h.update(out.instances.class_id.tobytes())
    h.update(json.dumps(out.metadata, sort_keys=True).encode())
    return h.hexdigest()


class _AugmentedDataset:
    """A map-style dataset: item v = digest of variant v (what a DataLoader worker computes)."""

    def __init__(self, aug: Augmenter, sample: Sample) -> None:
        self.aug, self.sample = aug, sample

    def __len__(self) -> int:
        return 6

    def __getitem__(self, v: int) -> str:
        return _digest(self.aug.apply_variant(self.sample, 21, v))


@pytest.mark.slow  # starts worker processes (and imports torch)
def test_same_results_in_dataloader_workers() -> None:
    # Workers get a pickled augmenter and their own torch/numpy seeds: results must not change.
    torch = pytest.importorskip("torch")
    aug = Augmenter.from_preset("heavy")
    expected = [_digest(aug.apply_variant(_sample(), 21, v)) for v in range(6)]
    loader = torch.utils.data.DataLoader(
        _AugmentedDataset(aug, _sample()), batch_size=2, num_workers=2, collate_fn=list
    )
    got = [d for batch in loader for d in batch]
    assert got == expected


def test_output_index_layout() -> None:
    # 3 variants + original: source 2 owns indices 8..11, original first.
    assert output_index(2, -1, 3, True) == 8
    assert [output_index(2, v, 3, True) for v in range(3)] == [9, 10, 11]
    assert [output_index(2, v, 3, False) for v in range(3)] == [6, 7, 8]


# ------------------------------------------------------------------------------ label rules


def test_masked_boxes_follow_masks_and_ids_stay_int() -> None:
    aug = Augmenter([A.Affine(rotate=(30, 30), p=1.0)], BoxSettings(0.0, 1.0))
    src = _sample()
    out = aug.apply(src, seed=0)
    inst = out.instances
    assert inst.class_id.dtype == np.int64 and inst.masks is not None
    assert np.array_equal(inst.xyxy, boxes.masks_to_xyxy(inst.masks).astype(np.float32))
    assert inst.scores is not None
    src_scores = src.instances.scores
    assert src_scores is not None
    kept = {int(c): float(s) for c, s in zip(src.instances.class_id, src_scores, strict=True)}
    assert all(kept[int(c)] == float(s) for c, s in zip(inst.class_id, inst.scores, strict=True))


def test_unmasked_boxes_are_rounded_and_ids_int() -> None:
    src = _sample(masked=False)
    out = Augmenter([A.HorizontalFlip(p=1.0)], BoxSettings(0.0, 0.0)).apply(src, seed=0)
    w = src.size_hw[1]
    expected = src.instances.xyxy.astype(np.float64)[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [
        w,
        0,
        w,
        0,
    ]
    assert np.array_equal(out.instances.xyxy, expected.astype(np.float32))
    assert out.instances.class_id.dtype == np.int64
    assert out.instances.class_id.tolist() == src.instances.class_id.tolist()


@pytest.mark.parametrize("masked", [True, False])
def test_instances_pushed_out_of_frame_are_dropped(masked: bool) -> None:
    # Shift right by 30 px on an 80 px wide image: instance 0 (x 4..30) stays fully visible,
    # instance 1 (x 40..75 -> 70..105) keeps 10/35 = 0.29, instance 2 (x 50..60) leaves.
    shift = A.Affine(translate_px={"x": (30, 30), "y": (0, 0)}, p=1.0)
    src = _sample(masked=masked)
    out = Augmenter([shift], BoxSettings(min_visibility=0.25, min_area_px=1.0)).apply(src, 0)
    assert out.instances.class_id.tolist() == [2, 0]
    strict = Augmenter([shift], BoxSettings(min_visibility=0.3, min_area_px=1.0)).apply(src, 0)
    assert strict.instances.class_id.tolist() == [2]


def test_visibility_of_masked_instances_ignores_scaling() -> None:
    # Halving the size quarters each mask's area but hides nothing: all stay (visibility ~1,
    # where area after / area before would say 0.25).
    src = _sample()
    out = Augmenter([A.Affine(scale=(0.5, 0.5), p=1.0)], BoxSettings(0.7, 1.0)).apply(src, 0)
    assert out.instances.class_id.tolist() == [2, 0, 1]
    small = Augmenter([A.RandomScale(scale_limit=(-0.5, -0.5), p=1.0)], BoxSettings(0.7, 1.0))
    resized = small.apply(src, 0)
    assert resized.size_hw == (32, 40)
    assert resized.instances.class_id.tolist() == [2, 0, 1]


def test_min_area_and_vanished_masks() -> None:
    src = _sample()
    assert src.instances.masks is not None
    masks = src.instances.masks.copy()
    masks[2] = False  # an empty mask cannot be labeled: dropped
    inst = Instances(src.instances.xyxy, src.instances.class_id, masks=masks)
    sample = Sample(src.index, src.image, inst)
    out = Augmenter([A.HorizontalFlip(p=1.0)], BoxSettings(0.0, 600.0)).apply(sample, 0)
    # Areas: 20*26=520 (< 600, dropped), 30*35=1050 (kept).
    assert out.instances.class_id.tolist() == [0]


def test_outputs_do_not_share_memory_with_the_source() -> None:
    src = _sample()
    assert src.instances.masks is not None
    for transforms in (
        [A.RandomBrightnessContrast(p=1.0)],
        [A.HorizontalFlip(p=1.0)],
        [A.HorizontalFlip(p=0.0)],
    ):
        out = Augmenter(transforms, BoxSettings(0.0, 1.0)).apply(src, seed=0)
        assert out.instances.masks is not None
        assert not np.shares_memory(out.instances.masks, src.instances.masks)
        assert not np.shares_memory(out.image, src.image)


def test_empty_samples() -> None:
    h, w = 32, 48
    image = np.zeros((h, w, 3), np.uint8)
    for inst in (Instances.empty(), Instances.empty((h, w))):
        out = Augmenter.from_preset("viewpoint").apply(Sample(0, image, inst), seed=3)
        assert len(out.instances) == 0
        if inst.masks is not None:
            assert out.instances.masks is not None
            assert out.instances.masks.shape == (0, *out.size_hw)


# ------------------------------------------------------------------------ `synthvision augment`


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small COCO dataset with RLE masks: 3 train + 1 val images (PNG, 64x80)."""
    from synthvision.formats.coco import save_coco
    from synthvision.structures import ClassMap

    root = tmp_path_factory.mktemp("coco_src")
    classes = ClassMap(("car", "person", "sign"))
    named = [(f"img_{i}.png", _sample(index=i)) for i in range(4)]
    save_coco(
        root / "annotations" / "instances_train.json",
        named[:3],
        classes,
        images_dir=root / "images" / "train",
    )
    save_coco(
        root / "annotations" / "instances_val.json",
        named[3:],
        classes,
        images_dir=root / "images" / "val",
    )
    return root


def test_augment_command_coco_gives_a_valid_dataset(coco_source: Path, tmp_path: Path) -> None:
    from synthvision.commands.augment import augment_dataset
    from synthvision.validate import validate_dataset

    out = tmp_path / "aug"
    manifest = augment_dataset(
        coco_source, out, preset="heavy", variants=2, keep_original=True, seed=3
    )
    assert validate_dataset(out) == []
    counts = manifest["counts"]
    assert counts["images"] == {"total": 12, "train": 9, "val": 3}
    for split in ("train", "val"):
        ann = out / "coco" / "annotations" / f"instances_{split}.json"
        for iou_type in ("bbox", "segm"):
            assert coco_self_eval_ap(ann, iou_type) == pytest.approx(1.0)
    lines = (out / "provenance.jsonl").read_text().splitlines()
    assert len(lines) == 12
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["index"] == 0 and "augment" not in first  # the kept original
    assert second["augment"]["source_index"] == 0 and second["augment"]["variant"] == 0
    assert second["augment"]["seed"] == augment_seed(3, 0, 0)
    # The original keeps its labels exactly (masks -> tight boxes).
    coco = json.loads((out / "coco/annotations/instances_train.json").read_text())
    boxes0 = [a["bbox"] for a in coco["annotations"] if a["image_id"] == 1]
    assert boxes0 == [[4.0, 5.0, 26.0, 20.0], [40.0, 30.0, 35.0, 30.0], [50.0, 10.0, 10.0, 10.0]]


def test_a_coco_file_without_split_suffix_is_the_train_split(tmp_path: Path) -> None:
    from synthvision.commands.augment import augment_dataset
    from synthvision.formats.coco import save_coco
    from synthvision.structures import ClassMap

    src = tmp_path / "src"
    named = [(f"img_{i}.png", _sample(index=i)) for i in range(2)]
    save_coco(src / "annotations" / "instances.json", named, ClassMap(("car", "person", "sign")),
              images_dir=src / "images")  # fmt: skip
    ann = src / "annotations" / "instances.json"
    manifest = augment_dataset(ann, tmp_path / "aug", preset="light", seed=1)
    assert manifest["counts"]["images"]["train"] == manifest["counts"]["images"]["total"]
    assert (tmp_path / "aug" / "coco" / "annotations" / "instances_train.json").is_file()
    # the folder itself works too, as it does for train-cvae
    by_folder = augment_dataset(src, tmp_path / "aug2", preset="light", seed=1)
    assert by_folder["counts"]["images"] == manifest["counts"]["images"]


def test_coco_category_ids_survive_and_crowd_regions_are_counted(tmp_path: Path) -> None:
    """Real COCO numbers its 80 categories 1..90 with gaps: an augmented copy keeps the ids (and
    supercategories), or a model trained on COCO ids would read the wrong classes."""
    from synthvision.commands.augment import augment_dataset
    from synthvision.data import SynthDetection
    from synthvision.formats.coco import save_coco
    from synthvision.structures import ClassMap
    from synthvision.validate import validate_dataset

    src = tmp_path / "src"
    ann = src / "annotations" / "instances_train.json"
    named = [(f"img_{i}.png", _sample(index=i)) for i in range(2)]
    save_coco(ann, named, ClassMap(("car", "person", "sign")), images_dir=src / "images" / "train")
    doc = json.loads(ann.read_text())
    new_id = {1: 3, 2: 13, 3: 90}  # car 3, person 13, sign 90
    doc["categories"] = [
        {"id": new_id[c["id"]], "name": c["name"], "supercategory": f"super-{c['name']}"}
        for c in reversed(doc["categories"])  # files need not list them in order
    ]
    for a in doc["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    crowd = {**doc["annotations"][0], "id": 999, "iscrowd": 1}
    doc["annotations"].append(crowd)
    ann.write_text(json.dumps(doc))

    out = tmp_path / "aug"
    manifest = augment_dataset(src, out, preset="light", keep_original=True, seed=0)
    assert validate_dataset(out) == []
    written = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())
    assert written["categories"] == [
        {"id": 3, "name": "car", "supercategory": "super-car"},
        {"id": 13, "name": "person", "supercategory": "super-person"},
        {"id": 90, "name": "sign", "supercategory": "super-sign"},
    ]
    source_pairs = sorted(
        (a["category_id"], a["bbox"]) for a in doc["annotations"] if not a["iscrowd"]
    )
    originals = {1, 3}  # kept originals of source images 0 and 1 (image id = index + 1)
    kept = sorted((a["category_id"], a["bbox"]) for a in written["annotations"]
                  if a["image_id"] in originals)  # fmt: skip
    assert kept == source_pairs
    assert manifest["counts"]["crowd_regions_not_carried"] == 1
    assert manifest["counts"]["dropped_instances"] == 0
    names = SynthDetection(out, split="train").classes
    assert names == ["car", "person", "sign"]

    # a category id the file does not define: one line naming the annotation
    doc["annotations"][1]["category_id"] = 91
    ann.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=r"annotation 2: category_id 91 is not one of"):
        augment_dataset(src, tmp_path / "bad", preset="light", seed=0)


def test_augment_command_is_reproducible_and_guards_out(coco_source: Path, tmp_path: Path) -> None:
    from synthvision.commands.augment import augment_dataset
    from synthvision.errors import OutputDirError

    a, b = tmp_path / "a", tmp_path / "b"
    first = augment_dataset(coco_source, a, preset="camera", variants=2, seed=5)
    augment_dataset(coco_source, b, preset="camera", variants=2, seed=5)
    for rel in ("coco/annotations/instances_train.json", "yolo/labels/train/000000003.txt"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "coco/images/train/000000003.jpg").read_bytes() == (
        b / "coco/images/train/000000003.jpg"
    ).read_bytes()
    # The same command again: already complete, nothing rewritten.
    again = augment_dataset(coco_source, a, preset="camera", variants=2, seed=5)
    assert again["timings_s"] == first["timings_s"]
    with pytest.raises(OutputDirError, match="--overwrite"):
        augment_dataset(coco_source, a, preset="night", variants=2, seed=5)
    augment_dataset(coco_source, a, preset="night", variants=1, seed=5, overwrite=True)
    assert len(list((a / "coco/images/train").iterdir())) == 3
    # An OUT that holds the source is refused before anything is written or removed.
    before = dataset_digests(a)
    for src, out in ((a, a), (a / "coco", a), (a / "coco/annotations/instances_train.json", a)):
        with pytest.raises(SpecError, match="holds the source dataset"):
            augment_dataset(src, out, preset="light", variants=1, seed=5, overwrite=True)
    assert dataset_digests(a) == before


def test_augment_command_keeps_a_saved_pipelines_box_settings(
    coco_source: Path, tmp_path: Path
) -> None:
    """As in a build spec: the box settings saved with the pipeline apply unless an option
    sets them (the CLI used to pass its defaults, 0.3 and 16 px, as if the user had)."""
    from typer.testing import CliRunner

    from synthvision.cli import app

    path = tmp_path / "strict.yaml"
    Augmenter.from_preset("viewpoint", BoxSettings(min_visibility=0.9, min_area_px=400)).save(path)
    runner = CliRunner()
    for extra, want in (([], (0.9, 400.0)), (["--min-visibility", "0.5"], (0.5, 400.0))):
        out = tmp_path / f"out{len(extra)}"
        res = runner.invoke(
            app, ["augment", str(coco_source), str(out), "--pipeline", str(path), *extra]
        )
        assert res.exit_code == 0, res.output
        box = json.loads((out / "manifest.json").read_text())["pipeline"]["synthvision"]["box"]
        assert (box["min_visibility"], box["min_area_px"]) == want


def test_augment_command_yolo_source(coco_source: Path, tmp_path: Path) -> None:
    from synthvision.commands.augment import augment_dataset
    from synthvision.validate import validate_dataset

    # Boxes only: a YOLO detect dataset made from the COCO source.
    yolo_src = tmp_path / "yolo_src"
    augment_dataset(coco_source, yolo_src, preset="light", variants=1, yolo_task="detect")
    out = tmp_path / "out"
    manifest = augment_dataset(yolo_src / "yolo", out, preset="viewpoint", variants=2, seed=1)
    assert manifest["source_format"] == "yolo"
    assert manifest["export"]["coco_masks"] == "none"
    assert validate_dataset(out) == []
    assert coco_self_eval_ap(
        out / "coco/annotations/instances_train.json", "bbox"
    ) == pytest.approx(1.0)


def test_augment_cli_errors_are_one_line(coco_source: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthvision.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["augment", str(coco_source), str(tmp_path / "o"), "--preset", "light"])
    assert ok.exit_code == 0, ok.output
    for args, needle in [
        (["--preset", "foggy"], "--preset: unknown preset 'foggy'"),
        (["--pipeline", str(tmp_path / "missing.yaml")], "--pipeline: pipeline file"),
        ([], "give --preset NAME or --pipeline FILE"),
        (["--preset", "light", "--variants", "0"], "variants"),
        # a mistyped --images must not fall back to the images found next to the annotations
        (["--preset", "light", "--images", str(tmp_path / "typo")], "typo: no such folder"),
    ]:
        res = runner.invoke(app, ["augment", str(coco_source), str(tmp_path / "x"), *args])
        assert res.exit_code == 2, res.output
        assert needle in res.output and res.output.count("error:") == 1
        assert not (tmp_path / "x").exists()  # refused before OUT is claimed
    missing = runner.invoke(
        app, ["augment", str(tmp_path / "nope"), str(tmp_path / "x"), "--preset", "light"]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output


def _augment_files(out: Path) -> dict[str, bytes]:
    """Every file of an augment output but the manifest (timings) and the folder marker."""
    skip = {"manifest.json", ".synthvision.json"}
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def test_an_interrupted_augment_keeps_finished_images_and_ends_identical(
    coco_source: Path, tmp_path: Path
) -> None:
    """Re-running the same command keeps the source images whose outputs were all finished and
    makes the rest; the output equals an uninterrupted run's, provenance included."""
    from synthvision.commands.augment import augment_dataset

    opts: dict[str, Any] = {"preset": "heavy", "variants": 2, "keep_original": True, "seed": 3}
    ref, out = tmp_path / "ref", tmp_path / "out"
    augment_dataset(coco_source, ref, **opts)
    want = _augment_files(ref)

    # As a kill leaves it: source image 0 (outputs 0-2) and the first output of image 1 done,
    # output 4's line torn, output 5's image written without its line; no annotations yet.
    augment_dataset(coco_source, out, **opts)
    lines = (out / "provenance.jsonl").read_bytes().splitlines(keepends=True)
    (out / "provenance.jsonl").write_bytes(b"".join(lines[:4]) + lines[4][:20])
    (out / "manifest.json").unlink()
    for split in ("train", "val"):
        (out / "coco" / "annotations" / f"instances_{split}.json").unlink()
    (out / "yolo" / "data.yaml").unlink()
    for i in range(6, 12):  # never written
        split = "val" if i >= 9 else "train"
        for tree in ("coco", "yolo"):
            (out / tree / "images" / split / f"{i:09d}.jpg").unlink()
        (out / "yolo" / "labels" / split / f"{i:09d}.txt").unlink()

    manifest = augment_dataset(coco_source, out, **opts)
    assert manifest["this_run"] == {"images_written": 9, "images_kept": 3}
    assert _augment_files(out) == want
    assert manifest["counts"] == json.loads((ref / "manifest.json").read_text())["counts"]


def test_a_resume_never_trusts_a_line_whose_files_are_gone(
    coco_source: Path, tmp_path: Path
) -> None:
    """A finished output whose image was deleted since is made again, with what follows it."""
    from synthvision.commands.augment import augment_dataset

    opts: dict[str, Any] = {"preset": "light", "variants": 1, "seed": 4}
    ref, out = tmp_path / "ref", tmp_path / "out"
    augment_dataset(coco_source, ref, **opts)
    augment_dataset(coco_source, out, **opts)
    (out / "manifest.json").unlink()
    (out / "yolo" / "images" / "train" / "000000001.jpg").unlink()
    manifest = augment_dataset(coco_source, out, **opts)
    assert manifest["this_run"] == {"images_written": 3, "images_kept": 1}
    assert _augment_files(out) == _augment_files(ref)


def test_augment_killed_part_way_then_rerun_is_identical(tmp_path: Path) -> None:
    """SIGKILL at a random point of a real run, then the same command again."""
    import subprocess
    import sys

    from synthvision.build import build

    src = tmp_path / "src"
    build(small_spec(num_images=24, image_size=[160, 160]), src, show_progress=False)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}

    def command(out: Path) -> list[str]:
        options = ["--preset", "medium", "--variants", "2", "--keep-original", "--no-progress"]
        return [sys.executable, "-m", "synthvision", "augment", str(src), str(out), *options]

    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(command(ref), check=True, capture_output=True, env=env)
    proc = subprocess.Popen(
        command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    kill_after_lines(proc, out / "provenance.jsonl", 10)
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(command(out), capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed:" in rerun.stdout
    assert _augment_files(out) == _augment_files(ref)


def test_a_resume_starts_over_when_the_source_labels_changed(
    coco_source: Path, tmp_path: Path
) -> None:
    """Outputs of an interrupted run made from other labels are not kept: the output is that of
    a fresh run on the source as it is now."""
    import shutil

    from synthvision.commands.augment import augment_dataset

    src = Path(shutil.copytree(coco_source, tmp_path / "src"))
    opts: dict[str, Any] = {"preset": "light", "variants": 1, "seed": 4}
    out = tmp_path / "out"
    augment_dataset(src, out, **opts)
    (out / "manifest.json").unlink()  # as if interrupted at the very end
    ann = src / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    doc["annotations"] = doc["annotations"][1:]  # the user fixes a label
    ann.write_text(json.dumps(doc))
    manifest = augment_dataset(src, out, **opts)
    assert manifest["this_run"] == {"images_written": 4, "images_kept": 0}
    fresh = tmp_path / "fresh"
    augment_dataset(src, fresh, **opts)
    assert _augment_files(out) == _augment_files(fresh)


@pytest.mark.parametrize("state_sees_it", [True, False])
def test_a_resume_after_images_were_added_to_the_source_equals_a_fresh_run(
    coco_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_sees_it: bool
) -> None:
    """An unlabeled image added to a YOLO source (it changes no label file) shifts every source
    index after it: the outputs kept must still be those of the same source images. The source
    state sees the new image (start over); were it to miss a change, each kept line is checked
    against its source image, and the first mismatch makes that image and the rest again."""
    import shutil

    from synthvision.commands import augment as augment_mod

    yolo = tmp_path / "yolo-src"
    augment_mod.augment_dataset(coco_source, tmp_path / "as-yolo", preset="light", seed=1)
    shutil.copytree(tmp_path / "as-yolo" / "yolo", yolo)
    opts: dict[str, Any] = {"preset": "medium", "variants": 1, "seed": 1}
    out = tmp_path / "out"
    augment_mod.augment_dataset(yolo, out, **opts)
    lines = (out / "provenance.jsonl").read_bytes().splitlines(keepends=True)
    (out / "provenance.jsonl").write_bytes(b"".join(lines[:3]))
    (out / "manifest.json").unlink()
    train = sorted((yolo / "images" / "train").iterdir())
    shutil.copy(train[-1], train[0].with_name(f"0{train[1].name}"))  # sorts second, no label
    if not state_sees_it:
        monkeypatch.setattr(augment_mod.SourceDataset, "state", lambda self: "unchanged")
        (out / "spec.yaml").write_text(
            "#\n" + json.dumps({"source_state": "unchanged"})
        )  # as if the interrupted run had seen the same state
    manifest = augment_mod.augment_dataset(yolo, out, **opts)
    assert manifest["this_run"]["images_kept"] == (0 if state_sees_it else 1)
    fresh = tmp_path / "fresh"
    augment_mod.augment_dataset(yolo, fresh, **opts)
    assert _augment_files(out) == _augment_files(fresh)
