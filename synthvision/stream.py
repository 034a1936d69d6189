"""Train on a spec's images as they are generated: a PyTorch IterableDataset, nothing on disk.

    from torch.utils.data import DataLoader
    from synthvision.data import collate_detection
    from synthvision.stream import SynthStream

    stream = SynthStream("configs/quickstart.yaml", split="train")
    loader = DataLoader(stream, batch_size=8, num_workers=2, collate_fn=collate_detection)
    for epoch in range(10):
        stream.set_epoch(epoch)  # epoch 0: the spec's dataset; each later epoch: new images
        for images, targets in loader:
            ...

Each item is `(image, target)` in the format of `synthvision.data.SynthDetection`, and epoch 0
is the dataset `synthvision build` writes for the same spec: the same items, labels and
`image_id`s (the pixels are identical to a build with `export.image_format: png`; a JPEG build
adds its compression). Epoch `e > 0` is the dataset of the seed derived from (spec seed, e): new
images, the same splits, class targets and augmentation, as reproducible as epoch 0.

Sharding: the generated images of the split are dealt round-robin to the ranks
(`torch.distributed` when it is initialised, or `rank`/`world_size` given), and each rank's to
its DataLoader workers, so each item is yielded at most once per epoch whatever the number of
workers and ranks: exactly once with one rank, or with `even=False`. With `even` (the default)
every rank yields the same number of items, as DDP needs: the last `images % world_size`
generated images of the split are left out, and the items of an image that the filters reject
after its retries (diffusion) are replaced by copies of an item of the same rank, as
DistributedSampler pads (a build leaves such an image out). Generation is batched (`batch_size`
images per generator call) inside each worker.

GPU generators (diffusion) belong in the main process (`num_workers=0`): CUDA cannot start in a
forked worker. `set_epoch` reaches persistent workers too: the epoch lives in shared memory.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import IterableDataset, get_worker_info

from synthvision import randomness
from synthvision.config import Spec, load_spec
from synthvision.data import detection_target, image_tensor
from synthvision.dataset_items import (
    Variants,
    create_labeler,
    create_scene_generator,
    generation_batch_size,
    sample_record,
    variants_per_image,
)
from synthvision.errors import SpecError
from synthvision.formats.coco import coco_annotation
from synthvision.formats.records import instances_from_records
from synthvision.plan import ImageJob, assign_split_ids, plan_jobs
from synthvision.structures import Sample


def epoch_seed(seed: int, epoch: int) -> int:
    """The dataset seed of `epoch`: the spec's own for epoch 0, a derived one after."""
    if epoch == 0:
        return seed
    return randomness.derive_seed(seed, randomness.GLOBAL_INDEX, f"stream.epoch.{epoch}")


def _whole(value: Any, name: str) -> int:
    """`value` as an int (ints and numpy ints); SpecError for anything else (2.5, "8", True)."""
    if isinstance(value, bool):
        raise SpecError(f"{name} must be a whole number (got {value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise SpecError(f"{name} must be a whole number (got {value!r})") from None


Item = tuple[torch.Tensor, dict[str, Any]]


def _copy(item: Item) -> Item:
    """A copy sharing no tensor with `item`, so a loop that edits one in place can't edit both."""
    image, target = item
    return image.clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()}


def _padded(items: Iterator[Item | None]) -> Iterator[Item]:
    """`items` with each None (an item of a rejected image) replaced by a copy of the latest
    item, or of the first one when none came yet, as DistributedSampler pads: so every rank
    yields `len()` items and DDP's ranks step in lockstep to the end of the epoch."""
    latest: Item | None = None
    owed = 0
    for item in items:
        if item is None:
            if latest is None:
                owed += 1
            else:
                yield _copy(latest)
            continue
        yield item
        latest = item
        for _ in range(owed):
            yield _copy(item)
        owed = 0
    if owed:
        raise SpecError(
            f"every image of this stream's share was rejected by the filters ({owed} items), "
            "so even=True has nothing to pad with: check the model and the filter thresholds "
            "(min_instances, clip_filter.threshold, max_retries), or pass even=False"
        )


