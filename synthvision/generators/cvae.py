"""Object source "cvae": RGBA crops sampled from a trained conditional VAE.

Spec usage:

    objects: {name: cvae, params: {checkpoint: builtin, temperature: 1.0}}

`checkpoint` is "builtin" (the small model shipped in `synthvision/checkpoints/cvae-builtin`,
trained on the procedural objects by `scripts/train_builtin_cvae.py`) or the path of a folder
written by `synthvision train-cvae`. Spec class names must be classes of the checkpoint.

Each request gets its own CPU `torch.Generator` seeded from `request.seed`, and crops are decoded
in batches of a fixed shape (`decode_batch` rows, the last batch padded). At a fixed shape the
kernels compute each row alike, so a crop depends on its own request alone, not on which crops
shared its batch or how the build batched images (tested bit for bit). Crops come back trimmed to
the alpha's extent (the model draws objects centred in a padded square).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from synthvision.devices import model_device
from synthvision.errors import SpecError
from synthvision.generators.base import OBJECT_SOURCES, CropRequest
from synthvision.spec_model import SpecModel

if TYPE_CHECKING:
    import torch

    from synthvision.models.cvae import CVAENetwork

BUILTIN_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "cvae-builtin"


class CVAEObjectParams(SpecModel):
    """`objects.params` of the cvae object source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Annotated[str, Field(min_length=1)] = "builtin"
    temperature: Annotated[float, Field(ge=0.0, le=3.0)] = 1.0  # scale of the prior's std
    # p(z|c) to sample: the Gaussian fitted to the training crops' posteriors after training
    # (sharper, more typical shapes), the prior learned in training (wider), or auto = fitted
    # where the checkpoint has one. `synthvision audit --prior` checks the same choice.
    prior: Literal["auto", "fitted", "learned"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Crops are decoded in batches of exactly this many rows (the last one padded): at a fixed
    # shape a row's result does not depend on the other rows, so bytes do not depend on how the
    # build batches images. 16 suits a CPU; 64-256 a GPU. Changing it can change rounding.
    decode_batch: Annotated[int, Field(ge=1, le=4096)] = 16
    # torch CPU threads while decoding (CPU only; None = torch's setting). 1 leaves the other
    # cores to compositing and the image writer, which on 2 cores is ~20% faster end to end.
    cpu_threads: Annotated[int, Field(ge=1, le=1024)] | None = 1
    alpha_threshold: Annotated[int, Field(ge=1, le=255)] = 128  # trim to alpha >= this
    margin_px: Annotated[int, Field(ge=0, le=16)] = 1  # kept around the trimmed object


def resolve_checkpoint(checkpoint: str) -> Path:
    """ "builtin" or a folder with config.json + safetensors -> its path; SpecError otherwise."""
    path = BUILTIN_CHECKPOINT if checkpoint == "builtin" else Path(checkpoint).expanduser()
    if not (path / "config.json").is_file():
        where = "the built-in cVAE checkpoint" if checkpoint == "builtin" else repr(checkpoint)
        raise SpecError(
            f"objects.params.checkpoint: {where} is not a cVAE checkpoint folder (no config.json "
            f"in {path}); give 'builtin' or a folder written by `synthvision train-cvae`"
        )
    return path


@functools.lru_cache(maxsize=4)
def load_cvae(path: str, device: str) -> CVAENetwork:
    """Load (once per process) a checkpoint folder onto `device`, in eval mode, without diffusers
    (its import alone takes seconds; `models.cvae.load_network` reads the same files)."""
    import torch

    from synthvision.models.cvae import load_network

    try:
        model = load_network(path, device)
    except (OSError, ValueError, TypeError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"objects.params.checkpoint: cannot load {path}: {first}") from None
    # NHWC: oneDNN runs these small convolutions ~30% faster than NCHW (rows stay independent)
    return model.to(memory_format=torch.channels_last)


def trim_to_alpha(
    rgba: npt.NDArray[np.uint8], threshold: int = 128, margin: int = 1
) -> npt.NDArray[np.uint8]:
    """Crop (h, w, 4) to the box of alpha >= threshold plus `margin`; unchanged if none is."""
    solid = rgba[..., 3] >= threshold
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    if rows.size == 0:
        return rgba
    h, w = solid.shape
    y0, y1 = max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)
    x0, x1 = max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)
    return np.ascontiguousarray(rgba[y0:y1, x0:x1])


