"""SynthStream: a spec's items generated while iterating, equal to what a build writes."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from synthvision.build import build
from synthvision.data import SynthDetection, collate_detection
from synthvision.errors import SpecError
from synthvision.stream import SynthStream, epoch_seed

from .helpers import SHAPES, small_spec

Item = tuple[torch.Tensor, dict[str, Any]]


def assert_same_items(got: list[Item], want: list[Item]) -> None:
    assert [t["image_id"] for _, t in got] == [t["image_id"] for _, t in want]
    for (image_a, target_a), (image_b, target_b) in zip(got, want, strict=True):
        assert torch.equal(image_a, image_b)
        assert target_a.keys() == target_b.keys()
        for key in ("boxes", "labels", "masks", "area", "iscrowd"):
            if key in target_a:
                assert target_a[key].dtype == target_b[key].dtype, key
                assert torch.equal(target_a[key], target_b[key]), key


def by_id(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda item: item[1]["image_id"])


@pytest.mark.parametrize(
    "over",
    [
        {},  # plain compose; RLE masks
        {  # augmented variants (k = 2 items per generated image), polygon masks
            "augment": {"preset": "medium", "variants": 1, "keep_original": True},
            "export": {"image_format": "png", "coco_masks": "polygon", "preview_images": 0},
        },
        {"classes": [{"name": n, "count": 3} for n in SHAPES]},  # dealt over the whole plan
    ],
    ids=["compose", "augmented-polygons", "count-targets"],
)
def test_epoch_0_is_the_dataset_a_png_build_writes(tmp_path: Path, over: dict[str, Any]) -> None:
    over = {"export": {"image_format": "png", "preview_images": 0}, **over}
    spec = small_spec(num_images=7, **over)
    build(spec, tmp_path / "ds", show_progress=False)
    for split in spec.splits:
        on_disk = SynthDetection(tmp_path / "ds", split)
        stream = SynthStream(spec, split, batch_size=3)
        got = list(stream)
        assert len(got) == len(stream) == len(on_disk) > 0
        assert stream.classes == on_disk.classes
        assert_same_items(got, [on_disk[i] for i in range(len(on_disk))])


def test_every_item_once_whatever_the_workers_and_ranks(tmp_path: Path) -> None:
    # Augmented: albumentations mixes DataLoader worker seeds in unless it is told not to.
    spec = small_spec(
        num_images=11, augment={"preset": "heavy", "variants": 1, "keep_original": True}
    )
    alone = list(SynthStream(spec, None, batch_size=4))
    assert [t["image_id"] for _, t in alone] == list(range(1, 23))

    stream = SynthStream(spec, None, batch_size=2)
    loader = DataLoader(stream, batch_size=3, num_workers=2, collate_fn=collate_detection)
    with_workers = [item for ims, targets in loader for item in zip(ims, targets, strict=True)]
    assert_same_items(by_id(with_workers), alone)

    shares = [SynthStream(spec, None, rank=r, world_size=3, even=False) for r in range(3)]
    assert [len(s) for s in shares] == [8, 8, 6]
    assert_same_items(by_id([item for s in shares for item in s]), alone)
    # even (the default): the same count on every rank, for DDP; images 10 and 11 (items 19-22)
    # are left out
    shares = [SynthStream(spec, None, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shares] == [6, 6, 6]
    assert_same_items(by_id([item for s in shares for item in s]), alone[:18])


def test_later_epochs_are_new_reproducible_datasets_with_the_same_splits() -> None:
    spec = small_spec(num_images=6)
    stream = SynthStream(spec, "train")
    epoch0 = list(stream)
    stream.set_epoch(1)
    epoch1 = list(stream)
    assert [t["image_id"] for _, t in epoch1] == [t["image_id"] for _, t in epoch0]
    assert not any(torch.equal(a, b) for (a, _), (b, _) in zip(epoch0, epoch1, strict=True))
    assert_same_items(list(SynthStream(spec, "train", epoch=1)), epoch1)
    stream.set_epoch(0)
    assert_same_items(list(stream), epoch0)

    # Persistent workers keep their copy of the dataset; the epoch still reaches them.
    stream = SynthStream(spec, "train", batch_size=2)
    loader = DataLoader(
        stream, batch_size=2, num_workers=2, persistent_workers=True, collate_fn=collate_detection
    )
    for epoch, want in ((0, epoch0), (1, epoch1), (0, epoch0)):
        stream.set_epoch(epoch)
        got = [item for ims, targets in loader for item in zip(ims, targets, strict=True)]
        assert_same_items(by_id(got), want)
    assert epoch_seed(7, 0) == 7 and len({epoch_seed(7, e) for e in range(50)}) == 50


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    spec = small_spec()
    with pytest.raises(SpecError, match="split 'test' is not in the spec; its splits: train, val"):
        SynthStream(spec, "test")
    with pytest.raises(SpecError, match="batch_size must be at least 1"):
        SynthStream(spec, batch_size=0)
    with pytest.raises(SpecError, match="give both rank and world_size"):
        SynthStream(spec, rank=1)
    with pytest.raises(SpecError, match="0 <= rank < world_size"):
        SynthStream(spec, rank=2, world_size=2)
    with pytest.raises(SpecError, match="epoch must be >= 0"):
        SynthStream(spec).set_epoch(-1)
    with pytest.raises(SpecError, match="unknown object source"):
        SynthStream(small_spec(objects={"name": "nope"}))  # at construction, not in a worker


def test_a_spec_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(small_spec(num_images=3).to_yaml())
    stream = SynthStream(path, None, overrides=["num_images=2"])
    assert len(stream) == 2 and [t["image_id"] for _, t in stream] == [1, 2]


def test_a_cuda_generator_in_a_forked_worker_is_told_to_use_no_workers() -> None:
    stream = SynthStream(small_spec(num_images=2))

    def cuda_in_a_fork(jobs: object) -> None:  # what torch raises there
        raise RuntimeError(
            "Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, "
            "you must use the 'spawn' start method"
        )

    stream._generator.generate = cuda_in_a_fork
    with pytest.raises(SpecError, match="pass num_workers=0"):
        next(iter(stream))


def test_each_rank_yields_len_items_with_workers() -> None:
    # Rank r's workers together yield the images `len()` counts: ranks x workers sharding used
    # to give rank 0 of 2 (2 workers each) 4 of 6 images and rank 1 only 2, while len() said 3.
    spec = small_spec(num_images=6, splits={"train": 1.0})
    seen = []
    for rank in range(2):
        stream = SynthStream(spec, "train", batch_size=2, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        ids = sorted(t["image_id"] for _, t in loader)
        assert len(ids) == len(stream) == 3
        seen += ids
    assert sorted(seen) == list(range(1, 7))


def test_spawned_workers_keep_the_torch_distributed_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker started by spawn/forkserver unpickles the stream in a process with no process
    # group; before, it fell back to rank 0 of 1 and every rank yielded the whole split.
    import pickle

    import torch.distributed as dist

    spec = small_spec(num_images=6, splits={"train": 1.0})
    stream = SynthStream(spec, "train")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    payload = pickle.dumps(stream)  # what DataLoader does in the rank's process
    monkeypatch.undo()  # the worker: no process group
    in_worker = pickle.loads(payload)
    assert [t["image_id"] for _, t in in_worker] == [2, 4, 6]


def test_forked_workers_after_the_parent_generated_do_not_hang() -> None:
    # The diffusion engine labels on a thread pool made on first use. A stream that generated
    # in the main process (a peek, a validation pass with num_workers=0) left that pool to its
    # forked DataLoader workers without its threads: they waited forever for their labels.
    pytest.importorskip("diffusers")
    from tests import tiny_models

    params = {"model": tiny_models.sd_model(), "steps": 2, "batch_size": 4}
    spec = small_spec(
        num_images=4, image_size=[32, 32], scene={"name": "diffusion-attention", "params": params}
    )
    stream = SynthStream(spec, None, batch_size=2)
    first = next(iter(stream))
    loader = DataLoader(stream, batch_size=None, num_workers=2, timeout=120)
    got = by_id(list(loader))
    assert [t["image_id"] for _, t in got] == [1, 2, 3, 4]
    assert_same_items(got[:1], [first])


def test_a_cuda_labeler_in_a_forked_worker_is_told_to_use_no_workers() -> None:
    stream = SynthStream(small_spec(num_images=2))

    class CudaLabeler:  # e.g. `labeler: detector` on a GPU, used in a forked worker
        def label(self, samples: object) -> None:
            raise RuntimeError("Cannot re-initialize CUDA in forked subprocess. To use CUDA ...")

    stream._labeler = CudaLabeler()
    with pytest.raises(SpecError, match="pass num_workers=0"):
        next(iter(stream))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 2.5},  # accepted before; a TypeError in range() inside the worker
        {"batch_size": "8"},
        {"epoch": 1.7},  # silently epoch 1 before
        {"rank": 0.5, "world_size": 2},  # silently rank 0 before
        {"rank": "0", "world_size": "2"},
    ],
)
def test_non_integer_arguments_are_spec_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SpecError, match="must be a whole number"):
        SynthStream(small_spec(num_images=2), **kwargs)


def test_overrides_as_one_string_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(small_spec(num_images=3).to_yaml())
    with pytest.raises(SpecError, match=r"give \['num_images=2'\]"):  # was: --set 'n': ...
        SynthStream(path, overrides="num_images=2")  # type: ignore[arg-type]


class Rejecting:
    """A scene generator whose images at `indices` fail their filters (as a diffusion scene
    with too few instances after its retries would)."""

    def __init__(self, generator: Any, indices: set[int]) -> None:
        self.generator, self.indices = generator, indices

    def generate(self, jobs: list[Any]) -> list[Any]:
        samples = self.generator.generate(jobs)
        for sample in samples:
            if sample.index in self.indices:
                sample.metadata["rejected"] = "too few instances"
        return samples


def test_even_pads_the_items_of_rejected_images_so_ranks_stay_in_step() -> None:
    # 2 items per image
    spec = small_spec(
        num_images=8, augment={"preset": "light", "variants": 1, "keep_original": True}
    )
    plain = list(SynthStream(spec, None, rank=0, world_size=2))  # images 0, 2, 4, 6
    assert [t["image_id"] for _, t in plain] == [1, 2, 5, 6, 9, 10, 13, 14]

    def stream(rejected: set[int], even: bool) -> list[Item]:
        share = SynthStream(spec, None, rank=0, world_size=2, even=even, batch_size=3)
        share._generator = Rejecting(share._generator, rejected)
        return list(share)

    # even=False: what a build writes, the rejected image's items left out
    assert_same_items(stream({2}, even=False), plain[:2] + plain[4:])
    # even: len() items; a rejected image's items are copies of the latest item, or of the
    # first to come when the share starts with rejected images
    got = stream({2}, even=True)
    assert len(got) == 8
    assert_same_items(got, [*plain[:2], plain[1], plain[1], *plain[4:]])
    assert got[2][0] is not got[1][0] and got[2][1]["boxes"] is not got[1][1]["boxes"]
    assert_same_items(stream({0, 2}, even=True), [*[plain[4]] * 5, *plain[5:]])
    with pytest.raises(SpecError, match="every image of this stream's share was rejected"):
        stream({0, 2, 4, 6}, even=True)
    assert stream({0, 2, 4, 6}, even=False) == []
