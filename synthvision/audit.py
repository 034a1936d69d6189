"""Memorization audit of a generator trained on real crops (`synthvision audit`).

Distance to closest record (DCR; e.g. Zhao et al. 2021, "CTAB-GAN", and the synthetic-data
privacy literature): for each generated crop, the distance in feature space to its nearest
training crop of the same class. The reference is the same distance for real crops the model
never saw (held out at training time): a generator that generalises produces crops about as far
from the training set as fresh real data is; one that memorises produces near-copies. We report
both distributions and the fraction of generated crops closer to the training set than the 5th
percentile of held-out crops (about 5% for an honest generator; 100% for a copier), flagging the
model when that fraction exceeds `flag_ratio` times the percentile.

Features: the default needs no download (crop composited on grey and downsampled to 16x16, the
16x16 alpha silhouette, and alpha-weighted colour histograms); a stronger embedding can come
from a local TorchScript file mapping (N, 3, S, S) floats in [0, 1] to (N, D).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from synthvision.crops import composite_on, grid_image, to_square
from synthvision.errors import SpecError

RGBA = npt.NDArray[np.uint8]
FeatureFn = Callable[[Sequence[RGBA]], npt.NDArray[np.float32]]  # crops -> (N, D)


class PixelFeatures:
    """Download-free features (N, 3*s*s + s*s + 3*bins), each block scaled to unit weight."""

    def __init__(self, size: int = 16, bins: int = 16) -> None:
        self.size, self.bins = size, bins

    def __call__(self, crops: Sequence[RGBA]) -> npt.NDArray[np.float32]:
        feats = [self._one(c) for c in crops]
        return np.stack(feats).astype(np.float32) if feats else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        return 4 * self.size**2 + 3 * self.bins

    def _one(self, rgba: RGBA) -> npt.NDArray[np.float64]:
        sq = to_square(rgba, self.size * 4)  # aspect kept, like the training squares
        small = np.asarray(
            Image.fromarray(sq).resize((self.size, self.size), Image.Resampling.BOX), np.float64
        )  # (s, s, 4)
        a = small[..., 3:] / 255.0
        rgb = (small[..., :3] * a + 128.0 * (1 - a)) / 255.0  # over mid-grey
        pix = rgb.reshape(-1) / np.sqrt(rgb.size)
        sil = a.reshape(-1) / np.sqrt(a.size)
        w = rgba[..., 3].astype(np.float64).reshape(-1)
        w = w / max(w.sum(), 1e-9)
        hist = [
            np.bincount(
                (rgba[..., ch].reshape(-1).astype(np.int64) * self.bins) // 256,
                weights=w,
                minlength=self.bins,
            )
            for ch in range(3)
        ]
        col = np.concatenate(hist) / np.sqrt(3)
        return np.concatenate([pix, sil, col])


class TorchScriptFeatures:
    """Embeddings from a local TorchScript module: (N, 3, S, S) in [0, 1] -> (N, D), L2-normed."""

    def __init__(self, path: str | Path, size: int = 224, device: str = "cpu") -> None:
        import torch

        p = Path(path)
        if not p.is_file():
            raise SpecError(f"--features: {p} is not a file (give 'pixels' or a TorchScript .pt)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch deprecating jit.load
                self.module = torch.jit.load(str(p), map_location=device).eval()
        except RuntimeError as exc:
            why = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else exc
            raise SpecError(f"--features: {p} is not a TorchScript module ({why})") from None
        self.size, self.device = size, device

    def __call__(self, crops: Sequence[RGBA]) -> npt.NDArray[np.float32]:
        import torch

        out = []
        for start in range(0, len(crops), 64):
            batch = np.stack(
                [composite_on(to_square(c, self.size)) for c in crops[start : start + 64]]
            )  # (b, S, S, 3)
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255).to(self.device)
            with torch.no_grad():
                f = self.module(x).flatten(1).float()  # (b, D)
            out.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def load_feature_extractor(spec: str = "pixels", size: int = 224, device: str = "cpu") -> FeatureFn:
    """'pixels' (default, no download) or the path of a TorchScript embedding model."""
    if spec == "pixels":
        return PixelFeatures()
    return TorchScriptFeatures(spec, size=size, device=device)


def nearest(
    query: npt.NDArray[np.float32],
    ref: npt.NDArray[np.float32],
    query_classes: npt.NDArray[np.int64] | None = None,
    ref_classes: npt.NDArray[np.int64] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Euclidean distance (N,) and index (N,) of each query's nearest reference row.

    With classes, only references of the query's class count (inf / -1 when there is none).
    """
    q, r = query.astype(np.float64), ref.astype(np.float64)
    dist = np.full(len(q), np.inf)
    idx = np.full(len(q), -1, dtype=np.int64)
    r2 = (r**2).sum(1)  # (M,)
    for start in range(0, len(q), 256):
        qb = q[start : start + 256]  # (b, D)
        d2 = (qb**2).sum(1)[:, None] - 2 * qb @ r.T + r2[None, :]  # (b, M)
        if query_classes is not None and ref_classes is not None:
            d2 = np.where(
                query_classes[start : start + 256, None] == ref_classes[None, :], d2, np.inf
            )
        j = np.argmin(d2, axis=1) if d2.shape[1] else np.zeros(len(qb), np.int64)
        best = d2[np.arange(len(qb)), j] if d2.shape[1] else np.full(len(qb), np.inf)
        ok = np.isfinite(best)
        dist[start : start + len(qb)] = np.where(ok, np.sqrt(np.maximum(best, 0.0)), np.inf)
        idx[start : start + len(qb)] = np.where(ok, j, -1)
    return dist, idx


