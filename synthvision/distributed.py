"""This process's place in a build: rank, world size, device, and the collectives a build needs.

The only module of the build path that imports accelerate, and only when a launcher started more
than one process (`accelerate launch --multi_gpu`, `torchrun`, `mpirun`): a single-process build
never imports accelerate or torch here, so it starts in a fraction of a second.

Failure handling: a Python exception on one rank is shared with the others at the next collective
(`gather_outcomes`, `run_on_main`), so every rank stops with one clear message. A rank that dies
outright (SIGKILL, segfault, out-of-memory killer) is handled by the launcher: torchrun's elastic
agent, which `accelerate launch --multi_gpu` uses, stops the other ranks when one fails. Without
such a launcher the others would wait at the next collective for at most
`SYNTHVISION_DIST_TIMEOUT_S` seconds (default 24 h: the wait for the slowest rank, or for the main
process's merge, is a collective too, and a short timeout would kill long, healthy builds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from synthvision.devices import DEVICE_ENV  # the device models use for "auto"
from synthvision.errors import SpecError

T = TypeVar("T")

TIMEOUT_ENV = "SYNTHVISION_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 24 * 3600

# torchrun / accelerate set the first; mpirun-style launchers (accelerate --cpu --mpirun_hostfile)
# set one of the others. PartialState reads the same keys.
_WORLD_SIZE_KEYS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_KEYS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

LAUNCH_HINT = (
    "start one process per rank with `accelerate launch --multi_gpu --num_processes N -m "
    "synthvision build SPEC` (--multi_gpu is needed on machines without CUDA too) or "
    "`torchrun --standalone --nproc_per_node N -m synthvision build SPEC`"
)


class RankFailedError(RuntimeError):
    """Another rank of the build failed; its finished images are kept for a re-run."""


def _no_op() -> None:
    return None


def _gather_self(obj: Any) -> list[Any]:
    return [obj]


def _identity(obj: Any) -> Any:
    return obj


@dataclass
class ProcessContext:
    """This process's place in a (possibly distributed) build. Default: a single process.

    `barrier`, `gather` (all-gather of a picklable object, in rank order) and `broadcast` (the
    main process's object on every rank) are collectives: every rank must call them in the same
    order. The defaults are the single-process versions.
    """

    rank: int = 0
    world_size: int = 1
    device: str | None = None  # this rank's model device; None: not pinned, generators pick "auto"
    local_rank: int = 0
    barrier: Callable[[], None] = field(default=_no_op)
    gather: Callable[[Any], list[Any]] = field(default=_gather_self)
    broadcast: Callable[[Any], Any] = field(default=_identity)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_range(self, num_items: int) -> range:
        """Contiguous, non-overlapping, unpadded share of 0..num_items-1 for this rank.

        The first `num_items % world_size` ranks get one item more; no index is repeated (unlike
        `split_between_processes(apply_padding=True)`), so no image is written twice.
        """
        base, extra = divmod(num_items, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the main process only; every rank gets its result or raises its error.

        A collective: it is also a barrier, so no rank runs ahead of the main process's work.
        """
        if self.world_size == 1:
            return fn()
        if not self.is_main:
            status, value, is_spec, message = self.broadcast(None)
            if status == "ok":
                return value  # type: ignore[no-any-return]
            raise (SpecError if is_spec else RankFailedError)(message)
        try:
            value = fn()
        except Exception as exc:
            self.broadcast(("error", None, isinstance(exc, SpecError), _describe(exc, self.rank)))
            raise
        self.broadcast(("ok", value, False, ""))
        return value

    def gather_outcomes(self, error: BaseException | None, value: Any = None) -> list[Any]:
        """Every rank's `value` in rank order (a collective). Raises on every rank if a rank failed.

        The failing rank re-raises its own exception (with its traceback); the others raise a
        SpecError (bad input: exit code 2) or a RankFailedError naming the rank.
        """
        if self.world_size == 1:
            if error is not None:
                raise error
            return [value]
        failure: tuple[bool, str] | None = None
        if error is not None:
            failure = (isinstance(error, SpecError), _describe(error, self.rank))
        outcomes = self.gather((failure, value))
        if error is not None:
            raise error
        for failure, _ in outcomes:
            if failure is not None:
                is_spec, message = failure
                raise (SpecError if is_spec else RankFailedError)(message)
        return [v for _, v in outcomes]


def _describe(exc: BaseException, rank: int) -> str:
    if isinstance(exc, SpecError):
        return str(exc)  # the same bad input on every rank: say it once, as it is
    return (
        f"rank {rank} failed with {type(exc).__name__}: {exc}; finished images are kept, re-run "
        "the same command (with any number of processes) to resume"
    )


def _env_int(keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = os.environ.get(key)
        if value not in (None, ""):
            try:
                return int(value)  # type: ignore[arg-type]
            except ValueError:
                raise SpecError(f"environment variable {key}={value!r} is not an integer") from None
    return None


def launch_rank() -> int | None:
    """This process's global rank as a launcher set it (torchrun, accelerate, mpirun), or None
    when no launcher did (a value that is not an integer counts as none: this is a hint)."""
    for key in _RANK_KEYS:
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return None


def current_device() -> str | None:
    """The device pinned for this process's models (`SYNTHVISION_DEVICE`), or None.

    Set by `build()` from `ProcessContext.device` (cuda:<local rank> on a multi-GPU launch, cpu
    on a CPU launch). Generators resolving `device: auto` should use it when it is set; code below
    the orchestration layer reads the environment variable directly.
    """
    return os.environ.get(DEVICE_ENV) or None


def pin_device(device: str | None) -> None:
    """Export this process's model device for generators that resolve `device: auto`."""
    if device is not None:
        os.environ[DEVICE_ENV] = device


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise SpecError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return seconds


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _partial_state(cpu: bool, timeout_s: float) -> Any:
    from datetime import timedelta

    from accelerate import PartialState  # seconds of import: only for multi-process launches

    # cpu=True without CUDA: otherwise accelerate sets up no process group and every process
    # believes it is rank 0 of 1. The timeout bounds every collective (see the module docstring).
    return PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s))


