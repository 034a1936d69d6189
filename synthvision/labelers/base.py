"""Labelers: components that (re)label generated samples after generation.

A labeler is created by `LABELERS.create(spec.labeler.name, spec.labeler.params, "labeler",
spec=spec)` and called as `labeler.label(samples) -> samples` on each generated batch. Samples
come back in the same order with the same `index`; rejected samples (`metadata["rejected"]`) pass
through untouched. Heavy labelers register lazily so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from synthvision.registry import Registry
from synthvision.structures import Sample


class Labeler(Protocol):
    def label(self, samples: Sequence[Sample]) -> list[Sample]:
        """The samples with new or verified instances, same order and indices."""
        ...


# factory(params, *, spec: Spec) -> Labeler
LABELERS: Registry[Labeler] = Registry("labeler")
LABELERS.register_lazy("detector", "synthvision.labelers.detector")
