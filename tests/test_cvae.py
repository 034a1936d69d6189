"""The conditional VAE: shapes, loss, save/load, seeded sampling, and the `cvae` object source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from synthvision.errors import SpecError  # noqa: E402
from synthvision.generators import OBJECT_SOURCES, CropRequest  # noqa: E402
from synthvision.models.cvae import ConditionalVAE, cvae_loss, kl_beta  # noqa: E402

TINY = dict(
    class_names=["disc", "square", "star"],
    resolution=16,
    latent_dim=4,
    embedding_dim=8,
    block_out_channels=[8, 16],
    norm_num_groups=4,
)


def tiny_model(seed: int = 0) -> ConditionalVAE:
    return ConditionalVAE.initialized(torch.Generator().manual_seed(seed), **TINY)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_forward_backward_shapes() -> None:
    model = tiny_model()
    x = torch.rand(5, 4, 16, 16)
    c = torch.tensor([0, 1, 2, 0, 1])
    out = model(x, c, generator=torch.Generator().manual_seed(1))
    assert out.rgb.shape == (5, 3, 16, 16) and out.alpha_logits.shape == (5, 1, 16, 16)
    assert out.mean.shape == out.logvar.shape == out.latents.shape == (5, 4)
    assert 0 <= float(out.rgb.detach().min()) and float(out.rgb.detach().max()) <= 1
    loss = cvae_loss(out, x, beta=0.5, free_bits=0.1)
    loss.total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert loss.total.ndim == 0 and float(loss.kl.detach()) >= 0
    # the encoder and the decoder both receive gradient
    assert model.enc_in.weight.grad.abs().sum() > 0
    assert model.dec_out.weight.grad.abs().sum() > 0


def test_loss_ignores_colour_where_transparent() -> None:
    model = tiny_model()
    x = torch.rand(2, 4, 16, 16)
    x[:, 3] = 0.0
    out = model(x, torch.tensor([0, 1]), sample_posterior=False)
    assert float(cvae_loss(out, x).colour.detach()) == 0.0
    assert (
        kl_beta(0, 1.0, 100) == 0.0
        and kl_beta(50, 1.0, 100) == 0.5
        and kl_beta(500, 1.0, 100) == 1.0
    )


def test_free_bits_floor_the_kl_term() -> None:
    model = tiny_model()
    x = torch.rand(3, 4, 16, 16)
    out = model(x, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    big = cvae_loss(out, x, free_bits=100.0)
    assert float(big.kl_term.detach()) == pytest.approx(100.0 * 4)


def test_init_never_touches_the_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b = tiny_model(3), tiny_model(3)
    assert torch.equal(state, torch.random.get_rng_state())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_save_load_identical_outputs(tmp_path: Path) -> None:
    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file()
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ConditionalVAE.from_pretrained(tmp_path / "m", use_safetensors=True).eval()
    assert loaded.config["class_names"] == TINY["class_names"]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    assert torch.equal(model.sample([0, 1, 2, 0], gens()), loaded.sample([0, 1, 2, 0], gens()))
    x = torch.rand(2, 4, 16, 16)
    a = model(x, torch.tensor([1, 2]), sample_posterior=False)
    b = loaded(x, torch.tensor([1, 2]), sample_posterior=False)
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha_logits, b.alpha_logits)


def test_same_seed_same_samples_and_batch_independence() -> None:
    model = tiny_model().eval()
    ids = [0, 1, 2, 2]
    s1 = model.sample(ids, [torch.Generator().manual_seed(10 + i) for i in range(4)], 0.8)
    s2 = model.sample(ids, [torch.Generator().manual_seed(10 + i) for i in range(4)], 0.8)
    assert s1.shape == (4, 4, 16, 16) and torch.equal(s1, s2)
    s3 = model.sample(ids, [torch.Generator().manual_seed(99 + i) for i in range(4)], 0.8)
    assert not torch.equal(s1, s3)
    # the noise of item k depends on its own generator only
    single = model.sample([2], [torch.Generator().manual_seed(13)], 0.8)
    assert torch.allclose(single[0], s1[3], atol=1e-5)
    with pytest.raises(ValueError, match="class ids"):
        model.sample([7], [torch.Generator()])


def test_fitted_latent_prior_matches_the_latents_and_survives_save_load(tmp_path: Path) -> None:
    model = tiny_model().eval()
    assert not model.has_fitted_prior
    with pytest.raises(ValueError, match="no fitted latent prior"):
        model.latents_from_noise(torch.zeros(1, 4), torch.tensor([0]), prior="fitted")
    gen = torch.Generator().manual_seed(0)
    true_mean = torch.tensor([[2.0, -1.0, 0.0, 0.5], [0.0, 0.0, 3.0, 0.0], [-2.0, 1.0, 1.0, 1.0]])
    mix = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0, 0, 0.5, 0], [0, 0, 0, 2.0]])
    ids = torch.arange(3).repeat_interleave(4000)
    latents = true_mean[ids] + torch.randn(len(ids), 4, generator=gen) @ mix.T  # cov = mix mix^T
    model.fit_latent_prior(latents, ids)
    assert model.has_fitted_prior and model.fitted_count.tolist() == [4000.0] * 3
    # sampling follows the fitted Gaussian (shrinkage 4 / 4004 is negligible here)
    eps = torch.randn(20000, 4, generator=gen)
    with torch.no_grad():
        z = model.latents_from_noise(eps, torch.full((20000,), 1))
    fitted_cov = model.fitted_scale_tril[1] @ model.fitted_scale_tril[1].T
    assert torch.allclose(model.fitted_mean[1], true_mean[1], atol=0.12)  # 4 sd of the fit
    assert torch.allclose(fitted_cov, mix @ mix.T, atol=0.3)
    assert torch.allclose(z.mean(0), model.fitted_mean[1], atol=0.06)
    assert torch.allclose(torch.cov(z.T), fitted_cov, atol=0.15)
    # temperature scales the spread around the class mean
    with torch.no_grad():
        z_half = model.latents_from_noise(eps, torch.full((20000,), 1), temperature=0.5)
    centre = model.fitted_mean[1]
    assert torch.allclose(z_half - centre, 0.5 * (z - centre), atol=1e-5)
    # the learned prior stays available (N(0, I) here: the tiny model's prior is untrained)
    with torch.no_grad():
        learned = model.latents_from_noise(eps[:3], torch.tensor([1, 1, 1]), prior="learned")
    assert torch.equal(learned, eps[:3])
    # a row's latent does not depend on the other rows of the batch (bit for bit)
    mixed = model.latents_from_noise(eps[:5], torch.tensor([0, 2, 1, 1, 0]))
    alone = model.latents_from_noise(eps[2:3], torch.tensor([1]))
    assert torch.equal(mixed[2], alone[0])
    model.save_pretrained(tmp_path / "m")
    loaded = ConditionalVAE.from_pretrained(tmp_path / "m", use_safetensors=True).eval()
    assert loaded.has_fitted_prior
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    assert torch.equal(model.sample([0, 1, 2], gens()), loaded.sample([0, 1, 2], gens()))


def test_fitted_prior_of_a_class_with_few_crops_is_shrunk_and_finite() -> None:
    model = tiny_model()
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([0] * 500 + [1] * 500 + [2] * 2)  # class 2: 2 crops in 4 dims
    latents = torch.randn(len(ids), 4, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 1.0])
    model.fit_latent_prior(latents, ids)
    tril = model.fitted_scale_tril[2]
    cov = tril @ tril.T
    assert torch.isfinite(cov).all() and torch.linalg.eigvalsh(cov).min() > 0.01
    # weight 4 / (2 + 4) on the pooled variances: the diagonal stays near (1, 4, 0.25, 1)
    assert cov.diagonal()[1] > 1.5 and cov.diagonal()[2] < 1.0
    with pytest.raises(ValueError, match="no latents for class"):
        model.fit_latent_prior(latents[:1000], ids[:1000])


def test_class_prior_and_patch_size() -> None:
    model = tiny_model()
    ids = torch.tensor([0, 2])
    mean, logvar = model.prior_params(ids)
    assert mean.shape == logvar.shape == (2, 4) and not mean.any()  # starts as N(0, I)
    with torch.no_grad():
        model.prior.weight[2, :4] = 5.0  # move class 2's prior mean
    mean, _ = model.prior_params(ids)
    assert mean[1].eq(5.0).all() and not mean[0].any()
    flat = ConditionalVAE(**{**TINY, "class_prior": False, "patch_size": 1})
    assert flat.prior is None and not flat.prior_params(ids)[0].any()
    x = torch.rand(2, 4, 16, 16)
    assert flat(x, ids, sample_posterior=False).rgb.shape == (2, 3, 16, 16)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ConditionalVAE(**{**TINY, "resolution": 18})


@pytest.fixture()
def tiny_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    tiny_model().save_pretrained(path)
    return path


def test_cvae_source_returns_valid_rgba_crops(tiny_checkpoint: Path) -> None:
    names = ("star", "disc")
    source = OBJECT_SOURCES.create(
        "cvae", {"checkpoint": str(tiny_checkpoint), "device": "cpu"}, "objects", class_names=names
    )
    requests = [CropRequest(names[i % 2], (24 + i, 30), seed=1000 + i, index=i) for i in range(6)]
    crops = source.crops(requests)
    assert len(crops) == 6
    for crop in crops:
        assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[2] == 4
        assert 1 <= crop.shape[0] <= 16 and 1 <= crop.shape[1] <= 16
    # per-request seeds and fixed-shape decode batches: a crop's bytes do not depend on which
    # other requests share its call or its batch, nor on its position in the batch
    again = source.crops(requests[3:4])
    assert np.array_equal(again[0], crops[3])
    shuffled = [requests[k] for k in (5, 3, 0, 4, 1, 2)]
    for req, crop in zip(shuffled, source.crops(shuffled), strict=True):
        assert np.array_equal(crop, crops[requests.index(req)])
    params = {"checkpoint": str(tiny_checkpoint), "decode_batch": 4}
    small = OBJECT_SOURCES.create("cvae", params, "objects", class_names=names)
    assert [c.shape for c in small.crops(requests)] == [c.shape for c in crops]


def test_load_network_matches_from_pretrained_without_importing_diffusers(
    tiny_checkpoint: Path,
) -> None:
    import subprocess
    import sys

    from synthvision.models.cvae import CVAENetwork, load_network

    net = load_network(tiny_checkpoint)
    assert type(net) is CVAENetwork and not net.training
    full = ConditionalVAE.from_pretrained(tiny_checkpoint, use_safetensors=True).eval()
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    assert torch.equal(net.sample([0, 1, 2], gens()), full.sample([0, 1, 2], gens()))
    # a build's cvae source starts without diffusers (its import alone takes seconds)
    code = (
        "import sys; from synthvision.generators import OBJECT_SOURCES; "
        f"OBJECT_SOURCES.create('cvae', {{'checkpoint': {str(tiny_checkpoint)!r}}}, 'objects', "
        "class_names=('disc',)); assert 'diffusers' not in sys.modules, 'diffusers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # a folder from before the fitted prior (no fitted_* tensors) loads as "not fitted"
    from safetensors.torch import load_file, save_file

    old = tiny_checkpoint.parent / "old"
    old.mkdir()
    (old / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    weights = load_file(tiny_checkpoint / "diffusion_pytorch_model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith("fitted_")}
    save_file(kept, old / "diffusion_pytorch_model.safetensors")
    assert not load_network(old).has_fitted_prior
    # weights that do not fit the config are one clear error
    other = tiny_checkpoint.parent / "other"
    ConditionalVAE(**{**TINY, "latent_dim": 8}).save_pretrained(other)
    (other / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(SpecError, match="cannot load"):
        OBJECT_SOURCES.create("cvae", {"checkpoint": str(other)}, "objects", class_names=("disc",))


def test_cvae_source_unknown_class_is_a_clear_error(tiny_checkpoint: Path) -> None:
    with pytest.raises(
        SpecError, match=r"'zebra' unknown to the cVAE checkpoint.*disc, square, star"
    ):
        OBJECT_SOURCES.create(
            "cvae", {"checkpoint": str(tiny_checkpoint)}, "objects", class_names=("disc", "zebra")
        )


def test_cvae_source_prior_choice(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"objects\.params\.prior: .* no fitted latent prior"):
        OBJECT_SOURCES.create(
            "cvae", {"checkpoint": str(tiny_checkpoint), "prior": "fitted"}, "objects",
            class_names=("disc",),
        )  # fmt: skip
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    model.fit_latent_prior(3.0 + torch.randn(30, 4, generator=gen), torch.arange(3).repeat(10))
    model.save_pretrained(tmp_path / "fitted")
    requests = [CropRequest("star", (16, 16), seed=5, index=0)]

    def crop(prior: str) -> np.ndarray:
        params = {"checkpoint": str(tmp_path / "fitted"), "prior": prior}
        return OBJECT_SOURCES.create("cvae", params, "objects", class_names=("star",)).crops(
            requests
        )[0]

    assert np.array_equal(crop("auto"), crop("fitted"))
    assert not np.array_equal(crop("auto"), crop("learned"))


def test_cvae_source_bad_params(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a cVAE checkpoint folder"):
        OBJECT_SOURCES.create("cvae", {"checkpoint": str(tmp_path)}, "objects", class_names=("a",))
    with pytest.raises(SpecError, match=r"objects\.params\.temperature"):
        OBJECT_SOURCES.create("cvae", {"temperature": -1}, "objects", class_names=("a",))
    with pytest.raises(SpecError, match=r"objects\.params\.colour"):
        OBJECT_SOURCES.create("cvae", {"colour": 1}, "objects", class_names=("a",))


def test_builtin_checkpoint_is_shipped_and_small() -> None:
    from synthvision.generators.cvae import BUILTIN_CHECKPOINT

    if not (BUILTIN_CHECKPOINT / "config.json").is_file():
        pytest.skip("built-in checkpoint not trained yet (scripts/train_builtin_cvae.py)")
    size = sum(p.stat().st_size for p in BUILTIN_CHECKPOINT.iterdir() if p.is_file())
    assert size <= 10 * 1024 * 1024
    from synthvision.generators.procedural import PROCEDURAL_CLASSES

    source = OBJECT_SOURCES.create(
        "cvae", {"checkpoint": "builtin"}, "objects", class_names=PROCEDURAL_CLASSES
    )
    crops = source.crops(
        [CropRequest(n, (64, 64), seed=i) for i, n in enumerate(PROCEDURAL_CLASSES)]
    )
    assert all(c.dtype == np.uint8 and c.shape[2] == 4 and (c[..., 3] > 127).any() for c in crops)


def test_cvae_build_is_byte_identical_across_build_batch_sizes(tmp_path: Path) -> None:
    """The shipped model at real size, end to end: a build's bytes do not depend on how many
    images it generates at once. (Last-bit float differences rarely flip a uint8 level, so the
    float-level property is tested on its own below.)"""
    from synthvision.build import build

    from .helpers import dataset_digests, small_spec

    spec = small_spec(
        classes=[{"name": n} for n in ("disc", "star", "ring", "arrow")],
        objects={"name": "cvae", "params": {"checkpoint": "builtin"}},
        objects_per_image=[2, 7],
    )
    build(spec, tmp_path / "a", show_progress=False, batch_size=4)
    build(spec, tmp_path / "b", show_progress=False, batch_size=1)
    a, b = dataset_digests(tmp_path / "a"), dataset_digests(tmp_path / "b")
    assert a and a == b


def test_decoder_rows_do_not_depend_on_their_batch_mates_at_a_fixed_shape() -> None:
    """What the source's fixed-shape decode batches rely on, checked bit for bit in float on the
    shipped model: at one batch shape a row's output is the same at any position and beside any
    other rows (different shapes may round differently, which is why batches are padded)."""
    from synthvision.generators.cvae import load_cvae, resolve_checkpoint

    model = load_cvae(str(resolve_checkpoint("builtin")), "cpu")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(48, model.hparams["latent_dim"], generator=gen)
    ids = torch.randint(0, len(model.class_names), (48,), generator=gen)

    def decode(order: torch.Tensor) -> torch.Tensor:
        out = torch.empty(48, 4, 64, 64)
        with torch.inference_mode():
            for s in range(0, 48, 16):
                rows = order[s : s + 16]
                out[rows] = model.decode(z[rows], ids[rows]).rgba.float()
        return out

    reference = decode(torch.arange(48))
    assert torch.equal(decode(torch.randperm(48, generator=gen)), reference)
    assert torch.equal(decode(torch.arange(48).flip(0)), reference)
