"""Distributed builds: the same dataset on 1 or N processes, and resume across world sizes.

Fast tests check the index split, the launcher checks and resume across world sizes with
emulated ranks in one process. The `slow` tests start real CPU processes with
`accelerate launch --multi_gpu` (gloo): CI runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml

from synthvision import distributed
from synthvision.build import (
    ProcessContext,
    build,
    create_scene_generator,
    generate_shard,
    variants_per_image,
)
from synthvision.build import shard_items as shard_items_of
from synthvision.config import Spec
from synthvision.errors import SpecError
from synthvision.outdir import prepare_output_dir
from synthvision.plan import make_plan
from synthvision.shards import shard_dir

from .helpers import dataset_digests, small_spec

REPO = Path(__file__).resolve().parent.parent
LAUNCH_ENV_KEYS = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_RANK", "ACCELERATE_MIXED_PRECISION", "SYNTHVISION_DEVICE",
)  # fmt: skip


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in LAUNCH_ENV_KEYS:  # set, then delete: monkeypatch restores what was there before
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return monkeypatch


# ------------------------------------------------------------------------------ index split


def test_my_range_covers_every_index_once_contiguously() -> None:
    for n in [*range(0, 40), 97, 1000, 1001]:
        for world in range(1, 12):
            ranges = [ProcessContext(rank=r, world_size=world).my_range(n) for r in range(world)]
            assert [i for r in ranges for i in r] == list(range(n)), (n, world)
            sizes = [len(r) for r in ranges]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n  # no padding
            assert sizes == sorted(sizes, reverse=True)  # the first ranks take the remainder


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shard_items_split_unfinished_work_evenly(k: int) -> None:
    rng = np.random.default_rng(0)
    for trial in range(60):
        num_items = int(rng.integers(0, 50)) * k
        world = int(rng.integers(1, 7))
        finished = rng.random(num_items) < rng.random()
        if trial % 5 == 0 and num_items:  # a failed node: one contiguous hole
            finished[:] = True
            finished[num_items // 3 : num_items // 2] = False
        shares = [shard_items_of(finished, k, ProcessContext(rank=r, world_size=world))
                  for r in range(world)]  # fmt: skip
        flat = [i for share in shares for i in share]
        assert flat == np.flatnonzero(~finished).tolist()  # each unfinished item once, in order
        owner = {i // k: r for r, share in enumerate(shares) for i in share}
        assert all(owner[i // k] == r for r, share in enumerate(shares) for i in share)
        jobs_per_rank = [len({i // k for i in share}) for share in shares]
        assert max(jobs_per_rank) - min(jobs_per_rank) <= 1  # balanced whatever was left


# ------------------------------------------------------------------------------ launcher checks


def test_no_launcher_is_one_process_without_importing_accelerate() -> None:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    code = (
        "import sys\n"
        "from synthvision.distributed import process_context\n"
        "ctx = process_context()\n"
        "assert (ctx.rank, ctx.world_size, ctx.device) == (0, 1, None), ctx\n"
        "assert 'accelerate' not in sys.modules and 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO)


def _fake_state(num_processes: int, process_index: int) -> Any:
    return SimpleNamespace(
        num_processes=num_processes,
        process_index=process_index,
        local_process_index=process_index,
        device="cpu",
        wait_for_everyone=lambda: None,
    )


def test_world_size_mismatch_is_a_clear_error(no_launcher: pytest.MonkeyPatch) -> None:
    # The launcher says 2 processes, but the process group came up with 1 (every process would
    # think it is rank 0 and write the whole dataset).
    no_launcher.setenv("WORLD_SIZE", "2")
    no_launcher.setenv("RANK", "1")
    no_launcher.setattr(distributed, "_cuda_available", lambda: False)
    no_launcher.setattr(distributed, "_partial_state", lambda cpu, timeout_s: _fake_state(1, 0))
    with pytest.raises(SpecError, match=r"do not line up.*--multi_gpu --num_processes N"):
        distributed.process_context()


def test_matching_world_gives_rank_device_and_pins_it(no_launcher: pytest.MonkeyPatch) -> None:
    no_launcher.setenv("WORLD_SIZE", "3")
    no_launcher.setenv("RANK", "2")
    seen: dict[str, Any] = {}

    def state(cpu: bool, timeout_s: float) -> Any:
        seen.update(cpu=cpu, timeout_s=timeout_s)
        return _fake_state(3, 2)

    no_launcher.setattr(distributed, "_cuda_available", lambda: False)
    no_launcher.setattr(distributed, "_partial_state", state)
    no_launcher.setattr(distributed, "_limit_cpu_threads", lambda local_world_size: None)
    no_launcher.setattr(distributed, "_collectives", lambda world, timeout_s: (None, None, None))
    ctx = distributed.process_context()
    assert (ctx.rank, ctx.world_size, ctx.device, ctx.is_main) == (2, 3, "cpu", False)
    assert seen == {"cpu": True, "timeout_s": distributed.DEFAULT_TIMEOUT_S}  # cpu=True: no CUDA
    assert distributed.current_device() == "cpu"


def test_accelerate_launch_that_started_one_process_is_refused(
    no_launcher: pytest.MonkeyPatch,
) -> None:
    # `accelerate launch --num_processes 2` without --multi_gpu on a machine without 2 GPUs.
    no_launcher.setenv("ACCELERATE_MIXED_PRECISION", "no")
    no_launcher.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(SpecError, match=r"started only this one.*--multi_gpu"):
        distributed.process_context()


def test_bad_timeout_is_a_spec_error(no_launcher: pytest.MonkeyPatch) -> None:
    no_launcher.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(SpecError, match=distributed.TIMEOUT_ENV):
        distributed._timeout_s()


def test_errors_are_shared_between_emulated_ranks() -> None:
    # rank 1 of 2 receives the main process's failure from the broadcast
    failed = ("error", None, True, "output directory is a file")
    ctx = ProcessContext(rank=1, world_size=2, broadcast=lambda obj: failed)
    with pytest.raises(SpecError, match="is a file"):
        ctx.run_on_main(lambda: 1 / 0)
    gathered = [(None, 3), ((False, "rank 0 failed with OSError: disk full; ..."), 0)]
    ctx = ProcessContext(rank=0, world_size=2, gather=lambda obj: gathered)
    with pytest.raises(distributed.RankFailedError, match="disk full"):
        ctx.gather_outcomes(None, 3)


# ------------------------------------------------------------------------------ resume


def _emulate_ranks(spec: Spec, out: Path, world: int, ranks: list[int]) -> None:
    """Run `ranks` of a `world`-process build in this process, as the real ranks would: shares
    from one scan taken before any of them writes."""
    from synthvision.shards import scan_records

    k = variants_per_image(spec)
    prepare_output_dir(out, spec.fingerprint(), overwrite=False)
    finished = scan_records(out, spec.num_images * k).finished
    generator = create_scene_generator(spec)
    for rank in ranks:
        ctx = ProcessContext(rank=rank, world_size=world)
        items = shard_items_of(finished, k, ctx)
        generate_shard(spec, out, generator, ctx, batch_size=2, items=items)


def test_resume_across_world_sizes_is_byte_identical(tmp_path: Path) -> None:
    spec = small_spec(num_images=11, image_size=[64, 64])
    ref = tmp_path / "ref"
    build(spec, ref, show_progress=False)

    out = tmp_path / "out"
    _emulate_ranks(spec, out, world=3, ranks=[2])  # 3 processes; ranks 0 and 1 died
    _emulate_ranks(spec, out, world=2, ranks=[1])  # then 2 processes; rank 0 died
    assert (shard_dir(out, 2) / "records.jsonl").read_bytes().count(b"\n") == 3
    assert (shard_dir(out, 1) / "records.jsonl").read_bytes().count(b"\n") == 4  # of the 8 left
    result = build(spec, out, show_progress=False)  # 1 process finishes the last 4
    assert (result.skipped, result.generated) == (7, 4)
    assert dataset_digests(out) == dataset_digests(ref)


def test_resume_across_world_sizes_with_augmented_variants(tmp_path: Path) -> None:
    # 3 dataset items per generated image: a rank's share keeps an image's variants together
    augment = {"preset": "light", "variants": 2, "keep_original": True}
    spec = small_spec(num_images=5, image_size=[64, 64], augment=augment)
    ref, out = tmp_path / "ref", tmp_path / "out"
    build(spec, ref, show_progress=False)
    _emulate_ranks(spec, out, world=2, ranks=[1])  # images 3, 4 -> items 9..14
    _emulate_ranks(spec, out, world=3, ranks=[0, 2])  # of images 0, 1, 2: 0 and 2
    result = build(spec, out, show_progress=False)
    assert (result.skipped, result.generated) == (12, 3)
    assert dataset_digests(out) == dataset_digests(ref)


# ------------------------------------------------------------------------------ real launches


def _launch_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    env["HF_HOME"] = str(tmp_path / "hf")  # no user accelerate config changes the launch
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _accelerate_launch(n: int, *target: str) -> list[str]:
    # --multi_gpu: the launcher that starts N processes (torchrun's); without it accelerate
    # starts one process on a machine without 2 GPUs. PartialState(cpu=True) then uses gloo.
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "0", *target,
    ]  # fmt: skip


def _write_spec(tmp_path: Path, spec: Spec) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.to_dict()))
    return path


@pytest.mark.slow
def test_two_processes_build_the_same_bytes_as_one(tmp_path: Path) -> None:
    spec = small_spec(num_images=13, image_size=[64, 64])  # odd: ranks get 7 and 6
    ref, out = tmp_path / "ref", tmp_path / "two"
    build(spec, ref, show_progress=False)
    cmd = _accelerate_launch(2, "-m", "synthvision", "build", str(_write_spec(tmp_path, spec)),
                             "--out", str(out), "--batch-size", "2")  # fmt: skip
    run = subprocess.run(cmd, env=_launch_env(tmp_path), cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("dataset: ") == 1  # only the main process reports
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert manifest["this_run"]["generated_images_per_rank"] == [7, 6]
    assert dataset_digests(out) == dataset_digests(ref)
    # Each rank counts the planned classes of its share of the images; together, the whole plan.
    planned = manifest["counts"]["instances"]["planned_per_class"]
    assert (
        planned
        == json.loads((ref / "manifest.json").read_text())["counts"]["instances"][
            "planned_per_class"
        ]
    )
    assert list(planned.values()) == [
        p * 1 for p in make_plan(spec).class_counts(len(spec.classes))
    ]


@pytest.mark.slow
def test_rank_killed_then_one_process_finishes_identically(tmp_path: Path) -> None:
    import psutil

    spec = small_spec(num_images=61, image_size=[160, 160])
    spec_path = _write_spec(tmp_path, spec)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    build(spec, ref, show_progress=False)
    script = str(REPO / "scripts" / "build_dataset.py")
    launcher = subprocess.Popen(
        _accelerate_launch(2, script, str(spec_path), "--out", str(out), "--no-progress",
                           "--batch-size", "1"),
        env=_launch_env(tmp_path), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    records = shard_dir(out, 1) / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and launcher.poll() is None:
        if records.exists() and records.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.005)
    assert launcher.poll() is None, "the build finished (or failed) before a rank could be killed"
    rank1 = [p for p in psutil.Process(launcher.pid).children(recursive=True)
             if p.environ().get("RANK") == "1"]  # fmt: skip
    assert len(rank1) == 1
    os.kill(rank1[0].pid, signal.SIGKILL)
    try:
        stderr = launcher.communicate(timeout=120)[1].decode(errors="replace")
    finally:
        launcher.kill()
    assert launcher.returncode != 0, "the launcher should report the failed rank"
    assert not (out / "manifest.json").exists(), stderr[-2000:]

    rerun = subprocess.run(
        [sys.executable, script, str(spec_path), "--out", str(out), "--no-progress"],
        env=_launch_env(tmp_path), cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 1
    assert dataset_digests(out) == dataset_digests(ref)


@pytest.mark.slow
def test_train_cvae_over_two_processes(tmp_path: Path) -> None:
    """DDP training on CPU (gloo): both ranks train, the main one fits the latent prior and
    writes the folder, which the cvae source then loads."""
    pytest.importorskip("torch")
    out = tmp_path / "run"
    cmd = _accelerate_launch(
        2, "-m", "synthvision", "train-cvae", "procedural", "--output", str(out),
        "--classes", "disc,square", "--procedural-count", "16", "--epochs", "2",
        "--batch-size", "8", "--resolution", "16", "--channels", "8,16", "--latent-dim", "4",
        "--min-size", "4", "--no-progress",
    )  # fmt: skip
    run = subprocess.run(cmd, env=_launch_env(tmp_path), cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("wrote ") == 1  # only the main process reports
    info = json.loads((out / "training.json").read_text())
    assert info["processes"] == 2 and info["epochs"] == 2
    assert (out / "samples" / "final.png").is_file()
    from synthvision.models.cvae import load_network

    assert load_network(out).has_fitted_prior
