"""`synthvision audit`: memorization audit of a cVAE trained with `synthvision train-cvae`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from synthvision.errors import SpecError


def audit_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Output folder of `synthvision train-cvae` (has training.json), or 'builtin' "
            "for the checkpoint shipped with synthvision (its report goes to ./cvae-builtin-audit)."
        ),
    ],
    samples_per_class: Annotated[int, typer.Option(help="Generated crops per class.")] = 50,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    prior: Annotated[
        str,
        typer.Option(
            help="p(z|c) to sample: auto (the fitted Gaussian if the checkpoint has one), fitted, "
            "or learned; audit what the build's objects.params.prior will use."
        ),
    ] = "auto",
    features: Annotated[
        str,
        typer.Option(
            help="'pixels' (no download: downsampled pixels + colour histograms) or the path of "
            "a TorchScript model mapping (N, 3, S, S) in [0, 1] to embeddings (N, D)."
        ),
    ] = "pixels",
    feature_size: Annotated[int, typer.Option(help="Input size S of a TorchScript model.")] = 224,
    percentile: Annotated[
        float, typer.Option(help="Percentile of held-out DCRs used as the threshold.")
    ] = 5.0,
    flag_ratio: Annotated[
        float, typer.Option(help="Flag when the fraction below exceeds ratio x percentile.")
    ] = 2.0,
    pairs: Annotated[int, typer.Option(help="Nearest pairs shown in nearest_pairs.png.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the generated samples.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    output: Annotated[
        str | None,  # not Path: Path("") is ".", and an empty --output must not mean the cwd
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Folder for the audit report (default: RUN_DIR/audit).",
        ),
    ] = None,
    fail_on_flag: Annotated[
        bool, typer.Option(help="Exit with code 1 when memorization is suspected.")
    ] = False,
) -> None:
    """Memorization audit of a cVAE trained with train-cvae.

    Compares each generated crop's distance to its closest training crop (DCR) with the same
    distance for real crops held out at training time; writes audit.json and nearest_pairs.png.
    """
    from synthvision.audit import audit_run
    from synthvision.generators.cvae import BUILTIN_CHECKPOINT
    from synthvision.outdir import output_path

    # Written so that NaN fails too: a NaN temperature or ratio gives a reassuring verdict.
    if (
        samples_per_class < 1
        or not 0 < percentile < 100
        or not 0 < flag_ratio < math.inf
        or pairs < 0
    ):
        raise SpecError(
            "--samples-per-class must be >= 1, --percentile in (0, 100), --flag-ratio > 0, "
            "--pairs >= 0"
        )
    if not 0 <= temperature < math.inf or feature_size < 1 or seed < 0:
        # 0 is allowed: each class's mean, as with the cvae object source's temperature
        raise SpecError("--temperature must be >= 0 (finite), --feature-size >= 1, --seed >= 0")
    out_given = output_path(output, "--output") if output is not None else None
    if out_given is not None and out_given.exists() and not out_given.is_dir():
        # Found now, not after minutes of sampling when the report is written.
        raise SpecError(f"--output {output!r} is a file; give a folder for the audit report")
    if str(run_dir) == "builtin" and not run_dir.exists():
        # The shipped checkpoint lives in the installed package: never write the report there.
        run_dir, default_output = BUILTIN_CHECKPOINT, Path("cvae-builtin-audit")
    else:
        default_output = run_dir / "audit"
    out_dir = out_given or default_output
    result, report = audit_run(
        run_dir,
        samples_per_class=samples_per_class,
        temperature=temperature,
        prior=prior,
        features=features,
        feature_size=feature_size,
        percentile=percentile,
        flag_ratio=flag_ratio,
        pairs=pairs,
        seed=seed,
        device=device,
        output_dir=out_dir,
    )
    typer.echo(report["verdict"])
    typer.echo(f"wrote {out_dir / 'audit.json'} and {out_dir / 'nearest_pairs.png'}")
    if fail_on_flag and result.flagged:
        raise typer.Exit(1)
