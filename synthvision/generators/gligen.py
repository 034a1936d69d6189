"""Scene generator "gligen": objects drawn inside given boxes (GLIGEN, Li et al. 2023).

The layout (the same `layout.place_objects` the compose generator uses, from the job's "layout"
stream) gives one box and phrase per planned object; GLIGEN's gated self-attention grounds each
phrase in its box. Labels are the layout boxes, optionally tightened to the class's
cross-attention mask inside each box (`tighten`).

diffusers has deprecated `StableDiffusionGLIGENPipeline`; this module is the only place that
touches it. Its `__call__` takes one layout for the whole batch, so the sampling loop here is the
pipeline's own (same components, same order of operations) with per-image boxes, which keeps
batches of different layouts in one UNet call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from synthvision.config import Spec
from synthvision.generators.base import SCENE_GENERATORS
from synthvision.generators.batching import Label
from synthvision.generators.diffusion import (
    DiffusionEngine,
    EngineScenes,
    GenRequest,
    PipelineParams,
    load_pipeline,
    resize_rgb,
)
from synthvision.generators.diffusion_scenes import (
    DEFAULT_EMPTY_PROMPT,
    DEFAULT_SCENE_PROMPT,
    PromptedScenes,
)
from synthvision.generators.prompts import (
    check_template,
    draw_attributes,
    render,
)
from synthvision.labelers import attention as attn_labels
from synthvision.layout import place_objects
from synthvision.plan import ImageJob
from synthvision.structures import Instances

if TYPE_CHECKING:
    import torch

MAX_OBJECTS = 30  # GLIGEN's position net is trained for at most 30 grounding tokens


class GligenParams(PipelineParams):
    """`phrase` is the grounding text of each box (may use attributes, e.g. "{colour} {class}")."""

    prompt: str = DEFAULT_SCENE_PROMPT
    empty_prompt: str = DEFAULT_EMPTY_PROMPT
    phrase: str = "{class}"
    scheduled_sampling_beta: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    tighten: bool = True
    mask_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.4
    min_fill: Annotated[float, Field(ge=0.0, le=1.0)] = 0.15


class GligenEngine(DiffusionEngine):
    """DiffusionEngine whose sampling loop feeds per-image GLIGEN boxes and phrases."""

    def __init__(self, params: GligenParams, where: str) -> None:
        from diffusers import StableDiffusionGLIGENPipeline

        loaded = load_pipeline(params, where, pipeline_class=StableDiffusionGLIGENPipeline)
        super().__init__(loaded, params, where)
        self.beta = params.scheduled_sampling_beta
        self._phrase_cache: dict[str, torch.Tensor] = {}

    def _phrase_embedding(self, phrase: str) -> torch.Tensor:
        """Pooled text embedding (D,) of one phrase, encoded alone at the fixed max length so it
        is the same whatever other phrases share the batch."""
        if phrase not in self._phrase_cache:
            pipe = self.loaded.pipe
            tok = pipe.tokenizer(
                phrase,
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            ids = tok.input_ids.to(self.loaded.device)
            self._phrase_cache[phrase] = pipe.text_encoder(ids).pooler_output[0]
        return self._phrase_cache[phrase]

    def _grounding(
        self, requests: Sequence[GenRequest], dtype: torch.dtype, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GLIGEN inputs of a batch: boxes (n, 30, 4), phrase embeddings (n, 30, D), masks (n, 30).

        Assembled on the host and sent in one copy each: a per-box assignment into a device
        tensor is one blocking host-to-device copy per object (up to batch x 30 waits for the
        GPU per batch). The values are the same.
        """
        import torch

        n = len(requests)
        dim = self.loaded.pipe.unet.config.cross_attention_dim
        zero = torch.zeros(dim, device=device, dtype=dtype)
        box_rows = [[0.0] * 4 for _ in range(n * MAX_OBJECTS)]
        mask_rows = [0.0] * (n * MAX_OBJECTS)
        emb_rows = [zero] * (n * MAX_OBJECTS)
        for b, r in enumerate(requests):
            phrases = list(r.extra.get("phrases", []))[:MAX_OBJECTS]
            for k, phrase in enumerate(phrases):
                emb_rows[b * MAX_OBJECTS + k] = self._phrase_embedding(phrase).to(dtype)
                box_rows[b * MAX_OBJECTS + k] = [float(v) for v in r.extra["boxes"][k]]
                mask_rows[b * MAX_OBJECTS + k] = 1.0
        boxes = torch.tensor(box_rows, dtype=dtype).view(n, MAX_OBJECTS, 4).to(device)
        masks = torch.tensor(mask_rows, dtype=dtype).view(n, MAX_OBJECTS).to(device)
        return boxes, torch.stack(emb_rows).view(n, MAX_OBJECTS, dim), masks

    def _denoise(self, requests: Sequence[GenRequest]) -> torch.Tensor:
        import torch

        pipe = self.loaded.pipe
        device = pipe._execution_device
        n = len(requests)
        h, w = requests[0].size_hw
        cfg = self.params.guidance_scale > 1.0
        cond, uncond = pipe.encode_prompt(
            [r.prompt for r in requests],
            device,
            1,
            cfg,
            [r.negative_prompt for r in requests] if cfg else None,
        )
        embeds = torch.cat([uncond, cond]) if cfg else cond  # (B', T, D)
        pipe.scheduler.set_timesteps(self.params.steps, device=device)
        timesteps = pipe.scheduler.timesteps
        generators = self._generators(requests)
        latents = pipe.prepare_latents(
            n, pipe.unet.config.in_channels, h, w, embeds.dtype, device, generators
        )
        boxes, phrase_emb, masks = self._grounding(requests, embeds.dtype, device)
        if cfg:  # the unconditional half gets no grounding, as in the pipeline
            boxes = torch.cat([boxes, boxes])
            phrase_emb = torch.cat([phrase_emb, phrase_emb])
            masks = torch.cat([torch.zeros_like(masks), masks])
        grounding_steps = int(self.beta * len(timesteps))
        extra_step = pipe.prepare_extra_step_kwargs(generators, 0.0)
        pipe.enable_fuser(True)
        for i, t in enumerate(timesteps):
            if i == grounding_steps:
                pipe.enable_fuser(False)  # scheduled sampling: ground early steps only
            model_in = torch.cat([latents, latents]) if cfg else latents
            model_in = pipe.scheduler.scale_model_input(model_in, t)
            gligen = {"boxes": boxes, "positive_embeddings": phrase_emb, "masks": masks}
            noise = pipe.unet(
                model_in,
                t,
                encoder_hidden_states=embeds,
                cross_attention_kwargs={"gligen": gligen},
            ).sample
            if cfg:
                noise_u, noise_c = noise.chunk(2)
                noise = noise_u + self.params.guidance_scale * (noise_c - noise_u)
            latents = pipe.scheduler.step(noise, t, latents, **extra_step).prev_sample
        pipe.enable_fuser(True)
        return latents


