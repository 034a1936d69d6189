"""Text-to-image diffusion: pipeline loading and batched seeded generation with decode checks
and retries (`DiffusionEngine`), shared by every diffusion strategy: the `diffusion` object and
background sources (`diffusion_sources`), attention-labeled scenes (`diffusion_scenes`) and
GLIGEN layouts (`gligen`). Prompt templates are in `prompts`.

Any diffusers text-to-image pipeline loads through `AutoPipelineForText2Image.from_pretrained`
from a hub id or a local directory (safetensors by default, no remote code; `HF_HUB_OFFLINE=1`
and `local_files_only` are honoured). A loaded pipeline is cached per process by its load
parameters, so an object source and a background source on the same model share one copy.

Determinism: every image has its own CPU `torch.Generator` seeded from the sample's seed, and every
UNet/VAE call runs on a batch padded to the fixed `batch_size` (padding repeats the last request
and is discarded). With fixed shapes each row's arithmetic is the same whatever else is in the
batch, so an image does not depend on its batch-mates, the number of processes, or where a build
resumed. That is what lets `batching.BatchQueue` pack requests of successive calls and their
retries into full batches. (Different `batch_size` values can differ in the last bits on GPUs,
whose kernels are chosen by shape.)

Attention capture works on UNet pipelines (Stable Diffusion 1.x/2.x, SDXL and its distillations):
see `synthvision.labelers.attention`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field, field_validator

from synthvision.devices import model_device
from synthvision.errors import SpecError
from synthvision.filters import (
    ClipFilterParams,
    ClipScoreFilter,
    RetryPolicy,
    check_model_path,
    checked_uint8,
)
from synthvision.generators.batching import BatchQueue, Decoded, GenRequest, GenResult, Label
from synthvision.generators.prompts import DEFAULT_ATTRIBUTES
from synthvision.hub import cached_commit, follow_hub_progress_setting, local_files_only_for
from synthvision.labelers import attention as attn_labels
from synthvision.plan import ImageJob
from synthvision.spec_model import SpecModel
from synthvision.structures import Instances, Sample

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class PipelineParams(SpecModel):
    """Loading and sampling parameters shared by every diffusion component.

    Load keys (`model` ... `safety_checker`) identify the cached pipeline; the rest apply per
    component. `attributes` extend/override `DEFAULT_ATTRIBUTES` key by key.
    """

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, description="hub id or local directory")]
    device: str = "auto"
    dtype: Dtype = "auto"
    variant: str | None = None
    revision: str | None = None
    use_safetensors: bool = True
    local_files_only: bool = False
    scheduler: str | None = Field(
        default=None, description="diffusers scheduler class name, e.g. DPMSolverMultistepScheduler"
    )
    attention: Literal["sdpa", "eager"] = "sdpa"
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn"] = Field(
        default="auto",
        description="SDPA kernel to prefer (others stay as fallbacks); auto = torch's order",
    )
    compile: bool = False
    compile_mode: str | None = None
    fuse_qkv: bool = Field(
        default=False,
        description="fuse the UNet's attention projections (Q|K|V, or K|V) into one matmul each",
    )
    channels_last: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    safety_checker: bool = False

    steps: Annotated[int, Field(ge=1, le=1000)] = 25
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] = 7.5
    batch_size: Annotated[int, Field(ge=1, le=256)] = 4
    resolution: Annotated[int, Field(ge=8, le=4096)] | None = Field(
        default=None, description="generate at this short side, then resize (default: target size)"
    )
    negative_prompt: str = "blurry, low quality, watermark, text, cropped"
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    max_retries: Annotated[int, Field(ge=0, le=20)] = 2
    fp32_vae_retry: bool = True
    black_max: Annotated[float, Field(ge=0.0, le=255.0)] = 4.0
    blank_std: Annotated[float, Field(ge=0.0, le=128.0)] = 1.0
    clip_filter: ClipFilterParams | None = None
    label_threads: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None,
        description="threads that turn decoded images into labels (default: up to 4, by CPUs)",
    )
    capture_layers: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None,
        description="capture only cross-attention layers at these latent downsampling factors",
    )

    @field_validator("attributes")
    @classmethod
    def _nonempty_lists(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for k, vals in v.items():
            if not k.isidentifier():
                raise ValueError(f"attribute name {k!r} must be a plain identifier")
            if not vals:
                raise ValueError(f"attribute {k!r} needs at least one value")
        return v

    def merged_attributes(self) -> dict[str, list[str]]:
        return {**DEFAULT_ATTRIBUTES, **self.attributes}

    def load_key(self) -> str:
        keys = (
            "model",
            "device",
            "dtype",
            "variant",
            "revision",
            "use_safetensors",
            "local_files_only",
            "scheduler",
            "attention",
            "sdpa_backend",
            "compile",
            "compile_mode",
            "fuse_qkv",
            "channels_last",
            "vae_slicing",
            "vae_tiling",
            "cpu_offload",
            "safety_checker",
            "capture_layers",
        )
        return json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.black_max, self.blank_std, self.max_retries, self.fp32_vae_retry)


# ---------------------------------------------------------------------------------------------
# Pipeline loading (cached per process)
# ---------------------------------------------------------------------------------------------


def default_label_threads() -> int:
    """Threads for labeling decoded images: up to 4, fewer on small machines (CPUs this process
    may use), so several ranks on one node do not oversubscribe it much."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@dataclass
