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

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt

from synthvision import randomness
from synthvision.config import Spec
from synthvision.errors import SpecError


@dataclass(frozen=True, slots=True)
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


def assign_split_ids(fractions: dict[str, float], num_images: int) -> npt.NDArray[np.integer]:
    """Split of each index 0..num_images-1, as positions in `fractions` (smooth weighted
    round-robin, deterministic)."""
    weights = [float(f) for f in fractions.values()]
    current = [0.0] * len(weights)
    splits = range(len(weights))
    out = np.empty(num_images, dtype=np.uint8 if len(weights) <= 255 else np.int64)
    for i in range(num_images):  # plain floats: numpy's per-call overhead dominated at 3 splits
        for j in splits:
            current[j] += weights[j]
        k = max(splits, key=current.__getitem__)  # ties -> first split in spec order
        current[k] -= 1.0
        out[i] = k
    return out


def assign_splits(fractions: dict[str, float], num_images: int) -> list[str]:
    """Split name of each index 0..num_images-1 (see `assign_split_ids`)."""
    names = list(fractions)
    return [names[k] for k in assign_split_ids(fractions, num_images).tolist()]


def _object_count(spec: Spec, index: int) -> int:
    """Objects of image `index` before count targets adjust them, from (seed, index, "plan")."""
    lo, hi = spec.objects_per_image
    return int(randomness.rng(spec.seed, index, "plan").integers(lo, hi + 1))


def _objects_per_image(spec: Spec) -> npt.NDArray[np.int64]:
    draws = (_object_count(spec, i) for i in range(spec.num_images))
    return np.fromiter(draws, dtype=np.int64, count=spec.num_images)


def _class_cdf(spec: Spec) -> npt.NDArray[np.float64]:
    w = np.array([c.weight if c.weight is not None else 1.0 for c in spec.classes])
    cdf = np.cumsum(w / w.sum())
    cdf /= cdf[-1]
    return cdf  # type: ignore[no-any-return]


def _weighted_classes(
    seed: int, index: int, n: int, cdf: npt.NDArray[np.float64]
) -> npt.NDArray[np.intp]:
    """The classes of image `index`'s `n` objects, drawn by weight from (seed, index,
    "plan.classes"). Inverse-CDF sampling: the draws of numpy's `choice(len(p), n, p=p)`,
    without its argument checks, which took a third of the planning time."""
    gen = randomness.rng(seed, index, "plan.classes")
    return cdf.searchsorted(gen.random(n), side="right")  # type: ignore[no-any-return]


def plans_per_image(spec: Spec) -> bool:
    """True when each image's job depends on its index alone (class weights), so `job_of` can
    make any job without planning the others; count targets need the whole plan."""
    return spec.classes[0].count is None


def job_of(
    spec: Spec, index: int, split: str, cdf: npt.NDArray[np.float64] | None = None
) -> ImageJob:
    """Job `index` of a weight-planned spec (`plans_per_image`), equal to `make_plan(spec)[index]`
    given the split `assign_split_ids` gives that index (`cdf`: the spec's class CDF, if known)."""
    n = _object_count(spec, index)
    cdf = _class_cdf(spec) if cdf is None else cdf
    class_ids = _weighted_classes(spec.seed, index, n, cdf).astype(np.int32)
    size_hw = (int(spec.image_size[0]), int(spec.image_size[1]))
    return ImageJob(index, split, size_hw, tuple(class_ids.tolist()), spec.seed)


