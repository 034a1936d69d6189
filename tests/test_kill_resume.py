"""A build killed with SIGKILL part-way and re-run equals an uninterrupted build, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from .helpers import dataset_digests, kill_after_lines, small_spec


def _cli(spec_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "synthvision", "build", str(spec_path), "--out", str(out),
            "--no-progress", "--batch-size", "2"]  # fmt: skip


def test_sigkill_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    spec = small_spec(num_images=40, image_size=[160, 160])
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.to_dict()))
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(spec_path, ref), check=True, capture_output=True)

    proc = subprocess.Popen(_cli(spec_path, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_after_lines(proc, out / "shards/rank-00000/records.jsonl", 8)
    assert not (out / "manifest.json").exists()

    rerun = subprocess.run(_cli(spec_path, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    assert (out / "manifest.json").exists()
    assert dataset_digests(out) == dataset_digests(ref)


def test_killed_after_the_last_image_resumes_with_the_merge_only(tmp_path: Path) -> None:
    """Killed between the last image and the manifest (e.g. a rank killed while it waited for
    the merge): the re-run generates nothing, says so, and completes the same dataset."""
    spec = small_spec(num_images=6)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.to_dict()))
    out = tmp_path / "out"
    subprocess.run(_cli(spec_path, out), check=True, capture_output=True)
    want = dataset_digests(out)
    (out / "manifest.json").unlink()  # every image written, the dataset not marked complete
    rerun = subprocess.run(_cli(spec_path, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "nothing left to generate: 6 images already done" in rerun.stdout
    assert (out / "manifest.json").exists()
    assert dataset_digests(out) == want