class GligenScenes(EngineScenes):
    """`generate(jobs)` -> Samples labeled by their layout boxes (tightened by attention)."""

    name = "gligen"
    labels = "layout"

    def __init__(self, params: GligenParams, spec: Spec, where: str = "scene.params") -> None:
        self.params = params
        self.spec = spec
        self.prompts = PromptedScenes(params, spec, params.prompt, params.empty_prompt, where)
        check_template(params.phrase, {*self.prompts.attributes, "class"}, f"{where}.phrase")
        self.engine = GligenEngine(params, where)
        if params.tighten:
            self.engine.require_capture("tighten (boxes fitted to the attention mask)")

    def _request(self, job: ImageJob) -> tuple[GenRequest, dict[str, Any], npt.NDArray[Any]]:
        gen, md = self.prompts.build(job, self.engine, self.params.negative_prompt)
        placed = place_objects(job.class_ids, job.size_hw, self.spec.layout, job.rng("layout"))
        placed = placed[:MAX_OBJECTS]
        h, w = job.size_hw
        xyxy = np.array([[p.x, p.y, p.x + p.w, p.y + p.h] for p in placed], np.float64).reshape(
            -1, 4
        )
        rng = job.rng("phrase")
        phrases = []
        for p in placed:
            attrs = draw_attributes(self.params.phrase, self.prompts.attributes, rng)
            phrases.append(
                render(self.params.phrase, {**attrs, "class": self.prompts.phrases[p.class_id]})
            )
        norm = (xyxy / np.array([w, h, w, h])).round(6).tolist()
        gen = GenRequest(
            prompt=gen.prompt,
            negative_prompt=gen.negative_prompt,
            seed=gen.seed,
            size_hw=gen.size_hw,
            weights=gen.weights,
            clip_text=gen.clip_text,
            extra={"boxes": norm, "phrases": phrases},
        )
        md = {**md, "phrases": phrases, "layout_xyxy": xyxy.round(2).tolist()}
        ids = np.array([p.class_id for p in placed], dtype=np.int64)
        return gen, md, np.concatenate([xyxy, ids[:, None].astype(np.float64)], axis=1)

    def _labels(
        self,
        job: ImageJob,
        layout: npt.NDArray[Any],
        image: npt.NDArray[np.uint8],
        maps: npt.NDArray[np.float32] | None,
    ) -> tuple[Any, str | None]:
        image = resize_rgb(image, job.size_hw)
        xyxy, ids = layout[:, :4], layout[:, 4].astype(np.int64)
        if not self.params.tighten or maps is None:
            return (image, Instances(xyxy.astype(np.float32), ids)), None
        boxes, masks = attn_labels.refine_boxes_with_maps(
            xyxy,
            maps[ids],
            job.size_hw,
            threshold=self.params.mask_threshold,
            min_fill=self.params.min_fill,
        )
        keep = masks.reshape(len(masks), -1).any(axis=1)  # fully covered boxes are not visible
        return (image, Instances(boxes[keep], ids[keep], masks=masks[keep])), None

    def scene_request(self, job: ImageJob) -> tuple[GenRequest, dict[str, Any], Label]:
        gen, md, layout = self._request(job)
        return gen, md, functools.partial(self._labels, job, layout)


@SCENE_GENERATORS.register("gligen", GligenParams)
def _make(params: GligenParams, *, spec: Spec, **_: Any) -> GligenScenes:
    return GligenScenes(params, spec)