def _quantiles(x: npt.NDArray[np.float64]) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {}
    qs = np.percentile(x, [5, 25, 50, 75, 95])
    return {f"p{p}": round(float(v), 5) for p, v in zip((5, 25, 50, 75, 95), qs, strict=True)}


@dataclass
class AuditResult:
    """DCRs of generated and held-out crops to the training set, and the verdict."""

    dcr_generated: npt.NDArray[np.float64]  # (G,)
    dcr_heldout: npt.NDArray[np.float64]  # (H,)
    nearest_train: npt.NDArray[np.int64]  # (G,) index of each generated crop's nearest train crop
    percentile: float
    threshold: float  # the `percentile`-th percentile of dcr_heldout
    fraction_below: float  # of generated crops with DCR < threshold
    flag_ratio: float
    flagged: bool

    @property
    def min_heldout(self) -> int:
        """Held-out crops needed for 5 of them to fall below the percentile: with fewer, the
        threshold is one or two crops' distance and the verdict is noise."""
        return math.ceil(5 * 100 / self.percentile)

    @property
    def num_heldout_compared(self) -> int:
        """Held-out crops with a same-class training crop to measure against."""
        return int(np.isfinite(self.dcr_heldout).sum())

    @property
    def reliable(self) -> bool:
        return self.num_heldout_compared >= self.min_heldout

    def summary(self) -> dict[str, Any]:
        expected = self.percentile / 100
        return {
            "num_generated": len(self.dcr_generated),
            "num_heldout": len(self.dcr_heldout),
            "reliable": self.reliable,
            "min_heldout_for_percentile": self.min_heldout,
            "percentile": self.percentile,
            "threshold": round(self.threshold, 5),
            "fraction_generated_below_threshold": round(self.fraction_below, 4),
            "expected_without_memorization": expected,
            "flag_if_above": round(self.flag_ratio * expected, 4),
            "flagged": self.flagged,
            "median_dcr_ratio_generated_to_heldout": round(
                float(np.median(self.dcr_generated) / max(np.median(self.dcr_heldout), 1e-12)), 4
            ),
            "dcr_generated": _quantiles(self.dcr_generated),
            "dcr_heldout": _quantiles(self.dcr_heldout),
        }

    def verdict(self) -> str:
        s = self.summary()
        head = "POSSIBLE MEMORIZATION" if self.flagged else "no sign of memorization"
        if not self.reliable and not self.flagged:
            head = "INCONCLUSIVE"
        text = (
            f"{head}: {100 * self.fraction_below:.1f}% of {s['num_generated']} generated crops are "
            f"closer to a training crop than {self.percentile:g}% of {s['num_heldout']} held-out "
            f"real crops (expected ~{self.percentile:g}%, flag above "
            f"{100 * s['flag_if_above']:.0f}%); median DCR generated/held-out = "
            f"{s['median_dcr_ratio_generated_to_heldout']:.2f}"
        )
        if not self.reliable:
            text += (
                f". Too few held-out crops: {self.num_heldout_compared} compared, the "
                f"{self.percentile:g}th percentile needs at least {self.min_heldout} (train with a "
                "larger --holdout, or raise --percentile)"
            )
        return text


