"""Distributed build speed-up: the quickstart with N processes vs 1 on this machine.

1 process: `python -m synthvision build`. N processes: `accelerate launch --multi_gpu
--num_processes N -m synthvision build` (gloo on CPU, one GPU per process with CUDA). Each run
builds into a fresh directory; the table reports the generation phase from the manifest (all
ranks, waiting for the slowest included), the merge (main process only), the end-to-end wall
time (launcher and imports included), and the speed-ups against 1 process. Best of --repeats
runs, since a shared machine's load only ever slows a run down; the load average is printed
(this run's own processes count in the value after it).

    python benchmarks/distributed_speedup.py                       # 400 images, 1 vs 2
    python benchmarks/distributed_speedup.py --images 2000 --procs 1 2 4 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAUNCH_ENV_KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "ACCELERATE_MIXED_PRECISION")


def _command(procs: int, spec: str, out: Path, overrides: list[str]) -> list[str]:
    build = ["build", spec, "--out", str(out), "--no-progress", *overrides]
    if procs == 1:
        return [sys.executable, "-m", "synthvision", *build]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(procs), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "0", "-m", "synthvision", *build,
    ]  # fmt: skip


def run_once(procs: int, spec: str, overrides: list[str], env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ds"
        t = time.perf_counter()
        subprocess.run(_command(procs, spec, out, overrides), check=True, env=env, cwd=REPO,
                       capture_output=True)  # fmt: skip
        wall = time.perf_counter() - t
        m = json.loads((out / "manifest.json").read_text())
    assert m["world_size"] == procs, m["world_size"]
    return {
        "generate_s": m["timings_s"]["generate"],
        "merge_s": m["timings_s"]["merge"],
        "wall_s": round(wall, 2),
        "images_per_s": m["timings_s"]["images_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--spec", default="configs/quickstart-procedural.yaml")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=512, help="image side in px")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = [f"--set=num_images={args.images}", f"--set=image_size=[{args.size},{args.size}]"]
    overrides += [f"--set={o}" for o in args.overrides]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_KEYS}
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    cuda = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        capture_output=True, text=True, env=env,
    ).stdout.strip()  # fmt: skip
    print(f"# {platform.machine()}, {os.cpu_count()} cores, CUDA devices: {cuda}, "
          f"Python {platform.python_version()}; {args.spec} x{args.images} at {args.size}px; "
          f"best of {args.repeats}")  # fmt: skip
    print("| processes | generate s | merge s | wall s | gen img/s | gen speed-up | "
          "wall speed-up | load avg (1 min) before->after each run |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[int, list[dict[str, float]]] = {p: [] for p in args.procs}
    loads: dict[int, list[str]] = {p: [] for p in args.procs}
    for _ in range(args.repeats):  # interleaved, so a change of load hits every row alike
        for procs in args.procs:
            before = os.getloadavg()[0]
            runs[procs].append(run_once(procs, args.spec, overrides, env))
            loads[procs].append(f"{before:.1f}->{os.getloadavg()[0]:.1f}")
    base: dict[str, float] | None = None
    for procs in args.procs:
        best = min(runs[procs], key=lambda r: r["generate_s"])
        wall = min(r["wall_s"] for r in runs[procs])
        base = base or {**best, "wall_s": wall}
        print(f"| {procs} | {best['generate_s']:.2f} | {best['merge_s']:.2f} | {wall:.1f} | "
              f"{best['images_per_s']} | {base['generate_s'] / best['generate_s']:.2f}x | "
              f"{base['wall_s'] / wall:.2f}x | {', '.join(loads[procs])} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
