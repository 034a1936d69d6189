"""Requests, results and continuous batching for the diffusion engine.

`BatchQueue` feeds the engine full batches only. Requests wait, in the order they were put,
until `batch_size` of one generation size can run together; a failed image's retry goes back to
the front of the queue and rides in the next batch, instead of a batch of its own padded with
copies. Why: every engine call costs `batch_size` rows whatever it holds. With one padded batch
per failing call, a 5% failure rate at batch 16 made 1 - 0.95^16 = 56% more calls; packed, the
retries cost their own rows only (5%). A build's `--batch-size` smaller than the engine's no
longer pads every call either: its requests wait for a full batch.

Packing changes no pixel: at a fixed batch size a row's arithmetic does not depend on its
batch-mates (the engine pads every call to `batch_size`), and a retry's seed derives from its
request's own. Results come back in the order the requests were put, so callers see the same
sequence as with one call after the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from synthvision.filters import RetryPolicy, retry_seed


@dataclass(frozen=True)
class GenRequest:
    """One image. `size_hw` is the generation size (a multiple of the pipeline's `multiple`).
    `weights` (Q, T) are the attention queries to capture (None: no capture); `extra` is
    strategy-specific input (GLIGEN boxes)."""

    prompt: str
    negative_prompt: str
    seed: int
    size_hw: tuple[int, int]
    weights: npt.NDArray[np.float32] | None = None
    clip_text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class GenResult:
    """A finished image (uint8 (H, W, 3)), its maps (Q, h, w) and its history."""

    image: npt.NDArray[np.uint8]
    maps: npt.NDArray[np.float32] | None
    seed: int
    seeds_tried: list[int]
    retries: int
    retry_reasons: list[str]
    rejected: str | None = None
    payload: Any = None
    clip_score: float | None = None  # of the kept image, when the CLIP filter is on

    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {
            "seed": int(self.seed),
            "retries": int(self.retries),
        }
        if self.clip_score is not None:
            md["clip_score"] = round(float(self.clip_score), 4)
        if self.retry_reasons:
            md["retry_reasons"] = list(self.retry_reasons)
            md["seeds_tried"] = [int(s) for s in self.seeds_tried]
        if self.rejected is not None:
            md["rejected"] = self.rejected
        return md


@dataclass
class Decoded:
    """One decoded image of a batch, after the decode checks and filters."""

    image: npt.NDArray[np.uint8]
    maps: npt.NDArray[np.float32] | None
    failure: str | None
    extra_decodes: int
    clip_score: float | None = None


# label(image uint8 (H, W, 3), maps (Q, h, w) | None) -> (payload, failure): one request's labels
Label = Callable[
    [npt.NDArray[np.uint8], "npt.NDArray[np.float32] | None"], tuple[Any, "str | None"]
]


class BatchRunner(Protocol):
    """What the queue needs of an engine (`DiffusionEngine`)."""

    policy: RetryPolicy

    @property
    def batch_size(self) -> int: ...

    def _batch(self, requests: Sequence[GenRequest]) -> list[Decoded]:
        """Generate, decode and check up to `batch_size` requests in one padded call."""

    def _submit_label(self, label: Label, out: Decoded) -> Future[tuple[Any, str | None]]:
        """Start `label` of a decoded image on the label threads."""


@dataclass
class _Entry:
    """One request through its retries; the seed it is generated with now is `tried[-1]`."""

    request: GenRequest
    label: Label | None
    tag: Any
    tried: list[int]
    retries: int = 0
    reasons: list[str] = field(default_factory=list)
    result: GenResult | None = None


@dataclass
class _Row:
    """A generated entry whose labels may still be running."""

    entry: _Entry
    out: Decoded
    labels: Future[tuple[Any, str | None]] | None
    launch: int


class BatchQueue:
    """Continuous batching with retries: `put` requests, `launch` full batches, `settle` their
    labels, `release` the finished results in put order; `finish` runs what is left (the last
    batch padded) until every request is kept or rejected."""

    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner
        self._order: deque[_Entry] = deque()  # put, not yet released
        self._waiting: list[_Entry] = []  # to generate: retries first, then new requests
        self._rows: list[_Row] = []  # generated, decision pending
        self._launches = 0

    def put(self, request: GenRequest, label: Label | None = None, tag: Any = None) -> None:
        entry = _Entry(request, label, tag, [int(request.seed)])
        self._order.append(entry)
        self._waiting.append(entry)

    def launch(self, flush: bool = False) -> int:
        """Generate every full batch that waits (with `flush`, everything: the last batch of
        each size padded); their labels start on the label threads. Returns this launch's
        number, for `settle`."""
        self._launches += 1
        bs = self.runner.batch_size
        by_size: dict[tuple[int, int], list[_Entry]] = {}
        for e in self._waiting:
            by_size.setdefault(tuple(e.request.size_hw), []).append(e)  # type: ignore[arg-type]
        launched: set[int] = set()
        for entries in by_size.values():
            stop = len(entries) if flush else len(entries) // bs * bs
            for start in range(0, stop, bs):
                chunk = entries[start : start + bs]
                outs = self.runner._batch([replace(e.request, seed=e.tried[-1]) for e in chunk])
                for e, out in zip(chunk, outs, strict=True):
                    # Only an image that passed its checks gets labels.
                    labels = None
                    if e.label is not None and out.failure is None:
                        labels = self.runner._submit_label(e.label, out)
                    self._rows.append(_Row(e, out, labels, self._launches))
                    launched.add(id(e))
        self._waiting = [e for e in self._waiting if id(e) not in launched]
        return self._launches

    def settle(self, upto: int | None = None) -> None:
        """Wait for the labels of the rows launched up to launch `upto` (all when None) and
        decide each: kept, rejected after its last retry (no labels), or retried with a new
        seed derived from its first (back to the front of the queue)."""
        policy = self.runner.policy
        retry: list[_Entry] = []
        pending: list[_Row] = []
        for row in self._rows:
            if upto is not None and row.launch > upto:
                pending.append(row)
                continue
            e, out = row.entry, row.out
            payload, label_failure = (None, None) if row.labels is None else row.labels.result()
            e.retries += out.extra_decodes
            failure = out.failure or label_failure
            if failure is not None:
                e.reasons.append(failure)
                regenerations = len(e.tried) - 1
                if regenerations < policy.max_retries:
                    e.retries += 1
                    e.tried.append(retry_seed(e.request.seed, regenerations + 1))
                    retry.append(e)
                    continue
            kept = failure is None  # else: rejected after its last retry, never labeled
            e.result = GenResult(
                out.image,
                out.maps,
                e.tried[-1],
                e.tried,
                e.retries,
                e.reasons,
                failure,
                payload if kept else None,
                out.clip_score if kept else None,
            )
        self._rows = pending
        self._waiting = retry + self._waiting

    def release(self) -> list[tuple[Any, GenResult]]:
        """(tag, result) of the finished requests at the head of the put order: a request still
        generating holds back the ones put after it."""
        out = []
        while self._order and self._order[0].result is not None:
            e = self._order.popleft()
            assert e.result is not None
            out.append((e.tag, e.result))
        return out

    def finish(self) -> list[tuple[Any, GenResult]]:
        """Generate and settle everything left, retries included; release all of it."""
        while self._waiting or self._rows:
            self.launch(flush=True)
            self.settle()
        return self.release()
