"""Labeler "detector": post-processing maths and a tiny random OWLv2 end to end."""

from __future__ import annotations

import numpy as np
import pytest

from synthvision.errors import SpecError
from synthvision.structures import Instances, Sample

pytest.importorskip("torch")
pytest.importorskip("transformers")

from synthvision.labelers import detector as det
from synthvision.labelers.base import LABELERS
from tests import tiny_models


def test_postprocess_threshold_nms_and_class_agnostic_duplicates() -> None:
    xyxy = np.array(
        [
            [0, 0, 10, 10],  # cat 0.9
            [1, 1, 10, 10],  # cat 0.8: same object -> NMS
            [0, 0, 10, 11],  # dog 0.7: same object as another class -> duplicate filter
            [20, 20, 30, 30],  # dog 0.6
            [40, 40, 50, 50],  # below threshold
        ],
        dtype=np.float64,
    )
    scores = np.array([[0.9, 0.1], [0.8, 0.0], [0.2, 0.7], [0.0, 0.6], [0.1, 0.2]])
    out = det.postprocess(xyxy, scores, (64, 64), threshold=0.3, nms_iou=0.5, duplicate_iou=0.8)
    assert out.class_id.tolist() == [0, 1]
    assert out.scores is not None
    np.testing.assert_allclose(out.scores, np.array([0.9, 0.6]))
    np.testing.assert_array_equal(out.xyxy, [[0, 0, 10, 10], [20, 20, 30, 30]])
    keep_dupes = det.postprocess(
        xyxy, scores, (64, 64), threshold=0.3, nms_iou=0.5, duplicate_iou=1.0
    )
    assert keep_dupes.class_id.tolist() == [0, 1, 1]


def test_verified_needs_same_class_and_overlap() -> None:
    existing = Instances(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 1]))
    found = Instances(np.array([[1, 1, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]))
    assert det.verified(existing, found, 0.5).tolist() == [True, False]


@pytest.fixture(scope="module")
def owl() -> str:
    return tiny_models.owlv2_model()


def _samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(
            i,
            rng.integers(0, 256, (32, 48, 3), dtype=np.uint8),
            Instances(np.array([[2, 2, 20, 20]]), np.array([1])),
            {"prompt": "x"},
        )
        for i in range(n)
    ]


def test_tiny_owlv2_labels_and_verifies(owl: str) -> None:
    names = ["cat", "dog"]
    lab = LABELERS.create(
        "detector",
        {"model": owl, "threshold": 0.0, "duplicate_iou": 1.0, "batch_size": 2},
        "labeler",
        class_names=names,
    )
    samples = _samples(3)
    samples.append(Sample(9, samples[0].image, Instances.empty(), {"rejected": "nan"}))
    out = lab.label(samples)
    assert [s.index for s in out] == [0, 1, 2, 9]
    assert out[3] is samples[3]  # rejected samples pass through untouched
    for s in out[:3]:
        inst = s.instances
        assert inst.scores is not None and ((inst.class_id >= 0) & (inst.class_id < 2)).all()
        assert (inst.xyxy[:, :2] >= 0).all() and (inst.xyxy[:, 2] <= 48).all()
        assert (inst.xyxy[:, 3] <= 32).all()
        assert s.metadata["detector"]["mode"] == "replace"
        assert s.metadata["prompt"] == "x"
    again = lab.label(samples[:1])[0]
    np.testing.assert_array_equal(again.instances.xyxy, out[0].instances.xyxy)

    # A second labeler of the same model (another build in this process) reuses the loaded
    # weights instead of reading them again; other query settings do not matter for loading.
    assert verify_model_is(lab, owl, names)

    verify = LABELERS.create(
        "detector",
        {"model": owl, "mode": "verify", "threshold": 1.0},
        "labeler",
        class_names=names,
    )
    checked = verify.label(_samples(2))
    for s in checked:  # nothing detected at threshold 1: every label is dropped
        assert len(s.instances) == 0 and s.metadata["detector"]["dropped"] == 1


def test_detector_errors_are_spec_errors(tmp_path, owl: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError, match=r"labeler\.params\.model: .*does not exist"):
        LABELERS.create(
            "detector", {"model": str(tmp_path / "nope")}, "labeler", class_names=["cat"]
        )
    with pytest.raises(SpecError, match=r"labeler\.params\.thresh"):
        LABELERS.create("detector", {"model": owl, "thresh": 0.2}, "labeler", class_names=["a"])
    with pytest.raises(SpecError, match=r"queries"):
        LABELERS.create(
            "detector",
            {"model": owl, "queries": {"cow": ["a cow"]}},
            "labeler",
            class_names=["cat"],
        )


def verify_model_is(lab: det.DetectorLabeler, owl: str, names: list[str]) -> bool:
    other = LABELERS.create(
        "detector", {"model": owl, "threshold": 0.9, "mode": "verify"}, "labeler", class_names=names
    )
    det.clear_detector_cache()
    fresh = LABELERS.create("detector", {"model": owl}, "labeler", class_names=names)
    return other.model is lab.model and fresh.model is not lab.model
