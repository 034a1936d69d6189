"""`synthvision train-cvae`: train a conditional VAE on object crops of a dataset.

Only typer and the standard library at import time; torch is imported when the command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from synthvision.errors import SpecError


def _split_list(values: list[str] | None) -> list[str]:
    """`--classes a,b --classes c` -> [a, b, c] (order kept, blanks dropped, no repeats)."""
    out: list[str] = []
    for v in values or []:
        out += [s.strip() for s in v.split(",") if s.strip()]
    repeated = sorted({c for c in out if out.count(c) > 1})
    if repeated:
        raise SpecError(f"--classes: {', '.join(map(repr, repeated))} given more than once")
    return out


def _channels(text: str) -> tuple[int, ...]:
    try:
        chans = tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise SpecError(f"--channels must be comma-separated integers, got {text!r}") from None
    if not chans:
        raise SpecError("--channels needs at least one number, e.g. 16,32,64,128")
    return chans


def train_cvae_command(
    data: Annotated[
        str,
        typer.Argument(
            help="Training data: a COCO instances JSON, a COCO dataset folder "
            "(annotations/instances*.json + images/), a YOLO dataset folder (data.yaml), "
            "or 'procedural' for the built-in objects."
        ),
    ],
    output: Annotated[
        str,  # not Path: Path("") is ".", and an empty --output must not mean the cwd
        typer.Option(
            "--output", "-o", metavar="DIR", help="Folder for the model, samples, checkpoints."
        ),
    ],
    data_format: Annotated[
        str, typer.Option("--format", help="auto, coco, yolo or procedural.")
    ] = "auto",
    images: Annotated[
        str,
        typer.Option(
            help="COCO image folder (default: ../images/<split> or ../images beside the JSON, ...)."
        ),
    ] = "",
    split: Annotated[str, typer.Option(help="YOLO split (or COCO instances_<split>.json).")] = (
        "train"
    ),
    classes: Annotated[
        list[str] | None,
        typer.Option(help="Classes to train on, comma-separated or repeated (default: all)."),
    ] = None,
    min_size: Annotated[int, typer.Option(help="Skip objects smaller than this (px).")] = 16,
    masks: Annotated[
        bool, typer.Option(help="Alpha from instance masks (else the filled box).")
    ] = True,
    procedural_count: Annotated[
        int, typer.Option(help="Crops per class for 'procedural' data.")
    ] = 500,
    resolution: Annotated[int, typer.Option(help="Crop size the model learns (px).")] = 64,
    latent_dim: Annotated[int, typer.Option(help="Latent dimensions.")] = 32,
    channels: Annotated[
        str, typer.Option(help="Channels per resolution stage, comma-separated.")
    ] = "16,32,64,128",
    patch_size: Annotated[
        int, typer.Option(help="Space-to-depth factor: the network runs at resolution / this.")
    ] = 2,
    epochs: Annotated[int, typer.Option(help="Passes over the training crops.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Global batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    beta: Annotated[float, typer.Option(help="Weight of the KL term.")] = 1.0,
    free_bits: Annotated[float, typer.Option(help="Free bits per latent dim (nats).")] = 0.05,
    warmup_steps: Annotated[int, typer.Option(help="KL warm-up steps.")] = 300,
    balanced: Annotated[
        bool, typer.Option(help="Sample classes equally often (for long-tailed data).")
    ] = False,
    holdout: Annotated[
        float, typer.Option(help="Fraction of crops per class held out for `synthvision audit`.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of every random draw of the run.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16 (GPU).")] = "no",
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N epochs.")] = 1,
    resume: Annotated[
        bool, typer.Option(help="Continue from the checkpoint in --output if there is one.")
    ] = True,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0 = torch's default).")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a class-conditional VAE on object crops; sample it with objects: {name: cvae}.

    Works on CPU, one GPU, or several through `accelerate launch -m synthvision train-cvae ...`.
    Re-running the same command resumes from the last epoch checkpoint.
    """
    from synthvision.crops import resolve_source
    from synthvision.outdir import output_path
    from synthvision.train_cvae import TrainConfig, train_cvae

    output_dir = output_path(output, "--output")

    if threads < 0:
        raise SpecError("--threads must be >= 0")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if checkpoint_every < 1:
        raise SpecError("--checkpoint-every must be at least 1")
    if procedural_count < 1:
        raise SpecError("--procedural-count must be at least 1")
    source = resolve_source(
        data,
        kind=data_format,
        images=images,
        split=split,
        classes=_split_list(classes),
        min_size=min_size,
        use_masks=masks,
        count_per_class=procedural_count,
        seed=seed,
    )
    config = TrainConfig(
        resolution=resolution,
        latent_dim=latent_dim,
        block_out_channels=_channels(channels),
        patch_size=patch_size,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        beta=beta,
        free_bits=free_bits,
        warmup_steps=warmup_steps,
        balanced=balanced,
        holdout=holdout,
        seed=seed,
        device=device,
        mixed_precision=mixed_precision,
        checkpoint_every=checkpoint_every,
    )
    result = train_cvae(
        source, output_dir, config, resume=resume, progress=progress, log=typer.echo
    )
    if not result.is_main_process:
        return
    typer.echo(
        f"wrote {result.output_dir} ({result.epochs_done} "
        f"epoch{'' if result.epochs_done == 1 else 's'}, "
        f"{result.crops_per_second:.0f} crops/s); sample it with "
        f"objects: {{name: cvae, params: {{checkpoint: {result.output_dir}}}}}"
    )