class _Jobs(Sequence[ImageJob]):
    """A read-only sequence of a dataset's jobs in index order; subclasses make job `i`."""

    def _job(self, i: int) -> ImageJob:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> ImageJob: ...

    @overload
    def __getitem__(self, index: slice) -> list[ImageJob]: ...

    def __getitem__(self, index: int | slice) -> ImageJob | list[ImageJob]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = operator.index(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        return self._job(i)


class PerImageJobs(_Jobs):
    """The jobs of a weight-planned spec, each drawn when it is read: a rank (or a stream
    worker) pays only for the images it makes, where `make_plan` draws every image's first
    (~50 us each: 8 minutes per process at 10 million images). Equal to `make_plan(spec)`.

    `split_ids`: `assign_split_ids(spec.splits, spec.num_images)`, if already made (they do not
    depend on the seed).
    """

    def __init__(self, spec: Spec, split_ids: npt.NDArray[np.integer] | None = None) -> None:
        if not plans_per_image(spec):
            raise ValueError("count targets are dealt over the whole plan: use make_plan")
        self.spec = spec
        self._names = list(spec.splits)
        self._split_ids = (
            assign_split_ids(spec.splits, spec.num_images) if split_ids is None else split_ids
        )
        self._cdf = _class_cdf(spec)

    def __len__(self) -> int:
        return self.spec.num_images

    def _job(self, i: int) -> ImageJob:
        return job_of(self.spec, i, self._names[self._split_ids[i]], self._cdf)

    def class_counts(self, num_classes: int, images: range | None = None) -> list[int]:
        """Planned instances per class over `images` (default: all)."""
        counts = np.zeros(num_classes, dtype=np.int64)
        for i in images if images is not None else range(len(self)):
            n = _object_count(self.spec, i)
            counts += np.bincount(
                _weighted_classes(self.spec.seed, i, n, self._cdf), minlength=num_classes
            )
        return counts.tolist()  # type: ignore[no-any-return]


def plan_jobs(spec: Spec, split_ids: npt.NDArray[np.integer] | None = None) -> Sequence[ImageJob]:
    """The spec's jobs: drawn per image when class weights allow (`PerImageJobs`), else the
    whole plan (count targets; `make_plan` also checks that they can be met)."""
    return PerImageJobs(spec, split_ids) if plans_per_image(spec) else make_plan(spec)


def _fit_total(
    counts: npt.NDArray[np.int64], total: int, lo: int, hi: int, gen: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Adjust per-image counts (each within [lo, hi]) so they sum to `total`."""
    n = len(counts)
    if not n * lo <= total <= n * hi:
        raise SpecError(
            f"classes: the counts sum to {total} instances, but {n} images with objects_per_image "
            f"[{lo}, {hi}] hold between {n * lo} and {n * hi}: change num_images, "
            "objects_per_image or the counts"
        )
    arr = counts.copy()
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
    return arr


class Plan(_Jobs):
    """All jobs of a dataset, in index order: a read-only sequence of ImageJob.

    Stored as arrays (a split byte, an offset and the class ids of each image: about 23 bytes
    per image, where a list of ImageJob took 220), and each job is made when it is read.
    """

    def __init__(
        self,
        split_names: Sequence[str],
        split_ids: npt.NDArray[np.integer],
        offsets: npt.NDArray[np.int64],
        class_ids: npt.NDArray[np.int32],
        size_hw: tuple[int, int],
        seed: int,
    ) -> None:
        if not len(offsets) == len(split_ids) + 1 or offsets[-1] != len(class_ids):
            raise ValueError("offsets must hold len(split_ids) + 1 bounds into class_ids")
        self._split_names = tuple(split_names)
        self._split_ids = split_ids
        self._offsets = offsets
        self._class_ids = class_ids
        self.size_hw = size_hw
        self.seed = seed

    def __len__(self) -> int:
        return len(self._split_ids)

    def _job(self, i: int) -> ImageJob:
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return ImageJob(
            index=i,
            split=self._split_names[self._split_ids[i]],
            size_hw=self.size_hw,
            class_ids=tuple(self._class_ids[lo:hi].tolist()),
            seed=self.seed,
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Plan):
            return list(self) == list(other)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics: compare, don't hash

    def class_counts(self, num_classes: int, images: range | None = None) -> list[int]:
        """Planned instances per class over `images` (a step-1 range; default: all)."""
        ids = self._class_ids
        if images is not None:
            ids = ids[self._offsets[images.start] : self._offsets[images.stop]]
        return np.bincount(ids, minlength=num_classes).tolist()  # type: ignore[no-any-return]


def make_plan(spec: Spec) -> Plan:
    """All jobs of the dataset, in index order."""
    split_ids = assign_split_ids(spec.splits, spec.num_images)
    size_hw = (int(spec.image_size[0]), int(spec.image_size[1]))
    n_objects = _objects_per_image(spec)
    if spec.classes[0].count is not None:
        counts = [int(c.count or 0) for c in spec.classes]
        total = sum(counts)
        lo, hi = spec.objects_per_image
        gen = randomness.rng(spec.seed, randomness.GLOBAL_INDEX, "plan.classes")
        n_objects = _fit_total(n_objects, total, lo, hi, gen)
        pool = np.repeat(np.arange(len(counts)), counts)
        gen.shuffle(pool)
        class_ids = pool.astype(np.int32)  # dealt to images in index order
    else:
        cdf = _class_cdf(spec)
        class_ids = np.empty(int(n_objects.sum()), dtype=np.int32)
        start = 0
        for i, n in enumerate(n_objects.tolist()):
            class_ids[start : start + n] = _weighted_classes(spec.seed, i, n, cdf)
            start += n
    offsets = np.zeros(spec.num_images + 1, dtype=np.int64)
    np.cumsum(n_objects, out=offsets[1:])
    return Plan(list(spec.splits), split_ids, offsets, class_ids, size_hw, spec.seed)


def planned_class_counts(
    jobs: Sequence[ImageJob], num_classes: int, images: range | None = None
) -> list[int]:
    """Planned instances per class over `images` (default: every image of `jobs`)."""
    if isinstance(jobs, (PerImageJobs, Plan)):
        return jobs.class_counts(num_classes, images)
    if images is not None:
        jobs = [jobs[i] for i in images]
    counts = [0] * num_classes
    for job in jobs:
        for c in job.class_ids:
            counts[c] += 1
    return counts