def audit_memorization(
    generated: Sequence[RGBA],
    train: Sequence[RGBA],
    heldout: Sequence[RGBA],
    *,
    generated_classes: Sequence[int] | None = None,
    train_classes: Sequence[int] | None = None,
    heldout_classes: Sequence[int] | None = None,
    features: FeatureFn | None = None,
    percentile: float = 5.0,
    flag_ratio: float = 2.0,
) -> AuditResult:
    """Compare generated vs held-out crops by their distance to the closest training crop.

    Classes (optional, all three or none) restrict each nearest-neighbour search to the crop's
    own class. Raises SpecError when a set is empty.
    """
    if not generated or not train or not heldout:
        raise SpecError(
            f"the audit needs generated, training and held-out crops (got {len(generated)}, "
            f"{len(train)}, {len(heldout)}); train with a --holdout large enough to keep real "
            "crops aside (each class holds out round(crops x holdout): 0 for a class of 4 at "
            "the default 0.1)"
        )
    feats = features or PixelFeatures()
    f_gen, f_train, f_held = feats(generated), feats(train), feats(heldout)
    with_classes = (
        generated_classes is not None and train_classes is not None and heldout_classes is not None
    )
    gc = np.asarray(generated_classes) if with_classes else None
    tc = np.asarray(train_classes) if with_classes else None
    hc = np.asarray(heldout_classes) if with_classes else None
    d_gen, i_gen = nearest(f_gen, f_train, gc, tc)
    d_held, _ = nearest(f_held, f_train, hc, tc)
    d_held_f = d_held[np.isfinite(d_held)]
    if not len(d_held_f):
        raise SpecError("no held-out crop shares a class with the training crops")
    threshold = float(np.percentile(d_held_f, percentile))
    frac = float(np.mean(d_gen < threshold))
    return AuditResult(
        dcr_generated=d_gen,
        dcr_heldout=d_held,
        nearest_train=i_gen,
        percentile=percentile,
        threshold=threshold,
        fraction_below=frac,
        flag_ratio=flag_ratio,
        flagged=frac > flag_ratio * percentile / 100,
    )


def nearest_pairs_image(
    generated: Sequence[RGBA], train: Sequence[RGBA], result: AuditResult, k: int = 16
) -> Image.Image:
    """The k generated crops closest to training data, each beside its nearest training crop.

    Rows of up to 8 pairs: [generated | nearest training crop] per pair.
    """
    order = np.argsort(result.dcr_generated)[:k]
    pairs = [(generated[i], train[result.nearest_train[i]]) for i in order]
    rows = []
    for start in range(0, len(pairs), 8):
        rows.append([c for pair in pairs[start : start + 8] for c in pair])
    return grid_image(rows, cell=64)