class SynthStream(IterableDataset):  # type: ignore[type-arg]
    """The items of one split (or all: `split=None`) of a spec, generated while iterating.

    `spec`: a `Spec` or the path of a spec file (with `overrides`, as `--set key=value`).
    `batch_size`: images per generator call (default: the generator's preference, e.g. a
    diffusion model's batch, else 8). `with_masks`: as in `SynthDetection`.
    `rank`, `world_size`: this process's share; default: `torch.distributed`'s, else 0 and 1.
    `even`: every rank yields `len()` items (DDP steps in lockstep), so the last
    `images % world_size` generated images of the split are left out and a rejected image's
    items are padded with copies of another; `even=False` yields each kept item once.
    """

    def __init__(
        self,
        spec: Spec | str | Path,
        split: str | None = "train",
        *,
        overrides: Sequence[str] = (),
        batch_size: int | None = None,
        with_masks: bool = True,
        epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = True,
    ) -> None:
        if isinstance(overrides, str):
            raise SpecError(f"overrides is a list of KEY=VALUE strings: give [{overrides!r}]")
        batch_size = None if batch_size is None else _whole(batch_size, "batch_size")
        epoch = _whole(epoch, "epoch")
        rank = None if rank is None else _whole(rank, "rank")
        world_size = None if world_size is None else _whole(world_size, "world_size")
        if not isinstance(spec, Spec):
            spec = load_spec(spec, list(overrides))
        elif overrides:
            raise SpecError("overrides apply to a spec file: give its path, not a Spec")
        if split is not None and split not in spec.splits:
            raise SpecError(
                f"split {split!r} is not in the spec; its splits: {', '.join(spec.splits)}"
            )
        if batch_size is not None and batch_size < 1:
            raise SpecError(f"batch_size must be at least 1 (got {batch_size})")
        if (rank is None) != (world_size is None) or (
            world_size is not None and not 0 <= int(rank or 0) < world_size
        ):
            raise SpecError(
                "give both rank and world_size, with 0 <= rank < world_size "
                f"(got {rank}, {world_size})"
            )
        self.spec = spec
        self.split = split
        self.with_masks = with_masks
        self.even = even
        self.classes = list(spec.class_names)
        self._rank_world = None if rank is None else (int(rank), int(world_size or 1))
        self._k = variants_per_image(spec)
        # The split of each generated image depends on its index only, not on the seed.
        split_ids = assign_split_ids(spec.splits, spec.num_images)
        self._split_names = list(spec.splits)
        self._split_ids = split_ids
        wanted = self._split_names.index(split) if split is not None else None
        self._images = (
            np.arange(spec.num_images) if wanted is None else np.flatnonzero(split_ids == wanted)
        )
        # In shared memory, so DataLoader workers (persistent ones too) see `set_epoch`.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.set_epoch(epoch)
        # Built now, so a bad spec fails here and not in a DataLoader worker; workers started by
        # spawn build their own (`__getstate__`), forked ones share these.
        self._generator: Any = create_scene_generator(spec)
        self.batch_size = generation_batch_size(self._generator, batch_size)
        self._labeler: Any = create_labeler(spec)
        self._variants: Variants | None = Variants(spec)

    def set_epoch(self, epoch: int) -> None:
        """Epoch 0 is the spec's dataset; each other epoch is a new, reproducible one."""
        epoch = _whole(epoch, "epoch")
        if epoch < 0:
            raise SpecError(f"epoch must be >= 0 (got {epoch})")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def _rank_and_world(self) -> tuple[int, int]:
        if self._rank_world is not None:
            return self._rank_world
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _rank_images(self) -> npt.NDArray[np.int64]:
        """This rank's generated images: every `world`-th from `rank`; with `even`, cut to the
        same number on every rank (DDP needs the same number of steps on each)."""
        rank, world = self._rank_and_world()
        mine = self._images[rank::world]
        return mine[: len(self._images) // world] if self.even else mine

    def _mine(self) -> list[int]:
        """The generated images of this DataLoader worker: this rank's, dealt round-robin to
        its workers."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self._rank_images()[worker::workers].tolist()  # type: ignore[no-any-return]

    def __len__(self) -> int:
        """Items this rank yields per epoch (all its DataLoader workers together).

        Exactly, with `even`; at most, without: an image the filters reject after its retries
        (diffusion) then yields nothing.
        """
        return len(self._rank_images()) * self._k

    def __iter__(self) -> Iterator[Item]:
        items = self._generated_items()
        if self.even:
            return _padded(items)
        return (item for item in items if item is not None)

    def _generated_items(self) -> Iterator[Item | None]:
        """This worker's items in order, with None for each item of an image that a filter
        rejected after its retries (it has no labels)."""
        mine = self._mine()
        if not mine:
            return
        if self._generator is None:  # a spawned worker: its own models
            self._generator = create_scene_generator(self.spec)
            self._labeler = create_labeler(self.spec)
            self._variants = Variants(self.spec)
        assert self._variants is not None
        seed = epoch_seed(self.spec.seed, self.epoch)
        spec = self.spec if seed == self.spec.seed else self.spec.model_copy(update={"seed": seed})
        job = self._jobs(spec)
        batches = (
            [job(i) for i in mine[start : start + self.batch_size]]
            for start in range(0, len(mine), self.batch_size)
        )
        # Generators with a `session` (diffusion scenes) label a batch on threads while the
        # next one generates, as in a build: one batch in flight, retries in later batches.
        session = self._generator.session() if hasattr(self._generator, "session") else None
        in_flight: Callable[[], list[Sample]] | None = None
        for jobs in batches:
            if session is None:
                yield from self._items(self._on_cuda(self._generator.generate, jobs), seed)
                continue
            started = self._on_cuda(session.start, jobs)
            if in_flight is not None:
                yield from self._items(self._on_cuda(in_flight), seed)
            in_flight = started
        if in_flight is not None:
            yield from self._items(self._on_cuda(in_flight), seed)
        if session is not None:
            yield from self._items(self._on_cuda(session.finish), seed)

    def _items(self, samples: list[Sample], seed: int) -> Iterator[Item | None]:
        """The torch items of generated `samples` (labeled, split into their variants); None
        for each item of a rejected sample."""
        assert self._variants is not None
        if self._labeler is not None:
            samples = self._on_cuda(self._labeler.label, samples)
        for sample in samples:
            if sample.metadata.get("rejected"):  # failed every retry: never labeled
                yield from [None] * self._k
                continue
            split = self._split_names[self._split_ids[sample.index]]
            for out_index, item in self._variants.items(sample, seed=seed):
                yield self._as_torch(item, out_index, split)

    def _jobs(self, spec: Spec) -> Callable[[int], ImageJob]:
        """Job of an image index for this epoch's `spec`. Class weights: made per image, so a
        worker draws only its own share; count targets: from the whole plan (they are dealt
        over the dataset)."""
        return plan_jobs(spec, self._split_ids).__getitem__

    @staticmethod
    def _on_cuda(call: Callable[..., Any], *args: Any) -> Any:
        """`call(*args)`, with torch's CUDA-in-a-fork error (generator or labeler) made clear."""
        try:
            return call(*args)
        except RuntimeError as exc:
            if "forked subprocess" not in str(exc):
                raise
            raise SpecError(
                "this spec generates or labels on CUDA, which cannot start in a forked DataLoader "
                "worker: pass num_workers=0 (the generator batches on the GPU itself)"
            ) from exc

    def _as_torch(self, item: Sample, out_index: int, split: str) -> Item:
        # Through the export's records, so labels are the ones a build writes (tight boxes of the
        # visible masks, 1e-4 px rounding, polygons when the spec exports them).
        records = sample_record(item, split, self.spec)["instances"]
        inst = instances_from_records(records, item.size_hw, with_masks=self.with_masks)
        mode, size_hw = self.spec.export.coco_masks, item.size_hw
        area = [coco_annotation(r, 0, 0, mode, size_hw)["area"] for r in records]  # as written
        target = detection_target(inst, area, out_index + 1, self.with_masks)
        return image_tensor(item.image), target

    def __getstate__(self) -> dict[str, Any]:
        # Workers started by spawn get the spec, not the parent's models: each loads its own.
        state = dict(self.__dict__)
        state.update(_generator=None, _labeler=None, _variants=None)
        # A spawned (or forkserver) worker has no process group: it takes this process's rank
        # and world size along, or every rank's workers would yield the whole split.
        state["_rank_world"] = self._rank_and_world()
        return state