class CVAEObjectSource:
    """Samples crops of the spec's classes from a checkpoint (see module docstring)."""

    def __init__(self, params: CVAEObjectParams, class_names: Sequence[str]) -> None:
        self.params = params
        self.path = resolve_checkpoint(params.checkpoint)
        self.device = model_device(params.device, "objects.params.device")
        self.model = load_cvae(str(self.path), self.device)
        known = self.model.class_names
        unknown = [n for n in class_names if n not in known]
        if unknown:
            raise SpecError(
                f"objects.params.checkpoint: class(es) {', '.join(map(repr, unknown))} unknown "
                f"to the cVAE checkpoint {params.checkpoint!r}; it knows: {', '.join(known)} "
                "(rename the spec classes or train a checkpoint on them with train-cvae)"
            )
        self.class_ids = {name: known.index(name) for name in class_names}
        if params.prior == "fitted" and not self.model.has_fitted_prior:
            raise SpecError(
                f"objects.params.prior: the cVAE checkpoint {params.checkpoint!r} has no fitted "
                "latent prior (train it with this version of train-cvae, or use prior: learned)"
            )

    def crops(self, requests: Sequence[CropRequest]) -> list[npt.NDArray[np.uint8]]:
        out: list[npt.NDArray[np.uint8]] = []
        k = self.params.decode_batch
        for start in range(0, len(requests), k):
            out += self._decode(requests[start : start + k])
        return out

    def _decode(self, chunk: Sequence[CropRequest]) -> list[npt.NDArray[np.uint8]]:
        """Decode <= decode_batch requests as one batch of exactly decode_batch rows."""
        import torch

        from synthvision.train_cvae import to_uint8

        ids = []
        for r in chunk:
            if r.class_name not in self.class_ids:
                raise SpecError(f"class {r.class_name!r} was not given to the cvae source")
            ids.append(self.class_ids[r.class_name])
        dim = self.model.hparams["latent_dim"]
        # One CPU generator per request: the noise of a crop is fixed by its seed alone.
        eps = torch.zeros(self.params.decode_batch, dim)  # padding rows: class 0, zero noise
        for row, r in enumerate(chunk):
            eps[row] = torch.randn(dim, generator=_generator(r.seed))
        class_ids = torch.zeros(self.params.decode_batch, dtype=torch.long)
        class_ids[: len(ids)] = torch.tensor(ids)
        with torch.inference_mode(), _cpu_threads(self.params.cpu_threads, self.device):
            eps, class_ids = eps.to(self.device, self.model.dtype), class_ids.to(self.device)
            z = self.model.latents_from_noise(
                eps, class_ids, self.params.temperature, self.params.prior
            )
            rgba = self.model.decode(z, class_ids).rgba[: len(chunk)]  # (n, 4, R, R)
        return [
            trim_to_alpha(arr, self.params.alpha_threshold, self.params.margin_px)
            for arr in to_uint8(rgba)  # (R, R, 4) each
        ]


@contextlib.contextmanager
def _cpu_threads(threads: int | None, device: str) -> Iterator[None]:
    """torch's CPU thread count set to `threads` inside the block (restored after)."""
    import torch

    if threads is None or device != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _generator(seed: int) -> torch.Generator:
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) & ((1 << 63) - 1))
    return gen


@OBJECT_SOURCES.register("cvae", CVAEObjectParams)
def make_cvae_source(
    params: CVAEObjectParams, *, class_names: Sequence[str], **_: object
) -> CVAEObjectSource:
    return CVAEObjectSource(params, class_names)