class LoadedPipeline:
    """A diffusers pipeline on its device, with an attention store on its cross-attention layers."""

    pipe: Any
    device: str
    dtype: torch.dtype
    store: attn_labels.AttentionStore
    capture_layers: int  # number of cross-attention layers that can record maps
    model: str
    safety_checker: bool
    commit: str | None = None  # the hub snapshot loaded (None: a local directory)

    @property
    def vae_scale_factor(self) -> int:
        return int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def multiple(self) -> int:
        """Pixel sizes must be multiples of this (VAE factor x UNet downsampling)."""
        unet = getattr(self.pipe, "unet", None)
        levels = len(unet.config.block_out_channels) - 1 if unet is not None else 1
        # SD pipelines also insist on multiples of 8 px (check_inputs).
        return max(8, self.vae_scale_factor * (2**levels))

    @property
    def native_size(self) -> int:
        unet = getattr(self.pipe, "unet", None)
        size = getattr(getattr(unet, "config", None), "sample_size", None)
        if isinstance(size, int):
            return size * self.vae_scale_factor
        return 512

    @property
    def tokenizer(self) -> Any:
        return self.pipe.tokenizer


_PIPELINES: dict[str, LoadedPipeline] = {}


def clear_pipeline_cache() -> None:
    """Drop cached pipelines (frees GPU memory once no component holds them)."""
    _PIPELINES.clear()


def _model_index(params: PipelineParams, local_files_only: bool) -> dict[str, Any]:
    from diffusers import DiffusionPipeline

    try:
        cfg = DiffusionPipeline.load_config(
            params.model, revision=params.revision, local_files_only=local_files_only
        )
    except Exception:
        return {}
    return dict(cfg)


def cross_attention_factors(unet: Any) -> set[int] | None:
    """Latent downsampling factors at which `unet` has cross-attention layers (SD 1.5: 1, 2, 4
    and the mid block's 8; SDXL: 2 and 4), from its config; None if the config does not say."""
    config = getattr(unet, "config", None)
    down = list(getattr(config, "down_block_types", None) or [])
    if not down:
        return None
    factors = {2**i for i, kind in enumerate(down) if "CrossAttn" in kind}
    if "CrossAttn" in str(getattr(config, "mid_block_type", "") or ""):
        factors.add(2 ** (len(down) - 1))
    return factors


def _check_capture_layers(wanted: list[int] | None, unet: Any, where: str) -> None:
    available = cross_attention_factors(unet)
    if not wanted or available is None:
        return
    missing = sorted(set(wanted) - available)
    if missing:
        raise SpecError(
            f"{where}.capture_layers: {missing} match no cross-attention layer; this UNet has "
            f"them at downsampling factors {sorted(available)}"
        )


