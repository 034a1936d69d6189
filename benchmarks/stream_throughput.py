"""Training-input throughput: items/s from `SynthStream` (generated while iterating) against
`SynthDetection` (read from a build), through a DataLoader, with 0 and N workers.

    python benchmarks/stream_throughput.py [--spec configs/quickstart.yaml] [--num-images 400]
        [--workers 0,2] [--batch-size 8]

Each row iterates one full epoch of the train split after one warm-up batch (worker start-up and
model loading are excluded; planning the epoch is included for the stream, as in training). The
build the reader uses is made once into a temporary folder, with the spec's own image format.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from synthvision.build import build
from synthvision.config import load_spec
from synthvision.data import SynthDetection, collate_detection
from synthvision.stream import SynthStream

ROOT = Path(__file__).resolve().parent.parent


def items_per_s(dataset: object, workers: int, batch_size: int) -> tuple[float, int]:
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_detection,
        shuffle=isinstance(dataset, SynthDetection),
    )
    n = 0
    t0 = 0.0
    for i, (images, _) in enumerate(loader):
        if i == 0:  # warm-up: workers started, models loaded
            t0 = time.perf_counter()
            continue
        n += len(images)
    return n / (time.perf_counter() - t0), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    overrides = [f"num_images={args.num_images}"]
    spec = load_spec(args.spec, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        build(spec, Path(tmp) / "ds", show_progress=False)
        for workers in [int(w) for w in args.workers.split(",")]:
            for name, dataset in (
                ("SynthDetection (read)", SynthDetection(Path(tmp) / "ds", "train")),
                ("SynthStream (generate)", SynthStream(spec, "train")),
            ):
                rate, n = items_per_s(dataset, workers, args.batch_size)
                print(f"{name:24s} workers={workers}: {rate:7.1f} items/s ({n} items)")


if __name__ == "__main__":
    main()
