"""Scene generator "diffusion-attention": whole scenes from a prompt that names the planned
objects, labeled from the model's own cross-attention.

For a job planning classes [fire truck, bicycle, bicycle] the prompt reads e.g. "a photo of a fire
truck and two bicycles in a city street, rainy, at dusk". The maps of each class's tokens
(aggregated over layers and steps) become instance masks by connected components; an instance
is kept when its area and mean normalised attention clear the thresholds. A scene where fewer
than `min_instances` are found is generated again with a new seed (then rejected).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from synthvision.config import Spec
from synthvision.errors import SpecError
from synthvision.generators.base import SCENE_GENERATORS
from synthvision.generators.batching import Label
from synthvision.generators.diffusion import (
    DiffusionEngine,
    EngineScenes,
    GenRequest,
    PipelineParams,
    resize_rgb,
)
from synthvision.generators.prompts import (
    check_template,
    class_phrase,
    draw_attributes,
    objects_text,
    phrase_spans,
    query_weights,
    render,
)
from synthvision.labelers import attention as attn_labels
from synthvision.plan import ImageJob
from synthvision.structures import Instances

DEFAULT_SCENE_PROMPT = "a photo of {objects} in a {place}, {weather}, {time_of_day}"
DEFAULT_EMPTY_PROMPT = "a photo of an empty {place}, {weather}, {time_of_day}"


class DiffusionSceneParams(PipelineParams):
    """`prompt` must contain `{objects}`; `empty_prompt` is used for jobs with no objects."""

    prompt: str = DEFAULT_SCENE_PROMPT
    empty_prompt: str = DEFAULT_EMPTY_PROMPT
    mask_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.4
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    min_area_px: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="default: the spec's layout.min_area_px"
    )
    limit_to_plan: bool = Field(
        default=True, description="keep at most the planned count per class (best scores first)"
    )
    min_instances: Annotated[int, Field(ge=0)] = 1


class PromptedScenes:
    """Shared prompt building for the scene strategies (class queries fixed to Q = #classes)."""

    def __init__(
        self, params: PipelineParams, spec: Spec, prompt: str, empty_prompt: str, where: str
    ) -> None:
        self.spec = spec
        self.where = where
        self.attributes = params.merged_attributes()
        self.phrases = [class_phrase(c.name) for c in spec.classes]
        check_template(prompt, {*self.attributes, "objects"}, f"{where}.prompt")
        if "{objects}" not in prompt:
            raise SpecError(f"{where}.prompt: the scene prompt must contain {{objects}}")
        check_template(empty_prompt, set(self.attributes), f"{where}.empty_prompt")
        self.prompt = prompt
        self.empty_prompt = empty_prompt

    def build(
        self, job: ImageJob, engine: DiffusionEngine, negative: str
    ) -> tuple[GenRequest, dict[str, Any]]:
        rng = job.rng("prompt")
        template = self.prompt if job.class_ids else self.empty_prompt
        attrs = draw_attributes(template, self.attributes, rng)
        objects = objects_text(job.class_ids, self.phrases)
        prompt = render(template, {**attrs, "objects": objects})
        weights, tokens = query_weights(
            engine.loaded.tokenizer, prompt, phrase_spans(prompt, self.phrases)
        )
        gen = GenRequest(
            prompt=prompt,
            negative_prompt=negative,
            seed=job.derive_seed("diffusion"),
            size_hw=engine.generation_size(job.size_hw),
            weights=weights,
            clip_text=prompt,
        )
        md: dict[str, Any] = {
            "prompt": prompt,
            "attributes": attrs,
            "planned": [self.spec.classes[c].name for c in job.class_ids],
            "tokens": {self.spec.classes[c].name: tokens[c] for c in sorted(set(job.class_ids))},
            **engine.describe(),
        }
        return gen, md


class DiffusionAttentionScenes(EngineScenes):
    """`generate(jobs)` -> Samples labeled from cross-attention (masks, boxes, scores)."""

    name = "diffusion-attention"
    labels = "cross-attention"

    def __init__(self, params: DiffusionSceneParams, spec: Spec, where: str = "scene.params"):
        self.params = params
        self.spec = spec
        self.prompts = PromptedScenes(params, spec, params.prompt, params.empty_prompt, where)
        self.engine = DiffusionEngine.from_params(params, where)
        self.engine.require_capture("diffusion-attention labels from attention")
        self.min_area_px = params.min_area_px or spec.layout.min_area_px

    def _labels(
        self, job: ImageJob, image: npt.NDArray[np.uint8], maps: npt.NDArray[np.float32] | None
    ) -> tuple[Any, str | None]:
        image = resize_rgb(image, job.size_hw)
        present = sorted(set(job.class_ids))
        if maps is None or not present:
            inst = Instances.empty(job.size_hw)
        else:
            counts = [job.class_ids.count(c) for c in present]
            inst = attn_labels.instances_from_maps(
                maps[present],
                present,
                job.size_hw,
                threshold=self.params.mask_threshold,
                min_confidence=self.params.min_confidence,
                min_area_px=self.min_area_px,
                max_per_query=counts if self.params.limit_to_plan else None,
            )
        if len(inst) < min(self.params.min_instances, len(job.class_ids)):
            return None, "no_instances"
        return (image, inst), None

    def scene_request(self, job: ImageJob) -> tuple[GenRequest, dict[str, Any], Label]:
        gen, md = self.prompts.build(job, self.engine, self.params.negative_prompt)
        return gen, md, functools.partial(self._labels, job)


@SCENE_GENERATORS.register("diffusion-attention", DiffusionSceneParams)
def _make(params: DiffusionSceneParams, *, spec: Spec, **_: Any) -> DiffusionAttentionScenes:
    return DiffusionAttentionScenes(params, spec)