@contextlib.contextmanager
def _quiet_diffusers_logging() -> Iterator[None]:
    """diffusers logs each component it fails to load, then raises; only errors get through."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _load_hint(params: PipelineParams) -> str:
    """How to fix a failed load: a folder with pickled weights only needs use_safetensors."""
    from pathlib import Path

    folder = Path(params.model).expanduser()
    if params.use_safetensors and folder.is_dir() and any(folder.rglob("*.bin")):
        return (
            "it has .bin weights and use_safetensors is true; convert them to safetensors, or "
            "set use_safetensors: false if you trust them (.bin files are pickles)"
        )
    return (
        "give a local directory saved with save_pretrained or a hub id; with HF_HUB_OFFLINE=1 "
        "the weights must already be in the cache"
    )


def load_pipeline(params: PipelineParams, where: str, pipeline_class: Any = None) -> LoadedPipeline:
    """Load (or reuse) the pipeline for `params`; SpecError with one clear line on failure.

    `pipeline_class` overrides `AutoPipelineForText2Image` (the GLIGEN module passes its own).
    """
    key = params.load_key() + f"|{getattr(pipeline_class, '__name__', 'auto')}"
    if key in _PIPELINES:
        return _PIPELINES[key]
    import torch
    from diffusers import AutoPipelineForText2Image

    check_model_path(params.model, f"{where}.model")
    local_only = local_files_only_for(
        params.model,
        filename="model_index.json",
        revision=params.revision,
        asked=params.local_files_only,
        where=f"{where}.model",
    )
    device = model_device(params.device, f"{where}.device")
    dtype = resolve_dtype(params.dtype, device)
    index = _model_index(params, local_only)
    kwargs: dict[str, Any] = {
        _dtype_kwarg(): dtype,
        "use_safetensors": params.use_safetensors,
        "local_files_only": local_only,
    }
    if params.variant:
        kwargs["variant"] = params.variant
    if params.revision:
        kwargs["revision"] = params.revision
    if "safety_checker" in index and not params.safety_checker:
        # Off by default: do not even load it (stated in every sample's metadata).
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    loader = pipeline_class or AutoPipelineForText2Image
    follow_hub_progress_setting()
    try:
        with _quiet_diffusers_logging():  # a failure is our one error line, not two log lines
            pipe = loader.from_pretrained(params.model, **kwargs)
    except (OSError, ValueError) as exc:
        raise SpecError(
            f"{where}.model: could not load diffusion pipeline {params.model!r}: "
            f"{_first_line(exc)} ({_load_hint(params)})"
        ) from None
    if params.safety_checker and getattr(pipe, "safety_checker", None) is None:
        raise SpecError(f"{where}.safety_checker: model {params.model!r} has no safety checker")

    if params.scheduler:
        import diffusers

        sched_cls = getattr(diffusers, params.scheduler, None)
        if sched_cls is None or not params.scheduler.endswith("Scheduler"):
            raise SpecError(
                f"{where}.scheduler: unknown diffusers scheduler {params.scheduler!r} "
                "(e.g. DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler)"
            )
        pipe.scheduler = sched_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    store = attn_labels.AttentionStore(params.capture_layers)
    unet = getattr(pipe, "unet", None)
    n_capture = 0
    if unet is not None:
        if params.attention == "eager":
            from diffusers.models.attention_processor import AttnProcessor

            if params.fuse_qkv:
                raise SpecError(f"{where}.fuse_qkv: needs attention: sdpa (got eager)")
            if params.sdpa_backend != "auto":
                raise SpecError(f"{where}.sdpa_backend: needs attention: sdpa (got eager)")
            unet.set_attn_processor(AttnProcessor())
        else:
            if params.fuse_qkv:
                fuse_projections(unet, where)
            n_capture = attn_labels.install_capture(unet, store)
            _check_capture_layers(params.capture_layers, unet, where)
        if params.channels_last:
            unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
    if params.vae_slicing:
        pipe.vae.enable_slicing()
    if params.vae_tiling:
        pipe.vae.enable_tiling()
    if params.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if params.compile and unet is not None:
        unet.compile(mode=params.compile_mode)
        pipe.vae.decoder.compile(mode=params.compile_mode)
    loaded = LoadedPipeline(
        pipe=pipe,
        device=device,
        dtype=dtype,
        store=store,
        capture_layers=n_capture,
        model=params.model,
        safety_checker=params.safety_checker,
        commit=cached_commit(params.model, filename="model_index.json", revision=params.revision),
    )
    _PIPELINES[key] = loaded
    return loaded


def fuse_projections(unet: Any, where: str) -> None:
    """Fuse the UNet's attention projections (diffusers' `fuse_qkv_projections`): fewer, larger
    matmuls. Capture processors installed afterwards use the fused K|V weights."""
    fuse = getattr(unet, "fuse_qkv_projections", None)
    if fuse is None:
        raise SpecError(f"{where}.fuse_qkv: {type(unet).__name__} cannot fuse its projections")
    try:
        fuse()
    except ValueError as exc:  # e.g. added-KV attention (unCLIP-style UNets)
        raise SpecError(f"{where}.fuse_qkv: {_first_line(exc)}") from None


def sdpa_preference(backend: str) -> AbstractContextManager[Any]:
    """Context in which scaled-dot-product attention tries `backend` first, then torch's usual
    order (flash, efficient, math): shapes the preferred kernel cannot serve fall back to it.

    torch ranks cuDNN attention last, so it is never picked unless asked for; on Hopper it can
    be the faster kernel for some shapes. "auto" changes nothing.
    """
    if backend == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }[backend]
    usual = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel([first, *(b for b in usual if b != first)], set_priority=True)


def _dtype_kwarg() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (the old name warns); use what it knows."""
    from diffusers.utils import deprecation_utils

    return (
        "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") else "torch_dtype"
    )


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Batched generation with decode checks and retries
# ---------------------------------------------------------------------------------------------


