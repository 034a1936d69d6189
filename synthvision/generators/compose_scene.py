"""Scene generator "compose": objects from an object source pasted on backgrounds from a
background source, labeled exactly by construction (see compose.py)."""

from __future__ import annotations

from collections.abc import Sequence
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
from synthvision.layout import place_objects
from synthvision.plan import ImageJob
from synthvision.spec_model import SpecModel
from synthvision.structures import Sample


class ComposeParams(SpecModel):
    """Compose takes its settings from the spec's `objects`, `background` and `layout`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComposeScene:
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
        spec, layout = self.spec, self.spec.layout
        placements = [
            place_objects(job.class_ids, job.size_hw, layout, job.rng("layout")) for job in jobs
        ]
        requests = [
            CropRequest(
                class_name=spec.classes[p.class_id].name,
                size_hw=(p.h, p.w),
                seed=job.derive_seed(f"object.{p.slot}"),
                index=job.index,
            )
            for job, placed in zip(jobs, placements, strict=True)
            for p in placed
        ]
        crop_list = self.objects.crops(requests) if requests else []
        # ML sources describe each crop/background (prompt, seed, retries) in `last_metadata`.
        crop_meta = iter(_last_metadata(self.objects, len(crop_list)))
        crops = iter(crop_list)
        backgrounds = self.background.backgrounds(
            [
                BackgroundRequest(job.size_hw, job.derive_seed("background"), job.index)
                for job in jobs
            ]
        )
        background_meta = _last_metadata(self.background, len(backgrounds))
        samples = []
        for job, placed, bg, bg_meta in zip(
            jobs, placements, backgrounds, background_meta, strict=True
        ):
            placed_crops = [PlacedCrop(next(crops), p.class_id, p.x, p.y, p.w, p.h) for p in placed]
            objects_meta = [next(crop_meta) for _ in placed]
            result = compose(
                bg,
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
            samples.append(Sample(job.index, result.image, result.instances, metadata))
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
