"""Build a dataset from a spec: `synthvision build` as a script, for launchers that want a file.

    python scripts/build_dataset.py configs/quickstart.yaml --out outputs/quickstart
    accelerate launch --multi_gpu --num_processes 4 scripts/build_dataset.py SPEC --out DIR
    torchrun --nproc_per_node 4 scripts/build_dataset.py SPEC --out DIR

Takes exactly the options of `synthvision build` (see `--help`); every process of a launch runs
this same file, and re-running the same command, with any number of processes, resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    try:
        from synthvision.cli import app
    except ImportError:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from synthvision.cli import app
    import typer

    args = sys.argv[1:] if argv is None else argv
    # The build command alone, so `--help` reads "Usage: build_dataset.py SPEC [OPTIONS]".
    build = typer.main.get_group(app).commands["build"]
    build.main(args=args, prog_name=Path(__file__).name)


if __name__ == "__main__":
    main()