class DiffusionEngine:
    """Runs `GenRequest`s through a loaded pipeline in padded batches, with retries."""

    def __init__(self, loaded: LoadedPipeline, params: PipelineParams, where: str) -> None:
        self.loaded = loaded
        self.params = params
        self.where = where
        self.policy = params.retry_policy()
        self.clip: ClipScoreFilter | None = None
        if params.clip_filter is not None:
            self.clip = ClipScoreFilter(params.clip_filter, loaded.device, f"{where}.clip_filter")
        self._call_params = set(inspect.signature(loaded.pipe.__call__).parameters)
        # Seconds per phase (denoise / decode / checks); `profile` syncs the GPU for exact splits.
        self.timings: dict[str, float] = {"denoise": 0.0, "decode": 0.0, "checks": 0.0}
        self.profile = False
        self._label_pool: ThreadPoolExecutor | None = None  # runs `finalize`; made on first use
        self._label_pool_pid = 0  # the process that made it: a forked child has none of its threads

    @classmethod
    def from_params(cls, params: PipelineParams, where: str) -> DiffusionEngine:
        return cls(load_pipeline(params, where), params, where)

    def require_capture(self, purpose: str) -> None:
        """SpecError unless cross-attention maps can be recorded: `purpose` (e.g. "labels from
        attention") would otherwise get no maps, and every image no labels."""
        if self.params.attention == "eager":
            raise SpecError(
                f"{self.where}.attention: {purpose} needs the cross-attention maps, which "
                "attention: eager cannot record; use attention: sdpa"
            )
        if self.loaded.capture_layers == 0:
            raise SpecError(
                f"{self.where}.model: {purpose} needs cross-attention layers, and the UNet of "
                f"{self.params.model!r} has none to record"
            )

    # -- sizes -----------------------------------------------------------------------------

    def generation_size(self, size_hw: tuple[int, int]) -> tuple[int, int]:
        """Size to generate for a target `size_hw`: scaled to `resolution` (short side) when set,
        rounded to the pipeline's multiple."""
        scale = 1.0
        if self.params.resolution is not None:
            scale = self.params.resolution / min(size_hw)
        m = self.loaded.multiple
        h, w = (max(m, round(side * scale / m) * m) for side in size_hw)
        return h, w

    def describe(self) -> dict[str, Any]:
        """Run-level metadata (JSON-serialisable)."""
        pipe = self.loaded.pipe
        return {
            "model": self.loaded.model,
            "revision": self.params.revision,
            "variant": self.params.variant,
            "commit": self.loaded.commit,
            "pipeline": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "steps": self.params.steps,
            "guidance_scale": self.params.guidance_scale,
            # Only classifier-free guidance uses it: without, none was used whatever is set.
            "negative_prompt": self.params.negative_prompt
            if self.params.guidance_scale > 1.0
            else None,
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "safety_checker": "on" if self.loaded.safety_checker else "off",
        }

    # -- public ----------------------------------------------------------------------------

    def run(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate every request; failed decodes are retried per policy. Retries share
        batches (`BatchQueue`); only the last batch of a size is padded."""
        queue = BatchQueue(self)
        for r in requests:
            queue.put(r)
        return [result for _, result in queue.finish()]

    @property
    def batch_size(self) -> int:
        """Rows of every UNet and VAE call (a call with fewer requests is padded)."""
        return self.params.batch_size

    # -- internals -------------------------------------------------------------------------

    def _submit_label(self, label: Label, out: Decoded) -> Future[tuple[Any, str | None]]:
        """Start `label` of a decoded image that passed its checks.

        Labels (upsampling, connected components, masks) are numpy/OpenCV work that mostly
        releases the GIL, so they run on a few threads while the GPU goes on. Each call depends
        on its own image only: the thread count never changes a result.
        """
        return self._labels_pool().submit(label, out.image, out.maps)

    def _labels_pool(self) -> ThreadPoolExecutor:
        if self._label_pool is None or self._label_pool_pid != os.getpid():
            # A forked process (a DataLoader worker of a stream that generated in the parent)
            # inherits the pool without its threads: its tasks would never run.
            self._label_pool_pid = os.getpid()
            workers = self.params.label_threads or default_label_threads()
            self._label_pool = ThreadPoolExecutor(workers, thread_name_prefix="sv-labels")
        return self._label_pool

    def _batch(self, requests: Sequence[GenRequest]) -> list[Decoded]:
        import torch

        n = len(requests)
        padded = list(requests) + [requests[-1]] * (self.params.batch_size - n)
        capture = any(r.weights is not None for r in requests) and self.loaded.capture_layers > 0
        t0 = self._clock()
        with sdpa_preference(self.params.sdpa_backend):
            latents, maps = self._latents(padded, capture)
            t1 = self._clock()
            # Decode the whole padded batch: fixed shapes keep each image independent of its
            # mates.
            decoded = self._decode(latents, fp32=False)[:n]
        t2 = self._clock()
        # One wait for the host: checks and uint8 pixels in one pass; the maps, left on the
        # device by `_latents` so the decode was queued behind the loop without a wait, are
        # complete by then and copy without another.
        failures, images = checked_uint8(decoded, self.policy)
        maps = None if maps is None else maps.cpu()
        t3 = self._clock()
        self.timings["denoise"] += t1 - t0
        self.timings["decode"] += t2 - t1
        self.timings["checks"] += t3 - t2
        results = []
        for i in range(n):
            extra = 0
            failure = failures[i]
            img = images[i]
            if failure is not None and self.policy.fp32_vae_retry:
                if self._vae_dtype() != torch.float32:
                    # Decode this sample alone in float32 (batch of one: the result is the same
                    # whichever samples failed together).
                    extra += 1
                    dec32 = self._decode(latents[i : i + 1], fp32=True)
                    fails32, imgs32 = checked_uint8(dec32, self.policy)
                    failure, img = fails32[0], imgs32[0]
            if failure is None and self.loaded.safety_checker:
                failure = self._nsfw(decoded[i : i + 1])
            m = None if maps is None else maps[i, : self._num_queries(requests[i])].numpy()
            results.append(Decoded(img, m, failure, extra))
        if self.clip is not None:
            self._clip_check(requests, results)
        return results

    def _clip_check(self, requests: Sequence[GenRequest], results: list[Decoded]) -> None:
        """CLIP-score the images that passed so far, in one call padded to `batch_size` rows
        (a fixed shape: a score does not depend on its batch-mates); low scores fail."""
        assert self.clip is not None
        todo = [i for i, r in enumerate(results) if r.failure is None]
        if not todo:
            return
        images = [results[i].image for i in todo]
        texts = [requests[i].clip_text or requests[i].prompt for i in todo]
        pad = max(0, self.params.batch_size - len(todo))
        scores = self.clip.scores(images + images[-1:] * pad, texts + texts[-1:] * pad)
        for i, score in zip(todo, scores[: len(todo)], strict=True):
            results[i].clip_score = float(score)
            results[i].failure = self.clip.failure_of(float(score))

    def _clock(self) -> float:
        import time

        if self.profile and self.loaded.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _num_queries(self, r: GenRequest) -> int:
        return 0 if r.weights is None else int(r.weights.shape[0])

    def _generators(self, requests: Sequence[GenRequest]) -> list[torch.Generator]:
        import torch

        # CPU generators: the same noise on every device, one per image.
        return [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]

    def _weights_tensor(self, requests: Sequence[GenRequest]) -> torch.Tensor:
        import torch

        q = max(self._num_queries(r) for r in requests)
        t = int(getattr(self.loaded.tokenizer, "model_max_length", 77))
        w = np.zeros((len(requests), max(q, 1), t), np.float32)
        for i, r in enumerate(requests):
            if r.weights is not None:
                w[i, : r.weights.shape[0]] = r.weights
        return torch.from_numpy(w).to(self.loaded.device)

    def _latents(
        self, requests: Sequence[GenRequest], capture: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Denoise a padded batch -> latents (B, C, h, w) and maps (B, Q, h, w) or None, both
        on the device (nothing here waits for the GPU)."""
        import torch

        h, w = requests[0].size_hw
        latent_hw = (h // self.loaded.vae_scale_factor, w // self.loaded.vae_scale_factor)
        store = self.loaded.store
        with torch.inference_mode():
            if capture:
                with store.capture(self._weights_tensor(requests), latent_hw):
                    latents = self._denoise(requests)
                maps = store.maps_on_device()
                store.reset()
            else:
                latents, maps = self._denoise(requests), None
        return latents, maps

    def _denoise(self, requests: Sequence[GenRequest]) -> torch.Tensor:
        """The pipeline's own sampling loop with `output_type="latent"`."""
        h, w = requests[0].size_hw
        kwargs: dict[str, Any] = {
            "prompt": [r.prompt for r in requests],
            "generator": self._generators(requests),
            "num_inference_steps": self.params.steps,
            "guidance_scale": self.params.guidance_scale,
            "height": h,
            "width": w,
            "output_type": "latent",
        }
        if "negative_prompt" in self._call_params and self.params.guidance_scale > 1.0:
            kwargs["negative_prompt"] = [r.negative_prompt for r in requests]
        latents = self.loaded.pipe(**kwargs).images
        if latents.ndim != 4:
            raise SpecError(
                f"{self.where}.model: {self.loaded.model!r} returns packed latents "
                f"{tuple(latents.shape)}; use a UNet-based text-to-image model (SD 1.x/2.x, SDXL)"
            )
        return latents  # type: ignore[no-any-return]

    def _vae_dtype(self) -> torch.dtype:
        return self.loaded.pipe.vae.dtype  # type: ignore[no-any-return]

    def _decode(self, latents: torch.Tensor, fp32: bool) -> torch.Tensor:
        """VAE decode (B, C, h, w) -> (B, 3, H, W) in [-1, 1] (NaN kept for the check)."""
        import torch

        vae = self.loaded.pipe.vae
        cfg = vae.config
        lat = latents
        with torch.inference_mode():
            mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
            if mean is not None and std is not None:
                m = torch.tensor(mean).view(1, -1, 1, 1).to(lat.device, lat.dtype)
                s = torch.tensor(std).view(1, -1, 1, 1).to(lat.device, lat.dtype)
                lat = lat * s / cfg.scaling_factor + m
            else:
                lat = lat / cfg.scaling_factor
                if getattr(cfg, "shift_factor", None):
                    lat = lat + cfg.shift_factor
            orig = vae.dtype
            upcast = fp32 or (orig == torch.float16 and bool(getattr(cfg, "force_upcast", False)))
            if upcast and orig != torch.float32:
                vae.to(torch.float32)
            # The float32 retry of one failed image runs eagerly: on a compiled decoder its new
            # dtype and batch size would trace (and compile, for minutes) a graph of its own.
            stance = torch.compiler.set_stance("force_eager") if fp32 else nullcontext()
            try:
                target = torch.float32 if upcast else orig
                with stance:
                    return vae.decode(lat.to(target), return_dict=False)[0]  # type: ignore[no-any-return]
            finally:
                if upcast and orig != torch.float32:
                    vae.to(orig)

    def _nsfw(self, decoded: torch.Tensor) -> str | None:
        pipe = self.loaded.pipe
        _, flags = pipe.run_safety_checker(decoded, self.loaded.device, decoded.dtype)
        return "nsfw" if flags is not None and any(flags) else None


def resize_rgb(image: npt.NDArray[np.uint8], size_hw: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """Resize (H, W, 3) uint8 to `size_hw` with Lanczos (no-op when equal)."""
    if image.shape[:2] == tuple(size_hw):
        return image
    from PIL import Image

    h, w = size_hw
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))


def scene_samples(
    generator_name: str,
    labels: str,
    jobs: Sequence[ImageJob],
    metadata: Sequence[dict[str, Any]],
    results: Sequence[Any],
) -> list[Sample]:
    """Samples of a scene generator's engine results: labeled, or rejected with no labels."""
    samples = []
    for job, md, res in zip(jobs, metadata, results, strict=True):
        meta = {"generator": generator_name, "labels": labels, **md, **res.metadata()}
        if res.payload is None:  # rejected after its retries: the image, never labels
            image = resize_rgb(res.image, job.size_hw)
            samples.append(Sample(job.index, image, Instances.empty(job.size_hw), meta))
        else:
            image, inst = res.payload
            samples.append(Sample(job.index, image, inst, meta))
    return samples


# (job's request, its metadata, its labels) for a scene generator's session
SceneRequest = Callable[[ImageJob], "tuple[GenRequest, dict[str, Any], Label]"]


class SceneSession:
    """Scenes of successive `start(jobs)` calls, generated in shared full batches.

    `start` queues the jobs' requests and generates every full engine batch now; their labels
    run on the label threads. The call it returns waits for the labels of what that `start`
    generated and gives the samples finished so far, in job order. Between the two the caller
    can `start` the next jobs, so labeling overlaps generation. `finish` generates the rest
    (retries too, the last batch padded) and gives the remaining samples. A build or a stream
    opens one session and finishes it; a failed image's retry joins a later batch.
    """

    def __init__(self, name: str, labels: str, engine: DiffusionEngine, make: SceneRequest) -> None:
        self.name = name
        self.labels = labels
        self.make = make
        self.queue = BatchQueue(engine)

    def start(self, jobs: Sequence[ImageJob]) -> Callable[[], list[Sample]]:
        for job in jobs:
            request, md, label = self.make(job)
            self.queue.put(request, label, tag=(job, md))
        launch = self.queue.launch()

        def collect() -> list[Sample]:
            self.queue.settle(launch)
            return self._samples(self.queue.release())

        return collect

    def finish(self) -> list[Sample]:
        return self._samples(self.queue.finish())

    def _samples(self, done: list[tuple[Any, GenResult]]) -> list[Sample]:
        return scene_samples(
            self.name,
            self.labels,
            [job for (job, _), _ in done],
            [md for (_, md), _ in done],
            [result for _, result in done],
        )


class EngineScenes:
    """`generate`, `session` and `preferred_batch_size` of a scene generator on one engine:
    subclasses set `name`, `labels` (what labels the samples) and `engine`, and say how a job
    becomes a request (`scene_request`)."""

    name: str
    labels: str
    engine: DiffusionEngine

    def scene_request(self, job: ImageJob) -> tuple[GenRequest, dict[str, Any], Label]:
        """The job's request, its metadata and its labeling function."""
        raise NotImplementedError

    def generate(self, jobs: Sequence[ImageJob]) -> list[Sample]:
        session = self.session()
        return session.start(jobs)() + session.finish()

    @property
    def preferred_batch_size(self) -> int:
        """Jobs per `session().start` call: one engine batch, so each call generates one."""
        return self.engine.batch_size

    def session(self) -> SceneSession:
        """Successive batches of jobs in shared engine batches, labeled in the background."""
        return SceneSession(self.name, self.labels, self.engine, self.scene_request)
