"""Diffusion generators on tiny random models (CPU, 2 steps, 32 px): valid labeled samples,
determinism, batch independence, decode retries, clear errors."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from synthvision import boxes as box_ops
from synthvision.config import Spec, parse_spec
from synthvision.errors import SpecError
from synthvision.plan import make_plan
from synthvision.structures import Sample

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from synthvision.generators import SCENE_GENERATORS, prompts  # noqa: E402
from synthvision.generators import diffusion as dif  # noqa: E402
from synthvision.generators import diffusion_sources as sources  # noqa: E402
from synthvision.generators.base import BackgroundRequest, CropRequest  # noqa: E402
from tests import tiny_models  # noqa: E402

CLASSES = ["cat", "fire_truck", "dog"]


def scene_spec(name: str, model: str, num_images: int = 4, **params: Any) -> Spec:
    return parse_spec(
        {
            "name": "tiny-diffusion",
            "seed": 3,
            "num_images": num_images,
            "image_size": [32, 32],
            "classes": [{"name": c} for c in CLASSES],
            "objects_per_image": [1, 3],
            "layout": {"min_area_px": 4, "scale": [0.2, 0.5]},
            "scene": {
                "name": name,
                "params": {"model": model, "steps": 2, "batch_size": 4, **params},
            },
        }
    )


def make(spec: Spec) -> Any:
    return SCENE_GENERATORS.create(spec.scene.name, spec.scene.params, "scene", spec=spec)


def assert_valid(samples: list[Sample], spec: Spec) -> None:
    jobs = make_plan(spec)
    assert [s.index for s in samples] == [j.index for j in jobs[: len(samples)]]
    for s in samples:
        h, w = spec.image_size
        assert s.image.dtype == np.uint8 and s.image.shape == (h, w, 3)
        inst = s.instances
        assert ((inst.class_id >= 0) & (inst.class_id < len(spec.classes))).all()
        assert (inst.xyxy[:, :2] >= 0).all() and (inst.xyxy[:, 2] <= w).all()
        assert (inst.xyxy[:, 3] <= h).all()
        assert (box_ops.area_xyxy(inst.xyxy) > 0).all()
        if inst.masks is not None:
            assert (inst.masks.reshape(len(inst), -1).sum(1) > 0).all()
            np.testing.assert_array_equal(inst.xyxy, box_ops.masks_to_xyxy(inst.masks))
        md = s.metadata
        json.dumps(md)  # JSON-serialisable
        for key in ("prompt", "seed", "retries", "model", "safety_checker"):
            assert key in md, key
        assert md["safety_checker"] == "off"
        assert "rejected" not in md


@pytest.fixture(scope="module")
def attention_gen() -> Any:
    return make(scene_spec("diffusion-attention", tiny_models.sd_model()))


def test_diffusion_attention_scenes_are_valid_and_labeled(attention_gen: Any) -> None:
    spec = attention_gen.spec
    samples = attention_gen.generate(make_plan(spec))
    assert_valid(samples, spec)
    assert sum(len(s.instances) for s in samples) > 0
    for s in samples:
        assert s.instances.masks is not None and s.instances.scores is not None
        planned = s.metadata["planned"]
        for c in s.instances.class_id:  # labels only for classes the prompt named
            assert spec.classes[int(c)].name in planned
        for name in set(planned):
            assert name.replace("_", " ") in s.metadata["prompt"].replace("trucks", "truck")


def test_same_seed_identical_pixels_and_other_seed_differs(attention_gen: Any) -> None:
    jobs = make_plan(attention_gen.spec)[:2]
    a = attention_gen.generate(jobs)
    b = attention_gen.generate(jobs)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.instances.xyxy, y.instances.xyxy)
    other = make_plan(
        scene_spec("diffusion-attention", tiny_models.sd_model()).model_copy(update={"seed": 4})
    )[:1]
    assert not np.array_equal(attention_gen.generate(other)[0].image, a[0].image)


def test_image_identical_in_a_batch_of_four_or_alone(attention_gen: Any) -> None:
    jobs = make_plan(attention_gen.spec)[:4]
    together = attention_gen.generate(jobs)
    for job, t in zip(jobs, together, strict=True):
        alone = attention_gen.generate([job])[0]
        np.testing.assert_array_equal(alone.image, t.image)
        np.testing.assert_array_equal(alone.instances.xyxy, t.instances.xyxy)
        np.testing.assert_array_equal(alone.instances.class_id, t.instances.class_id)
    # The same image with different batch-mates, too.
    mixed = attention_gen.generate([jobs[3], jobs[1]])
    np.testing.assert_array_equal(mixed[1].image, together[1].image)


def test_fused_projections_generate_the_same_labeled_scenes(attention_gen: Any) -> None:
    fused = make(scene_spec("diffusion-attention", tiny_models.sd_model(), fuse_qkv=True))
    unet = fused.engine.loaded.pipe.unet
    assert unet is not attention_gen.engine.loaded.pipe.unet  # a pipeline of its own
    assert all(m.fused_projections for m in unet.modules() if hasattr(m, "fused_projections"))
    jobs = make_plan(fused.spec)
    got, want = fused.generate(jobs), attention_gen.generate(jobs)
    assert_valid(got, fused.spec)
    for g, w in zip(got, want, strict=True):  # one matmul instead of two: equal up to rounding
        assert np.abs(g.image.astype(int) - w.image.astype(int)).max() <= 2
    assert sum(len(s.instances) for s in got) == sum(len(s.instances) for s in want)


def test_sdpa_preference_puts_the_backend_first_and_restores_the_order() -> None:
    import torch
    from torch.nn.attention import SDPBackend

    order = torch._C._get_sdp_priority_order  # what SDPA consults to pick its kernel
    before = list(order())
    assert before[0] == int(SDPBackend.FLASH_ATTENTION)  # torch's own order: cuDNN comes last
    with dif.sdpa_preference("cudnn"):
        assert order()[0] == int(SDPBackend.CUDNN_ATTENTION)
        # Shapes cuDNN cannot serve still have the usual kernels, in their usual order.
        enabled = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
        assert enabled == (True, True)
    assert list(order()) == before
    with dif.sdpa_preference("auto"):
        assert list(order()) == before


def test_sdpa_backend_is_used_for_generation(attention_gen: Any) -> None:
    """A preferred SDPA kernel applies to each batch; on a CPU (no cuDNN attention) the images
    are those of the default order."""
    gen = make(scene_spec("diffusion-attention", tiny_models.sd_model(), sdpa_backend="cudnn"))
    assert gen.engine.loaded is not attention_gen.engine.loaded  # kernels differ: own pipeline
    seen: list[int] = []
    real = gen.engine._latents

    def spy(*args: Any, **kwargs: Any) -> Any:
        import torch

        seen.append(int(torch._C._get_sdp_priority_order()[0]))
        return real(*args, **kwargs)

    gen.engine._latents = spy  # type: ignore[method-assign]
    jobs = make_plan(gen.spec)[:2]
    got, want = gen.generate(jobs), attention_gen.generate(jobs)
    from torch.nn.attention import SDPBackend

    assert seen and set(seen) == {int(SDPBackend.CUDNN_ATTENTION)}
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.image, w.image)


def test_gligen_scenes_are_valid_with_layout_labels() -> None:
    spec = scene_spec("gligen", tiny_models.gligen_model())
    gen = make(spec)
    samples = gen.generate(make_plan(spec))
    assert_valid(samples, spec)
    for s in samples:
        assert len(s.metadata["phrases"]) == len(s.metadata["layout_xyxy"])
        assert len(s.instances) <= len(s.metadata["layout_xyxy"])
        assert len(s.instances) > 0
        # Tightened boxes stay inside their layout boxes.
        layout = np.array(s.metadata["layout_xyxy"])
        for b in s.instances.xyxy:
            assert (box_ops.iou_xyxy(b, layout) > 0).any()
    again = gen.generate(make_plan(spec)[:1])[0]
    np.testing.assert_array_equal(again.image, samples[0].image)
    plain = make(scene_spec("gligen", tiny_models.gligen_model(), tighten=False))
    loose = plain.generate(make_plan(spec)[:2])
    for s in loose:
        assert s.instances.masks is None
        np.testing.assert_allclose(s.instances.xyxy, np.array(s.metadata["layout_xyxy"]))


def test_object_source_returns_rgba_crops_with_object_alpha() -> None:
    params = sources.DiffusionObjectParams(model=tiny_models.sd_model(), steps=2, batch_size=4)
    src = sources.DiffusionObjectSource(params, CLASSES)
    reqs = [CropRequest(c, (12, 12), seed=10 + i) for i, c in enumerate(CLASSES)]
    crops = src.crops(reqs)
    assert len(crops) == len(reqs) == len(src.last_metadata)
    for crop, md, req in zip(crops, src.last_metadata, reqs, strict=True):
        assert crop.dtype == np.uint8 and crop.ndim == 3 and crop.shape[2] == 4
        assert (crop[..., 3] > 0).any()
        assert set(np.unique(crop[..., 3])) <= {0, 255}
        assert req.class_name.replace("_", " ") in md["prompt"] and md["tokens"]
        json.dumps(md)
    again = src.crops(reqs[:1])[0]
    np.testing.assert_array_equal(again, crops[0])


def test_background_source_exact_size_and_deterministic() -> None:
    params = sources.DiffusionBackgroundParams(model=tiny_models.sd_model(), steps=2, batch_size=2)
    src = sources.DiffusionBackgroundSource(params)
    reqs = [
        BackgroundRequest((30, 44), 1),
        BackgroundRequest((30, 44), 2),
        BackgroundRequest((16, 16), 3),
    ]
    out = src.backgrounds(reqs)
    assert [o.shape for o in out] == [(30, 44, 3), (30, 44, 3), (16, 16, 3)]
    assert all(o.dtype == np.uint8 for o in out)
    np.testing.assert_array_equal(src.backgrounds(reqs[1:2])[0], out[1])


def _nan_decode(vae: Any, bad: Any) -> Any:
    """Wrap vae.decode: outputs NaN while `bad(call_number, dtype)` says so."""
    real = vae.decode
    calls = {"n": 0}

    def decode(z: Any, return_dict: bool = True) -> Any:
        calls["n"] += 1
        out = real(z, return_dict=False)[0]
        if bad(calls["n"], vae.dtype):
            out = torch.full_like(out, float("nan"))
        return (out,)

    return decode


def test_nan_decode_is_retried_with_a_new_seed(
    monkeypatch: pytest.MonkeyPatch, attention_gen: Any
) -> None:
    vae = attention_gen.engine.loaded.pipe.vae
    monkeypatch.setattr(vae, "decode", _nan_decode(vae, lambda n, _: n == 1))
    job = make_plan(attention_gen.spec)[0]
    s = attention_gen.generate([job])[0]
    assert s.metadata["retries"] == 1 and s.metadata["retry_reasons"] == ["nan"]
    assert s.metadata["seed"] != job.derive_seed("diffusion")
    assert len(s.instances) > 0 and np.isfinite(s.image).all()


def test_nan_decode_forever_never_produces_labels(
    monkeypatch: pytest.MonkeyPatch, attention_gen: Any
) -> None:
    vae = attention_gen.engine.loaded.pipe.vae
    monkeypatch.setattr(vae, "decode", _nan_decode(vae, lambda n, _: True))
    jobs = make_plan(attention_gen.spec)[:2]
    for s in attention_gen.generate(jobs):
        assert s.metadata["rejected"] == "nan"
        assert len(s.instances) == 0
        assert s.metadata["retries"] == attention_gen.params.max_retries
        assert s.image.shape == (32, 32, 3)


def test_half_precision_nan_is_fixed_by_a_float32_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = make(scene_spec("diffusion-attention", tiny_models.sd_model(), dtype="bfloat16"))
    vae = gen.engine.loaded.pipe.vae
    monkeypatch.setattr(vae, "decode", _nan_decode(vae, lambda n, dt: dt != torch.float32))
    job = make_plan(gen.spec)[0]
    s = gen.generate([job])[0]
    assert s.metadata["retries"] == 1 and "retry_reasons" not in s.metadata
    assert s.metadata["seed"] == job.derive_seed("diffusion")  # same seed: only the decode redone
    assert "rejected" not in s.metadata


def test_clip_filter_rejects_below_threshold() -> None:
    clip = {"model": tiny_models.clip_model(), "threshold": 100.0}
    gen = make(
        scene_spec("diffusion-attention", tiny_models.sd_model(), clip_filter=clip, max_retries=1)
    )
    s = gen.generate(make_plan(gen.spec)[:1])[0]
    assert s.metadata["rejected"].startswith("clip_score") and len(s.instances) == 0
    ok = make(
        scene_spec(
            "diffusion-attention", tiny_models.sd_model(), clip_filter={**clip, "threshold": 0.0}
        )
    )
    jobs = make_plan(ok.spec)
    together = ok.generate(jobs[:3])  # scored in one CLIP call, padded to the batch size
    for job, sample in zip(jobs[:3], together, strict=True):
        assert "rejected" not in sample.metadata
        alone = ok.generate([job])[0]
        assert sample.metadata["clip_score"] == alone.metadata["clip_score"] >= 0.0


@pytest.mark.parametrize("name", ["diffusion-attention", "gligen"])
def test_missing_model_path_is_a_clear_spec_error(name: str, tmp_path: Any) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(SpecError, match=r"scene\.params\.model: .*does not exist"):
        make(scene_spec(name, missing))
    with pytest.raises(SpecError, match=r"could not load"):
        make(scene_spec(name, str(tmp_path)))  # exists, but holds no pipeline


def test_unreachable_hub_is_a_clear_error_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Without network, huggingface_hub retries for a minute, then diffusers blames a missing
    model_index.json; the loader says what is wrong before any download is tried."""
    import huggingface_hub
    from huggingface_hub import constants

    from synthvision import hub

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    for name in hub._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    hub._hub_reachable.cache_clear()
    try:
        with pytest.raises(SpecError, match=r"model: 'someone/not-cached' is not in the local"):
            make(scene_spec("diffusion-attention", "someone/not-cached"))
        with pytest.raises(SpecError, match=r"and huggingface\.co cannot be reached"):
            make(scene_spec("diffusion-attention", "someone/not-cached"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: the same, saying why
        with pytest.raises(SpecError, match=r"not in the local .* and HF_HUB_OFFLINE=1 is set"):
            make(scene_spec("diffusion-attention", "someone/not-cached"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        # in the cache: it loads from there, without trying the hub
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/c/x")
        where = "scene.params.model"
        assert hub.local_files_only_for(
            "someone/cached", filename="model_index.json", revision=None, asked=False, where=where
        )
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # the proxy may reach it
        hub._hub_reachable.cache_clear()
        assert not hub.local_files_only_for(
            "someone/cached", filename="model_index.json", revision=None, asked=False, where=where
        )
    finally:
        hub._hub_reachable.cache_clear()


def test_settings_that_could_never_label_are_spec_errors(tmp_path: Any) -> None:
    """Accepted, these built images that were all rejected (or never labeled)."""
    model = tiny_models.sd_model()
    with pytest.raises(SpecError, match=r"scene\.params\.attention: .* eager cannot record"):
        make(scene_spec("diffusion-attention", model, attention="eager"))
    # the tiny UNet has cross-attention at factors 1 and 2 (its first block and mid block)
    with pytest.raises(SpecError, match=r"capture_layers: \[4\] match no .* factors \[1, 2\]"):
        make(scene_spec("diffusion-attention", model, capture_layers=[2, 4]))
    with pytest.raises(SpecError, match=r"attention: tighten .* eager cannot record"):
        make(scene_spec("gligen", tiny_models.gligen_model(), attention="eager"))
    make(scene_spec("gligen", tiny_models.gligen_model(), attention="eager", tighten=False))
    # weights saved as pickles only: the error says which switch loads them
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(SpecError, match=r"set use_safetensors: false if you trust them"):
        make(scene_spec("diffusion-attention", str(tmp_path)))


def test_negative_prompt_is_recorded_only_when_guidance_uses_it() -> None:
    guided = make(scene_spec("diffusion-attention", tiny_models.sd_model()))
    unguided = make(scene_spec("diffusion-attention", tiny_models.sd_model(), guidance_scale=1.0))
    job = make_plan(guided.spec)[0]
    assert guided.generate([job])[0].metadata["negative_prompt"] == guided.params.negative_prompt
    assert unguided.generate([job])[0].metadata["negative_prompt"] is None


def test_bad_params_are_spec_errors() -> None:
    with pytest.raises(SpecError, match=r"scene\.params\.stepz"):
        make(scene_spec("diffusion-attention", tiny_models.sd_model(), stepz=3))
    with pytest.raises(SpecError, match=r"unknown template field"):
        make(
            scene_spec(
                "diffusion-attention", tiny_models.sd_model(), prompt="{objects} at {planet}"
            )
        )
    with pytest.raises(SpecError, match=r"\{objects\}"):
        make(scene_spec("diffusion-attention", tiny_models.sd_model(), prompt="a photo"))
    with pytest.raises(SpecError, match=r"scheduler"):
        make(scene_spec("diffusion-attention", tiny_models.sd_model(), scheduler="Nope"))
    with pytest.raises(SpecError, match=r"fuse_qkv: needs attention: sdpa"):
        make(
            scene_spec(
                "diffusion-attention", tiny_models.sd_model(), attention="eager", fuse_qkv=True
            )
        )
    with pytest.raises(SpecError, match=r"sdpa_backend: needs attention: sdpa"):
        make(
            scene_spec(
                "diffusion-attention",
                tiny_models.sd_model(),
                attention="eager",
                sdpa_backend="cudnn",
            )
        )
    with pytest.raises(SpecError, match=r"sdpa_backend"):
        make(scene_spec("diffusion-attention", tiny_models.sd_model(), sdpa_backend="fast"))
    with pytest.raises(SpecError, match=r"must mention the class"):
        sources.DiffusionObjectSource(
            sources.DiffusionObjectParams(model=tiny_models.sd_model(), steps=1),
            ["cat"],
            {"cat": ["a photo of a dog"]},
        )


def test_prompt_helpers() -> None:
    assert prompts.objects_text([1, 0, 0], ["cat", "fire truck"]) == "a fire truck and two cats"
    assert (
        prompts.objects_text([0, 1, 2], ["box", "apple", "puppy"]) == "a box, an apple and a puppy"
    )
    assert prompts.plural("bus") == "buses" and prompts.plural("puppy") == "puppies"
    prompt = "two fire trucks and a truck"
    spans = prompts.phrase_spans(prompt, ["truck", "fire truck"])
    assert [prompt[a:b] for a, b in spans[1]] == ["fire trucks"]
    assert [prompt[a:b] for a, b in spans[0]] == ["truck"]
    rng1, rng2 = np.random.default_rng(0), np.random.default_rng(0)
    t = "a {colour} {class} {weather}"
    a1 = prompts.draw_attributes(t, prompts.DEFAULT_ATTRIBUTES, rng1)
    assert a1 == prompts.draw_attributes(t, prompts.DEFAULT_ATTRIBUTES, rng2)
    assert set(a1) == {"colour", "weather"}


@pytest.mark.parametrize("guidance", [0.0, 5.0])
def test_sdxl_capture_records_every_query_and_leaves_the_image_unchanged(guidance: float) -> None:
    """SDXL: two text encoders side by side, text-time conditioning, no CFG (Turbo) or CFG."""
    params = dif.PipelineParams(
        model=tiny_models.sdxl_model(), steps=2, batch_size=2, guidance_scale=guidance
    )
    engine = dif.DiffusionEngine.from_params(params, "scene.params")
    assert type(engine.loaded.pipe).__name__ == "StableDiffusionXLPipeline"
    prompt = "a photo of a cat and two dogs"
    weights, _ = prompts.query_weights(
        engine.loaded.tokenizer, prompt, prompts.phrase_spans(prompt, ["cat", "dog"])
    )
    captured = engine.run([dif.GenRequest(prompt, "blurry", 3, (32, 32), weights=weights)])[0]
    plain = engine.run([dif.GenRequest(prompt, "blurry", 3, (32, 32))])[0]
    np.testing.assert_array_equal(captured.image, plain.image)
    assert captured.maps is not None and captured.maps.shape == (2, 16, 16)
    assert (captured.maps.reshape(2, -1).sum(axis=1) > 0).all()


def test_a_hub_id_loads_from_the_cache_and_its_commit_is_recorded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A hub id in the local cache loads offline, and every sample records the snapshot's commit
    (a hub id alone, or `main`, names other weights over time); a local folder records none."""
    import shutil

    from huggingface_hub import constants

    from synthvision.generators import diffusion as diffusion_mod

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    shutil.copytree(tiny_models.sd_model(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusion_mod, "_PIPELINES", {})
    spec = scene_spec("diffusion-attention", "someone/tiny-sd")
    md = make(spec).generate(make_plan(spec)[:1])[0].metadata
    assert (md["model"], md["commit"], md["revision"], md["variant"]) == (
        "someone/tiny-sd",
        commit,
        None,
        None,
    )
    spec = scene_spec("diffusion-attention", tiny_models.sd_model())
    assert make(spec).generate(make_plan(spec)[:1])[0].metadata["commit"] is None
