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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from synthvision import __version__
from synthvision.config import Spec
from synthvision.errors import SpecError
from synthvision.formats.coco import CocoWriter
from synthvision.formats.images import IMAGE_SUFFIX, encode_image, write_bytes_atomic
from synthvision.formats.records import instance_records, instances_from_records
from synthvision.formats.yolo import write_data_yaml, yolo_label_text
from synthvision.generators import SCENE_GENERATORS, SceneGenerator
from synthvision.outdir import MANIFEST, prepare_output_dir
from synthvision.plan import ImageJob, make_plan, planned_class_counts
from synthvision.shards import RecordIndex, ShardWriter, scan_records
from synthvision.structures import ClassMap, Sample

PACKAGES_IN_MANIFEST = (
    "numpy", "pillow", "pydantic", "pycocotools", "albumentations", "opencv-python-headless",
    "torch", "diffusers", "transformers", "accelerate",
)  # fmt: skip


@dataclass
class ProcessContext:
    """This process's place in a (possibly distributed) build. Default: a single process."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    barrier: Callable[[], None] = field(default=lambda: None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_range(self, num_items: int) -> range:
        """Contiguous, non-overlapping, unpadded share of 0..num_items-1 for this rank."""
        base, extra = divmod(num_items, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))


@dataclass
class BuildResult:
    out_dir: Path
    resumed: bool
    already_complete: bool
    generated: int  # images written by this process in this run
    skipped: int  # images found finished from an earlier run
    manifest: dict[str, Any] | None  # on the main process
    seconds: float


def variants_per_image(spec: Spec) -> int:
    """Dataset images per generated image: augmented variants (+ the original if kept)."""
    aug = spec.augment
    return aug.variants + int(aug.keep_original) if aug.enabled else 1


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "synthvision": __version__}
    for name in PACKAGES_IN_MANIFEST:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def create_scene_generator(spec: Spec) -> SceneGenerator:
    """Validate the spec's components and build its scene generator (SpecError on bad input)."""
    return SCENE_GENERATORS.create(spec.scene.name, spec.scene.params, "scene", spec=spec)


class _Augmentation:
    """Turns one generated sample into its dataset items (variants), with output indices."""

    def __init__(self, spec: Spec) -> None:
        self.k = variants_per_image(spec)
        self.keep_original = spec.augment.keep_original
        self.seed = spec.seed
        self.augmenter: Any = None
        if spec.augment.enabled:
            from synthvision.augment import Augmenter

            self.augmenter = Augmenter.from_spec(spec.augment)

    def items(self, sample: Sample, wanted: set[int]) -> Iterator[tuple[int, Sample]]:
        from_index = sample.index * self.k
        for slot in range(self.k):
            out_index = from_index + slot
            if out_index not in wanted:
                continue
            if self.augmenter is None or (self.keep_original and slot == 0):
                item = Sample(out_index, sample.image, sample.instances, dict(sample.metadata))
            else:
                from synthvision.augment import augment_seed

                variant = slot - int(self.keep_original)
                seed = augment_seed(self.seed, sample.index, variant)
                augmented = self.augmenter.apply(sample, seed)
                augmented.metadata.setdefault("augment", {}).update(
                    {"source_index": sample.index, "variant": variant, "seed": seed}
                )
                item = Sample(out_index, augmented.image, augmented.instances, augmented.metadata)
            item.metadata["source_index"] = sample.index
            yield out_index, item


def _record(sample: Sample, split: str, spec: Spec) -> dict[str, Any]:
    export = spec.export
    h, w = sample.size_hw
    return {
        "split": split,
        "height": h,
        "width": w,
        "instances": instance_records(
            sample.instances,
            coco_masks=export.coco_masks,
            polygons=export.yolo_task == "segment" or export.coco_masks == "polygon",
            size_hw=sample.size_hw,
        ),
        "metadata": sample.metadata,
    }


