"""The output directory: who owns it, and what `--overwrite` may remove.

A directory is a synthvision output when it holds `.synthvision.json` (written before anything
else, with the spec fingerprint). Re-running the same spec resumes, with or without
`--overwrite`; a different spec is refused unless `--overwrite`, which removes only synthvision's
own outputs and never other files. A run holds a lock on the folder while it writes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from synthvision.errors import OutputDirError
from synthvision.folder_lock import LOCK as LOCK  # re-exported
from synthvision.folder_lock import lock_folder as _lock
from synthvision.folder_lock import release_folder as release_output_dir

MARKER = ".synthvision.json"
MANIFEST = "manifest.json"
PROVENANCE = "provenance.jsonl"  # `synthvision augment`: where each output image came from
# Top-level names a build or `synthvision augment` writes. A folder among them (shards/, coco/,
# yolo/) is shared with the user: only the files synthvision names itself are removed there.
OWN_FILES = (MANIFEST, "spec.yaml", "preview.png", PROVENANCE)
OWN_TREES = ("shards", "coco", "yolo")
OWN_OUTPUTS = (*OWN_TREES, *OWN_FILES, MARKER)

_INDEX_NAME = re.compile(r"^\d{9,}\.[A-Za-z]+$")  # images and labels are named by global index
_TMP_NAME = re.compile(r"^\..+\.tmp")  # leftovers of atomic writes (tmp + rename)
_COCO_ANNOTATIONS = re.compile(r"^instances_[^/]+\.json$")


def output_path(text: str, option: str, what: str = "the output folder") -> Path:
    """The output path the user typed. An empty one is an error, not the current directory
    (`Path("")` is "."): a build or report would land among the files of the working folder."""
    if not text.strip():
        raise OutputDirError(f"{option} is empty; give the path of {what}")
    return Path(text)


def read_marker(out_dir: Path) -> dict[str, str] | None:
    try:
        data = json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a finished run; a damaged one is named, with the way to rewrite it."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        manifest = exc
    if not isinstance(manifest, dict):
        raise OutputDirError(
            f"{path} is damaged (not a JSON object); delete it and re-run the same command: the "
            "finished work is kept and the manifest is written again"
        )
    return manifest


def _own_files_in(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [
        p
        for p in folder.iterdir()
        if (pattern.match(p.name) or _TMP_NAME.match(p.name)) and (p.is_file() or p.is_symlink())
    ]


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())


def own_files(out_dir: Path, trees: tuple[str, ...] = OWN_TREES) -> list[Path]:
    """The files synthvision wrote under `out_dir/{trees}`, found by the names it gives them.

    shards/rank-NNNNN/{records.jsonl, images/<index>.<ext>},
    coco/annotations/instances_<split>.json, coco/images/<split>/<index>.<ext>, yolo/data.yaml,
    yolo/{images,labels}/<split>/<index>.<ext>, and the temporary files of interrupted atomic
    writes next to any of them. Anything else (a user's notes in coco/, Ultralytics'
    labels/*.cache) is not ours.
    """
    files: list[Path] = []
    if "shards" in trees:
        for rank in _subfolders(out_dir / "shards"):
            if re.fullmatch(r"rank-\d+", rank.name):
                files += _own_files_in(rank, re.compile(r"^records\.jsonl$"))
                files += _own_files_in(rank / "images", _INDEX_NAME)
    if "coco" in trees:
        files += _own_files_in(out_dir / "coco" / "annotations", _COCO_ANNOTATIONS)
        for split in _subfolders(out_dir / "coco" / "images"):
            files += _own_files_in(split, _INDEX_NAME)
    if "yolo" in trees:
        files += _own_files_in(out_dir / "yolo", re.compile(r"^data\.yaml$"))
        for kind in ("images", "labels"):
            for split in _subfolders(out_dir / "yolo" / kind):
                files += _own_files_in(split, _INDEX_NAME)
    return files


def remove_stale_tmp(out_dir: Path) -> None:
    """Remove the temporary files interrupted atomic writes left in synthvision's own places.

    Call it only when no process of the build is writing (before the merge).
    """
    stale = [p for p in own_files(out_dir) if _TMP_NAME.match(p.name)]
    top = (*OWN_FILES, MARKER)
    stale += [p for p in out_dir.glob(".*.tmp*") if any(p.name.startswith(f".{n}.") for n in top)]
    for path in stale:
        path.unlink(missing_ok=True)


def _remove_empty_folders(root: Path) -> None:
    """Remove `root` and its sub-folders, bottom up, where they are empty."""
    if not root.is_dir() or root.is_symlink():
        return
    for sub in _subfolders(root):
        _remove_empty_folders(sub)
    try:
        root.rmdir()
    except OSError:  # not empty: it holds files that are not ours
        pass


def remove_own_outputs(
    out_dir: Path, trees: tuple[str, ...] = OWN_TREES, files: tuple[str, ...] = OWN_FILES
) -> None:
    """Remove what synthvision wrote in `out_dir` (see `own_files`); other files stay.

    The manifest goes first: interrupted half-way, the folder must not look complete. The
    marker stays (the caller rewrites it), so an interrupted removal is an unfinished build of
    the old spec, which a re-run resumes or `--overwrite` clears again.
    """
    if MANIFEST in files:
        (out_dir / MANIFEST).unlink(missing_ok=True)
    for path in own_files(out_dir, trees):
        path.unlink(missing_ok=True)
    for tree in trees:
        _remove_empty_folders(out_dir / tree)
    for name in files:
        path = out_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def prepare_output_dir(
    out_dir: Path, fingerprint: str, overwrite: bool, option: str = "--out"
) -> bool:
    """Make `out_dir` ready for a build of the spec with `fingerprint`.

    Returns True when an earlier run of the same spec is resumed, with or without `overwrite`
    (the same spec builds the same bytes, so its finished images are kept, not made again).
    Raises OutputDirError (exit 2) when the directory cannot be created or belongs to something
    else.
    """
    if out_dir.is_symlink() and not out_dir.exists():
        raise OutputDirError(
            f"output path {str(out_dir)!r} is a symlink to {os.readlink(out_dir)!r}, which does "
            f"not exist; create its target or choose another {option}"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(
            f"output path {str(out_dir)!r} is a file; choose a directory with {option}"
        )
    resumed, replace, complete = _state(out_dir, fingerprint, overwrite, option)
    if complete:
        return True  # complete: nothing will be written (the folder may be read-only)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to output directory {str(out_dir)!r}: {exc.strerror or exc}; "
            f"choose a writable {option}"
        ) from None
    _lock(out_dir, option)  # before anything of another run's is removed or resumed
    try:
        # Again under the lock: a run that held it may have claimed (or finished) the folder
        # since the first look; deciding on that stale look would mark its dataset as ours.
        resumed, replace, complete = _state(out_dir, fingerprint, overwrite, option)
    except OutputDirError:
        release_output_dir(out_dir)
        raise
    if complete:
        return True
    if replace:
        remove_own_outputs(out_dir)
    if not resumed:
        tmp = out_dir / f"{MARKER}.tmp"
        tmp.write_text(json.dumps({"spec_fingerprint": fingerprint}, indent=2))
        os.replace(tmp, out_dir / MARKER)
    return resumed


def _state(
    out_dir: Path, fingerprint: str, overwrite: bool, option: str
) -> tuple[bool, bool, bool]:
    """(resumed, replace, complete) for a build of `fingerprint` into `out_dir` as it is now;
    OutputDirError when the folder may not be used."""
    if not (out_dir.is_dir() and any(p.name != LOCK for p in out_dir.iterdir())):
        return False, False, False
    marker = read_marker(out_dir)
    if marker is None and not overwrite:
        raise OutputDirError(
            f"output directory {str(out_dir)!r} is not empty and is not a synthvision output; "
            f"choose another {option}, or pass --overwrite to write synthvision's files into "
            "it (other files are left alone)"
        )
    if marker is None:
        # Nothing here is ours, so nothing may be replaced: refuse where a name collides.
        taken = [n for n in OWN_OUTPUTS if (out_dir / n).exists() or (out_dir / n).is_symlink()]
        if taken:
            raise OutputDirError(
                f"output directory {str(out_dir)!r} is not a synthvision output and already "
                f"has {', '.join(taken)}, which a build writes; choose another {option}, or "
                "move them away first"
            )
        return False, False, False
    if marker.get("spec_fingerprint") == fingerprint:
        return True, False, (out_dir / MANIFEST).is_file()
    if not overwrite:
        raise OutputDirError(
            f"output directory {str(out_dir)!r} holds a build of a different spec; choose "
            f"another {option}, or pass --overwrite to replace that build"
        )
    return False, True, False
