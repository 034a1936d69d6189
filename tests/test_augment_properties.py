"""Property tests of the augmentation stage over random samples and random pipelines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthvision import boxes
from synthvision.augment import Augmenter, BoxSettings, augment_seed, preset_names
from synthvision.structures import Instances, Sample

A = pytest.importorskip("albumentations")

SETTINGS = settings(
    max_examples=40,
    database=None,  # no .hypothesis writes from these tests
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    """A random image (24..72 px a side) with 0..5 instances, all masked or all unmasked."""
    h = draw(st.integers(24, 72))
    w = draw(st.integers(24, 72))
    masked = draw(st.booleans())
    n = draw(st.integers(0, 5))
    gen = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
    xyxy = np.zeros((n, 4), np.float64)
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        x1 = draw(st.integers(0, w - 2))
        y1 = draw(st.integers(0, h - 2))
        x2 = draw(st.integers(x1 + 1, w))
        y2 = draw(st.integers(y1 + 1, h))
        if masked:
            # Blob inside the rectangle: an ellipse, or the full rectangle for thin ones.
            yy, xx = np.mgrid[y1:y2, x1:x2]
            cy, cx = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2
            ry, rx = max((y2 - y1) / 2, 0.5), max((x2 - x1) / 2, 0.5)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            masks[i, y1:y2, x1:x2] = blob if blob.any() else True
            xyxy[i] = boxes.mask_to_xyxy(masks[i])
        else:
            # Fractional coordinates, sometimes a little outside the frame (to be clipped).
            jitter = draw(st.lists(st.floats(-2.0, 2.0), min_size=4, max_size=4))
            xyxy[i] = [x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3]]
            xyxy[i, [0, 2]] = np.sort(xyxy[i, [0, 2]])
            xyxy[i, [1, 3]] = np.sort(xyxy[i, [1, 3]])
    class_id = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)), np.int64)
    scores = gen.random(n).astype(np.float32)
    inst = Instances(
        xyxy.astype(np.float32), class_id, masks=masks if masked else None, scores=scores
    )
    return Sample(index=draw(st.integers(0, 10_000)), image=image, instances=inst)


def _random_transform(draw: st.DrawFn) -> Any:
    p = draw(st.sampled_from([0.3, 0.5, 1.0]))
    kind = draw(
        st.sampled_from(
            [
                "hflip",
                "vflip",
                "rot90",
                "transpose",
                "affine",
                "perspective",
                "scale",
                "croppad",
                "brightness",
                "noise",
                "dropout",
            ]
        )
    )
    make = {
        "hflip": lambda: A.HorizontalFlip(p=p),
        "vflip": lambda: A.VerticalFlip(p=p),
        "rot90": lambda: A.RandomRotate90(p=p),
        "transpose": lambda: A.Transpose(p=p),  # swaps H and W on non-square images
        "affine": lambda: A.Affine(
            scale=(0.5, 1.5), translate_percent=(-0.3, 0.3), rotate=(-30, 30), p=p
        ),
        "perspective": lambda: A.Perspective(scale=(0.02, 0.1), p=p),
        "scale": lambda: A.RandomScale(scale_limit=(-0.4, 0.4), p=p),  # changes the size
        "croppad": lambda: A.CropAndPad(percent=(-0.3, 0.2), keep_size=False, p=p),
        "brightness": lambda: A.RandomBrightnessContrast(p=p),
        "noise": lambda: A.GaussNoise(std_range=(0.05, 0.2), p=p),
        "dropout": lambda: A.CoarseDropout(
            num_holes_range=(1, 3),
            hole_height_range=(0.1, 0.3),
            hole_width_range=(0.1, 0.3),
            fill_mask=0,
            p=p,
        ),
    }
    return make[kind]()


@st.composite
def augmenters(draw: st.DrawFn, always_random: bool = False) -> Augmenter:
    """A preset or a random small composition; `always_random` adds a p=1 continuous draw."""
    box = BoxSettings(
        min_visibility=draw(st.sampled_from([0.0, 0.3, 0.6])),
        min_area_px=draw(st.sampled_from([0.0, 4.0, 16.0])),
    )
    if draw(st.booleans()):
        return Augmenter.from_preset(draw(st.sampled_from(preset_names())), box)
    transforms = [_random_transform(draw) for _ in range(draw(st.integers(1, 4)))]
    if draw(st.booleans()):
        transforms.append(A.OneOf([_random_transform(draw), _random_transform(draw)], p=0.8))
    if always_random:
        # A flip-only pipeline has two outcomes: variants may coincide by design.
        transforms.append(A.RandomBrightnessContrast(p=1.0))
    return Augmenter(transforms, box)


def _check_labels(src: Sample, out: Sample) -> None:
    h, w = out.size_hw
    inst = out.instances
    assert inst.xyxy.dtype == np.float32 and inst.class_id.dtype == np.int64
    b = inst.xyxy.astype(np.float64)
    assert np.all(b[:, [0, 2]] >= 0) and np.all(b[:, [0, 2]] <= w)
    assert np.all(b[:, [1, 3]] >= 0) and np.all(b[:, [1, 3]] <= h)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    # Class ids: survivors in their original order (a subsequence of the input).
    it = iter(src.instances.class_id.tolist())
    assert all(c in it for c in inst.class_id.tolist())
    assert len(inst) <= len(src.instances)
    if src.instances.masks is not None:
        assert inst.masks is not None and inst.masks.shape == (len(inst), h, w)
        assert np.array_equal(b, boxes.masks_to_xyxy(inst.masks))  # exactly the tight box
        assert np.all(inst.masks.any(axis=(1, 2)))
    else:
        assert inst.masks is None
    assert inst.scores is not None and len(inst.scores) == len(inst)


def _same(a: Sample, b: Sample) -> bool:
    ma, mb = a.instances.masks, b.instances.masks
    return (
        a.image.shape == b.image.shape
        and np.array_equal(a.image, b.image)
        and np.array_equal(a.instances.xyxy, b.instances.xyxy)
        and np.array_equal(a.instances.class_id, b.instances.class_id)
        and (ma is None) == (mb is None)
        and (ma is None or mb is None or np.array_equal(ma, mb))
    )


@SETTINGS
@given(sample=samples(), aug=augmenters(), spec_seed=st.integers(0, 2**63 - 1))
def test_labels_stay_valid(sample: Sample, aug: Augmenter, spec_seed: int) -> None:
    for variant in range(2):
        out = aug.apply_variant(sample, spec_seed, variant)
        _check_labels(sample, out)
        assert out.metadata["augment"]["source_index"] == sample.index
        assert out.metadata["augment"]["variant"] == variant


@SETTINGS
@given(sample=samples(), aug=augmenters(), spec_seed=st.integers(0, 2**63 - 1))
def test_same_seed_same_result(sample: Sample, aug: Augmenter, spec_seed: int) -> None:
    first = aug.apply_variant(sample, spec_seed, 0)
    aug.apply_variant(sample, spec_seed + 1, 3)  # an unrelated call in between changes nothing
    again = aug.apply_variant(sample, spec_seed, 0)
    assert _same(first, again)
    assert first.metadata == again.metadata


@SETTINGS
@given(sample=samples(), aug=augmenters(always_random=True), spec_seed=st.integers(0, 2**63 - 1))
def test_variants_differ(sample: Sample, aug: Augmenter, spec_seed: int) -> None:
    # A preset variant is a no-op with some probability (p < 1): ask for variety among 8.
    outs = [aug.apply_variant(sample, spec_seed, v) for v in range(8)]
    seeds = {o.metadata["augment"]["seed"] for o in outs}
    assert len(seeds) == 8
    assert any(not _same(outs[0], o) for o in outs[1:])


@settings(max_examples=10, deadline=None)
@given(spec_seed=st.integers(0, 2**63 - 1), index=st.integers(0, 10**6), variant=st.integers(0, 99))
def test_seed_depends_only_on_seed_index_variant(spec_seed: int, index: int, variant: int) -> None:
    s = augment_seed(spec_seed, index, variant)
    assert s == augment_seed(spec_seed, index, variant)
    assert 0 <= s < 2**63
    assert s != augment_seed(spec_seed, index, variant + 1)
    assert s != augment_seed(spec_seed, index + 1, variant)


@settings(max_examples=60, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    hints=st.lists(st.floats(-10, 90) | st.just(float("nan")), min_size=4, max_size=4),
)
def test_fast_mask_boxes_match_reference_whatever_the_hint(seed: int, hints: list[float]) -> None:
    from synthvision.augment import _mask_area_and_box

    gen = np.random.default_rng(seed)
    masks = np.zeros((3, 40, 56), bool)
    for i in range(2):  # the third stays empty
        y, x = gen.integers(0, 40), gen.integers(0, 56)
        masks[i, y : y + gen.integers(1, 15), x : x + gen.integers(1, 15)] = True
        masks[i] |= gen.random((40, 56)) > 0.995  # stray pixels far from the blob
    hint = np.tile(np.asarray(hints, np.float64), (3, 1))
    for h in (None, hint, boxes.masks_to_xyxy(masks)):
        areas, xyxy = _mask_area_and_box(masks, h)
        assert np.array_equal(xyxy, boxes.masks_to_xyxy(masks))
        assert np.array_equal(areas, masks.sum(axis=(1, 2)))
