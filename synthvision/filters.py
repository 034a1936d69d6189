"""Quality gates for generated images: decode checks, the retry policy, and a CLIP-score filter.

A diffusion decode can fail silently: fp16/bf16 VAEs overflow to NaN (decoded as black), a
safety checker blacks an image out, or a model collapses to a flat colour. The policy:

1. check every decoded image (`decode_failure`: "nan", "black" or "blank");
2. a failed image is decoded again with the VAE in float32 (when it is not already);
3. still failing, the sample is generated again with a new seed derived from its own
   (`retry_seed`), up to `max_retries` times;
4. a sample that never passes is returned *rejected*: `metadata["rejected"]` holds the reason and
   it carries no labels, so the build never writes labels for a failed image.

Every extra decode or generation counts in `metadata["retries"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from synthvision import randomness
from synthvision.errors import SpecError
from synthvision.hub import local_files_only_for
from synthvision.spec_model import SpecModel

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RetryPolicy:
    """Decode-check thresholds (0..255 levels) and how often to retry a failed sample."""

    black_max: float = 4.0
    blank_std: float = 1.0
    max_retries: int = 2
    fp32_vae_retry: bool = True


def decode_failure(
    decoded: npt.NDArray[np.floating], policy: RetryPolicy = RetryPolicy()
) -> str | None:
    """Why a decoded image (3, H, W) or (H, W, 3) in [-1, 1] is unusable, or None if it is fine.

    "nan": any non-finite value; "black": every level <= `black_max`; "blank": the per-channel
    standard deviation <= `blank_std` everywhere (a flat image).
    """
    x = np.asarray(decoded, dtype=np.float32)
    if not np.isfinite(x).all():
        return "nan"
    levels = (np.clip(x / 2 + 0.5, 0.0, 1.0) * 255.0).round()
    if float(levels.max()) <= policy.black_max:
        return "black"
    axis = (1, 2) if x.shape[0] == 3 else (0, 1)
    if float(levels.std(axis=axis).max()) <= policy.blank_std:
        return "blank"
    return None


def checked_uint8(
    decoded: torch.Tensor, policy: RetryPolicy = RetryPolicy()
) -> tuple[list[str | None], npt.NDArray[np.uint8]]:
    """`decode_failure` of each image of a batch (B, 3, H, W) in [-1, 1], and the batch as
    uint8 (B, H, W, 3) as diffusers' image processor rounds it, from one pass on the tensor's
    device.

    Why one pass: both round the same levels, so the float32 work on the batch is done once,
    and the host waits once: the B x 3 stats are queued to the host before the pixels, whose
    blocking copy finishes both. Only uint8 crosses to the host (4x less than float32).
    """
    import torch

    x = decoded.float()
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    levels = ((x / 2 + 0.5).clamp(0, 1) * 255.0).round().nan_to_num(0.0)
    peak = levels.flatten(1).amax(dim=1)
    spread = levels.flatten(2).std(dim=2).amax(dim=1)  # max over channels of per-channel std
    stats = torch.stack([finite.float(), peak, spread], dim=1)
    # On CUDA, non_blocking: a pinned host copy queued behind the kernels; the blocking pixel
    # copy below synchronises the stream, after which it is complete.
    stats_host = stats.to("cpu", non_blocking=stats.is_cuda)
    pixels = np.ascontiguousarray(levels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return _failures(stats_host.numpy(), policy), pixels


def _failures(stats: npt.NDArray[np.float32], policy: RetryPolicy) -> list[str | None]:
    out: list[str | None] = []
    for ok, top, std in stats:
        if not ok:
            out.append("nan")
        elif top <= policy.black_max:
            out.append("black")
        elif std <= policy.blank_std:
            out.append("blank")
        else:
            out.append(None)
    return out


def retry_seed(seed: int, attempt: int) -> int:
    """Seed of retry `attempt` (1, 2, ...) of a sample whose first seed was `seed`."""
    return randomness.derive_seed(int(seed), int(attempt), "retry")


# ---------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------


class ClipFilterParams(SpecModel):
    """CLIP-score filter: images whose score for their prompt is below `threshold` are retried
    (then rejected). Score = 100 * cosine(image embedding, text embedding), as in torchmetrics."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    threshold: Annotated[float, Field(ge=0.0, le=100.0)] = 20.0
    use_safetensors: bool = True
    local_files_only: bool = False


class ClipScoreFilter:
    """transformers CLIP (from a hub id or a local directory) scoring image/text pairs."""

    def __init__(self, params: ClipFilterParams, device: Any = "cpu", where: str = "clip_filter"):
        from transformers import AutoProcessor, CLIPModel

        self.params = params
        self.device = device
        try:
            check_model_path(params.model, f"{where}.model")
            local_only = local_files_only_for(
                params.model,
                filename="config.json",
                revision=None,
                asked=params.local_files_only,
                where=f"{where}.model",
            )
            self.model = (
                CLIPModel.from_pretrained(
                    params.model,
                    use_safetensors=params.use_safetensors,
                    local_files_only=local_only,
                )
                .to(device)
                .eval()
            )
            self.processor = AutoProcessor.from_pretrained(
                params.model, local_files_only=local_only
            )
        except (OSError, ValueError) as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError(
                f"{where}.model: could not load CLIP model {params.model!r}: {_first_line(exc)}"
            ) from None

    def scores(
        self, images: Sequence[npt.NDArray[np.uint8]], texts: Sequence[str]
    ) -> npt.NDArray[np.float32]:
        """CLIP scores (N,) of images (H, W, 3) uint8 against their texts."""
        import torch

        if not images:
            return np.zeros(0, np.float32)
        inputs = self.processor(
            text=list(texts),
            images=list(images),
            return_tensors="pt",
            padding="max_length",
            truncation=True,
        ).to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return np.asarray((100.0 * (img * txt).sum(-1)).clamp(min=0).cpu().numpy(), np.float32)

    def failure_of(self, score: float) -> str | None:
        """Why an image with this CLIP score fails the filter, or None."""
        return None if score >= self.params.threshold else f"clip_score {score:.1f}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def looks_like_path(model: str) -> bool:
    """A local path rather than a hub id ("owner/name" or "name")."""
    return model.startswith(("/", "./", "../", "~", ".")) or model.count("/") > 1 or "\\" in model


def check_model_path(model: str, where: str) -> None:
    """SpecError when `model` names a local directory that does not exist."""
    from pathlib import Path

    p = Path(model).expanduser()
    if looks_like_path(model) and not p.exists():
        raise SpecError(
            f"{where}: model path {model!r} does not exist (give a directory saved with "
            "save_pretrained, or a Hugging Face hub id such as 'owner/name')"
        )
    if p.exists() and not p.is_dir():
        raise SpecError(f"{where}: model path {model!r} is a file; give the model's directory")
