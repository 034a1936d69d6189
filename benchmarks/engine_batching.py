"""Engine calls per image: what a build pays in UNet batches, at several failure rates.

Every diffusion engine call costs `batch_size` UNet rows (x2 with CFG) whatever it holds, so at
Stable Diffusion size a build's GPU time is proportional to its engine calls. This script counts
them in real builds (`synthvision.build.build`) with a tiny random SD pipeline on the CPU; the
counts do not depend on the machine or the model size.

A chosen fraction of generated images fails (a function of the image's seed, so every run sees
the same failures), as decode checks, a CLIP filter or `min_instances` would; each is retried
with a new seed (`max_retries: 2`). Run it from a checkout of any version to compare versions:
it times whatever synthvision sits beside it (`--batches default` needs 2026-12-07 or later).

    python benchmarks/engine_batching.py                        # attention scenes and compose
    python benchmarks/engine_batching.py --batches 8 16 --rates 0 0.05 0.2 --images 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from synthvision import build as build_mod  # noqa: E402
from synthvision import randomness  # noqa: E402
from synthvision.config import Spec, parse_spec  # noqa: E402


class Counter:
    """Wraps `DiffusionEngine._batch`: counts calls and real rows; fails a `rate` of images."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.calls: dict[int, int] = {}  # per engine (id): calls
        self.rows = 0

    @contextmanager
    def installed(self) -> Iterator[Counter]:
        from synthvision.generators.diffusion import DiffusionEngine

        real = DiffusionEngine._batch
        counter = self

        def counted(engine: Any, requests: Any) -> Any:
            counter.calls[id(engine)] = counter.calls.get(id(engine), 0) + 1
            counter.rows += len(requests)
            outs = real(engine, requests)
            for r, out in zip(requests, outs, strict=True):
                draw = randomness.rng(int(r.seed) % 2**63, 0, "bench-failure").random()
                if out.failure is None and draw < counter.rate:
                    out.failure = "injected"
            return outs

        DiffusionEngine._batch = counted  # type: ignore[method-assign]
        try:
            yield self
        finally:
            DiffusionEngine._batch = real  # type: ignore[method-assign]


def spec_for(kind: str, model: str, images: int, engine_batch: int, size: int) -> Spec:
    pipe = {"model": model, "steps": 2, "batch_size": engine_batch, "max_retries": 2}
    data: dict[str, Any] = {
        "name": f"bench-{kind}",
        "seed": 3,
        "num_images": images,
        "image_size": [size, size],
        "splits": {"train": 1.0},
        "classes": [{"name": "cat"}, {"name": "dog"}],
        "objects_per_image": [1, 4],
        "layout": {"min_area_px": 4, "scale": [0.3, 0.6], "min_visibility": 0.2},
        "export": {"preview_images": 0},
    }
    if kind == "attention":
        data["scene"] = {
            "name": "diffusion-attention",
            "params": {**pipe, "min_instances": 0},  # only the injected failures retry
        }
    else:  # compose: objects and backgrounds rendered, as configs/sd15-compose.yaml
        data["objects"] = {"name": "diffusion", "params": pipe}
        data["background"] = {"name": "diffusion", "params": pipe}
    return parse_spec(data)


def run_one(
    spec: Spec, engine_batch: int, batch_size: int | None, rate: float, out: Path
) -> dict[str, Any]:
    with Counter(rate).installed() as counter:
        t0 = time.perf_counter()
        if batch_size is None:  # the CLI's default
            build_mod.build(spec, out, show_progress=False)
        else:
            build_mod.build(spec, out, batch_size=batch_size, show_progress=False)
        seconds = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    bs = engine_batch
    calls = sum(counter.calls.values())
    return {
        "build_batch": batch_size or "default",
        "rate": rate,
        "calls": calls,
        "rows_used": counter.rows,
        "rows_paid": calls * bs,
        "padding": round(1 - counter.rows / (calls * bs), 4),
        "paid_rows_per_image": round(calls * bs / spec.num_images, 3),
        "retries": manifest["counts"]["retries"],
        "seconds": round(seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--engine-batch", type=int, default=16)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.05, 0.2])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--kinds", nargs="+", default=["attention", "compose"])
    ap.add_argument(
        "--batches", nargs="+", default=["default", "8"], help="build --batch-size values"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()

    import synthvision
    from synthvision.hub import hide_loading_bars
    from tests import tiny_models

    hide_loading_bars()
    print(f"synthvision from {Path(synthvision.__file__).parent}", file=sys.stderr)
    model = tiny_models.sd_model()
    batches = [None if b == "default" else int(b) for b in args.batches]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            spec = spec_for(kind, model, args.images, args.engine_batch, args.size)
            for rate in args.rates:
                for batch in batches:
                    out = Path(tmp) / f"{kind}-{rate}-{batch}"  # a new folder: no resume
                    row = {"kind": kind, **run_one(spec, args.engine_batch, batch, rate, out)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
