"""Run a build: plan -> generate -> (augment) -> write shards -> merge COCO + YOLO -> manifest.

Every rank generates its share of the dataset into its own shard; the main process then merges all
shards in index order. `manifest.json` is written last: a directory without it is incomplete, and
re-running the same command resumes it (finished images are skipped, whatever rank wrote them).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from synthvision import __version__
from synthvision.config import Spec
from synthvision.dataset_items import (  # re-exported: the build's parts
    Variants,
    create_labeler,
    create_scene_generator,
    generation_batch_size,
    sample_record,
    variants_per_image,
)
from synthvision.distributed import ProcessContext as ProcessContext  # re-exported
from synthvision.distributed import pin_device
from synthvision.errors import SpecError
from synthvision.formats.coco import CocoWriter
from synthvision.formats.images import IMAGE_SUFFIX, encode_image, write_bytes_atomic
from synthvision.formats.records import instances_from_records
from synthvision.formats.yolo import write_data_yaml, yolo_label_text
from synthvision.generators import SceneGenerator
from synthvision.outdir import (
    MANIFEST,
    prepare_output_dir,
    read_manifest,
    release_output_dir,
    remove_stale_tmp,
)
from synthvision.plan import ImageJob, plan_jobs, planned_class_counts
from synthvision.progress import progress_bar
from synthvision.shards import RECORDS_FILE, SHARDS_DIR, RecordIndex, ShardWriter, scan_records
from synthvision.structures import ClassMap, Sample

PACKAGES_IN_MANIFEST = (
    "numpy", "pillow", "pydantic", "pycocotools", "albumentations", "opencv-python-headless",
    "torch", "diffusers", "transformers", "accelerate",
)  # fmt: skip


@dataclass
class BuildResult:
    out_dir: Path
    resumed: bool
    already_complete: bool
    generated: int  # images written in this run, by all ranks together
    skipped: int  # images found finished from an earlier run (by any rank)
    manifest: dict[str, Any] | None  # on every rank
    seconds: float


def command_line() -> str:
    """The command as the user typed it, for the manifest (`python -m synthvision` included)."""
    prog = Path(sys.argv[0]).name
    if prog == "__main__.py":  # python -m synthvision: argv[0] is the module's file
        prog = "python -m synthvision"
    return " ".join([prog, *sys.argv[1:]])


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "synthvision": __version__}
    for name in PACKAGES_IN_MANIFEST:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


class _RecordPoller:
    """Counts the records every rank appended since `mark()`: the main process's view of the
    whole build's progress, read from the shared output directory (no collective needed)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.offsets: dict[Path, int] = {}

    def _files(self) -> list[Path]:
        return sorted((self.out_dir / SHARDS_DIR).glob(f"rank-*/{RECORDS_FILE}"))

    def mark(self) -> None:
        self.offsets = {path: path.stat().st_size for path in self._files()}

    def poll(self) -> int:
        new = 0
        for path in self._files():
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    start = min(start, size)  # the owner truncated a killed run's partial line
                    f.seek(start)
                    data = f.read(size - start)
            except FileNotFoundError:
                continue
            new += data.count(b"\n")
            self.offsets[path] = start + data.rfind(b"\n") + 1  # a partial line counts later
        return new


