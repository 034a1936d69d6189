"""Training loop of the conditional VAE (`synthvision train-cvae`).

Data: crops from `synthvision.crops` (COCO with masks, YOLO, or the procedural objects), fitted
into R x R squares and held in memory as uint8 (N, R, R, 4). Runs through accelerate: CPU, one
GPU, or `accelerate launch` over several processes (each takes a strided slice of every global
batch; DDP averages the gradients).

Determinism: the epoch's order and flips come from (seed, epoch, "cvae.shuffle"), the
reparameterisation noise from (seed, epoch * world + rank, "cvae.noise"). A run resumed from its
epoch checkpoint therefore continues exactly as an uninterrupted run would (same hardware).

Output folder (itself loadable with `ConditionalVAE.from_pretrained`):
    config.json, diffusion_pytorch_model.safetensors   final weights (diffusers layout)
    README.md                                          model card
    training.json                                      data source, fingerprint, held-out keys,
                                                       losses per epoch, throughput
    samples/epoch-XXXX.png                             a sample grid per epoch (rows = classes)
    samples/final.png                                  the grid from the fitted latent prior
    checkpoints/last/                                  weights + optimizer + trainer_state.json
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from synthvision import randomness
from synthvision.crops import (
    Crop,
    DataSource,
    fingerprint,
    grid_image,
    load_crops,
    split_holdout,
    squares,
)
from synthvision.errors import SpecError
from synthvision.folder_lock import LOCK, lock_folder, release_folder

if TYPE_CHECKING:
    import torch

    from synthvision.models.cvae import CVAENetwork

CHECKPOINT_SUBDIR = "checkpoints/last"
# TrainConfig fields a resumed run may change (more epochs, where and how often it saves).
_RESUMABLE_CHANGES = frozenset({"epochs", "checkpoint_every", "device", "samples_per_class"})
TRAINING_FILE = "training.json"


@dataclass
class TrainConfig:
    """Model size and optimisation settings (everything but the data)."""

    resolution: int = 64
    latent_dim: int = 32
    embedding_dim: int = 32
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    norm_num_groups: int = 8
    class_prior: bool = True  # learned p(z|c) instead of N(0, I) (see models/cvae.py)
    patch_size: int = 2  # space-to-depth factor: the net runs at resolution / patch_size
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_fraction: float = 0.1  # cosine decay to lr * this at the last step
    beta: float = 1.0
    free_bits: float = 0.05  # nats per latent dimension (Kingma et al. 2016)
    warmup_steps: int = 300  # KL warm-up (Bowman et al. 2016)
    colour_weight: float = 20.0
    hflip: bool = True  # random horizontal flips (objects are mostly mirror-symmetric in class)
    balanced: bool = False  # draw each epoch class-balanced (with replacement) instead of a shuffle
    holdout: float = 0.1  # fraction of crops per class kept out of training for the audit
    seed: int = 0
    checkpoint_every: int = 1  # epochs
    samples_per_class: int = 8  # columns of the per-epoch sample grid
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU)

    def model_kwargs(self, class_names: Sequence[str]) -> dict[str, Any]:
        return dict(
            class_names=list(class_names),
            resolution=self.resolution,
            latent_dim=self.latent_dim,
            embedding_dim=self.embedding_dim,
            block_out_channels=list(self.block_out_channels),
            norm_num_groups=self.norm_num_groups,
            class_prior=self.class_prior,
            patch_size=self.patch_size,
        )

    def validate(self) -> None:
        n = len(self.block_out_channels)
        problems = []
        div = self.patch_size * 2**n
        if self.patch_size < 1:
            problems.append(f"--patch-size must be at least 1 (got {self.patch_size})")
        elif self.resolution < 8 or self.resolution % div:
            problems.append(
                f"--resolution {self.resolution} must be >= 8 and divisible by --patch-size x "
                f"2**{n} = {div} (one halving per entry of --channels)"
            )
        if any(c <= 0 or c % self.norm_num_groups for c in self.block_out_channels):
            problems.append(f"--channels must be positive multiples of {self.norm_num_groups}")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append("--epochs and --batch-size must be at least 1")
        # Written so that NaN fails too: a NaN loss trains a model of NaN weights without a word.
        if not (
            0 < self.lr < math.inf
            and 0 <= self.beta < math.inf
            and 0 <= self.free_bits < math.inf
            and self.latent_dim >= 1
        ):
            problems.append(
                "--lr must be > 0, --beta and --free-bits >= 0 (finite numbers), --latent-dim >= 1"
            )
        if self.seed < 0:
            problems.append(f"--seed must be >= 0 (got {self.seed})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            problems.append(f"--device must be auto, cpu or cuda (got {self.device!r})")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            problems.append("--mixed-precision must be no, bf16 or fp16")
        if problems:
            raise SpecError("; ".join(problems))


@dataclass
class TrainResult:
    output_dir: Path
    epochs_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    crops_per_second: float = 0.0
    resumed_from_epoch: int = 0
    is_main_process: bool = True  # False on the other ranks of `accelerate launch`


def class_order(crops: Sequence[Crop], source: DataSource) -> list[str]:
    """Model class order: the filter's order, the procedural order, else sorted names."""
    if source.classes:
        return list(source.classes)
    present = {c.class_name for c in crops}
    if source.kind == "procedural":
        from synthvision.crops import procedural_class_names

        return [n for n in procedural_class_names() if n in present]
    return sorted(present)


