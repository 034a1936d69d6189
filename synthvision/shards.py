"""Per-rank shards: atomic image files named by global index plus an append-only JSONL of records.

A record is appended only after its image file exists (tmp + rename), so a record always points
at a complete image. A process killed mid-append leaves at most one partial last line; readers
skip it and the owning writer truncates it before appending again. Re-running skips indices with
a record and an image, whatever rank wrote them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthvision.formats.images import write_bytes_atomic

SHARDS_DIR = "shards"
RECORDS_FILE = "records.jsonl"


def shard_dir(out_dir: Path, rank: int) -> Path:
    return out_dir / SHARDS_DIR / f"rank-{rank:05d}"


def image_name(index: int, suffix: str) -> str:
    return f"{index:09d}{suffix}"


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) for each complete line; a partial last line is skipped."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield offset, line
            offset += len(line)


@dataclass
class RecordIndex:
    """Where each finished index's record lives: `locations[index] = (file number, offset)`.

    Memory: two int64 per planned image, independent of image sizes and record contents.
    """

    files: list[Path]
    file_of: np.ndarray  # (num_items,) int64, -1 where missing
    offset_of: np.ndarray  # (num_items,) int64

    @property
    def finished(self) -> np.ndarray:
        return self.file_of >= 0

    def read(self, index: int) -> dict[str, Any]:
        with open(self.files[int(self.file_of[index])], "rb") as f:
            f.seek(int(self.offset_of[index]))
            record: dict[str, Any] = json.loads(f.readline())
        return record


def scan_records(out_dir: Path, num_items: int) -> RecordIndex:
    """Index every complete record of every rank whose image file still exists."""
    files = sorted((out_dir / SHARDS_DIR).glob(f"rank-*/{RECORDS_FILE}"))
    file_of = np.full(num_items, -1, dtype=np.int64)
    offset_of = np.zeros(num_items, dtype=np.int64)
    for k, path in enumerate(files):
        for offset, line in _iter_lines(path):
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (ValueError, KeyError, TypeError):
                continue  # a corrupt line is as good as missing: the image is regenerated
            if not 0 <= index < num_items or file_of[index] >= 0:
                continue
            if record.get("rejected") or (path.parent / record["file"]).is_file():
                file_of[index], offset_of[index] = k, offset
    return RecordIndex(files, file_of, offset_of)


class ShardWriter:
    """Writes one rank's images and records; constant memory."""

    def __init__(self, out_dir: Path, rank: int) -> None:
        self.dir = shard_dir(out_dir, rank)
        (self.dir / "images").mkdir(parents=True, exist_ok=True)
        for stale in (self.dir / "images").glob(".*.tmp*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        self.records_path = self.dir / RECORDS_FILE
        self._truncate_partial_tail()
        self._file = open(self.records_path, "ab")

    def _truncate_partial_tail(self) -> None:
        if not self.records_path.exists():
            return
        # Look for the last newline from the end: the file holds every record of this rank
        # (gigabytes for millions of images with masks), which must not be read into memory.
        with open(self.records_path, "rb+") as f:
            end = pos = f.seek(0, os.SEEK_END)
            while pos > 0:
                step = min(1 << 16, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    if pos - step + newline + 1 < end:
                        f.truncate(pos - step + newline + 1)
                    return
                pos -= step
            f.truncate(0)  # no complete line at all

    def write(self, index: int, encoded: bytes, suffix: str, record: dict[str, Any]) -> None:
        rel = f"images/{image_name(index, suffix)}"
        write_bytes_atomic(self.dir / rel, encoded)
        line = json.dumps({"index": index, "file": rel, **record}, separators=(",", ":"))
        self._file.write(line.encode() + b"\n")
        self._file.flush()  # survives SIGKILL of this process (the OS holds the data)

    def write_rejected(self, index: int, split: str, reason: str, metadata: dict[str, Any]) -> None:
        """Record that `index` failed every retry: no image, no labels; counted in the manifest."""
        line = json.dumps(
            {
                "index": index,
                "file": None,
                "split": split,
                "rejected": reason,
                "metadata": metadata,
            },
            separators=(",", ":"),
        )
        self._file.write(line.encode() + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
