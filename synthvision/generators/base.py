"""Interfaces of the sources that the compose stage draws from, and their registries.

An object source turns `CropRequest`s into RGBA crops; a background source turns
`BackgroundRequest`s into RGB images. Both take a batch, so ML sources can batch on a GPU, and
each request carries its own seed, so a result never depends on what else is in the batch.
Register a source with `OBJECT_SOURCES.register(name, Params)` on a factory
`factory(params, *, class_names: tuple[str, ...]) -> source`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from synthvision.plan import ImageJob
from synthvision.registry import Registry
from synthvision.structures import Sample


@dataclass(frozen=True)
class CropRequest:
    """One object to render.

    `size_hw`: the box the crop will be resized into, in px (a hint: sources may render at any
    size; compose resizes). `seed`: derived from (spec seed, sample index, "object.<k>").
    """

    class_name: str
    size_hw: tuple[int, int]
    seed: int
    index: int = 0


@dataclass(frozen=True)
class BackgroundRequest:
    """One background of exactly `size_hw` = (H, W) px, seeded from (seed, index, "background")."""

    size_hw: tuple[int, int]
    seed: int
    index: int = 0


class ObjectSource(Protocol):
    def crops(self, requests: Sequence[CropRequest]) -> list[npt.NDArray[np.uint8]]:
        """RGBA uint8 crops (h, w, 4), alpha 0 = transparent, one per request, in order."""
        ...


class BackgroundSource(Protocol):
    def backgrounds(self, requests: Sequence[BackgroundRequest]) -> list[npt.NDArray[np.uint8]]:
        """RGB uint8 images (H, W, 3) of each request's exact size, in order."""
        ...


OBJECT_SOURCES: Registry[ObjectSource] = Registry("object source")
BACKGROUND_SOURCES: Registry[BackgroundSource] = Registry("background source")


class SceneGenerator(Protocol):
    """Makes whole labeled images: compose (objects on backgrounds) or a diffusion scene model.

    A generator may also have `session()`: an object whose `start(jobs)` generates now and
    returns a call giving the samples finished so far, and whose `finish()` gives the rest, all
    in job order (`diffusion.SceneSession`). Builds and streams use it to overlap labeling with
    generation and to share model batches across calls.
    """

    def generate(self, jobs: Sequence[ImageJob]) -> list[Sample]:
        """One `Sample` per job, in order; `Sample.index == job.index`; labels in class ids."""
        ...


# factory(params, *, spec: Spec) -> SceneGenerator
SCENE_GENERATORS: Registry[SceneGenerator] = Registry("scene generator")
