"""A class-conditional convolutional VAE that generates RGBA object crops.

References:
- Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (the VAE, reparameterisation).
- Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep Conditional
  Generative Models" (the conditional VAE: encoder q(z|x,c), decoder p(x|z,c), and a
  class-dependent prior p(z|c), here a learned per-class Gaussian).
- Perez et al. 2018, "FiLM: Visual Reasoning with a General Conditioning Layer" (the class
  embedding scales and shifts every decoder block, so sampling from the prior follows the class).
- Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an Efficient
  Sub-Pixel Convolutional Neural Network" (pixel shuffle: the net runs on 2x2 patches).
- Bowman et al. 2016, "Generating Sentences from a Continuous Space" (KL warm-up) and Kingma et
  al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow" (free bits): both
  keep the latent in use instead of collapsing to the prior.
- Ghosh et al. 2020, "From Variational to Deterministic Autoencoders" (ex-post density
  estimation): after training, a full-covariance Gaussian per class is fitted to the encoded
  training crops and sampled instead of the prior. The prior leaves "holes" where no training
  crop's posterior lies; decoding those gives malformed shapes. `fit_latent_prior`.

The network (`CVAENetwork`, plain torch), the loss (`cvae_loss`) and the trainer
(`synthvision.train_cvae`) are separate, like nanoGPT's model/train split. `ConditionalVAE` is the
network with diffusers' `ModelMixin` + `ConfigMixin` (`save_pretrained` / `from_pretrained`:
config.json + safetensors). It is defined on first use, because importing diffusers takes ~3 s;
`load_network` reads the same folder into a `CVAENetwork` without diffusers, for fast start-up of
builds. Shapes: B batch, R resolution, D latent_dim,
E embedding_dim, p patch_size. Images are float in [0, 1], channels first, RGBA (alpha 1 =
object).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file name
LatentPrior = Literal["auto", "fitted", "learned"]  # which p(z|c) sampling draws from


@dataclass
class CVAEEncoderOutput:
    """Posterior q(z | x, c): `mean`, `logvar` (B, D)."""

    mean: torch.Tensor
    logvar: torch.Tensor


@dataclass
class CVAEDecoderOutput:
    """`rgb` (B, 3, R, R) in [0, 1] and `alpha_logits` (B, 1, R, R)."""

    rgb: torch.Tensor
    alpha_logits: torch.Tensor

    @property
    def rgba(self) -> torch.Tensor:
        """(B, 4, R, R) in [0, 1]."""
        return torch.cat([self.rgb, torch.sigmoid(self.alpha_logits)], dim=1)


@dataclass
class CVAEOutput:
    """A forward pass: reconstruction plus the posterior and the latents it drew."""

    rgb: torch.Tensor  # (B, 3, R, R)
    alpha_logits: torch.Tensor  # (B, 1, R, R)
    mean: torch.Tensor  # (B, D)
    logvar: torch.Tensor  # (B, D)
    latents: torch.Tensor  # (B, D)
    prior_mean: torch.Tensor  # (B, D) of p(z | c)
    prior_logvar: torch.Tensor  # (B, D)


class _ResBlock(nn.Module):
    """conv3x3 -> GroupNorm -> (FiLM) -> SiLU, twice, with a skip (He et al. 2016)."""

    def __init__(self, channels: int, groups: int, cond_dim: int | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        # FiLM: per-channel (scale, shift) from the class embedding; zero-init = identity at start.
        self.film = nn.Linear(cond_dim, 2 * channels) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))  # (B, C, H, W)
        if self.film is not None and cond is not None:
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
            h = h * (1 + scale) + shift
        return F.silu(x + h)


class CVAENetwork(nn.Module):
    """Class-conditional conv VAE over RGBA crops.

    Encoder: RGBA -> p x p space-to-depth -> conv (+ class embedding as a bias) -> n =
    len(block_out_channels) stride-2 stages -> (mean, logvar) of a D-dim Gaussian. Decoder:
    [z, embedding] -> linear to a (C, b, b) map, b = R / (p 2^n) -> n upsampling stages with FiLM
    -> conv to 4p^2 channels -> depth-to-space -> RGB (sigmoid) + alpha logits.
    """

    fitted_mean: torch.Tensor  # (C, D) buffers of the fitted prior, see fit_latent_prior
    fitted_scale_tril: torch.Tensor  # (C, D, D)
    fitted_count: torch.Tensor  # (C,)

    def __init__(
        self,
        class_names: Sequence[str] = ("object",),
        resolution: int = 64,
        latent_dim: int = 32,
        embedding_dim: int = 32,
        class_prior: bool = True,
        block_out_channels: Sequence[int] = (16, 32, 64, 128),
        norm_num_groups: int = 8,
        patch_size: int = 2,
    ) -> None:
        super().__init__()
        # the settings, as config.json holds them (ConditionalVAE's `config` has the same keys)
        self.hparams: dict[str, Any] = {
            "class_names": list(class_names),
            "resolution": resolution,
            "latent_dim": latent_dim,
            "embedding_dim": embedding_dim,
            "class_prior": class_prior,
            "block_out_channels": list(block_out_channels),
            "norm_num_groups": norm_num_groups,
            "patch_size": patch_size,
        }
        n = len(block_out_channels)
        if not class_names:
            raise ValueError("class_names must hold at least one class")
        p = patch_size
        if n == 0 or p < 1 or resolution % (p * 2**n) != 0:
            raise ValueError(
                f"resolution {resolution} must be divisible by patch_size * 2**len("
                f"block_out_channels) = {p * 2**n}"
            )
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"block_out_channels must be multiples of norm_num_groups={norm_num_groups}"
            )
        chans = list(block_out_channels)
        # Space-to-depth (Shi et al. 2016, "sub-pixel convolution"): the network runs on p x p
        # patches, R/p x R/p positions of 4p^2 channels, and the decoder's last conv predicts
        # every sub-pixel. At p=2 this costs ~1/4 of the full-resolution net at the same R.
        self.unshuffle, self.shuffle = nn.PixelUnshuffle(p), nn.PixelShuffle(p)
        self.bottom = resolution // (p * 2**n)  # spatial size at the bottleneck
        self.class_embedding = nn.Embedding(len(class_names), embedding_dim)
        # Learned class-conditional prior p(z|c) = N(mu_c, diag(exp(logvar_c))) (as the prior
        # network of Sohn et al. 2015, reduced to a per-class table). With a fixed N(0, I) prior
        # the encoder still writes the object's shape into z, so prior samples mix the classes'
        # shapes; a per-class prior keeps each class's region of latent space apart.
        # Zero-initialised: training starts from N(0, I).
        self.prior = nn.Embedding(len(class_names), 2 * latent_dim) if class_prior else None
        # Ex-post fitted p(z|c) = N(fitted_mean_c, L_c L_c^T) (`fit_latent_prior`); saved with the
        # weights. fitted_count_c = crops the fit of class c used; 0 = not fitted (prior is used).
        k = len(class_names)
        self.register_buffer("fitted_mean", torch.zeros(k, latent_dim))
        self.register_buffer("fitted_scale_tril", torch.zeros(k, latent_dim, latent_dim))
        self.register_buffer("fitted_count", torch.zeros(k))

        # encoder q(z | x, c)
        self.enc_in = nn.Conv2d(4 * p * p, chans[0], 3, padding=1)
        self.enc_cond = nn.Linear(embedding_dim, chans[0])
        enc: list[nn.Module] = []
        c_prev = chans[0]
        for c in chans:
            enc += [
                nn.Conv2d(c_prev, c, 4, stride=2, padding=1),  # halves H, W
                nn.GroupNorm(norm_num_groups, c),
                nn.SiLU(),
                _ResBlock(c, norm_num_groups, None),
            ]
            c_prev = c
        self.encoder = nn.Sequential(*enc)
        flat = chans[-1] * self.bottom**2
        self.to_posterior = nn.Linear(flat, 2 * latent_dim)

        # decoder p(x | z, c)
        self.dec_in = nn.Linear(latent_dim + embedding_dim, flat)
        rev = chans[::-1]
        self.dec_up = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        for i, c in enumerate(rev):
            c_out = rev[i + 1] if i + 1 < n else chans[0]
            self.dec_up.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c, c_out, 3, padding=1),
                    nn.GroupNorm(norm_num_groups, c_out),
                    nn.SiLU(),
                )
            )
            self.dec_blocks.append(_ResBlock(c_out, norm_num_groups, embedding_dim))
        self.dec_out = nn.Conv2d(chans[0], 4 * p * p, 3, padding=1)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.hparams["class_names"])

    @property
    def device(self) -> torch.device:
        return self.class_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.class_embedding.weight.dtype

    @classmethod
    def initialized(cls, generator: torch.Generator, **config: Any) -> Any:
        """A model whose initial weights come from `generator` alone: `init_weights` redraws
        every parameter and buffer, and the constructor's default init draws from a forked RNG,
        so torch's global RNG state is left as it was. (Not the meta device: its first use costs
        ~2 s.)"""
        with torch.random.fork_rng(devices=[]):
            model = cls(**config)
        model = model.to(generator.device)
        model.init_weights(generator)
        return model

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """PyTorch's default initialisation (kaiming-uniform, a=sqrt(5)) drawn from `generator`;
        FiLM layers start at zero (identity), embeddings N(0, 1), norms at (1, 0), no fitted
        prior."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if isinstance(module, nn.Linear) and _is_film(self, module):
                    nn.init.zeros_(module.weight)
                    nn.init.zeros_(module.bias)
                    continue
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.Embedding) and module is self.prior:
                nn.init.zeros_(module.weight)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, generator=generator)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for buf in (self.fitted_mean, self.fitted_scale_tril, self.fitted_count):
            buf.zero_()  # not fitted yet (to_empty left them uninitialised)

    def prior_params(self, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (B, D) of the prior p(z | c); N(0, I) without a class prior."""
        shape = (len(class_ids), self.hparams["latent_dim"])
        if self.prior is None:
            zeros = torch.zeros(shape, device=class_ids.device, dtype=self.dtype)
            return zeros, zeros
        mean, logvar = self.prior(class_ids).chunk(2, dim=1)
        return mean, logvar.clamp(-10.0, 5.0)

    def encode(self, rgba: torch.Tensor, class_ids: torch.Tensor) -> CVAEEncoderOutput:
        """rgba (B, 4, R, R) in [0, 1], class_ids (B,) -> posterior mean, logvar (B, D)."""
        emb = self.class_embedding(class_ids)  # (B, E)
        x = self.unshuffle(rgba * 2 - 1)  # (B, 4p^2, R/p, R/p)
        h = self.enc_in(x) + self.enc_cond(emb)[:, :, None, None]  # (B, C0, R/p, R/p)
        h = self.encoder(h)  # (B, C_last, b, b) with b = R / (p 2^n)
        mean, logvar = self.to_posterior(h.flatten(1)).chunk(2, dim=1)  # (B, D) each
        # clamp keeps exp(logvar) finite early in training
        return CVAEEncoderOutput(mean=mean, logvar=logvar.clamp(-30.0, 20.0))

    def decode(self, latents: torch.Tensor, class_ids: torch.Tensor) -> CVAEDecoderOutput:
        """latents (B, D), class_ids (B,) -> rgb (B, 3, R, R), alpha_logits (B, 1, R, R)."""
        emb = self.class_embedding(class_ids)  # (B, E)
        h = self.dec_in(torch.cat([latents, emb], dim=1))  # (B, C_last * b * b)
        h = h.view(len(h), -1, self.bottom, self.bottom)  # (B, C_last, b, b)
        for up, block in zip(self.dec_up, self.dec_blocks, strict=True):
            h = block(up(h), emb)  # (B, C_i, 2x, 2x)
        out = self.shuffle(self.dec_out(h))  # (B, 4p^2, R/p, R/p) -> (B, 4, R, R)
        return CVAEDecoderOutput(rgb=torch.sigmoid(out[:, :3]), alpha_logits=out[:, 3:])

    def forward(
        self,
        rgba: torch.Tensor,
        class_ids: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sample_posterior: bool = True,
    ) -> CVAEOutput:
        """Encode, draw z = mean + std * eps (reparameterisation), decode.

        Pass a `generator` (or one per batch item) for reproducible noise; without one the
        posterior mean is decoded when `sample_posterior` is False, else torch's default RNG is
        used (the package never does that: its trainer always passes a generator).
        """
        post = self.encode(rgba, class_ids)
        if sample_posterior:
            eps = randn(
                tuple(post.mean.shape),
                generator=generator,
                device=post.mean.device,
                dtype=post.mean.dtype,
            )  # (B, D)
            z = post.mean + torch.exp(0.5 * post.logvar) * eps
        else:
            z = post.mean
        dec = self.decode(z, class_ids)
        prior_mean, prior_logvar = self.prior_params(class_ids)
        return CVAEOutput(
            rgb=dec.rgb,
            alpha_logits=dec.alpha_logits,
            mean=post.mean,
            logvar=post.logvar,
            latents=z,
            prior_mean=prior_mean,
            prior_logvar=prior_logvar,
        )

    @property
    def has_fitted_prior(self) -> bool:
        """True when `fit_latent_prior` has been run for every class."""
        return bool((self.fitted_count > 0).all())

    @torch.no_grad()
    def fit_latent_prior(
        self,
        latents: torch.Tensor,
        class_ids: torch.Tensor,
        latent_vars: torch.Tensor | None = None,
        jitter: float = 1e-4,
    ) -> None:
        """Fit p(z|c) = N(mean_c, cov_c) to the posteriors of a class's training crops.

        `latents` (N, D) are posterior means, `latent_vars` (N, D) their variances: with them the
        Gaussian has the mean and covariance of the aggregate posterior (1/n) sum_i N(mu_i,
        diag var_i), i.e. cov(mu) + mean(var); without, of the means alone. The part from the
        means is shrunk towards the pooled within-class variances (diagonal) with weight
        D / (n_c + D), so a class with few crops (n_c << D) still gets a well-conditioned, mostly
        diagonal Gaussian; `jitter` keeps the Cholesky factor finite.
        """
        latents = latents.detach().to(torch.float64)  # (N, D)
        class_ids = class_ids.detach().view(-1).to(latents.device)
        num_classes, dim = self.fitted_mean.shape
        if latents.ndim != 2 or latents.shape != (len(class_ids), dim):
            raise ValueError(f"latents must be (N, {dim}) with N = len(class_ids)")
        if latent_vars is None:
            latent_vars = torch.zeros_like(latents)
        latent_vars = latent_vars.detach().to(latents)
        if latent_vars.shape != latents.shape:
            raise ValueError("latent_vars must have the shape of latents")
        present = torch.bincount(class_ids, minlength=num_classes)
        if int(present.min()) == 0:
            missing = [self.class_names[i] for i in range(num_classes) if present[i] == 0]
            raise ValueError(f"no latents for class(es) {', '.join(missing)}")
        means = torch.stack([latents[class_ids == c].mean(0) for c in range(num_classes)])
        centred = latents - means[class_ids]  # (N, D)
        pooled_var = (centred**2).sum(0) / max(1, len(latents) - num_classes)  # (D,)
        eye = torch.eye(dim, dtype=torch.float64, device=latents.device)
        for c in range(num_classes):
            xc = centred[class_ids == c]  # (n_c, D)
            n = len(xc)
            cov = xc.T @ xc / max(1, n - 1)  # (D, D)
            shrink = dim / (n + dim)
            cov = (1 - shrink) * cov + shrink * torch.diag(pooled_var) + jitter * eye
            cov = cov + torch.diag(latent_vars[class_ids == c].mean(0))  # posterior noise
            self.fitted_scale_tril[c] = torch.linalg.cholesky(cov).to(self.fitted_scale_tril)
            self.fitted_mean[c] = means[c].to(self.fitted_mean)
            self.fitted_count[c] = float(n)

    @torch.no_grad()
    def sample(
        self,
        class_ids: torch.Tensor | Sequence[int],
        generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float = 1.0,
        prior: LatentPrior = "auto",
    ) -> torch.Tensor:
        """Draw z ~ p(z | c) with its std scaled by `temperature`, decode -> RGBA (B, 4, R, R).

        p(z | c): see `latents_from_noise` (by default the fitted Gaussian where
        `fit_latent_prior` was run, else the learned prior). With a
        list of generators (one per item) each sample depends only on its own generator, not on
        the batch it was drawn in (as in diffusers pipelines).
        """
        ids = torch.as_tensor(class_ids, dtype=torch.long, device=self.device).view(-1)  # (B,)
        if isinstance(generator, list) and len(generator) != len(ids):
            raise ValueError(f"got {len(generator)} generators for {len(ids)} class ids")
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self.class_names)):
            raise ValueError(f"class ids must be in [0, {len(self.class_names)})")
        eps = randn(
            (len(ids), self.hparams["latent_dim"]),
            generator=generator,
            device=self.device,
            dtype=self.dtype,
        )  # (B, D)
        return self.decode(self.latents_from_noise(eps, ids, temperature, prior), ids).rgba

    def latents_from_noise(
        self,
        eps: torch.Tensor,
        class_ids: torch.Tensor,
        temperature: float = 1.0,
        prior: LatentPrior = "auto",
    ) -> torch.Tensor:
        """Standard normal noise (B, D) -> z (B, D) ~ p(z | c) with std scaled by temperature.

        `prior`: "fitted" (the Gaussian of `fit_latent_prior`; an error if it was not run),
        "learned" (the prior trained with the model), or "auto" (fitted where it was run). Row by
        row elementwise ops and a per-row sum (no batched matmul), so a row's bits do not depend
        on the other rows of the batch.
        """
        if prior not in ("auto", "fitted", "learned"):
            raise ValueError(f"prior must be auto, fitted or learned, got {prior!r}")
        mean, logvar = self.prior_params(class_ids)
        z = mean + torch.exp(0.5 * logvar) * eps * temperature  # the learned prior
        fitted = self.fitted_count[class_ids] > 0  # (B,)
        if prior == "fitted" and not bool(fitted.all()):
            raise ValueError("no fitted latent prior for these classes (run fit_latent_prior)")
        if prior != "learned" and bool(fitted.any()):
            tril = self.fitted_scale_tril[class_ids]  # (B, D, D)
            spread = (tril * (eps * temperature)[:, None, :]).sum(-1)  # L_c @ eps per row
            z = torch.where(fitted[:, None], self.fitted_mean[class_ids] + spread, z)
        return z


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on each generator's device and moved to `device`.

    With a list, row k comes from generator k alone (as diffusers' `randn_tensor`), so a row does
    not depend on the batch it is drawn in.
    """
    if isinstance(generator, list):
        rows = [
            torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype)
            for g in generator
        ]
        return torch.cat(rows).to(device)
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def load_network(path: str | Path, device: str | torch.device = "cpu") -> CVAENetwork:
    """A folder written by `ConditionalVAE.save_pretrained` (config.json + safetensors) ->
    `CVAENetwork` in eval mode, without importing diffusers. Weights only: no code is run."""
    from safetensors.torch import load_file

    folder = Path(path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("_class_name") != "ConditionalVAE":
        raise ValueError(f"{folder}: config.json is not a ConditionalVAE's")
    accepted = inspect.signature(CVAENetwork.__init__).parameters
    # built on the CPU (a first use of the meta device costs ~2 s), with the default init's
    # draws from a forked RNG so the caller's global RNG state is left as it was
    with torch.random.fork_rng(devices=[]):
        net = CVAENetwork(**{k: v for k, v in config.items() if k in accepted})
    weights = load_file(folder / WEIGHTS_NAME)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    # folders written before the fitted prior existed lack its buffers: they stay "not fitted"
    if unexpected or any(not k.startswith("fitted_") for k in missing):
        raise ValueError(
            f"{folder}: weights do not match config.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return net.to(device).eval()


@functools.cache
def _conditional_vae_class() -> type:
    """`ConditionalVAE`: CVAENetwork + diffusers' ModelMixin/ConfigMixin (defined once)."""
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin

    class ConditionalVAE(CVAENetwork, ModelMixin, ConfigMixin):  # type: ignore[misc]
        """The network with `save_pretrained` / `from_pretrained` (config.json + safetensors)."""

        @register_to_config
        def __init__(
            self,
            class_names: Sequence[str] = ("object",),
            resolution: int = 64,
            latent_dim: int = 32,
            embedding_dim: int = 32,
            class_prior: bool = True,
            block_out_channels: Sequence[int] = (16, 32, 64, 128),
            norm_num_groups: int = 8,
            patch_size: int = 2,
        ) -> None:
            super().__init__(
                class_names=class_names,
                resolution=resolution,
                latent_dim=latent_dim,
                embedding_dim=embedding_dim,
                class_prior=class_prior,
                block_out_channels=block_out_channels,
                norm_num_groups=norm_num_groups,
                patch_size=patch_size,
            )

    ConditionalVAE.__module__ = __name__
    ConditionalVAE.__qualname__ = "ConditionalVAE"
    return ConditionalVAE


if TYPE_CHECKING:
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.modeling_utils import ModelMixin

    class ConditionalVAE(CVAENetwork, ModelMixin, ConfigMixin):  # type: ignore[misc]
        """Type-checking view of the class `_conditional_vae_class` defines."""

else:

    def __getattr__(name: str) -> Any:  # PEP 562: `ConditionalVAE` is built on first access
        if name == "ConditionalVAE":
            return _conditional_vae_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_film(model: nn.Module, layer: nn.Module) -> bool:
    return any(isinstance(m, _ResBlock) and m.film is layer for m in model.modules())


@dataclass
class CVAELoss:
    """Loss terms, each a scalar averaged over the batch (sums over pixels / latent dims)."""

    total: torch.Tensor
    colour: torch.Tensor  # alpha-weighted squared error of RGB
    alpha: torch.Tensor  # BCE of the alpha channel
    kl: torch.Tensor  # KL(q(z|x,c) || N(0, I)), before free bits and beta
    kl_term: torch.Tensor  # beta * free-bits KL, as it enters `total`

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "colour", "alpha", "kl")}


