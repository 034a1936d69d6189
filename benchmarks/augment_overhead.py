"""Overhead of our augmentation stage over a bare albumentations call (target: <= 20%).

Same pipeline (a preset, `medium` by default), same images, same random draws, one core:

- bare: `compose(image=..., masks=..., bboxes=..., instance_index=...)`, what a user would call
  for a detection sample, on an `A.Compose` with our BboxParams, its random state set (untimed)
  to what `Augmenter.apply` uses;
- bare_same_inputs (masked samples): the exact call `Augmenter.apply` makes inside (masks + the
  boxes' corners as keypoints instead of boxes), i.e. our pure wrapper cost;
- ours: `Augmenter.apply(sample, seed)` (timed whole: seeding, mask/box bookkeeping, tight boxes,
  visibility, rounding, provenance record, `Sample` construction);
- batched: all variants of an image in one timed block, best of `--repeats` blocks:
  `Augmenter.apply_variants(sample, 0, variants)` (the input masks' statistics are computed once
  per image, as a build does) against the same block of bare_same_inputs calls.

Calls are interleaved per (image, variant) and the fastest of `--repeats` is kept for each, so
load from other processes affects all sides alike.

    python benchmarks/augment_overhead.py                       # medium, 512x512, 4 masks
    python benchmarks/augment_overhead.py --preset heavy --no-masks
"""

from __future__ import annotations

import os

# One core: set before numpy/cv2 load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from synthvision import boxes  # noqa: E402
from synthvision.augment import PRESETS, Augmenter, augment_seed  # noqa: E402
from synthvision.structures import Instances, Sample  # noqa: E402


def make_sample(index: int, size: int, n_instances: int, masked: bool) -> Sample:
    """A smooth random image with `n_instances` elliptic objects (masks or boxes only)."""
    gen = np.random.default_rng(index)
    small = gen.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    image = np.asarray(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), np.uint8)
    masks = np.zeros((n_instances, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n_instances):
        cy, cx = gen.uniform(0.2, 0.8, 2) * size
        ry, rx = gen.uniform(0.05, 0.2, 2) * size
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[masks[i]] = gen.integers(0, 256, 3, dtype=np.uint8)
    inst = Instances(
        boxes.masks_to_xyxy(masks).astype(np.float32),
        gen.integers(0, 5, n_instances),
        masks=masks if masked else None,
    )
    return Sample(index=index, image=image, instances=inst)


def bare_inputs(sample: Sample) -> dict[str, Any]:
    """What a user would hand albumentations directly for this sample."""
    inst = sample.instances
    data: dict[str, Any] = {
        "image": sample.image,
        "bboxes": inst.xyxy.astype(np.float64),
        "instance_index": np.arange(len(inst)),
    }
    if inst.masks is not None:
        data["masks"] = inst.masks.astype(np.uint8)
    return data


def same_inputs(sample: Sample) -> dict[str, Any]:
    """The inputs `Augmenter.apply` hands albumentations for a masked sample."""
    masks = sample.instances.masks
    assert masks is not None
    x1, y1, x2, y2 = boxes.masks_to_xyxy(masks).T
    corners = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1).reshape(-1, 2)
    return {
        "image": sample.image,
        "masks": masks.view(np.uint8),
        "keypoints": corners,
        "bboxes": np.zeros((0, 4)),
        "instance_index": np.zeros(0, np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", default="medium", choices=list(PRESETS))
    parser.add_argument("--size", type=int, default=512, help="image side in px")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--variants", type=int, default=8, help="seeds per image")
    parser.add_argument("--instances", type=int, default=4, help="objects per image")
    parser.add_argument("--repeats", type=int, default=3, help="best of N per call")
    parser.add_argument("--no-masks", action="store_true", help="boxes only")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    masked = not args.no_masks
    aug = Augmenter.from_preset(args.preset)
    bare = A.Compose(PRESETS[args.preset](), bbox_params=aug.box.bbox_params(), p=1.0)
    same = A.Compose(
        PRESETS[args.preset](),
        bbox_params=aug.box.bbox_params(),
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        p=1.0,
    )
    samples = [make_sample(i, args.size, args.instances, masked) for i in range(args.images)]
    inputs = [bare_inputs(s) for s in samples]
    inputs_same = [same_inputs(s) if masked else bare_inputs(s) for s in samples]

    # Warm-up (first-call costs: imports inside albumentations, cv2 kernels).
    for s, d in zip(samples[:2], inputs[:2], strict=True):
        aug.apply(s, 0)
        bare(**d)

    def timed(compose: A.Compose, data: dict[str, Any], seed: int) -> float:
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        t0 = time.perf_counter()
        compose(**data)
        return time.perf_counter() - t0

    t_bare: list[float] = []
    t_same: list[float] = []
    t_ours: list[float] = []
    t_batched: list[float] = []
    t_same_batched: list[float] = []
    for s, d, d_same in zip(samples, inputs, inputs_same, strict=True):
        for v in range(args.variants):
            seed = augment_seed(0, s.index, v)
            best = [float("inf")] * 3
            for _ in range(args.repeats):
                best[0] = min(best[0], timed(bare, d, seed))
                best[1] = min(best[1], timed(same, d_same, seed))
                t0 = time.perf_counter()
                aug.apply(s, seed, variant=v)
                best[2] = min(best[2], time.perf_counter() - t0)
            t_bare.append(best[0])
            t_same.append(best[1])
            t_ours.append(best[2])
        seeds = [augment_seed(0, s.index, v) for v in range(args.variants)]
        best_batch = best_same_batch = float("inf")
        for _ in range(args.repeats):
            best_same_batch = min(best_same_batch, sum(timed(same, d_same, x) for x in seeds))
            t0 = time.perf_counter()
            aug.apply_variants(s, 0, args.variants)
            best_batch = min(best_batch, time.perf_counter() - t0)
        t_batched.append(best_batch)
        t_same_batched.append(best_same_batch)

    n = len(t_bare)
    bare_s, same_s, ours_s = float(np.sum(t_bare)), float(np.sum(t_same)), float(np.sum(t_ours))
    batched_s, same_batched_s = float(np.sum(t_batched)), float(np.sum(t_same_batched))
    result = {
        "preset": args.preset,
        "size": args.size,
        "masks": masked,
        "instances_per_image": args.instances,
        "calls": n,
        "bare_images_per_s": round(n / bare_s, 1),
        "bare_same_inputs_images_per_s": round(n / same_s, 1),
        "ours_images_per_s": round(n / ours_s, 1),
        "ours_batched_images_per_s": round(n / batched_s, 1),
        "overhead_vs_bare_pct": round(100.0 * (ours_s / bare_s - 1.0), 1),
        "overhead_vs_same_inputs_pct": round(100.0 * (ours_s / same_s - 1.0), 1),
        "batched_overhead_vs_same_inputs_pct": round(100.0 * (batched_s / same_batched_s - 1.0), 1),
        "median_bare_ms": round(1000 * float(np.median(t_bare)), 2),
        "median_ours_ms": round(1000 * float(np.median(t_ours)), 2),
        "median_wrapper_ms": round(1000 * float(np.median(np.subtract(t_ours, t_same))), 2),
        "albumentations": A.__version__,
        "opencv": cv2.__version__,
        "machine": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