@contextmanager
def _progress(enabled: bool, total: int, done: int, label: str) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class _Rate(TextColumn):
        def render(self, task: Any) -> Any:  # images/s of this run, not counting skipped ones
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:6.1f} img/s" if speed else "   -- img/s")

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(""),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def generate_shard(
    spec: Spec,
    out_dir: Path,
    generator: SceneGenerator,
    ctx: ProcessContext,
    *,
    batch_size: int,
    show_progress: bool,
    jobs: Sequence[ImageJob] | None = None,
) -> tuple[int, int]:
    """Generate and write this rank's unfinished items. Returns (written, skipped)."""
    k = variants_per_image(spec)
    num_items = spec.num_images * k
    jobs = make_plan(spec) if jobs is None else jobs
    finished = scan_records(out_dir, num_items).finished
    my_items = ctx.my_range(num_items)
    todo_items = [i for i in my_items if not finished[i]]
    skipped = len(my_items) - len(todo_items)
    todo_jobs = sorted({i // k for i in todo_items})
    wanted = set(todo_items)
    suffix = IMAGE_SUFFIX[spec.export.image_format]
    export = spec.export
    augmentation = _Augmentation(spec)
    writer = ShardWriter(out_dir, ctx.rank)
    written = 0
    try:
        with _progress(
            show_progress, len(my_items), skipped, f"{spec.name} rank {ctx.rank}"
        ) as tick:
            for start in range(0, len(todo_jobs), batch_size):
                batch = [jobs[g] for g in todo_jobs[start : start + batch_size]]
                for sample in generator.generate(batch):
                    split = jobs[sample.index].split
                    for out_index, item in augmentation.items(sample, wanted):
                        encoded = encode_image(
                            item.image,
                            export.image_format,
                            jpeg_quality=export.jpeg_quality,
                            png_compress_level=export.png_compress_level,
                        )
                        writer.write(out_index, encoded, suffix, _record(item, split, spec))
                        written += 1
                        tick(1)
    finally:
        writer.close()
    return written, skipped


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
    for i in range(num_items):
        rec = index.read(i)
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
        write_data_yaml(out_dir / "yolo", class_map, splits)
    return {
        "images": {"total": num_items, **images_per_split},
        "instances": {
            "total": sum(per_class),
            "per_class": dict(zip(class_map.names, per_class, strict=True)),
        },
        "dropped_by_visibility": dropped,
        "unplaced_by_layout": unplaced,
        "retries": retries,
    }


def write_preview(spec: Spec, out_dir: Path, index: RecordIndex, num_items: int) -> Path | None:
    """A PNG grid of the first images with their boxes, masks and class names."""
    n = min(spec.export.preview_images, num_items)
    if n == 0:
        return None
    from PIL import Image

    from synthvision.viz import draw_instances, save_preview

    tiles, captions = [], []
    for i in range(n):
        rec = index.read(i)
        path = index.files[int(index.file_of[i])].parent / rec["file"]
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
        inst = instances_from_records(rec["instances"], image.shape[:2], with_masks=True)
        tiles.append(draw_instances(image, inst, spec.class_names))
        captions.append(f"#{i} {rec['split']} ({len(inst)})")
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
    batch_size: int = 8,
    show_progress: bool = True,
    ctx: ProcessContext | None = None,
) -> BuildResult:
    """Build (or resume) the dataset of `spec` into `out_dir`.

    Bad input raises SpecError before anything is written. Safe to interrupt at any point:
    re-running the same call resumes and gives byte-identical annotation and image files.
    """
    t0 = time.perf_counter()
    ctx = ctx or ProcessContext()
    out = Path(out_dir)
    if batch_size < 1:
        raise SpecError(f"--batch-size must be at least 1 (got {batch_size})")
    jobs = make_plan(spec)  # validates count targets before anything is written
    generator = create_scene_generator(spec)
    fingerprint = spec.fingerprint()
    if ctx.is_main:
        resumed = prepare_output_dir(out, fingerprint, overwrite)
        if not resumed or not (out / "spec.yaml").exists():
            write_bytes_atomic(out / "spec.yaml", spec.to_yaml().encode())
    ctx.barrier()
    if not ctx.is_main:
        resumed = True
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        ctx.barrier()
        done = json.loads(manifest_path.read_text()) if ctx.is_main else None
        return BuildResult(out, True, True, 0, 0, done, time.perf_counter() - t0)

    k = variants_per_image(spec)
    num_items = spec.num_images * k
    t_gen = time.perf_counter()
    written, skipped = generate_shard(
        spec, out, generator, ctx, batch_size=batch_size, show_progress=show_progress, jobs=jobs
    )
    gen_seconds = time.perf_counter() - t_gen
    ctx.barrier()  # every rank's shard is complete
    manifest: dict[str, Any] | None = None
    if ctx.is_main:
        t_merge = time.perf_counter()
        index = scan_records(out, num_items)
        missing = np.flatnonzero(~index.finished)
        if missing.size:
            raise RuntimeError(
                f"{missing.size} images are missing after generation "
                f"(first: {missing[:5].tolist()}); re-run the same command to finish them"
            )
        counts = merge(spec, out, index, num_items)
        preview = write_preview(spec, out, index, num_items)
        merge_seconds = time.perf_counter() - t_merge
        class_map = ClassMap(spec.class_names)
        planned = planned_class_counts(jobs, len(class_map))
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
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "world_size": ctx.world_size,
            "counts": counts,
            "this_run": {
                "generated_images": written,
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
    ctx.barrier()
    return BuildResult(out, resumed, False, written, skipped, manifest, time.perf_counter() - t0)
