"""Training throughput of the cVAE (crops/s), through the real trainer (`train_cvae.fit`).

    python benchmarks/cvae_throughput.py --device cpu --threads 2
    python benchmarks/cvae_throughput.py --device cuda --batch-sizes 64,256,1024

Data are random RGBA squares held in memory (throughput does not depend on content); the first
epoch is a warm-up and is not counted. Prints one JSON line per batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="64")
    ap.add_argument("--crops", type=int, default=2048, help="crops per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--channels", default="16,32,64,128")
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--patch-size", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from synthvision.train_cvae import TrainConfig, fit

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    r = args.resolution
    data = rng.integers(0, 256, size=(args.crops, r, r, 4), dtype=np.uint8)
    ids = np.arange(args.crops) % 10
    names = [f"c{i}" for i in range(10)]
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            common = dict(
                resolution=r,
                block_out_channels=tuple(int(c) for c in args.channels.split(",")),
                batch_size=bs,
                device=args.device,
                mixed_precision=args.mixed_precision,
                samples_per_class=1,
                patch_size=args.patch_size,
                checkpoint_every=10_000,
            )
            fit(data, ids, names, Path(tmp), TrainConfig(epochs=1, **common), progress=False)
            t_warm = json.loads((Path(tmp) / "training.json").read_text())["train_seconds"]
            t0 = time.perf_counter()
            fit(  # resumes after the warm-up epoch
                data,
                ids,
                names,
                Path(tmp),
                TrainConfig(epochs=1 + args.epochs, **common),
                progress=False,
            )
            wall = time.perf_counter() - t0
            t_all = json.loads((Path(tmp) / "training.json").read_text())["train_seconds"]
            timed = args.epochs * (args.crops // bs) * bs
            print(
                json.dumps(
                    {
                        "device": args.device
                        if args.device != "cuda"
                        else torch.cuda.get_device_name(),
                        "threads": args.threads,
                        "batch_size": bs,
                        "resolution": r,
                        "channels": args.channels,
                        "patch_size": args.patch_size,
                        "mixed_precision": args.mixed_precision,
                        "crops_per_s": round(timed / (t_all - t_warm), 1),
                        "crops_per_s_wall": round(
                            timed / wall, 1
                        ),  # + grids, checkpoints, start-up
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
