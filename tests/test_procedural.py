"""Built-in procedural object and background sources: shapes, determinism, params, errors."""

from __future__ import annotations

import numpy as np
import pytest

from synthvision.errors import SpecError
from synthvision.generators import (
    BACKGROUND_SOURCES,
    OBJECT_SOURCES,
    BackgroundRequest,
    CropRequest,
)
from synthvision.generators.procedural import (
    BACKGROUND_KINDS,
    PROCEDURAL_CLASSES,
    TEXTURES,
    ProceduralBackgrounds,
    ProceduralObjects,
)


def _objects(params: dict | None = None, class_names=PROCEDURAL_CLASSES) -> ProceduralObjects:
    src = OBJECT_SOURCES.create("procedural", params or {}, "objects", class_names=class_names)
    assert isinstance(src, ProceduralObjects)
    return src


def _backgrounds(params: dict | None = None) -> ProceduralBackgrounds:
    src = BACKGROUND_SOURCES.create("procedural", params or {}, "background", class_names=())
    assert isinstance(src, ProceduralBackgrounds)
    return src


def test_at_least_eight_distinct_classes() -> None:
    assert len(PROCEDURAL_CLASSES) >= 8
    assert len(set(PROCEDURAL_CLASSES)) == len(PROCEDURAL_CLASSES)


@pytest.mark.parametrize("name", PROCEDURAL_CLASSES)
def test_every_class_renders_rgba_filling_its_box(name: str) -> None:
    src = _objects({"rotation_deg": 0})
    for seed, size_hw in [(0, (64, 64)), (1, (40, 90)), (2, (97, 33))]:
        (crop,) = src.crops([CropRequest(name, size_hw, seed=seed)])
        assert crop.dtype == np.uint8
        assert crop.shape == (*size_hw, 4)
        alpha = crop[..., 3]
        assert (alpha > 127).mean() > 0.1, "the shape covers a fair part of its box"
        # The shape spans the box: some opaque-ish pixel in the first/last row and column.
        assert alpha[0].max() > 0 and alpha[-1].max() > 0
        assert alpha[:, 0].max() > 0 and alpha[:, -1].max() > 0
        # Anti-aliased: partial alpha values exist along the edges.
        assert ((alpha > 0) & (alpha < 255)).any()
        corners = [alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1]]
        if name == "square":
            continue
        if name == "triangle":  # upright: only the base vertices may touch the bottom corners
            assert corners[0] == 0 and corners[1] == 0
        else:
            assert corners == [0, 0, 0, 0], corners


def test_rotated_shapes_have_transparent_corners() -> None:
    src = _objects()
    for i, name in enumerate(PROCEDURAL_CLASSES):
        if name in ("square", "triangle"):
            continue
        (crop,) = src.crops([CropRequest(name, (80, 80), seed=100 + i)])
        a = crop[..., 3]
        assert max(a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]) < 128


def test_crops_deterministic_per_seed_and_batch_independent() -> None:
    src = _objects()
    reqs = [CropRequest(n, (48, 56), seed=7 + i) for i, n in enumerate(PROCEDURAL_CLASSES)]
    batch = src.crops(reqs)
    again = _objects().crops(list(reversed(reqs)))[::-1]
    single = [src.crops([r])[0] for r in reqs]
    for a, b, c in zip(batch, again, single, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_different_seeds_differ() -> None:
    src = _objects()
    for name in PROCEDURAL_CLASSES:
        crops = src.crops([CropRequest(name, (48, 48), seed=s) for s in range(4)])
        assert len({c.tobytes() for c in crops}) == 4, name


def test_unknown_class_is_one_line_spec_error() -> None:
    with pytest.raises(SpecError) as info:
        _objects(class_names=("disc", "forklift"))
    msg = str(info.value)
    assert "\n" not in msg
    assert "'forklift'" in msg
    assert "objects.params.shapes" in msg
    assert all(shape in msg for shape in PROCEDURAL_CLASSES)


def test_shapes_param_maps_classes() -> None:
    src = _objects({"shapes": {"forklift": "cross", "pallet": "square"}}, ("forklift", "pallet"))
    assert src.shape_of == {"forklift": "cross", "pallet": "square"}
    (crop,) = src.crops([CropRequest("forklift", (50, 50), seed=3)])
    assert crop.shape == (50, 50, 4) and crop[..., 3].any()


def test_shapes_param_errors() -> None:
    with pytest.raises(SpecError, match=r"objects\.params\.shapes"):
        _objects({"shapes": {"car": "blob"}}, ("car",))
    with pytest.raises(SpecError, match="'truck' is not a class"):
        _objects({"shapes": {"truck": "disc"}}, ("disc",))
    with pytest.raises(SpecError, match=r"objects\.params\.colour"):
        _objects({"colour": 3})


@pytest.mark.parametrize("texture", TEXTURES)
def test_each_texture_renders(texture: str) -> None:
    src = _objects({"textures": [texture], "texture_prob": 1.0, "outline_prob": 1.0})
    crops = src.crops([CropRequest("disc", (60, 60), seed=s) for s in range(3)])
    for crop in crops:
        assert crop.shape == (60, 60, 4)
        inner = crop[20:40, 20:40, :3].reshape(-1, 3)
        if texture in ("stripes", "checker", "dots", "noise", "gradient"):
            assert len(np.unique(inner, axis=0)) > 1


def test_tiny_and_large_crop_sizes() -> None:
    src = _objects()
    for size_hw in [(2, 2), (3, 17), (300, 40)]:
        (crop,) = src.crops([CropRequest("star", size_hw, seed=1)])
        assert crop.shape == (*size_hw, 4)


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_backgrounds_exact_size_dtype_and_deterministic(kind: str) -> None:
    src = _backgrounds({"kinds": [kind]})
    for size_hw in [(64, 96), (37, 21), (1, 1), (5, 200)]:
        (img,) = src.backgrounds([BackgroundRequest(size_hw, seed=11)])
        assert img.dtype == np.uint8
        assert img.shape == (*size_hw, 3)
        assert img.flags.writeable and img.flags.c_contiguous
    a, b, c = src.backgrounds([BackgroundRequest((48, 64), seed=s) for s in (1, 1, 2)])
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_background_without_grain_and_with_weights() -> None:
    src = _backgrounds({"kinds": ["linear", "solid"], "weights": [1.0, 0.0001], "grain": 0})
    imgs = src.backgrounds([BackgroundRequest((32, 48), seed=s) for s in range(5)])
    assert all(i.shape == (32, 48, 3) for i in imgs)


def test_background_params_errors() -> None:
    with pytest.raises(SpecError, match=r"background\.params\.kinds"):
        BACKGROUND_SOURCES.create("procedural", {"kinds": ["nope"]}, "background", class_names=())
    with pytest.raises(SpecError, match="weights"):
        _backgrounds({"kinds": ["linear", "noise"], "weights": [1.0]})
    with pytest.raises(SpecError, match=r"background\.params"):
        _backgrounds({"kinds": []})
