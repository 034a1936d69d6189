"""The memorization audit: copies of training crops are flagged, fresh crops are not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from synthvision.audit import PixelFeatures, audit_memorization, nearest, nearest_pairs_image
from synthvision.crops import crops_from_procedural
from synthvision.errors import SpecError

CLASSES = ("disc", "square", "star")


@pytest.fixture(scope="module")
def real_crops():
    """Three disjoint sets of real procedural crops: train, held-out, and 'fresh' (unseen)."""
    train = crops_from_procedural(CLASSES, 30, seed=1)
    held = crops_from_procedural(CLASSES, 10, seed=2)
    fresh = crops_from_procedural(CLASSES, 10, seed=3)
    return train, held, fresh


def _args(crops):
    return [c.rgba for c in crops], [CLASSES.index(c.class_name) for c in crops]


def test_audit_flags_a_generator_that_copies_training_crops(real_crops) -> None:
    train, held, _ = real_crops
    (t, tc), (h, hc) = _args(train), _args(held)
    # the "generator" returns (slightly re-encoded) training crops
    copies = [c.copy() for c in t[::2]]
    res = audit_memorization(
        copies, t, h, generated_classes=tc[::2], train_classes=tc, heldout_classes=hc
    )
    assert res.flagged and res.fraction_below == 1.0
    assert np.allclose(res.dcr_generated, 0.0, atol=1e-6)
    assert "POSSIBLE MEMORIZATION" in res.verdict()
    assert res.summary()["median_dcr_ratio_generated_to_heldout"] == 0.0
    # nearest pairs: each generated crop sits beside the training crop it copied
    img = nearest_pairs_image(copies, t, res, k=4)
    assert isinstance(img, Image.Image) and img.size[0] > 4 * 64


def test_audit_passes_fresh_real_crops(real_crops) -> None:
    train, held, fresh = real_crops
    (t, tc), (h, hc), (f, fc) = _args(train), _args(held), _args(fresh)
    res = audit_memorization(f, t, h, generated_classes=fc, train_classes=tc, heldout_classes=hc)
    assert not res.flagged and res.fraction_below < 0.1
    # 30 held-out crops cannot pin down a 5th percentile: the verdict says so
    assert not res.reliable and res.min_heldout == 100
    assert res.verdict().startswith("INCONCLUSIVE") and "needs at least 100" in res.verdict()
    at_20 = audit_memorization(
        f, t, h, generated_classes=fc, train_classes=tc, heldout_classes=hc, percentile=20.0
    )
    assert at_20.reliable and at_20.verdict().startswith("no sign of memorization")
    summary = res.summary()
    json.dumps(summary)  # plain JSON numbers
    assert set(summary["dcr_heldout"]) == {"p5", "p25", "p50", "p75", "p95"}


def test_nearest_respects_classes() -> None:
    q = np.array([[0.0, 0.0], [5.0, 5.0]], np.float32)
    r = np.array([[0.1, 0.0], [5.0, 5.1], [9.0, 9.0]], np.float32)
    d, i = nearest(q, r)
    assert i.tolist() == [0, 1] and np.allclose(d, [0.1, 0.1], atol=1e-6)
    d, i = nearest(q, r, np.array([1, 0]), np.array([0, 0, 1]))
    assert i.tolist() == [2, 1]


def test_pixel_features_shape_and_empty_inputs(real_crops) -> None:
    train, _, _ = real_crops
    feats = PixelFeatures()(_args(train[:3])[0])
    assert feats.shape == (3, PixelFeatures().dim) and feats.dtype == np.float32
    with pytest.raises(SpecError, match="held-out"):
        audit_memorization(_args(train)[0], _args(train)[0], [])


def _train_tiny(source: Any, out: Path) -> None:
    """One epoch of a tiny cVAE (16 px), a quarter of each class held out for the audit."""
    from synthvision.train_cvae import TrainConfig, train_cvae

    config = TrainConfig(
        resolution=16,
        latent_dim=4,
        embedding_dim=8,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        epochs=1,
        batch_size=8,
        holdout=0.25,
        device="cpu",
    )
    train_cvae(source, out, config, progress=False)


def test_audit_of_a_trained_run_writes_report(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from synthvision.audit import audit_run
    from synthvision.crops import resolve_source

    torch.set_num_threads(1)
    src = resolve_source("procedural", classes=["disc", "ring"], count_per_class=12, min_size=4)
    _train_tiny(src, tmp_path / "run")
    result, report = audit_run(tmp_path / "run", samples_per_class=6, device="cpu")
    assert report["num_generated"] == 12 and report["num_heldout"] == 6
    assert (tmp_path / "run" / "audit" / "audit.json").is_file()
    assert (tmp_path / "run" / "audit" / "nearest_pairs.png").is_file()
    assert isinstance(result.flagged, bool)
    assert report["prior"] == "auto" and report["reliable"] is False

    _, learned = audit_run(tmp_path / "run", samples_per_class=6, device="cpu", prior="learned")
    assert learned["prior"] == "learned"
    from synthvision.errors import SpecError

    with pytest.raises(SpecError, match="--prior must be"):
        audit_run(tmp_path / "run", samples_per_class=6, device="cpu", prior="wide")


def test_audit_builtin_reports_outside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit builtin` audits the shipped checkpoint; the installed package may be read-only,
    so the report goes to ./cvae-builtin-audit."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from synthvision.cli import app
    from synthvision.crops import resolve_source
    from synthvision.generators import cvae

    src = resolve_source("procedural", classes=["disc"], count_per_class=8, min_size=4)
    _train_tiny(src, tmp_path / "shipped")
    monkeypatch.setattr(cvae, "BUILTIN_CHECKPOINT", tmp_path / "shipped")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["audit", "builtin", "--samples-per-class", "2"])
    assert res.exit_code == 0, res.output
    assert "INCONCLUSIVE" in res.output and "cvae-builtin-audit/audit.json" in res.output
    assert (tmp_path / "cvae-builtin-audit" / "nearest_pairs.png").is_file()
    assert not (tmp_path / "shipped" / "audit").exists()
