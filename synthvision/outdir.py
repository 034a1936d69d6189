"""The output directory: who owns it, and what `--overwrite` may remove.

A directory is a synthvision output when it holds `.synthvision.json` (written before anything
else, with the spec fingerprint). Re-running the same spec resumes; a different spec is refused
unless `--overwrite`, which removes only synthvision's own outputs and never other files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from synthvision.errors import OutputDirError

MARKER = ".synthvision.json"
MANIFEST = "manifest.json"
OWN_OUTPUTS = ("shards", "coco", "yolo", MANIFEST, "spec.yaml", "preview.png", MARKER)


def read_marker(out_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_own_outputs(out_dir: Path) -> None:
    for name in OWN_OUTPUTS:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def prepare_output_dir(out_dir: Path, fingerprint: str, overwrite: bool) -> bool:
    """Make `out_dir` ready for a build of the spec with `fingerprint`.

    Returns True when an earlier run of the same spec is resumed. Raises OutputDirError (exit 2)
    when the directory cannot be created or belongs to something else.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(
            f"output path {str(out_dir)!r} is a file; choose a directory with --out"
        )
    resumed = False
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = read_marker(out_dir)
        if marker is None and not overwrite:
            raise OutputDirError(
                f"output directory {str(out_dir)!r} is not empty and is not a synthvision output; "
                "choose another --out, or pass --overwrite to write synthvision's files into it "
                "(other files are left alone)"
            )
        if marker is not None and marker.get("spec_fingerprint") == fingerprint and not overwrite:
            resumed = True
        elif marker is not None and not overwrite:
            raise OutputDirError(
                f"output directory {str(out_dir)!r} holds a build of a different spec; choose "
                "another --out, or pass --overwrite to replace that build"
            )
        else:
            remove_own_outputs(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to output directory {str(out_dir)!r}: {exc.strerror or exc}; "
            "choose a writable --out"
        ) from None
    if not resumed:
        tmp = out_dir / f"{MARKER}.tmp"
        tmp.write_text(json.dumps({"spec_fingerprint": fingerprint}, indent=2))
        os.replace(tmp, out_dir / MARKER)
    return resumed
