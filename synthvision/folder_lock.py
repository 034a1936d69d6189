"""One run at a time per output folder: an exclusive flock on `<folder>/.synthvision.lock`.

The same command started twice, or two launches into one folder, would write every file twice
and interleave them; the second is refused instead. flock is dropped by the OS when its process
ends, even by SIGKILL, so a lock never outlives its run (a leftover lock *file* is harmless).
Used by builds and `augment` (through `outdir`) and by `train-cvae`.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthvision.errors import OutputDirError

LOCK = ".synthvision.lock"  # flock'ed while a run writes; the OS releases it if the run dies

_HELD_LOCKS: dict[Path, int] = {}  # output folder -> fd holding its flock, in this process


def lock_folder(out_dir: Path, option: str = "--out") -> None:
    """Hold an exclusive lock on the existing folder `out_dir` until `release_folder`;
    OutputDirError naming `option` when another run holds it. Re-entrant within a process; a
    no-op where flock does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return
    key = out_dir.resolve()
    if key in _HELD_LOCKS:
        return
    path = out_dir / LOCK
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputDirError(
                f"another synthvision run is writing to {str(out_dir)!r}; wait for it to end "
                f"(re-running then resumes), or choose another {option}"
            ) from None
        except OSError:  # a filesystem without flock: run unlocked, as before
            os.close(fd)
            return
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                _HELD_LOCKS[key] = fd
                return
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it removed the file meanwhile: lock the new one


def release_folder(out_dir: Path) -> None:
    """Release the lock `lock_folder` took (no-op if this process holds none)."""
    fd = _HELD_LOCKS.pop(out_dir.resolve(), None)
    if fd is None:
        return
    try:
        (out_dir / LOCK).unlink(missing_ok=True)  # unlinked while still held: see `lock_folder`
    except OSError:
        pass
    finally:
        os.close(fd)
