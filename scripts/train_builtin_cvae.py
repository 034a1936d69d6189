"""Train the cVAE checkpoint shipped in synthvision/checkpoints/cvae-builtin (reproducible).

    python scripts/train_builtin_cvae.py --ship   # the shipped run: ~16 min on 2 idle CPU cores
    python scripts/train_builtin_cvae.py --work /tmp/cvae-run --epochs 2   # quick look

Data: `--count-per-class` crops of every built-in procedural class, drawn from `--seed`; 10% per
class held out for the memorization audit. Every random draw (crops, hold-out, init, order,
noise) derives from the seed. With `--threads 1` the same command on the same hardware and library
versions gives the same weights bit for bit; with more threads, CPU kernels may sum in another
order, so weights can differ in the last bits and drift apart over training. The shipped folder
gets the weights (config.json + safetensors), the model card
(README.md), training.json and the final sample grid (samples.png, from the fitted prior).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "synthvision" / "checkpoints" / "cvae-builtin"
SHIPPED_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "README.md", "training.json")
MAX_BYTES = 10 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--count-per-class", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu (reproducible reference) or cuda")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "cvae-builtin-run")
    ap.add_argument(
        "--output", type=Path, default=None, help="copy the checkpoint here (default: nowhere)"
    )
    ap.add_argument(
        "--ship", action="store_true", help=f"replace the shipped checkpoint ({SHIPPED})"
    )
    ap.add_argument("--no-resume", action="store_true", help="start over instead of resuming")
    args = ap.parse_args(argv)
    if args.ship and args.output is not None:
        ap.error("give --ship (the shipped checkpoint) or --output DIR, not both")

    if args.device.startswith("cuda"):
        # deterministic cuBLAS/cuDNN: the same command on the same GPU gives the same weights
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    sys.path.insert(0, str(REPO))
    from synthvision.crops import DataSource
    from synthvision.train_cvae import TrainConfig, train_cvae

    source = DataSource(
        kind="procedural", count_per_class=args.count_per_class, seed=args.seed, min_size=4
    )
    config = TrainConfig(
        resolution=64,
        latent_dim=32,
        embedding_dim=32,
        block_out_channels=(16, 32, 64, 128),
        patch_size=2,
        class_prior=True,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=2e-3,
        beta=1.0,
        free_bits=0.05,
        warmup_steps=300,
        # the shapes are the classes here: weight colour less than the default (20) so the
        # decoder's capacity goes to the alpha silhouette first (alpha loss fell ~2x faster)
        colour_weight=5.0,
        holdout=0.1,
        seed=args.seed,
        device=args.device,
    )
    t0 = time.perf_counter()
    result = train_cvae(source, args.work, config, resume=not args.no_resume, log=print)
    print(f"trained in {time.perf_counter() - t0:.0f} s, {result.crops_per_second:.0f} crops/s")

    if args.ship:
        args.output = SHIPPED
    if args.output is None:  # a trial run never replaces the checkpoint every build uses
        print(
            f"checkpoint in {args.work}; re-run with --ship to replace the shipped one (it resumes "
            "the finished run: no training again)"
        )
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copy2(args.work / name, args.output / name)
        os.chmod(args.output / name, 0o644)  # safetensors are written 0600
    # the grid drawn from the fitted latent prior, as the `cvae` object source samples
    shutil.copy2(args.work / "samples" / "final.png", args.output / "samples.png")
    info = json.loads((args.output / "training.json").read_text())
    info["command"] = "python scripts/train_builtin_cvae.py " + " ".join(argv or sys.argv[1:])
    (args.output / "training.json").write_text(json.dumps(info, indent=1))
    size = sum(p.stat().st_size for p in args.output.iterdir() if p.is_file())
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")
    if size > MAX_BYTES:
        print("error: the shipped checkpoint is over 10 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