def _collectives(
    world_size: int, timeout_s: float
) -> tuple[Callable[[], None], Callable[[Any], list[Any]], Callable[[Any], Any]]:
    """barrier, all-gather and broadcast of picklable objects over gloo (CPU).

    With CUDA the default group is NCCL; a separate gloo group keeps these small messages off the
    GPU, and a dead peer is noticed at once instead of at the NCCL watchdog's timeout (the same
    pattern as detectron2's global gloo group). On CPU the default group already is gloo.
    """
    from datetime import timedelta

    import torch.distributed as dist

    group: Any = None  # None: the default group
    if dist.get_backend() != "gloo":
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))

    def barrier() -> None:
        dist.barrier(group=group)

    def gather(obj: Any) -> list[Any]:
        out: list[Any] = [None] * world_size
        dist.all_gather_object(out, obj, group=group)
        return out

    def broadcast(obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=group)
        return box[0]

    return barrier, gather, broadcast


def _limit_cpu_threads(local_world_size: int) -> None:
    """Share the cores between the ranks of one machine (OpenCV otherwise uses all of them)."""
    threads = _env_int(("OMP_NUM_THREADS",)) or max(1, (os.cpu_count() or 1) // local_world_size)
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency
        return
    cv2.setNumThreads(threads)


def shutdown() -> None:
    """Destroy this process's process groups (call once its last collective is done).

    A gloo/NCCL group still alive at interpreter exit can abort the process ("terminate called
    without an active exception", exit -6) after the work is complete, which the launcher then
    reports as a failed rank. No-op in a single-process build (torch is not even imported).
    """
    import sys

    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_context() -> ProcessContext:
    """The ProcessContext of this process, from the launcher's environment.

    No launcher (or a launcher that started one process): a single-process context, without
    importing accelerate. Otherwise accelerate's PartialState sets up the process group (gloo on
    CPU, NCCL on GPU) and each rank gets `cuda:<local rank>` (or `cpu`). Raises SpecError when the
    environment and the process group disagree, instead of writing the same images N times.
    """
    env_world = _env_int(_WORLD_SIZE_KEYS)
    if env_world is None:
        _refuse_single_process_multi_launch()
    if env_world is None or env_world <= 1:
        return ProcessContext(device=current_device())
    cuda = _cuda_available()
    state = _partial_state(cpu=not cuda, timeout_s=_timeout_s())
    env_rank = _env_int(_RANK_KEYS)
    rank, world = int(state.process_index), int(state.num_processes)
    if world != env_world or (env_rank is not None and rank != env_rank):
        raise SpecError(
            f"the launcher started {env_world} processes (rank {env_rank}), but the process group "
            f"has {world} (this process is rank {rank}): the ranks do not line up, and every "
            f"process would write the same images; {LAUNCH_HINT}"
        )
    local_rank = int(state.local_process_index)
    local_world = _env_int(("LOCAL_WORLD_SIZE",)) or world
    if cuda:
        device = str(state.device)  # cuda:<local rank>; accelerate has made it the current device
    else:
        device = "cpu"
        _limit_cpu_threads(local_world)
    pin_device(device)
    barrier, gather, broadcast = _collectives(world, _timeout_s())
    return ProcessContext(
        rank=rank,
        world_size=world,
        device=device,
        local_rank=local_rank,
        barrier=barrier,
        gather=gather,
        broadcast=broadcast,
    )


def _refuse_single_process_multi_launch() -> None:
    """`accelerate launch --num_processes N` without --multi_gpu starts ONE process on a machine
    with fewer than 2 GPUs, and says so only in the environment: MASTER_ADDR set, no WORLD_SIZE.
    With --num_machines > 1 every machine would then build the whole dataset into one shard."""
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
    if launched_by_accelerate and os.environ.get("MASTER_ADDR"):
        raise SpecError(
            "accelerate launch asked for more than one process but started only this one "
            f"(MASTER_ADDR is set, WORLD_SIZE is not); {LAUNCH_HINT}"
        )