def kl_beta(step: int, beta: float, warmup_steps: int) -> float:
    """Linear KL warm-up (Bowman et al. 2016): 0 -> beta over `warmup_steps` optimiser steps."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def cvae_loss(
    out: CVAEOutput,
    target: torch.Tensor,
    beta: float = 1.0,
    free_bits: float = 0.0,
    colour_weight: float = 20.0,
) -> CVAELoss:
    """Negative ELBO for RGBA targets (B, 4, R, R) in [0, 1].

    - colour: squared error weighted by the target alpha, so the colour of transparent padding
      costs nothing; `colour_weight` = 1 / (2 sigma^2) of a Gaussian likelihood (20 ~ sigma 0.16).
    - alpha: binary cross-entropy on the logits (alpha is a soft mask).
    - KL: closed form between the diagonal posterior and the (class) prior; free bits (Kingma et
      al. 2016) charge each latent dimension at least `free_bits` nats (batch-averaged), so the
      optimiser gains nothing from pushing a dimension's KL below that: the latent stays in use.
    """
    rgb_t, alpha_t = target[:, :3], target[:, 3:]  # (B, 3, R, R), (B, 1, R, R)
    colour = (alpha_t * (out.rgb - rgb_t) ** 2).flatten(1).sum(1).mean()
    alpha = F.binary_cross_entropy_with_logits(out.alpha_logits, alpha_t, reduction="none")
    alpha = alpha.flatten(1).sum(1).mean()
    # KL(N(m, v) || N(m_p, v_p)) per dim = 0.5 * (log v_p - log v + (v + (m - m_p)^2) / v_p - 1)
    var_ratio = torch.exp(out.logvar - out.prior_logvar)  # (B, D)
    sq = (out.mean - out.prior_mean) ** 2 * torch.exp(-out.prior_logvar)
    kl_dims = 0.5 * (var_ratio + sq - 1.0 - out.logvar + out.prior_logvar).mean(0)  # (D,)
    kl = kl_dims.sum()
    kl_term = beta * kl_dims.clamp(min=free_bits).sum()
    total = colour_weight * colour + alpha + kl_term
    return CVAELoss(total=total, colour=colour, alpha=alpha, kl=kl, kl_term=kl_term)
