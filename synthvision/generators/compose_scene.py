"""Scene generator "compose": objects from an object source pasted on backgrounds from a
background source, labeled exactly by construction (see compose.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict

from synthvision.compose import PlacedCrop, compose
from synthvision.config import Spec
from synthvision.generators.base import (
    BACKGROUND_SOURCES,
    OBJECT_SOURCES,
    SCENE_GENERATORS,
    BackgroundRequest,
    BackgroundSource,
    CropRequest,
    ObjectSource,
)
from synthvision.layout import Placement, place_objects
from synthvision.plan import ImageJob
from synthvision.spec_model import SpecModel
from synthvision.structures import Sample


class ComposeParams(SpecModel):
    """Compose takes its settings from the spec's `objects`, `background` and `layout`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComposeScene:
    """Objects placed by the layout rules, their crops from the object source, pasted on a
    background from the background source."""

    def __init__(self, spec: Spec, objects: ObjectSource, background: BackgroundSource) -> None:
        self.spec = spec
        self.objects = objects
        self.background = background

    @property
    def preferred_batch_size(self) -> int | None:
        """Images per call that the sources prefer (the larger), or None for no preference."""
        sizes = [getattr(s, "preferred_batch_size", None) for s in (self.objects, self.background)]
        return max((int(s) for s in sizes if s), default=None)

    def generate(self, jobs: Sequence[ImageJob]) -> list[Sample]:
        session = ComposeSession(self)
        return session.start(jobs)() + session.finish()

    def session(self) -> ComposeSession | None:
        """A session when a source batches across calls (diffusion sources), else None: the
        build then calls `generate`, which makes each call's crops and backgrounds at once."""
        if hasattr(self.objects, "queue") or hasattr(self.background, "queue"):
            return ComposeSession(self)
        return None

    def crop_requests(self, job: ImageJob, placed: Sequence[Placement]) -> list[CropRequest]:
        return [
            CropRequest(
                class_name=self.spec.classes[p.class_id].name,
                size_hw=(p.h, p.w),
                seed=job.derive_seed(f"object.{p.slot}"),
                index=job.index,
            )
            for p in placed
        ]

    def compose(self, job: ImageJob, parts: _Parts) -> Sample:
        """The sample of a job whose crops and background are made."""
        spec, layout = self.spec, self.spec.layout
        placed, objects_meta, bg_meta = parts.placed, parts.crop_meta, parts.background_meta
        assert parts.background is not None
        placed_crops = [
            PlacedCrop(crop, p.class_id, p.x, p.y, p.w, p.h)
            for crop, p in zip(parts.crops, placed, strict=True)
        ]
        result = compose(
            parts.background,
            placed_crops,
            min_visibility=layout.min_visibility,
            min_area_px=layout.min_area_px,
            edge_softness_px=layout.edge_softness_px,
        )
        metadata: dict[str, Any] = {
            "generator": "compose",
            "objects": spec.objects.name,
            "background": spec.background.name,
            "seed": job.seed,
            "planned": len(job.class_ids),
            "unplaced": len(job.class_ids) - len(placed),
            "dropped": result.dropped,
            "visibility": [round(float(v), 4) for v in result.visibility],
        }
        if any(objects_meta):
            metadata["object_sources"] = objects_meta
        if bg_meta:
            metadata["background_source"] = bg_meta
        retries = sum(int(m.get("retries", 0)) for m in [*objects_meta, bg_meta])
        if retries:
            metadata["retries"] = retries
        return Sample(job.index, result.image, result.instances, metadata)


@dataclass
class _Parts:
    """A job's placements and, as they arrive, its crops and background (with metadata)."""

    placed: list[Placement]
    crops: list[Any]
    crop_meta: list[dict[str, Any]]
    missing: int  # crops and background still to come
    background: Any = None
    background_meta: dict[str, Any] = field(default_factory=dict)