def train_cvae(
    source: DataSource,
    output_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Cut crops from `source`, hold some out, train, and write the model folder."""
    config = config or TrainConfig()
    config.validate()
    crops = load_crops(source)
    names = class_order(crops, source)
    train, held = split_holdout(crops, config.holdout, config.seed)
    if not train:
        raise SpecError("no training crops left after the hold-out split (lower --holdout)")
    present = {c.class_name for c in train}
    missing = [n for n in names if n not in present]
    if missing:
        raise SpecError(
            f"no training crops of at least {source.min_size} px for class(es) "
            f"{', '.join(missing)} (lower --min-size or drop them from --classes)"
        )
    data = squares(train, config.resolution)  # (N, R, R, 4) uint8
    ids = np.array([names.index(c.class_name) for c in train], dtype=np.int64)  # (N,)
    meta = {
        "source": source.to_dict(),
        "fingerprint": fingerprint(train),
        "num_train_crops": len(train),
        "num_heldout_crops": len(held),
        "train_counts": {n: int((ids == i).sum()) for i, n in enumerate(names)},
        "heldout_keys": [c.key for c in held],
    }
    return fit(
        data, ids, names, output_dir, config, meta=meta, resume=resume, progress=progress, log=log
    )


def _make_accelerator(config: TrainConfig) -> Any:
    import torch
    from accelerate import Accelerator

    want_cuda = config.device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise SpecError(f"--device {config.device}: CUDA is not available on this machine")
    cpu = config.device == "cpu" or not torch.cuda.is_available()
    mp = config.mixed_precision if not cpu else "no"
    return Accelerator(cpu=cpu, mixed_precision=mp)


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Cosine decay from lr to lr * min_lr_fraction (Loshchilov & Hutter 2017, no restarts)."""
    t = min(1.0, step / max(1, total))
    floor = config.min_lr_fraction
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def _epoch_order(
    ids: npt.NDArray[np.int64], epoch: int, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(order (N,), flip (N,) bool) of one epoch from (seed, epoch, "cvae.shuffle")."""
    import torch

    gen = randomness.torch_generator(config.seed, epoch, "cvae.shuffle")
    n = len(ids)
    if config.balanced:
        counts = np.bincount(ids)
        weights = torch.as_tensor(1.0 / counts[ids], dtype=torch.float64)  # (N,)
        order = torch.multinomial(weights, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    if not config.hflip:
        flip[:] = False
    return order, flip


def _refuse_foreign_output(out: Path) -> None:
    """Train only into a new or empty folder, or one an earlier train-cvae run wrote."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"--output {str(out)!r} is a file; give a folder for the trained model")
    if not out.is_dir() or not any(p.name != LOCK for p in out.iterdir()):
        return
    if (out / "training.json").is_file() or (out / CHECKPOINT_SUBDIR).is_dir():
        return
    raise SpecError(
        f"output folder {str(out)!r} is not empty and holds no train-cvae run (no training.json "
        "or checkpoints/); choose a new or empty --output, so no file of yours is replaced"
    )


def _own_sample_grids(samples: Path) -> list[Path]:
    """The sample grids a run writes (epoch-XXXX.png, final.png); other files are not ours."""
    if not samples.is_dir():
        return []
    return [
        p
        for p in samples.iterdir()
        if p.is_file() and (p.name == "final.png" or re.fullmatch(r"epoch-\d+\.png", p.name))
    ]


def _save_dir_atomic(write: Callable[[Path], None], target: Path) -> None:
    """Write a folder via `write(tmp)` then swap it in, so a crash never leaves half a folder."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def sample_grid(
    model: CVAENetwork, samples_per_class: int, seed: int, temperature: float = 1.0
) -> list[list[npt.NDArray[np.uint8]]]:
    """rows[class][k] RGBA uint8 (R, R, 4); the noise is fixed by (seed, k, "cvae.grid")."""
    import torch

    rows = []
    was_training = model.training
    model.eval()
    for ci in range(len(model.class_names)):
        gens = [randomness.torch_generator(seed, k, "cvae.grid") for k in range(samples_per_class)]
        rgba = model.sample(torch.full((samples_per_class,), ci), gens, temperature)
        rows.append(list(to_uint8(rgba)))
    model.train(was_training)
    return rows


def encode_posteriors(
    model: CVAENetwork,
    data: npt.NDArray[np.uint8],
    class_ids: npt.NDArray[np.int64],
    *,
    hflip: bool = True,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior means and variances (M, D) of squares `data` (N, R, R, 4), and their class ids
    (M,); with `hflip` the mirrored crops too (M = 2N), as training saw both."""
    import torch

    was_training = model.training
    model.eval()
    means, variances, ids = [], [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = torch.from_numpy(data[start : start + batch_size]).to(model.device)
            x = x.permute(0, 3, 1, 2).contiguous().float() / 255.0  # (b, 4, R, R)
            c = torch.from_numpy(class_ids[start : start + batch_size]).to(model.device)
            for view in (x, x.flip(-1)) if hflip else (x,):
                post = model.encode(view.to(model.dtype), c)
                means.append(post.mean.float().cpu())
                variances.append(post.logvar.float().exp().cpu())
                ids.append(c.cpu())
    model.train(was_training)
    return torch.cat(means), torch.cat(variances), torch.cat(ids)


def to_uint8(rgba: torch.Tensor) -> npt.NDArray[np.uint8]:
    """(B, 4, R, R) float [0, 1] -> (B, R, R, 4) uint8."""
    arr = (rgba.detach().float().clamp(0, 1) * 255).round().to("cpu").numpy()
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1)).astype(np.uint8)


def fit(
    data: npt.NDArray[np.uint8],
    class_ids: npt.NDArray[np.int64],
    class_names: Sequence[str],
    output_dir: str | Path,
    config: TrainConfig,
    *,
    meta: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on in-memory squares `data` (N, R, R, 4) uint8 with `class_ids` (N,).

    The output folder is locked while the run writes (rank 0 of a launch holds the lock): the
    same command started twice would otherwise interleave two runs' checkpoints.
    """
    out = Path(output_dir)
    config.validate()
    accelerator = _make_accelerator(config)
    locks = accelerator.is_main_process  # the process that writes the folder
    if locks:
        _refuse_foreign_output(out)  # before the lock file makes the folder non-empty
        out.mkdir(parents=True, exist_ok=True)
        lock_folder(out, "--output")
    try:
        return _fit(
            data, class_ids, class_names, out, config, accelerator,
            meta=meta, resume=resume, progress=progress, log=log,
        )  # fmt: skip
    finally:
        if locks:
            release_folder(out)


def _fit(
    data: npt.NDArray[np.uint8],
    class_ids: npt.NDArray[np.int64],
    class_names: Sequence[str],
    output_dir: str | Path,
    config: TrainConfig,
    accelerator: Any,
    *,
    meta: dict[str, Any] | None,
    resume: bool,
    progress: bool,
    log: Callable[[str], None] | None,
) -> TrainResult:
    import torch

    from synthvision.models.cvae import ConditionalVAE, cvae_loss, kl_beta

    out = Path(output_dir)
    n = len(data)
    if data.ndim != 4 or data.shape[1:] != (config.resolution, config.resolution, 4):
        raise ValueError(
            f"data must be (N, {config.resolution}, {config.resolution}, 4), got {data.shape}"
        )
    if class_ids.shape != (n,):
        raise ValueError(f"class_ids must have shape ({n},), got {class_ids.shape}")
    meta = dict(meta or {})
    meta.setdefault("fingerprint", _array_fingerprint(data, class_ids))
    say = log if log is not None and accelerator.is_main_process else (lambda s: None)
    world, rank = accelerator.num_processes, accelerator.process_index
    if n < world:
        raise SpecError(f"{n} training crops cannot be split over {world} processes")

    ckpt = out / CHECKPOINT_SUBDIR
    _refuse_foreign_output(out)  # every rank: only the main one checked before the lock
    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": []}
    model_kwargs = config.model_kwargs(class_names)
    # Settings that shape the optimisation: a resumed run must keep them, or its epochs would mix
    # two trainings while training.json and the model card report only the last one.
    optim = _jsonable({k: v for k, v in asdict(config).items() if k not in _RESUMABLE_CHANGES})
    resuming = resume and (ckpt / "trainer_state.json").is_file()
    if resuming:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state.get("fingerprint") != meta["fingerprint"]:
            raise SpecError(
                f"{out}: its checkpoint was trained on other data (fingerprint differs); "
                "use another --output or --no-resume to start over"
            )
        if state.get("model_kwargs") != model_kwargs:
            raise SpecError(
                f"{out}: its checkpoint has another model configuration; use another --output "
                "or --no-resume to start over"
            )
        before = state.get("train_settings")
        if before is not None and before != optim:
            changed = sorted(k for k in optim if before.get(k) != optim[k])
            raise SpecError(
                f"{out}: its checkpoint was trained with other settings ("
                + ", ".join(f"{k} {before.get(k)!r} -> {optim[k]!r}" for k in changed)
                + "); re-run with the same options to resume, or use another --output or "
                "--no-resume to start over"
            )
    init_gen = randomness.torch_generator(config.seed, randomness.GLOBAL_INDEX, "cvae.init")
    model = ConditionalVAE.initialized(init_gen, **model_kwargs)
    if resuming:
        from safetensors.torch import load_file

        # weights only (from_pretrained would record this folder's path in the final config)
        weights = load_file(ckpt / "diffusion_pytorch_model.safetensors")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # the fitted prior is set after training: checkpoints may predate those buffers
        if unexpected or any(not k.startswith("fitted_") for k in missing):
            raise SpecError(
                f"{ckpt}: its weights do not match the model configuration; use another "
                "--output or --no-resume to start over"
            )
        say(f"resuming from epoch {state['epoch']} of {config.epochs}")
    resumed_from = int(state["epoch"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resumed_from and (ckpt / "optimizer.pt").is_file():
        # After prepare: torch puts the moments on the parameters' device and keeps AdamW's
        # `step` counters on the CPU. Loaded before, accelerate's prepare moves the counters to
        # the GPU too, and every optimizer step then syncs on each one's .item() (2 per tensor).
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu"))
    device = accelerator.device

    steps_per_epoch = max(1, n // config.batch_size)
    batch = n if n < config.batch_size else config.batch_size
    total_steps = steps_per_epoch * config.epochs
    data_t = torch.from_numpy(data)  # (N, R, R, 4) uint8, stays on the CPU
    ids_t = torch.from_numpy(class_ids)
    history: list[dict[str, float]] = list(state["history"])
    step = int(state["step"])
    train_seconds = float(state.get("train_seconds", 0.0))
    crops_seen = int(state.get("crops_seen", 0))
    if accelerator.is_main_process:
        if resumed_from == 0:  # a fresh start: drop grids of an earlier run in this folder
            for grid in _own_sample_grids(out / "samples"):
                grid.unlink()
        (out / "samples").mkdir(parents=True, exist_ok=True)

    bar = _progress(enabled=progress and accelerator.is_main_process)
    with bar:
        task = bar.add_task("train-cvae", total=total_steps, completed=step, info="")
        for epoch in range(resumed_from, config.epochs):
            model.train()
            order, flip = _epoch_order(class_ids, epoch, config)
            noise = randomness.torch_generator(
                config.seed, epoch * world + rank, "cvae.noise", device=device
            )
            sums = torch.zeros(4, device=device)  # loss terms summed over the epoch's steps
            t0 = time.perf_counter()
            for s in range(steps_per_epoch):
                idx = order[s * batch : (s + 1) * batch][rank::world]  # this rank's share
                # NHWC uint8 -> contiguous NCHW float (a channels-last view makes CPU convs crawl)
                x = data_t[idx].to(device).permute(0, 3, 1, 2).contiguous().float() / 255.0
                f = flip[idx].to(device)
                x = torch.where(f[:, None, None, None], x.flip(-1), x)
                c = ids_t[idx].to(device)  # (b,)
                for g in optimizer.param_groups:
                    g["lr"] = _lr_at(step, total_steps, config)
                with accelerator.autocast():
                    out_ = model(x, c, generator=noise)
                    loss = cvae_loss(
                        out_,
                        x,
                        beta=kl_beta(step, config.beta, config.warmup_steps),
                        free_bits=config.free_bits,
                        colour_weight=config.colour_weight,
                    )
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss.total)
                accelerator.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                step += 1
                terms = torch.stack([loss.total, loss.colour, loss.alpha, loss.kl])
                sums += terms.detach().float()
                # reading a loss value waits for the GPU: only every 25 steps, for the bar
                if s % 25 == 0:
                    bar_info = f"epoch {epoch + 1} loss {float(loss.total.detach()):.1f}"
                    bar.update(task, advance=1, info=bar_info)
                else:
                    bar.update(task, advance=1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds += time.perf_counter() - t0
            crops_seen += steps_per_epoch * batch
            means = accelerator.reduce(sums / steps_per_epoch, reduction="mean").cpu()
            record = {
                "epoch": epoch + 1,
                "loss": float(means[0]),
                "colour": float(means[1]),
                "alpha": float(means[2]),
                "kl": float(means[3]),
            }
            history.append(record)
            say(
                f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.2f} (colour "
                f"{record['colour']:.2f}, alpha {record['alpha']:.2f}, kl {record['kl']:.2f})"
            )
            if accelerator.is_main_process:
                net = accelerator.unwrap_model(model)
                rows = sample_grid(net, config.samples_per_class, config.seed)
                grid_image(rows, cell=min(config.resolution, 64), labels=list(class_names)).save(
                    out / "samples" / f"epoch-{epoch + 1:04d}.png"
                )
                last = epoch + 1 == config.epochs
                if last or (epoch + 1) % config.checkpoint_every == 0:
                    trainer_state = {
                        "epoch": epoch + 1,
                        "step": step,
                        "history": history,
                        "fingerprint": meta["fingerprint"],
                        "model_kwargs": model_kwargs,
                        "train_settings": optim,
                        "train_seconds": train_seconds,
                        "crops_seen": crops_seen,
                    }

                    def write(
                        tmp: Path, net: Any = net, st: dict[str, Any] = trainer_state
                    ) -> None:
                        net.save_pretrained(tmp, safe_serialization=True)
                        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                        (tmp / "trainer_state.json").write_text(json.dumps(st, indent=1))

                    _save_dir_atomic(write, ckpt)
            accelerator.wait_for_everyone()

    throughput = crops_seen / train_seconds if train_seconds > 0 else 0.0
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model)
        # Sample from the aggregate posterior, not the prior (models/cvae.py, Ghosh et al. 2020).
        latents, latent_vars, latent_ids = encode_posteriors(
            net, data, class_ids, hflip=config.hflip
        )
        net.fit_latent_prior(latents, latent_ids, latent_vars)
        meta["latent_prior_fit_latents"] = len(latents)
        rows = sample_grid(net, config.samples_per_class, config.seed)
        grid_image(rows, cell=min(config.resolution, 64), labels=list(class_names)).save(
            out / "samples" / "final.png"
        )
        net.save_pretrained(out, safe_serialization=True)
        info = {
            **meta,
            "class_names": list(class_names),
            "config": _jsonable(asdict(config)),
            "epochs": config.epochs,
            "steps": step,
            "history": history,
            "final": history[-1] if history else {},
            "train_seconds": round(train_seconds, 2),
            "crops_per_second": round(throughput, 1),
            "processes": world,
            "device": str(device),
        }
        (out / TRAINING_FILE).write_text(json.dumps(info, indent=1))
        (out / "README.md").write_text(model_card(info))
    accelerator.wait_for_everyone()
    return TrainResult(
        out, config.epochs, history, throughput, resumed_from, accelerator.is_main_process
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=list))


def _array_fingerprint(data: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64]) -> str:
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    h.update(np.ascontiguousarray(ids).tobytes())
    return h.hexdigest()


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NullProgress()
    from rich.progress import TextColumn

    from synthvision.progress import rich_progress

    return rich_progress(tail=(TextColumn("{task.fields[info]}"),))


def _describe_source(src: dict[str, Any]) -> str:
    kind = src.get("kind", "in-memory arrays")
    if kind == "procedural":
        n, seed = src.get("count_per_class"), src.get("seed")
        return f"built-in procedural objects, {n} per class, seed {seed}"
    classes = ", ".join(src.get("classes") or []) or "all classes"
    return f"{kind} `{src.get('path', '')}` ({classes}, objects >= {src.get('min_size')} px)"


def model_card(info: dict[str, Any]) -> str:
    """README.md written next to the weights: what it was trained on, how long, how well."""
    src = info.get("source", {})
    final = info.get("final", {})
    counts = info.get("train_counts", {})
    lines = [
        "---",
        "library_name: synthvision",
        "tags: [conditional-vae, synthetic-data, object-crops]",
        "---",
        "",
        "# synthvision conditional VAE",
        "",
        "Class-conditional convolutional VAE generating RGBA object crops (colour + alpha mask),",
        "for `objects: {name: cvae, params: {checkpoint: <this folder>}}` in a synthvision spec.",
        "",
        "| | |",
        "|---|---|",
        f"| classes | {', '.join(info.get('class_names', []))} |",
        f"| training data | {_describe_source(src)} |",
        f"| training-data fingerprint (sha256) | `{info.get('fingerprint', '')}` |",
        f"| training crops | {info.get('num_train_crops', '?')} "
        f"(held out for the audit: {info.get('num_heldout_crops', 0)}) |",
        f"| epochs / optimiser steps | {info.get('epochs')} / {info.get('steps')} |",
        f"| final losses (per crop) | total {final.get('loss', float('nan')):.2f}, colour "
        f"{final.get('colour', float('nan')):.3f}, alpha {final.get('alpha', float('nan')):.2f}, "
        f"KL {final.get('kl', float('nan')):.2f} nats |",
        f"| throughput | {info.get('crops_per_second')} crops/s on {info.get('device')} "
        f"x {info.get('processes')} |",
        "",
    ]
    if counts:
        lines += ["Crops per class: " + ", ".join(f"{k} {v}" for k, v in counts.items()), ""]
    cfg = info.get("config", {})
    lines += [
        "Model: resolution {r} (patch {p}), latent {d}, channels {c}, class prior {cp}; loss: "
        "alpha-weighted colour MSE x {w} + alpha BCE + beta {b} x KL (free bits {fb}, warm-up "
        "{ws} steps).".format(
            r=cfg.get("resolution"),
            p=cfg.get("patch_size"),
            cp=cfg.get("class_prior"),
            d=cfg.get("latent_dim"),
            c=cfg.get("block_out_channels"),
            w=cfg.get("colour_weight"),
            b=cfg.get("beta"),
            fb=cfg.get("free_bits"),
            ws=cfg.get("warmup_steps"),
        ),
        "",
        "Sampling: z ~ a full-covariance Gaussian per class fitted after training to the "
        f"posteriors of the {info.get('latent_prior_fit_latents', '?')} training crops "
        "(mirrored included when flips were on): the aggregate posterior's mean and covariance, "
        "the means' part shrunk towards the pooled diagonal for small classes (ex-post density "
        "estimation, Ghosh et al. 2020); temperature scales its std.",
        "",
        "Intended use: synthetic training data by compositing. Trained on few crops, samples can",
        "resemble training objects: run `synthvision audit` on the folder before sharing data.",
        "",
    ]
    return "\n".join(lines)
