import numpy as np

from synthvision.boxes import iou_xyxy, masks_to_xyxy
from synthvision.compose import PlacedCrop, compose, fit_crop
from synthvision.config import LayoutSpec
from synthvision.layout import place_objects


def square_crop(size: int, colour: tuple[int, int, int]) -> np.ndarray:
    crop = np.zeros((size, size, 4), np.uint8)
    crop[..., :3] = colour
    crop[..., 3] = 255
    return crop


def test_layout_respects_bounds_and_overlap() -> None:
    layout = LayoutSpec(scale=(0.1, 0.3), max_iou=0.1)
    for seed in range(20):
        placed = place_objects([0] * 6, (100, 160), layout, np.random.default_rng(seed))
        b = np.array([p.xyxy for p in placed], dtype=float)
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 160).all() and (b[:, 3] <= 100).all()
        iou = iou_xyxy(b, b) - np.eye(len(b))
        assert iou.max() <= 0.1 + 1e-9


def test_later_objects_occlude_and_boxes_are_tight() -> None:
    bg = np.zeros((50, 50, 3), np.uint8)
    crops = [
        PlacedCrop(square_crop(20, (255, 0, 0)), 0, 5, 5, 20, 20),
        PlacedCrop(square_crop(20, (0, 255, 0)), 1, 15, 5, 20, 20),  # covers the right half
    ]
    res = compose(bg, crops, min_visibility=0.3, min_area_px=1, edge_softness_px=0)
    assert res.instances.class_id.tolist() == [0, 1]
    np.testing.assert_array_equal(res.instances.xyxy, [[5, 5, 15, 25], [15, 5, 35, 25]])
    np.testing.assert_array_equal(res.instances.xyxy, masks_to_xyxy(res.instances.masks))
    assert res.visibility.tolist() == [0.5, 1.0]
    assert tuple(res.image[10, 20]) == (0, 255, 0)  # green on top


def test_mostly_hidden_instances_are_dropped() -> None:
    bg = np.zeros((50, 50, 3), np.uint8)
    crops = [
        PlacedCrop(square_crop(20, (255, 0, 0)), 0, 5, 5, 20, 20),
        PlacedCrop(square_crop(20, (0, 255, 0)), 1, 7, 5, 20, 20),  # hides 90%
    ]
    res = compose(bg, crops, min_visibility=0.3, min_area_px=1, edge_softness_px=0)
    assert res.instances.class_id.tolist() == [1] and res.dropped == 1


def test_soft_edges_keep_mask_at_half_alpha() -> None:
    bg = np.zeros((40, 40, 3), np.uint8)
    crop = PlacedCrop(square_crop(20, (200, 200, 200)), 0, 10, 10, 20, 20)
    res = compose(bg, [crop], min_visibility=0.3, min_area_px=1, edge_softness_px=1.5)
    edge = res.image[20, 8:13, 0]
    assert 0 < edge[1] < 200 or 0 < edge[2] < 200  # a soft ramp, not a hard cut
    x1, y1, x2, _ = res.instances.xyxy[0]
    assert abs(x1 - 10) <= 1 and abs(x2 - 30) <= 1 and abs(y1 - 10) <= 1


def test_fit_crop_keeps_aspect_and_premultiplies() -> None:
    crop = np.zeros((10, 20, 4), np.uint8)
    crop[:, :10] = (255, 255, 255, 255)  # left half opaque white, right half transparent black
    out, dx, dy = fit_crop(crop, 40, 40)
    assert out.shape == (20, 40, 4) and (dx, dy) == (0, 10)
    visible = out[..., 3] > 0
    assert out[visible, 0].min() >= 250  # no dark fringe from the transparent black pixels