class _CallQueue:
    """A source without `queue()` (procedural, cVAE) behind the queue interface: each launch
    makes everything put since the last one in one call of the source."""

    def __init__(self, make: Callable[[list[Any]], list[Any]], source: object) -> None:
        self.make = make
        self.source = source
        self._put: list[tuple[Any, Any]] = []
        self._done: list[tuple[Any, Any, dict[str, Any]]] = []

    def put(self, request: Any, tag: Any = None) -> None:
        self._put.append((tag, request))

    def launch(self) -> int:
        if self._put:
            made = self.make([r for _, r in self._put])
            # ML sources describe each crop/background (prompt, seed, retries) in `last_metadata`.
            meta = _last_metadata(self.source, len(made))
            self._done += [(t, a, m) for (t, _), a, m in zip(self._put, made, meta, strict=True)]
            self._put = []
        return 0

    def settle(self, upto: int | None = None) -> None:
        pass

    def release(self) -> list[tuple[Any, Any, dict[str, Any]]]:
        done, self._done = self._done, []
        return done

    def finish(self) -> list[tuple[Any, Any, dict[str, Any]]]:
        self.launch()
        return self.release()


def _queue_of(source: Any, make: Callable[[list[Any]], list[Any]]) -> Any:
    return source.queue() if hasattr(source, "queue") else _CallQueue(make, source)


class ComposeSession:
    """Compose scenes of successive `start(jobs)` calls (see `SceneGenerator`): the crops and
    backgrounds of diffusion sources share full engine batches across calls, retries included;
    a job is composed once its crops and background are made, in job order."""

    def __init__(self, scene: ComposeScene) -> None:
        self.scene = scene
        self.objects = _queue_of(scene.objects, scene.objects.crops)
        self.backgrounds = _queue_of(scene.background, scene.background.backgrounds)
        self._jobs: deque[tuple[ImageJob, _Parts]] = deque()

    def start(self, jobs: Sequence[ImageJob]) -> Callable[[], list[Sample]]:
        layout = self.scene.spec.layout
        for job in jobs:
            placed = place_objects(job.class_ids, job.size_hw, layout, job.rng("layout"))
            n = len(placed)
            parts = _Parts(placed, [None] * n, [{} for _ in placed], missing=n + 1)
            for k, request in enumerate(self.scene.crop_requests(job, placed)):
                self.objects.put(request, (parts, k))
            background = BackgroundRequest(job.size_hw, job.derive_seed("background"), job.index)
            self.backgrounds.put(background, parts)
            self._jobs.append((job, parts))
        # Crops first, then backgrounds, as `generate` always made them.
        marks = self.objects.launch(), self.backgrounds.launch()

        def collect() -> list[Sample]:
            self.objects.settle(marks[0])
            self.backgrounds.settle(marks[1])
            return self._composed(self.objects.release(), self.backgrounds.release())

        return collect

    def finish(self) -> list[Sample]:
        samples = self._composed(self.objects.finish(), self.backgrounds.finish())
        assert not self._jobs, "every job's crops and background are made"
        return samples

    def _composed(self, crops: list[Any], backgrounds: list[Any]) -> list[Sample]:
        for (parts, k), crop, md in crops:
            parts.crops[k], parts.crop_meta[k] = crop, md
            parts.missing -= 1
        for parts, background, md in backgrounds:
            parts.background, parts.background_meta = background, md
            parts.missing -= 1
        samples = []
        while self._jobs and self._jobs[0][1].missing == 0:
            job, parts = self._jobs.popleft()
            samples.append(self.scene.compose(job, parts))
        return samples


def _last_metadata(source: object, n: int) -> list[dict[str, Any]]:
    meta = getattr(source, "last_metadata", None)
    return list(meta) if isinstance(meta, list) and len(meta) == n else [{} for _ in range(n)]


@SCENE_GENERATORS.register("compose", ComposeParams)
def _make_compose(params: ComposeParams, *, spec: Spec) -> ComposeScene:
    context = {"class_names": spec.class_names, "spec": spec}
    objects = OBJECT_SOURCES.create(spec.objects.name, spec.objects.params, "objects", **context)
    background = BACKGROUND_SOURCES.create(
        spec.background.name, spec.background.params, "background", **context
    )
    return ComposeScene(spec, objects, background)
