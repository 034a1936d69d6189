"""Quickstart build throughput (images/s) and peak memory vs dataset size.

Each measurement runs one build in a fresh process (one process, JPEG, 512x512 unless told) and
reports its generation rate from the manifest and its peak resident memory (ru_maxrss).
Memory must not grow with the number of images.

    python benchmarks/build_throughput.py                 # 1,000 and 10,000 images
    python benchmarks/build_throughput.py --counts 200 --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from synthvision.build import build
from synthvision.config import load_spec
spec = load_spec(sys.argv[1], sys.argv[3:])
t = time.perf_counter()
res = build(spec, sys.argv[2], show_progress=False)
wall = time.perf_counter() - t
m = res.manifest
print(json.dumps({
    "images": m["counts"]["images"]["total"],
    "instances": m["counts"]["instances"]["total"],
    "generate_s": m["timings_s"]["generate"],
    "merge_s": m["timings_s"]["merge"],
    "wall_s": round(wall, 2),
    "gen_images_per_s": m["timings_s"]["images_per_s"],
    "end_to_end_images_per_s": round(m["counts"]["images"]["total"] / wall, 1),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--spec", default="configs/quickstart.yaml")
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--size", type=int, default=512, help="image side in px")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    print(f"# {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    header = ["images", "size", "instances", "generate s", "merge s", "gen img/s",
              "end-to-end img/s", "peak RSS MiB"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.counts:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [
                f"num_images={n}",
                f"image_size=[{args.size},{args.size}]",
                *args.overrides,
            ]
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.spec, str(Path(tmp) / "ds"), *overrides],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode != 0:  # the child's error, not only its exit status
                sys.exit(f"build of {n} images failed ({out.returncode}):\n{out.stderr[-4000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['images']} | {args.size} | {r['instances']} | {r['generate_s']} | "
                  f"{r['merge_s']} | {r['gen_images_per_s']} | {r['end_to_end_images_per_s']} | "
                  f"{r['peak_rss_mib']} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
