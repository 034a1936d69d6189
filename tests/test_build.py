"""End-to-end builds checked with independent readers (pycocotools, supervision)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from pydantic import BaseModel, ConfigDict

from synthvision.build import build
from synthvision.errors import OutputDirError
from synthvision.generators import SCENE_GENERATORS
from synthvision.validate import validate_dataset

from .helpers import coco_self_eval_ap, dataset_digests, small_spec


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "ds"
    build(small_spec(num_images=14), out, show_progress=False)
    return out


def test_layout_and_manifest(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["counts"]["images"] == {"total": 14, "train": 10, "val": 4}
    assert manifest["spec"]["seed"] == 7 and manifest["versions"]["numpy"]
    assert (built / "spec.yaml").is_file() and (built / "preview.png").is_file()
    assert (built / "coco/annotations/instances_train.json").is_file()
    assert len(list((built / "yolo/labels/train").glob("*.txt"))) == 10
    assert validate_dataset(built) == []


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_self_evaluation_is_perfect(built: Path, iou_type: str) -> None:
    for split in ("train", "val"):
        assert (
            coco_self_eval_ap(built / f"coco/annotations/instances_{split}.json", iou_type) == 1.0
        )


def test_boxes_are_tight_boxes_of_visible_masks(built: Path) -> None:
    coco = json.loads((built / "coco/annotations/instances_train.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    assert coco["annotations"], "the test dataset should hold instances"
    for ann in coco["annotations"]:
        h, w = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert [x, y, x + bw, y + bh] == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        assert ann["area"] == mask.sum() > 0


def test_supervision_reads_coco_and_yolo_like_we_wrote(built: Path) -> None:
    sv = pytest.importorskip("supervision")
    for split in ("train", "val"):
        ann_path = built / f"coco/annotations/instances_{split}.json"
        coco = json.loads(ann_path.read_text())
        names = [c["name"] for c in coco["categories"]]
        ours: dict[str, tuple[np.ndarray, list[str]]] = {}
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for im in coco["images"]:
            anns = by_image.get(im["id"], [])
            xyxy = np.array(
                [
                    [
                        a["bbox"][0],
                        a["bbox"][1],
                        a["bbox"][0] + a["bbox"][2],
                        a["bbox"][1] + a["bbox"][3],
                    ]
                    for a in anns
                ]
            ).reshape(-1, 4)
            ours[Path(im["file_name"]).stem] = (xyxy, [names[a["category_id"] - 1] for a in anns])
        from_coco = sv.DetectionDataset.from_coco(
            images_directory_path=str(built / f"coco/images/{split}"),
            annotations_path=str(ann_path),
        )
        from_yolo = sv.DetectionDataset.from_yolo(
            images_directory_path=str(built / f"yolo/images/{split}"),
            annotations_directory_path=str(built / f"yolo/labels/{split}"),
            data_yaml_path=str(built / "yolo/data.yaml"),
        )
        for ds in (from_coco, from_yolo):
            assert list(ds.classes) == names
            assert len(ds) == len(ours)
            for path, _, det in ds:
                xyxy, classes = ours[Path(path).stem]
                order_ours, order_theirs = np.lexsort(xyxy.T[::-1]), np.lexsort(det.xyxy.T[::-1])
                np.testing.assert_allclose(det.xyxy[order_theirs], xyxy[order_ours], atol=1e-3)
                got = [ds.classes[c] for c in det.class_id[order_theirs]]
                assert got == [classes[i] for i in order_ours]


def test_same_spec_gives_identical_bytes_whatever_the_batch_size(tmp_path: Path) -> None:
    spec = small_spec()
    build(spec, tmp_path / "a", show_progress=False, batch_size=4)
    build(spec, tmp_path / "b", show_progress=False, batch_size=1)
    a, b = dataset_digests(tmp_path / "a"), dataset_digests(tmp_path / "b")
    assert a and a == b
    build(small_spec(seed=8), tmp_path / "c", show_progress=False)
    assert dataset_digests(tmp_path / "c") != a


def test_files_get_the_mode_open_would_give(tmp_path: Path) -> None:
    """Not mkstemp's 0600: a dataset must be readable by a training job of another user."""
    from synthvision.formats.images import FILE_MODE

    build(small_spec(num_images=2), tmp_path, show_progress=False)
    modes = {p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {FILE_MODE} and FILE_MODE & 0o600 == 0o600


def test_rerun_is_complete_and_other_specs_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    build(small_spec(), out, show_progress=False)
    again = build(small_spec(), out, show_progress=False)
    assert again.already_complete and again.generated == 0
    with pytest.raises(OutputDirError, match="different spec"):
        build(small_spec(seed=99), out, show_progress=False)
    # The user's files, also inside the folders synthvision writes, survive --overwrite.
    mine = [
        out / "notes.txt",
        out / "coco/real_annotations.json",
        out / "coco/images/train/holiday.jpg",
        out / "yolo/labels/train.cache",
        out / "shards/README",
    ]
    for path in mine:
        path.write_text(f"mine: {path.name}")
    old_images = {p.name for p in (out / "yolo/images/train").iterdir()}
    result = build(small_spec(seed=99, num_images=3), out, show_progress=False, overwrite=True)
    assert result.generated == 3
    assert all(p.read_text() == f"mine: {p.name}" for p in mine)
    # ... while every file of the replaced build is gone (it had 9 images, this one has 3).
    new_images = {p.name for p in (out / "yolo/images/train").iterdir()}
    assert len(new_images) < len(old_images) and new_images <= old_images
    # validate names the stray file instead of anything deleting it
    assert validate_dataset(out) == [
        "coco/images/train/holiday.jpg is not in coco/annotations/instances_train.json"
    ]
    fresh = tmp_path / "fresh"
    build(small_spec(seed=99, num_images=3), fresh, show_progress=False)
    users = {str(p.relative_to(out)) for p in mine}
    assert {k: v for k, v in dataset_digests(out).items() if k not in users} == dataset_digests(
        fresh
    )


def test_the_same_spec_with_overwrite_resumes_instead_of_starting_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build ... --overwrite` re-run after Ctrl-C is "the same command": its finished images
    are kept (the same spec makes the same bytes), not deleted and made again."""
    build(small_spec(), tmp_path, show_progress=False)
    before = dataset_digests(tmp_path)
    (tmp_path / "manifest.json").unlink()  # as if interrupted before the end
    again = build(small_spec(), tmp_path, show_progress=False, overwrite=True)
    assert again.resumed and again.generated == 0 and again.skipped == 9
    assert dataset_digests(tmp_path) == before

    # Complete: nothing is written, so a read-only copy still answers "already complete".
    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert build(small_spec(), tmp_path, show_progress=False, overwrite=True).already_complete


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path: Path) -> None:
    """The same command started twice would make every image twice and append to the same shard
    files. The lock dies with its process (here SIGKILL), so it never needs removing by hand."""
    import signal
    import subprocess
    import sys

    spec = small_spec(num_images=3)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from synthvision.outdir import prepare_output_dir\n"
            "prepare_output_dir(Path(sys.argv[1]), sys.argv[2], False)\n"
            "print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
            spec.fingerprint(),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match="another synthvision run is writing"):
            build(spec, tmp_path, show_progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    result = build(spec, tmp_path, show_progress=False)
    assert result.generated == 3 and validate_dataset(tmp_path) == []
    assert not (tmp_path / ".synthvision.lock").exists()  # released, and removed, at the end


def test_overwrite_interrupted_never_leaves_a_complete_looking_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthvision import outdir

    build(small_spec(), tmp_path, show_progress=False)

    def interrupted(root: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(outdir, "_remove_empty_folders", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(small_spec(seed=99), tmp_path, show_progress=False, overwrite=True)
    assert not (tmp_path / "manifest.json").exists()
    monkeypatch.undo()
    result = build(small_spec(), tmp_path, show_progress=False)  # the old spec: resumed
    assert result.generated == 9 and validate_dataset(tmp_path) == []


def test_overwrite_into_a_foreign_directory_never_replaces_its_files(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("the user's own spec")
    (tmp_path / "coco").mkdir()
    with pytest.raises(OutputDirError, match=r"already has coco, spec\.yaml"):
        build(small_spec(), tmp_path, show_progress=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "spec.yaml"]
    assert (tmp_path / "spec.yaml").read_text() == "the user's own spec"
    (tmp_path / "coco").rmdir()
    (tmp_path / "spec.yaml").rename(tmp_path / "my-spec.yaml")
    build(small_spec(), tmp_path, show_progress=False, overwrite=True)
    assert (tmp_path / "my-spec.yaml").read_text() == "the user's own spec"
    assert validate_dataset(tmp_path) == []


def test_a_split_without_images_is_not_in_data_yaml(tmp_path: Path) -> None:
    spec = small_spec(num_images=2, splits={"train": 0.9, "val": 0.1})
    result = build(spec, tmp_path, show_progress=False)
    assert result.manifest is not None
    assert result.manifest["counts"]["images"] == {"total": 2, "train": 2, "val": 0}
    doc = yaml.safe_load((tmp_path / "yolo/data.yaml").read_text())
    assert (doc["train"], doc["val"]) == ("images/train", "images/train")
    assert validate_dataset(tmp_path) == []


def test_non_synthvision_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("data")
    with pytest.raises(OutputDirError, match="not a synthvision output"):
        build(small_spec(), tmp_path, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_resume_after_lost_records_regenerates_only_those(tmp_path: Path) -> None:
    spec = small_spec()
    ref = tmp_path / "ref"
    build(spec, ref, show_progress=False)
    out = tmp_path / "ds"
    build(spec, out, show_progress=False)
    # Simulate a crash: no manifest, a partial last record line, one image never recorded.
    (out / "manifest.json").unlink()
    records = out / "shards/rank-00000/records.jsonl"
    lines = records.read_bytes().splitlines(keepends=True)
    records.write_bytes(b"".join(lines[:5]) + lines[5][:20])
    # a half-written image of a rank that will not run again (the crash had 2 processes)
    stale = out / "shards/rank-00001/images/.000000007.jpg.x1y2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    # ... and the temporary files of a merge killed half-way
    merge_tmp = [
        out / "yolo/labels/val/.000000002.txt.l34qm4wl.tmp",
        out / "coco/annotations/.instances_train.json.abc.tmp",
        out / ".preview.png.q1w2.tmp",
    ]
    for path in merge_tmp:
        path.write_bytes(b"partial")
    users = out / ".my-notes.tmp"
    users.write_text("mine")
    result = build(spec, out, show_progress=False)
    assert result.skipped == 5 and result.generated == 4
    assert dataset_digests(out) == dataset_digests(ref)
    assert not any(p.exists() for p in [stale, *merge_tmp]) and users.read_text() == "mine"


def test_augmented_variants_are_valid_and_deterministic(tmp_path: Path) -> None:
    spec = small_spec(
        num_images=4, augment={"preset": "medium", "variants": 2, "keep_original": True}
    )
    a = build(spec, tmp_path / "a", show_progress=False, batch_size=3)
    assert a.manifest is not None and a.manifest["counts"]["images"]["total"] == 12
    assert validate_dataset(tmp_path / "a") == []
    for split in ("train", "val"):
        ann = tmp_path / f"a/coco/annotations/instances_{split}.json"
        assert coco_self_eval_ap(ann, "segm") == 1.0
    records = [
        json.loads(line)
        for line in (tmp_path / "a/shards/rank-00000/records.jsonl").read_text().splitlines()
    ]
    by_index = {r["index"]: r for r in records}
    assert by_index[4]["metadata"]["source_index"] == 1 and "augment" not in by_index[3]["metadata"]
    assert by_index[4]["metadata"]["augment"]["variant"] == 0
    assert by_index[4]["split"] == by_index[3]["split"]  # variants stay in their source's split
    build(spec, tmp_path / "b", show_progress=False, batch_size=1)
    assert dataset_digests(tmp_path / "a") == dataset_digests(tmp_path / "b")


class _RejectEveryThird(BaseModel):
    model_config = ConfigDict(extra="forbid")


@SCENE_GENERATORS.register("test-reject-every-third", _RejectEveryThird)
def _make_rejecting(params: _RejectEveryThird, *, spec: Any) -> Any:
    inner = SCENE_GENERATORS.create("compose", {}, "scene", spec=spec)

    class Rejecting:
        def generate(self, jobs: Any) -> list[Any]:
            samples = inner.generate(jobs)
            for s in samples:
                if s.index % 3 == 1:  # as a diffusion filter does after its last retry
                    s.metadata.update(rejected="black image after 2 retries", retries=2)
            return samples

    return Rejecting()


def test_rejected_samples_are_counted_and_never_labeled(tmp_path: Path) -> None:
    spec = small_spec(num_images=7, scene={"name": "test-reject-every-third"})
    result = build(spec, tmp_path / "ds", show_progress=False)
    assert result.manifest is not None
    counts = result.manifest["counts"]
    assert counts["rejected_images"] == {
        "count": 2,
        "indices": [1, 4],
        "reasons": {"black image after 2 retries": 2},
    }
    assert counts["retries"] == 4 and counts["images"]["total"] == 5
    ids = set()
    for split in ("train", "val"):
        coco = json.loads((tmp_path / f"ds/coco/annotations/instances_{split}.json").read_text())
        ids |= {im["id"] for im in coco["images"]}
        assert not {a["image_id"] for a in coco["annotations"]} & {2, 5}
    assert ids == {1, 3, 4, 6, 7}
    assert not list((tmp_path / "ds/yolo/labels").rglob("000000001.txt"))
    assert validate_dataset(tmp_path / "ds") == []
    again = build(spec, tmp_path / "ds", show_progress=False)
    assert again.already_complete


def test_the_folder_is_looked_at_again_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B saw an empty folder; before it took the lock, run A (another spec) built into it
    and ended. Deciding on the stale look, B marked A's dataset as its own and wrote into it."""
    from synthvision import outdir

    out = tmp_path / "ds"
    spec_a, spec_b = small_spec(num_images=3), small_spec(num_images=3, seed=99)
    real_lock = outdir._lock
    a_done: dict[str, Any] = {}

    def a_finishes_first(folder: Path, option: str) -> None:
        if not a_done:  # B's lock: A runs to the end just before it (A's own lock is real)
            a_done["started"] = True
            a_done["result"] = build(spec_a, folder, show_progress=False)
            a_done["files"] = {
                str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            }
        real_lock(folder, option)

    monkeypatch.setattr(outdir, "_lock", a_finishes_first)
    with pytest.raises(OutputDirError, match="holds a build of a different spec"):
        build(spec_b, out, show_progress=False)
    assert a_done["result"].generated == 3 and a_done["files"]
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == a_done["files"]  # A's dataset, marker and manifest untouched
    assert json.loads((out / ".synthvision.json").read_text()) == {
        "spec_fingerprint": spec_a.fingerprint()
    }
    assert not (out / ".synthvision.lock").exists()  # B let go of the lock it took
    monkeypatch.undo()
    assert build(spec_a, out, show_progress=False).already_complete
    assert validate_dataset(out) == []


def test_resume_cuts_a_partial_record_line_reading_only_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed writer leaves at most one partial last line, which the next writer cuts. The
    file holds every record of its rank (gigabytes for big builds): only its end is read."""
    from synthvision import shards

    records = shards.shard_dir(tmp_path, 0) / shards.RECORDS_FILE
    records.parent.mkdir(parents=True)
    read: list[int] = []

    class CountingFile:
        def __init__(self, f: Any) -> None:
            self._f = f

        def __enter__(self) -> CountingFile:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def read(self, *args: Any) -> bytes:
            data: bytes = self._f.read(*args)
            read.append(len(data))
            return data

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    monkeypatch.setattr(shards, "open", lambda *a, **k: CountingFile(open(*a, **k)), raising=False)

    def after_writer_opens(content: bytes) -> bytes:
        records.write_bytes(content)
        shards.ShardWriter(tmp_path, 0).close()
        return records.read_bytes()

    line = b'{"index":1,"file":"images/000000001.jpg","split":"train"}\n'
    assert after_writer_opens(b"") == b""
    assert after_writer_opens(line * 3) == line * 3  # complete: untouched
    assert after_writer_opens(line * 3 + line[:20]) == line * 3
    assert after_writer_opens(line[:-1]) == b""  # no complete line at all
    assert after_writer_opens(b"x" * 200_000) == b""  # ... however long
    # A partial tail longer than one 64 KiB step back: cut at the last newline all the same.
    assert after_writer_opens(line * 3 + b"y" * 100_000) == line * 3
    assert after_writer_opens(b"\n" + b"z" * 70_000) == b"\n"
    # A big file: the cut reads the 100 kB tail (in steps), not the 5 MB of records before it.
    big = line * (5_000_000 // len(line))
    read.clear()
    assert after_writer_opens(big + b"w" * 100_000) == big
    assert 100_000 <= sum(read) <= 256 * 1024, read
