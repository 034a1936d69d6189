"""Object source "diffusion" (RGBA crops masked by the class token's attention and the plain
background) and background source "diffusion" (scene prompts without objects).

Both run on `DiffusionEngine`; the same model in both shares one loaded pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from synthvision import randomness
from synthvision.errors import SpecError
from synthvision.generators.base import (
    BACKGROUND_SOURCES,
    OBJECT_SOURCES,
    BackgroundRequest,
    CropRequest,
)
from synthvision.generators.batching import BatchQueue, GenResult, Label
from synthvision.generators.diffusion import (
    DiffusionEngine,
    GenRequest,
    PipelineParams,
    resize_rgb,
)
from synthvision.generators.prompts import (
    check_template,
    class_phrase,
    draw_attributes,
    phrase_spans,
    query_weights,
    render,
)
from synthvision.labelers import attention as attn_labels

DEFAULT_OBJECT_PROMPT = (
    "a photo of a single {colour} {class}, {viewpoint}, isolated on a plain white background"
)


class DiffusionObjectParams(PipelineParams):
    """Object-centric prompts -> RGBA crops whose alpha is the object mask.

    `prompt` is the template for classes without their own `prompts` (spec `classes[].prompts`
    are templates too); it must mention the class, via `{class}` or the class name.
    """

    prompt: str = DEFAULT_OBJECT_PROMPT
    mask_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.35
    background_threshold: Annotated[float, Field(ge=0.0, le=255.0)] = 30.0
    min_object_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.01


class SourceQueue:
    """A source's requests (`CropRequest`s or `BackgroundRequest`s) of successive calls in shared
    full engine batches (`BatchQueue`). `release` and `finish` give (tag, array, metadata) in put
    order: the crop or background, and what made it (prompt, seed, retries)."""

    def __init__(
        self,
        engine: DiffusionEngine,
        make: Callable[[Any], tuple[GenRequest, dict[str, Any], Label | None]],
        output: Callable[[Any, GenResult], npt.NDArray[np.uint8]],
    ) -> None:
        self.queue = BatchQueue(engine)
        self.make = make
        self.output = output

    def put(self, request: Any, tag: Any = None) -> None:
        gen, md, label = self.make(request)
        self.queue.put(gen, label, tag=(tag, request, md))

    def launch(self) -> int:
        return self.queue.launch()

    def settle(self, upto: int | None = None) -> None:
        self.queue.settle(upto)

    def release(self) -> list[tuple[Any, npt.NDArray[np.uint8], dict[str, Any]]]:
        return self._outputs(self.queue.release())

    def finish(self) -> list[tuple[Any, npt.NDArray[np.uint8], dict[str, Any]]]:
        return self._outputs(self.queue.finish())

    def _outputs(
        self, done: list[tuple[Any, GenResult]]
    ) -> list[tuple[Any, npt.NDArray[np.uint8], dict[str, Any]]]:
        return [
            (tag, self.output(request, res), {**md, **res.metadata()})
            for (tag, request, md), res in done
        ]

    def run(
        self, requests: Sequence[Any]
    ) -> tuple[list[npt.NDArray[np.uint8]], list[dict[str, Any]]]:
        """Every request now (the last batch padded): arrays and metadata, in order."""
        for r in requests:
            self.put(r)
        done = self.finish()
        return [array for _, array, _ in done], [md for _, _, md in done]


class QueuedSource:
    """A diffusion source: requests become `GenRequest`s (`_request`), results become arrays
    (`_output`), in shared engine batches across calls (`queue`, compose's session) or all at
    once (`_run`, which sets `last_metadata`: one dict per array)."""

    engine: DiffusionEngine
    last_metadata: list[dict[str, Any]]

    def _request(self, request: Any) -> tuple[GenRequest, dict[str, Any], Label | None]:
        raise NotImplementedError

    def _output(self, request: Any, res: GenResult) -> npt.NDArray[np.uint8]:
        raise NotImplementedError

    @property
    def preferred_batch_size(self) -> int:
        """Images per call: one engine batch (an image holds one background, and one or more
        crops)."""
        return self.engine.batch_size

    def queue(self) -> SourceQueue:
        return SourceQueue(self.engine, self._request, self._output)

    def _run(self, requests: Sequence[Any]) -> list[npt.NDArray[np.uint8]]:
        arrays, self.last_metadata = self.queue().run(requests)
        return arrays


class DiffusionObjectSource(QueuedSource):
    """`crops(requests)` -> RGBA crops (h, w, 4); `last_metadata` holds one dict per crop."""

    def __init__(
        self,
        params: DiffusionObjectParams,
        class_names: Sequence[str],
        class_prompts: Mapping[str, Sequence[str]] | None = None,
        where: str = "objects.params",
    ) -> None:
        self.params = params
        self.where = where
        self.attributes = params.merged_attributes()
        allowed = {*self.attributes, "class"}
        self.templates: dict[str, list[str]] = {}
        for name in class_names:
            tmpls = list((class_prompts or {}).get(name) or [params.prompt])
            for t in tmpls:
                check_template(t, allowed, f"{where}.prompt (class {name!r})")
                probe = render(
                    t,
                    {**{k: v[0] for k, v in self.attributes.items()}, "class": class_phrase(name)},
                )
                if not phrase_spans(probe, [class_phrase(name)])[0]:
                    raise SpecError(
                        f"classes.{name}.prompts: prompt {t!r} must mention the class "
                        "(write {class} or the class name)"
                    )
            self.templates[name] = tmpls
        self.engine = DiffusionEngine.from_params(params, where)
        self.last_metadata: list[dict[str, Any]] = []

    def _request(self, req: CropRequest) -> tuple[GenRequest, dict[str, Any], Label]:
        rng = randomness.rng(req.seed, 0, "prompt")
        tmpls = self.templates.get(req.class_name)
        if tmpls is None:
            raise SpecError(f"{self.where}: unknown class {req.class_name!r}")
        template = tmpls[int(rng.integers(len(tmpls)))]
        attrs = draw_attributes(template, self.attributes, rng)
        phrase = class_phrase(req.class_name)
        prompt = render(template, {**attrs, "class": phrase})
        weights, tokens = query_weights(
            self.engine.loaded.tokenizer, prompt, phrase_spans(prompt, [phrase])
        )
        size = self.params.resolution or self.engine.loaded.native_size
        gen = GenRequest(
            prompt=prompt,
            negative_prompt=self.params.negative_prompt,
            seed=int(req.seed),
            size_hw=self.engine.generation_size((size, size)),
            weights=weights,
            clip_text=prompt,
        )
        md = {
            "prompt": prompt,
            "attributes": attrs,
            "class": req.class_name,
            "tokens": tokens[0],
            **self.engine.describe(),
        }
        return gen, md, self._cut

    def _cut(
        self, image: npt.NDArray[np.uint8], maps: npt.NDArray[np.float32] | None
    ) -> tuple[Any, str | None]:
        if maps is None or maps.shape[0] == 0:
            mask = attn_labels.largest_component(
                attn_labels.background_difference(image, self.params.background_threshold)
            )
        else:
            mask = attn_labels.object_mask(
                image,
                maps[0],
                threshold=self.params.mask_threshold,
                bg_threshold=self.params.background_threshold,
            )
        if mask.sum() < max(1.0, self.params.min_object_fraction * mask.size):
            return None, "no_object"
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        rgba = np.dstack([image[y1:y2, x1:x2], mask[y1:y2, x1:x2].astype(np.uint8) * 255])
        return np.ascontiguousarray(rgba, dtype=np.uint8), None

    def _output(self, _req: CropRequest, res: GenResult) -> npt.NDArray[np.uint8]:
        if res.payload is None:  # rejected: a fully transparent crop carries no object
            h, w = res.image.shape[:2]
            return np.zeros((h, w, 4), np.uint8)
        return res.payload  # type: ignore[no-any-return]

    def crops(self, requests: Sequence[CropRequest]) -> list[npt.NDArray[np.uint8]]:
        return self._run(requests)


@OBJECT_SOURCES.register("diffusion", DiffusionObjectParams)
def _make_object_source(
    params: DiffusionObjectParams,
    *,
    class_names: Sequence[str] = (),
    spec: Any = None,
    **_: Any,
) -> DiffusionObjectSource:
    prompts: dict[str, list[str]] = {}
    if spec is not None:
        class_names = tuple(c.name for c in spec.classes)
        prompts = {c.name: list(c.prompts) for c in spec.classes if c.prompts}
    return DiffusionObjectSource(params, class_names, prompts)


# ---------------------------------------------------------------------------------------------
# Background source "diffusion"
# ---------------------------------------------------------------------------------------------

DEFAULT_BACKGROUND_PROMPT = "a photo of an empty {place}, {weather}, {time_of_day}, no people"


class DiffusionBackgroundParams(PipelineParams):
    prompt: str = DEFAULT_BACKGROUND_PROMPT


class DiffusionBackgroundSource(QueuedSource):
    """`backgrounds(requests)` -> RGB (H, W, 3) of each request's exact size."""

    def __init__(self, params: DiffusionBackgroundParams, where: str = "background.params"):
        self.params = params
        self.attributes = params.merged_attributes()
        check_template(params.prompt, set(self.attributes), f"{where}.prompt")
        self.engine = DiffusionEngine.from_params(params, where)
        self.last_metadata: list[dict[str, Any]] = []

    def _request(self, r: BackgroundRequest) -> tuple[GenRequest, dict[str, Any], None]:
        rng = randomness.rng(r.seed, 0, "prompt")
        attrs = draw_attributes(self.params.prompt, self.attributes, rng)
        prompt = render(self.params.prompt, attrs)
        gen = GenRequest(
            prompt,
            self.params.negative_prompt,
            int(r.seed),
            self.engine.generation_size(r.size_hw),
            clip_text=prompt,
        )
        return gen, {"prompt": prompt, "attributes": attrs, **self.engine.describe()}, None

    def _output(self, r: BackgroundRequest, res: GenResult) -> npt.NDArray[np.uint8]:
        return resize_rgb(res.image, r.size_hw)

    def backgrounds(self, requests: Sequence[BackgroundRequest]) -> list[npt.NDArray[np.uint8]]:
        return self._run(requests)


@BACKGROUND_SOURCES.register("diffusion", DiffusionBackgroundParams)
def _make_background_source(
    params: DiffusionBackgroundParams, **_: Any
) -> DiffusionBackgroundSource:
    return DiffusionBackgroundSource(params)
