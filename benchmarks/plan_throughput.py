"""Planning time and memory: `make_plan` for a large dataset, before any image is made.

    python benchmarks/plan_throughput.py --num-images 100000 [--spec configs/quickstart.yaml]

Prints the best of `--repeats` timings (perf_counter) and the plan's memory per image
(tracemalloc, measured on one more plan). Run it from two checkouts, alternating, to compare
versions on a shared machine.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

from synthvision.config import load_spec
from synthvision.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--num-images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    spec = load_spec(args.spec, [f"num_images={args.num_images}"])
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        make_plan(spec)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    plan = make_plan(spec)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n = len(plan)
    print(
        f"{n:,} images: best {min(times):.2f} s ({1e6 * min(times) / n:.1f} us/image), "
        f"{held / n:.0f} bytes/image held"
    )


if __name__ == "__main__":
    main()
