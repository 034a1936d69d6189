"""The plan: a pure function from a spec to one job per image.

A job says which image (global index), which split, which classes to place in paint order, and
carries the spec seed so every stage derives its own stream from (seed, index, stream name).

Class targets:
- weights (default 1 per class): each image draws its object count from `objects_per_image` and
  each object's class independently, from the stream (seed, index, "plan").
- counts: the dataset holds exactly `sum(count)` planned instances. Per-image object counts are
  drawn in range and then adjusted to that total; the class labels are shuffled once with the
  dataset-level stream (seed, GLOBAL_INDEX, "plan.classes") and dealt to images in index order.

Splits are assigned by index with a smooth weighted round-robin: every prefix of the dataset
has split sizes as close to the fractions as integers allow, and an image's split does not depend
on `num_images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from synthvision import randomness
from synthvision.config import Spec
from synthvision.errors import SpecError


@dataclass(frozen=True, slots=True)  # slots: a 10-million-image plan holds 10 million of these
class ImageJob:
    """One image to generate. `class_ids` are 0-based ids into the spec's classes, paint order."""

    index: int
    split: str
    size_hw: tuple[int, int]
    class_ids: tuple[int, ...]
    seed: int

    def rng(self, stream: str) -> np.random.Generator:
        return randomness.rng(self.seed, self.index, stream)

    def derive_seed(self, stream: str) -> int:
        return randomness.derive_seed(self.seed, self.index, stream)


def assign_splits(fractions: dict[str, float], num_images: int) -> list[str]:
    """Split of each index 0..num_images-1 (smooth weighted round-robin, deterministic)."""
    names = list(fractions)
    weights = [float(fractions[n]) for n in names]
    current = [0.0] * len(names)
    splits = range(len(names))
    out: list[str] = []
    for _ in range(num_images):  # plain floats: numpy's per-call overhead dominated at 3 splits
        for j in splits:
            current[j] += weights[j]
        k = max(splits, key=current.__getitem__)  # ties -> first split in spec order
        current[k] -= 1.0
        out.append(names[k])
    return out


def _objects_per_image(spec: Spec) -> list[int]:
    lo, hi = spec.objects_per_image
    return [
        int(randomness.rng(spec.seed, i, "plan").integers(lo, hi + 1))
        for i in range(spec.num_images)
    ]


def _fit_total(
    counts: list[int], total: int, lo: int, hi: int, gen: np.random.Generator
) -> list[int]:
    """Adjust per-image counts (each within [lo, hi]) so they sum to `total`."""
    n = len(counts)
    if not n * lo <= total <= n * hi:
        raise SpecError(
            f"classes: the counts sum to {total} instances, but {n} images with objects_per_image "
            f"[{lo}, {hi}] hold between {n * lo} and {n * hi}: change num_images, "
            "objects_per_image or the counts"
        )
    arr = np.array(counts, dtype=np.int64)
    diff = total - int(arr.sum())
    order = gen.permutation(n)
    step = 1 if diff > 0 else -1
    while diff != 0:
        moved = False
        for i in order:
            if diff == 0:
                break
            if lo <= arr[i] + step <= hi:
                arr[i] += step
                diff -= step
                moved = True
        if not moved:  # pragma: no cover - excluded by the range check above
            raise AssertionError("cannot fit counts")
    return [int(x) for x in arr]


def make_plan(spec: Spec) -> list[ImageJob]:
    """All jobs of the dataset, in index order."""
    splits = assign_splits(spec.splits, spec.num_images)
    size_hw = (int(spec.image_size[0]), int(spec.image_size[1]))
    n_objects = _objects_per_image(spec)
    per_image: list[tuple[int, ...]]
    if spec.classes[0].count is not None:
        counts = [int(c.count or 0) for c in spec.classes]
        total = sum(counts)
        lo, hi = spec.objects_per_image
        gen = randomness.rng(spec.seed, randomness.GLOBAL_INDEX, "plan.classes")
        n_objects = _fit_total(n_objects, total, lo, hi, gen)
        pool = np.repeat(np.arange(len(counts)), counts)
        gen.shuffle(pool)
        per_image, start = [], 0
        for n in n_objects:
            per_image.append(tuple(int(c) for c in pool[start : start + n]))
            start += n
    else:
        w = np.array([c.weight if c.weight is not None else 1.0 for c in spec.classes])
        cdf = np.cumsum(w / w.sum())
        cdf /= cdf[-1]
        per_image = []
        for i, n in enumerate(n_objects):
            gen = randomness.rng(spec.seed, i, "plan.classes")
            # Inverse-CDF sampling: the draws of numpy's `choice(len(p), n, p=p)`, without its
            # argument checks, which took a third of the planning time.
            per_image.append(tuple(cdf.searchsorted(gen.random(n), side="right").tolist()))
    return [
        ImageJob(index=i, split=splits[i], size_hw=size_hw, class_ids=per_image[i], seed=spec.seed)
        for i in range(spec.num_images)
    ]


def planned_class_counts(jobs: Sequence[ImageJob], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for job in jobs:
        for c in job.class_ids:
            counts[c] += 1
    return counts