@contextmanager
def _polling(poller: _RecordPoller | None, tick: Callable[[int], None]) -> Iterator[None]:
    """Advance the bar from all ranks' records in a thread while this process works or waits."""
    if poller is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.25):
            tick(poller.poll())

    thread = threading.Thread(target=loop, name="synthvision-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        tick(poller.poll())


def shard_items(finished: np.ndarray, k: int, ctx: ProcessContext) -> list[int]:
    """This rank's share of the unfinished dataset items (`finished`: (num_items,) bool).

    The generated images (jobs) that still have an unfinished item are split into contiguous
    ranges (`ProcessContext.my_range`): the work stays balanced whatever an earlier run left
    undone (a failed node leaves one contiguous hole), and the `k` variants of one generated image
    stay on one rank. Which rank writes an item never changes its bytes.
    """
    unfinished = np.flatnonzero(~finished)
    todo_jobs = np.unique(unfinished // k)
    mine = ctx.my_range(len(todo_jobs))
    lo, hi = (todo_jobs[mine.start], todo_jobs[mine.stop - 1]) if len(mine) else (1, 0)
    jobs_of = unfinished // k
    return [int(i) for i in unfinished[(jobs_of >= lo) & (jobs_of <= hi)]]


def generate_shard(
    spec: Spec,
    out_dir: Path,
    generator: SceneGenerator,
    ctx: ProcessContext,
    *,
    batch_size: int,
    items: Sequence[int],
    jobs: Sequence[ImageJob] | None = None,
    tick: Callable[[int], None] | None = None,
    labeler: Any = None,
    augmentation: Variants | None = None,
) -> int:
    """Generate and write `items` (this rank's share: `shard_items`) into this rank's shard.

    Returns the number of images written; `tick(1)` after each.
    """
    k = variants_per_image(spec)
    jobs = plan_jobs(spec) if jobs is None else jobs
    todo_jobs = sorted({i // k for i in items})
    wanted = set(items)
    suffix = IMAGE_SUFFIX[spec.export.image_format]
    export = spec.export
    augmentation = Variants(spec) if augmentation is None else augmentation
    writer = ShardWriter(out_dir, ctx.rank)

    def write_item(out_index: int, item: Sample, split: str) -> None:
        encoded = encode_image(
            item.image,
            export.image_format,
            jpeg_quality=export.jpeg_quality,
            png_compress_level=export.png_compress_level,
        )
        writer.write(out_index, encoded, suffix, sample_record(item, split, spec))

    def write_variants(sample: Sample, split: str) -> int:
        n = 0
        for out_index, item in augmentation.items(sample, wanted):
            write_item(out_index, item, split)
            n += 1
        return n

    def submit(samples: list[Sample]) -> None:
        if labeler is not None:
            samples = labeler.label(samples)
        for sample in samples:
            split = jobs[sample.index].split
            rejected = sample.metadata.get("rejected")
            if rejected:  # failed every retry: recorded and counted, never labeled
                for out_index in range(sample.index * k, (sample.index + 1) * k):
                    if out_index in wanted:
                        background.submit(
                            writer.write_rejected,
                            out_index,
                            split,
                            str(rejected),
                            sample.metadata,
                        )
                continue
            # The variants are made on the writer thread too, not here: this thread is the one
            # that feeds the GPU, which would wait for every augmentation of the batch before
            # the next batch starts. One FIFO thread makes them in the same order, each from
            # its own seed, so the bytes are the same.
            background.submit(write_variants, sample, split)

    background = _OrderedWriter(tick, max_pending=2 * batch_size)
    # Generators with a `session` (the diffusion scenes) label a batch on threads while the
    # next batch generates (one batch in flight), and pack their retries into later batches.
    session = generator.session() if hasattr(generator, "session") else None
    in_flight: Callable[[], list[Sample]] | None = None
    try:
        for start in range(0, len(todo_jobs), batch_size):
            batch = [jobs[g] for g in todo_jobs[start : start + batch_size]]
            if session is None:
                submit(generator.generate(batch))
                continue
            started = session.start(batch)
            if in_flight is not None:
                submit(in_flight())
            in_flight = started
        if in_flight is not None:
            submit(in_flight())
        if session is not None:
            submit(session.finish())
    finally:
        try:
            background.close()  # every submitted item is on disk (or its error raised)
        finally:
            writer.close()
    return background.done


class _OrderedWriter:
    """Runs write jobs on one background thread, in submission order.

    Encoding (JPEG/PNG releases the GIL), mask encoding and file writes of one batch overlap the
    generation of the next. One FIFO worker keeps records in the same order and bytes as a
    synchronous writer; at most `max_pending` jobs (an item, or a sample's variants) wait, so
    memory stays bounded.
    """

    def __init__(self, tick: Callable[[int], None] | None, max_pending: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthvision-writer")
        self._pending: deque[Future[int | None]] = deque()
        self._tick = tick
        self._max_pending = max(1, max_pending)
        self.done = 0

    def submit(self, fn: Callable[..., int | None], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._max_pending:
            self._finish_one()

    def _finish_one(self) -> None:
        written = self._pending.popleft().result()  # re-raises the worker's error here
        n = 1 if written is None else int(written)  # a job returns how many items it wrote
        self.done += n
        if self._tick is not None and n:
            self._tick(n)

    def close(self) -> None:
        try:
            while self._pending:
                self._finish_one()
        finally:
            for future in self._pending:  # after an error: finish what was queued, then stop
                future.cancel()
            self._pool.shutdown(wait=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        if dst.stat().st_ino == src.stat().st_ino:
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # filesystems without hard links
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def merge(spec: Spec, out_dir: Path, index: RecordIndex, num_items: int) -> dict[str, Any]:
    """Write COCO + YOLO from the shards in index order; returns counts for the manifest."""
    # Every rank is done: temporary files of killed ranks (also of rank numbers that did not
    # run again, e.g. a resume with fewer processes) and of an interrupted merge are garbage.
    remove_stale_tmp(out_dir)
    class_map = ClassMap(spec.class_names)
    export = spec.export
    splits = list(spec.splits)
    coco_writers: dict[str, CocoWriter] = {}
    if "coco" in export.formats:
        for split in splits:
            (out_dir / "coco" / "images" / split).mkdir(parents=True, exist_ok=True)
            coco_writers[split] = CocoWriter(
                out_dir / "coco" / "annotations" / f"instances_{split}.json",
                class_map,
                info={
                    "description": f"synthvision dataset {spec.name!r} ({split})",
                    "version": __version__,
                    "contributor": "synthvision",
                    "url": "",
                    "year": 0,
                    "date_created": "",
                },
            )
    if "yolo" in export.formats:
        for split in splits:
            (out_dir / "yolo" / "images" / split).mkdir(parents=True, exist_ok=True)
            (out_dir / "yolo" / "labels" / split).mkdir(parents=True, exist_ok=True)
    images_per_split = dict.fromkeys(splits, 0)
    per_class = [0] * len(class_map)
    dropped = unplaced = retries = 0
    rejected: list[int] = []
    rejected_reasons: Counter[str] = Counter()
    for i in range(num_items):
        rec = index.read(i)
        if rec.get("rejected"):
            rejected.append(i)
            rejected_reasons[str(rec["rejected"])] += 1
            retries += int(rec.get("metadata", {}).get("retries", 0))
            continue
        split, size_hw = rec["split"], (int(rec["height"]), int(rec["width"]))
        src = index.files[int(index.file_of[i])].parent / rec["file"]
        name = src.name
        images_per_split[split] += 1
        for inst in rec["instances"]:
            per_class[int(inst["class_id"])] += 1
        meta = rec.get("metadata", {})
        dropped += int(meta.get("dropped", 0))
        unplaced += int(meta.get("unplaced", 0))
        retries += int(meta.get("retries", 0))
        if split in coco_writers:
            _link_or_copy(src, out_dir / "coco" / "images" / split / name)
            coco_writers[split].add_image(
                image_id=i + 1,
                file_name=name,
                size_hw=size_hw,
                instance_records=rec["instances"],
                mask_mode=export.coco_masks,
            )
        if "yolo" in export.formats:
            _link_or_copy(src, out_dir / "yolo" / "images" / split / name)
            label = yolo_label_text(rec["instances"], size_hw, export.yolo_task)
            label_path = out_dir / "yolo" / "labels" / split / (Path(name).stem + ".txt")
            write_bytes_atomic(label_path, label.encode())
    for writer in coco_writers.values():
        writer.close()
    if "yolo" in export.formats:
        write_data_yaml(out_dir / "yolo", class_map, splits, images_per_split)
    return {
        "images": {"total": num_items - len(rejected), **images_per_split},
        "instances": {
            "total": sum(per_class),
            "per_class": dict(zip(class_map.names, per_class, strict=True)),
        },
        "dropped_by_visibility": dropped,
        "unplaced_by_layout": unplaced,
        "retries": retries,
        "rejected_images": {
            "count": len(rejected),
            "indices": rejected[:100],
            "reasons": dict(sorted(rejected_reasons.items())),
        },
    }


def write_preview(spec: Spec, out_dir: Path, index: RecordIndex, num_items: int) -> Path | None:
    """A PNG grid of the first images with their boxes, masks and class names."""
    if spec.export.preview_images == 0:
        return None
    from PIL import Image

    from synthvision.viz import draw_instances, save_preview

    tiles: list[np.ndarray] = []
    captions: list[str] = []
    for i in range(num_items):
        if len(tiles) == spec.export.preview_images:
            break
        rec = index.read(i)
        if rec.get("rejected"):
            continue
        path = index.files[int(index.file_of[i])].parent / rec["file"]
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
        inst = instances_from_records(rec["instances"], image.shape[:2], with_masks=True)
        tiles.append(draw_instances(image, inst, spec.class_names))
        captions.append(f"#{i} {rec['split']} ({len(inst)})")
    if not tiles:
        return None
    path = out_dir / "preview.png"
    save_preview(path, tiles, captions=captions)
    return path


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def build(
    spec: Spec,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    batch_size: int | None = None,
    show_progress: bool = True,
    ctx: ProcessContext | None = None,
) -> BuildResult:
    """Build (or resume) the dataset of `spec` into `out_dir`.

    Bad input raises SpecError before anything is written. Safe to interrupt at any point:
    re-running the same call resumes and gives byte-identical annotation and image files.

    With a distributed `ctx` (see `synthvision.distributed.process_context`) every rank calls
    this: each writes its share into its own shard, the main process prepares the directory and
    merges; the dataset is the same bytes whatever the number of processes. The progress bar
    (main process only) counts the images of all ranks.
    """
    t0 = time.perf_counter()
    ctx = ctx or ProcessContext()
    out = Path(out_dir)
    if batch_size is not None and batch_size < 1:
        raise SpecError(f"--batch-size must be at least 1 (got {batch_size})")
    pin_device(ctx.device)  # generators resolving device "auto" use this rank's device
    jobs = plan_jobs(spec)  # validates count targets before anything is written
    generator = create_scene_generator(spec)  # once per process: models load once per rank
    batch_size = generation_batch_size(generator, batch_size)
    labeler = create_labeler(spec)
    augmentation = Variants(spec)  # a bad augment section fails here, before any write
    fingerprint = spec.fingerprint()
    manifest_path = out / MANIFEST
    k = variants_per_image(spec)
    num_items = spec.num_images * k
    show_progress = show_progress and ctx.is_main
    poller = _RecordPoller(out) if show_progress and ctx.world_size > 1 else None

    def prepare() -> tuple[bool, dict[str, Any] | None, np.ndarray | None]:
        resumed = prepare_output_dir(out, fingerprint, overwrite)
        if not resumed or not (out / "spec.yaml").exists():
            write_bytes_atomic(out / "spec.yaml", spec.to_yaml().encode())
        if manifest_path.exists():
            return resumed, read_manifest(manifest_path), None
        # One scan, shared with every rank: all compute their shares from the same state
        # (no rank writes before the broadcast), and N ranks do not re-read every record.
        finished = scan_records(out, num_items).finished
        if poller is not None:
            poller.mark()
        return resumed, None, finished

    # The main process alone touches the directory (--overwrite may remove shards); the others
    # wait, and raise its error (a SpecError stays a SpecError) if it fails.
    try:
        resumed, done, finished = ctx.run_on_main(prepare)
        if done is not None or finished is None:
            return BuildResult(out, True, True, 0, 0, done, time.perf_counter() - t0)

        skipped = int(finished.sum())
        items = shard_items(finished, k, ctx)
        label = spec.name if ctx.world_size == 1 else f"{spec.name} ({ctx.world_size} processes)"
        t_gen = time.perf_counter()
        error: Exception | None = None
        written = 0
        with progress_bar(show_progress, num_items, skipped, label) as tick, _polling(poller, tick):
            try:
                own_tick = tick if poller is None else None  # the poller counts this rank too
                written = generate_shard(
                    spec,
                    out,
                    generator,
                    ctx,
                    batch_size=batch_size,
                    items=items,
                    jobs=jobs,
                    tick=own_tick,
                    labeler=labeler,
                    augmentation=augmentation,
                )
                # The manifest's planned class counts, a share per rank: no process draws every
                # image's job (see plan.PerImageJobs).
                planned_part = planned_class_counts(
                    jobs, len(spec.classes), ctx.my_range(spec.num_images)
                )
            except Exception as exc:  # shared with the other ranks, then re-raised
                error = exc
                planned_part = []
            # Waits for every rank's shard; raises on every rank if any rank failed.
            outcomes = ctx.gather_outcomes(error, (written, planned_part))
        gen_seconds = time.perf_counter() - t_gen
        per_rank = [int(n) for n, _ in outcomes]
        planned = [sum(column) for column in zip(*(part for _, part in outcomes), strict=True)]
        written = sum(per_rank)

        def finish() -> dict[str, Any]:
            t_merge = time.perf_counter()
            index = scan_records(out, num_items)
            missing = np.flatnonzero(~index.finished)
            if missing.size:
                raise RuntimeError(
                    f"{missing.size} images are missing after generation "
                    f"(first: {missing[:5].tolist()}); re-run the same command to finish them"
                )
            counts = merge(spec, out, index, num_items)
            if counts["images"]["total"] == 0:
                # With no manifest the folder stays "unfinished": no empty dataset looks complete.
                reasons = counts["rejected_images"]["reasons"]
                raise SpecError(
                    f"all {num_items} images were rejected after their retries "
                    f"({', '.join(f'{r}: {n}' for r, n in reasons.items())}), so there is no "
                    "dataset; loosen the filters (black_max, blank_std, clip_filter.threshold, "
                    "min_instances) or raise max_retries, then build again with --overwrite"
                )
            preview = write_preview(spec, out, index, num_items)
            merge_seconds = time.perf_counter() - t_merge
            class_map = ClassMap(spec.class_names)
            counts["instances"]["planned_per_class"] = dict(
                zip(class_map.names, [p * k for p in planned], strict=True)
            )
            manifest = {
                "synthvision_version": __version__,
                "name": spec.name,
                "seed": spec.seed,
                "spec_fingerprint": fingerprint,
                "spec": spec.to_dict(),
                "versions": package_versions(),
                "command": command_line(),
                "world_size": ctx.world_size,
                "counts": counts,
                "this_run": {
                    "generated_images": written,
                    "generated_images_per_rank": per_rank,
                    "skipped_finished_images": skipped,
                    "resumed": resumed,
                },
                "timings_s": {
                    "generate": round(gen_seconds, 3),
                    "merge": round(merge_seconds, 3),
                    "total": round(time.perf_counter() - t0, 3),
                    "images_per_s": round(written / gen_seconds, 2)
                    if written and gen_seconds
                    else None,
                },
                "outputs": {
                    "coco": {s: f"coco/annotations/instances_{s}.json" for s in spec.splits}
                    if "coco" in spec.export.formats
                    else None,
                    "yolo": "yolo/data.yaml" if "yolo" in spec.export.formats else None,
                    "preview": preview.name if preview else None,
                },
                "created_unix": int(time.time()),
            }
            _write_json_atomic(manifest_path, manifest)  # last: its presence means "complete"
            return manifest

        manifest = ctx.run_on_main(finish)  # the other ranks return once the dataset is complete
        return BuildResult(
            out, resumed, False, written, skipped, manifest, time.perf_counter() - t0
        )
    finally:
        if ctx.is_main:
            release_output_dir(out)  # a second run into this folder may start now
