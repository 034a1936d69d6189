"""`synthvision audit`: memorization audit of a cVAE trained with `synthvision train-cvae`."""

from __future__ import annotations

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
        Path | None,
        typer.Option(
            "--output", "-o", help="Folder for the audit report (default: RUN_DIR/audit)."
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

    if samples_per_class < 1 or not 0 < percentile < 100 or flag_ratio <= 0 or pairs < 0:
        raise SpecError(
            "--samples-per-class must be >= 1, --percentile in (0, 100), --flag-ratio > 0, "
            "--pairs >= 0"
        )
    if str(run_dir) == "builtin" and not run_dir.exists():
        # The shipped checkpoint lives in the installed package: never write the report there.
        run_dir, default_output = BUILTIN_CHECKPOINT, Path("cvae-builtin-audit")
    else:
        default_output = run_dir / "audit"
    output = output or default_output
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
        output_dir=output,
    )
    typer.echo(report["verdict"])
    typer.echo(f"wrote {output / 'audit.json'} and {output / 'nearest_pairs.png'}")
    if fail_on_flag and result.flagged:
        raise typer.Exit(1)
