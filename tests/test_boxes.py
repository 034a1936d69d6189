import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synthvision import boxes
from synthvision.structures import ClassMap, Instances, Sample


def test_conversions_round_trip() -> None:
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0, 0, 1, 1]])
    np.testing.assert_allclose(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(xyxy)), xyxy)
    norm = boxes.xyxy_to_cxcywh_norm(xyxy, (100, 200))
    np.testing.assert_allclose(norm[0], [30 / 200, 50 / 100, 40 / 200, 60 / 100])
    np.testing.assert_allclose(boxes.cxcywh_norm_to_xyxy(norm, (100, 200)), xyxy)


def test_clip_area_iou() -> None:
    clipped = boxes.clip_xyxy([[-5, -5, 20, 300]], (100, 50))
    np.testing.assert_array_equal(clipped, [[0, 0, 20, 100]])
    assert boxes.area_xyxy([[0, 0, 2, 3], [5, 5, 4, 4]]).tolist() == [6.0, 0.0]
    iou = boxes.iou_xyxy([[0, 0, 2, 2]], [[1, 0, 3, 2], [10, 10, 11, 11]])
    np.testing.assert_allclose(iou, [[2 / 6, 0.0]])


def test_mask_tight_box_uses_pixel_edges() -> None:
    m = np.zeros((10, 12), bool)
    m[2:5, 3:6] = True
    assert boxes.mask_to_xyxy(m).tolist() == [3, 2, 6, 5]
    assert boxes.mask_to_xyxy(np.zeros((4, 4), bool)).tolist() == [0, 0, 0, 0]


@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_mask_box_contains_mask(h: int, w: int, seed: int) -> None:
    m = np.random.default_rng(seed).random((h, w)) > 0.7
    x1, y1, x2, y2 = boxes.mask_to_xyxy(m).astype(int)
    if m.any():
        assert m[y1:y2, x1:x2].sum() == m.sum()
        assert m[y1, x1:x2].any() and m[y2 - 1, x1:x2].any()
        assert m[y1:y2, x1].any() and m[y1:y2, x2 - 1].any()


def test_instances_shape_checks_and_indexing() -> None:
    inst = Instances(np.zeros((2, 4)), [0, 1], masks=np.zeros((2, 5, 5), bool))
    assert inst.xyxy.dtype == np.float32 and inst.class_id.dtype == np.int64
    assert len(inst[[1]]) == 1 and len(inst[np.array([True, False])]) == 1
    with pytest.raises(ValueError, match="class_id"):
        Instances(np.zeros((2, 4)), [0])
    with pytest.raises(ValueError, match="masks"):
        Instances(np.zeros((2, 4)), [0, 1], masks=np.zeros((1, 5, 5), bool))
    with pytest.raises(ValueError, match="image"):
        Sample(0, np.zeros((5, 5), np.uint8), inst)
    with pytest.raises(ValueError, match="masks"):
        Sample(0, np.zeros((6, 5, 3), np.uint8), inst)


def test_class_map() -> None:
    cm = ClassMap(("a", "b"))
    assert cm.id("b") == 1 and cm.coco_category_id(1) == 2
    assert [c["id"] for c in cm.coco_categories()] == [1, 2]