def audit_run(
    run_dir: str | Path,
    *,
    samples_per_class: int = 50,
    temperature: float = 1.0,
    prior: str = "auto",
    features: str = "pixels",
    feature_size: int = 224,
    percentile: float = 5.0,
    flag_ratio: float = 2.0,
    pairs: int = 16,
    seed: int = 0,
    device: str = "auto",
    output_dir: str | Path | None = None,
    heldout_source: dict[str, Any] | None = None,
) -> tuple[AuditResult, dict[str, Any]]:
    """Audit a `train-cvae` output folder: re-cut its training data (from training.json), split
    it as the run did, sample `samples_per_class` crops per class, and compare. Writes
    audit.json and nearest_pairs.png to `output_dir` (default `<run_dir>/audit`). `prior` picks
    the p(z|c) samples come from, as the `cvae` object source's `prior` param does.

    `heldout_source` (a DataSource dict) takes fresh held-out crops from elsewhere; the
    procedural builder uses it since fresh procedural crops are unlimited.
    """
    from synthvision import randomness
    from synthvision.crops import DataSource, load_crops
    from synthvision.devices import model_device
    from synthvision.generators.cvae import load_cvae
    from synthvision.train_cvae import TRAINING_FILE, to_uint8

    run = Path(run_dir)
    info_path = run / TRAINING_FILE
    if not info_path.is_file():
        raise SpecError(
            f"{run}: no {TRAINING_FILE}; give a folder written by `synthvision train-cvae`"
        )
    info = json.loads(info_path.read_text())
    if "source" not in info:
        raise SpecError(f"{info_path}: no data source recorded (trained from arrays?)")
    names: list[str] = list(info["class_names"])
    extractor = load_feature_extractor(features, feature_size, "cpu")  # a bad path fails now
    crops = load_crops(DataSource.from_dict(info["source"]))
    held_keys = set(info.get("heldout_keys", []))
    train = [c for c in crops if c.key not in held_keys and c.class_name in names]
    held = [c for c in crops if c.key in held_keys and c.class_name in names]
    if heldout_source is not None:
        held = [
            c for c in load_crops(DataSource.from_dict(heldout_source)) if c.class_name in names
        ]

    model = load_cvae(str(run), model_device(device, "--device"))
    if prior not in ("auto", "fitted", "learned"):
        raise SpecError(f"--prior must be auto, fitted or learned, got {prior!r}")
    if prior == "fitted" and not model.has_fitted_prior:
        raise SpecError(f"{run}: no fitted latent prior in this checkpoint (use --prior learned)")
    gen_crops: list[RGBA] = []
    gen_ids: list[int] = []
    for ci, name in enumerate(names):
        for start in range(0, samples_per_class, 64):
            ks = range(start, min(samples_per_class, start + 64))
            gens = [randomness.torch_generator(seed, k, f"audit.{name}") for k in ks]
            rgba = model.sample([ci] * len(gens), gens, temperature, prior)  # type: ignore[arg-type]
            gen_crops += list(to_uint8(rgba))
            gen_ids += [ci] * len(gens)
    res = model.hparams["resolution"]
    # Compare at the model's resolution: real crops go through the same square fitting.
    train_sq = [to_square(c.rgba, res) for c in train]
    held_sq = [to_square(c.rgba, res) for c in held]
    result = audit_memorization(
        gen_crops,
        train_sq,
        held_sq,
        generated_classes=gen_ids,
        train_classes=[names.index(c.class_name) for c in train],
        heldout_classes=[names.index(c.class_name) for c in held],
        features=extractor,
        percentile=percentile,
        flag_ratio=flag_ratio,
    )
    out = Path(output_dir) if output_dir else run / "audit"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "run": str(run),
        "classes": names,
        "features": features,
        "temperature": temperature,
        "prior": prior,
        "samples_per_class": samples_per_class,
        "num_train": len(train),
        **result.summary(),
        "verdict": result.verdict(),
    }
    (out / "audit.json").write_text(json.dumps(report, indent=1))
    nearest_pairs_image(gen_crops, train_sq, result, k=pairs).save(out / "nearest_pairs.png")
    return result, report
