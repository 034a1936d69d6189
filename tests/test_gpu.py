"""GPU tier: what only a CUDA device can show (skipped without one).

Run on a GPU machine with `pytest -m gpu -q`. The tiny random models of `tests.tiny_models`
are enough for the properties checked here (kernels, dtypes, compile, determinism); the test
with real weights also needs `SYNTHVISION_SD_MODEL` set to a local Stable Diffusion folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# The device under test; SYNTHVISION_GPU_TEST_DEVICE=cpu dry-runs this file's logic on a CPU.
DEVICE = os.environ.get("SYNTHVISION_GPU_TEST_DEVICE", "cuda")
if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("diffusers")
pytestmark = pytest.mark.gpu

from synthvision import build as build_mod  # noqa: E402
from synthvision.config import Spec, parse_spec  # noqa: E402
from synthvision.generators import diffusion as dif  # noqa: E402
from synthvision.generators import prompts  # noqa: E402
from synthvision.labelers import attention as attn  # noqa: E402
from synthvision.validate import validate_dataset  # noqa: E402
from tests import tiny_models  # noqa: E402
from tests.helpers import dataset_digests  # noqa: E402

PROMPTS = ["a photo of a red cat", "two dogs on a street", "a cat and a dog", "a dog"]


def _engine(**params: Any) -> dif.DiffusionEngine:
    base = {"model": tiny_models.sd_model(), "steps": 3, "batch_size": 4, "device": DEVICE}
    return dif.DiffusionEngine.from_params(dif.PipelineParams(**{**base, **params}), "gpu-test")


def _requests(engine: dif.DiffusionEngine, seeds: list[int]) -> list[dif.GenRequest]:
    out = []
    for s in seeds:
        prompt = PROMPTS[s % len(PROMPTS)]
        spans = prompts.phrase_spans(prompt, ["cat", "dog"])
        weights, _ = prompts.query_weights(engine.loaded.tokenizer, prompt, spans)
        out.append(dif.GenRequest(prompt, "blurry", seed=s, size_hw=(32, 32), weights=weights))
    return out


def _scene_spec(size: int = 32, labeler: dict[str, Any] | None = None, **params: Any) -> Spec:
    return parse_spec(
        {
            **({"labeler": labeler} if labeler else {}),
            "name": "gpu-tier",
            "seed": 11,
            "num_images": 8,
            "image_size": [size, size],
            "classes": [{"name": "cat"}, {"name": "dog"}],
            "objects_per_image": [1, 2],
            "layout": {"min_area_px": 4, "scale": [0.3, 0.6]},
            "export": {"preview_images": 2},
            "scene": {
                "name": "diffusion-attention",
                "params": {
                    "model": tiny_models.sd_model(),
                    "steps": 3,
                    "batch_size": 4,
                    "device": DEVICE,
                    **params,
                },
            },
        }
    )


def _built_twice_alike(spec: Spec, tmp_path: Path, batch_size: int) -> Path:
    """Build `spec` twice on the device: both valid, byte-identical; returns the first."""
    outs = [tmp_path / run for run in ("a", "b")]
    for out in outs:
        build_mod.build(spec, out, batch_size=batch_size, show_progress=False)
        assert validate_dataset(out) == []
    assert dataset_digests(outs[0]) == dataset_digests(outs[1])
    return outs[0]


@pytest.mark.parametrize(
    ("dtype", "backend"), [("bfloat16", "auto"), ("float16", "auto"), ("bfloat16", "cudnn")]
)
def test_capture_leaves_the_image_bit_identical_on_cuda(dtype: str, backend: str) -> None:
    """The capture processor vs diffusers' stock SDPA processor, in half precision on CUDA,
    with torch's attention kernels and with cuDNN attention preferred."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    dif.clear_pipeline_cache()
    engine = _engine(dtype=dtype, sdpa_backend=backend)
    unet = engine.loaded.pipe.unet
    assert engine.loaded.device.startswith(DEVICE) and unet.dtype == getattr(torch, dtype)
    reqs = _requests(engine, [0, 1, 2, 3])
    captured = engine.run(reqs)
    assert all(r.maps is not None and np.isfinite(r.maps).all() for r in captured)
    unet.set_attn_processor(AttnProcessor2_0())
    stock = engine.run(
        [dif.GenRequest(r.prompt, r.negative_prompt, r.seed, r.size_hw) for r in reqs]
    )
    for a, b in zip(captured, stock, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    dif.clear_pipeline_cache()  # the stock processors must not leak into other tests


def test_image_independent_of_batch_mates_at_a_fixed_batch_size_on_cuda() -> None:
    engine = _engine(dtype="bfloat16")
    first = engine.run(_requests(engine, [0, 1, 2, 3]))
    other = engine.run(_requests(engine, [0, 7, 8]))  # padded to 4 rows, other mates
    np.testing.assert_array_equal(first[0].image, other[0].image)
    np.testing.assert_array_equal(first[0].maps, other[0].maps)


def test_compiled_fused_pipeline_matches_eager_on_cuda() -> None:
    """torch.compile + fused projections + channels_last: same images up to kernel rounding,
    and the capture still records (no graph break drops the store updates)."""
    eager = _engine(dtype="bfloat16")
    fast = _engine(dtype="bfloat16", compile=True, fuse_qkv=True, channels_last=True)
    reqs = _requests(eager, [0, 1, 2, 3])
    want, got = eager.run(reqs), fast.run(reqs)
    for a, b in zip(want, got, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 4.0  # bf16 rounding
        assert a.maps is not None and b.maps is not None
        corr = np.corrcoef(a.maps.ravel(), b.maps.ravel())[0, 1]
        assert corr > 0.99
    again = fast.run(reqs)  # compiled graphs are deterministic run to run
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_build_on_cuda_is_valid_and_reproducible(tmp_path: Path) -> None:
    out = _built_twice_alike(_scene_spec(), tmp_path, batch_size=4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"]["total"] == 8


@pytest.mark.parametrize("strategy", ["compose", "gligen"])
def test_other_strategies_build_on_cuda_reproducibly(strategy: str, tmp_path: Path) -> None:
    """Compose with generated objects and backgrounds, and GLIGEN layouts, on the GPU."""
    gen = {"steps": 3, "batch_size": 4, "device": DEVICE}
    if strategy == "compose":
        sd = {"model": tiny_models.sd_model(), **gen}
        parts = {
            "objects": {"name": "diffusion", "params": {**sd, "min_object_fraction": 0.0}},
            "background": {"name": "diffusion", "params": sd},
        }
    else:
        parts = {
            "scene": {"name": "gligen", "params": {"model": tiny_models.gligen_model(), **gen}}
        }
    spec = parse_spec(
        {
            "name": f"gpu-{strategy}",
            "seed": 5,
            "num_images": 6,
            "image_size": [32, 32],
            "classes": [{"name": "cat"}, {"name": "dog"}],
            "objects_per_image": [1, 2],
            "layout": {"min_area_px": 4, "scale": [0.3, 0.6], "min_visibility": 0.2},
            "export": {"preview_images": 0},
            **parts,
        }
    )
    _built_twice_alike(spec, tmp_path, batch_size=4)


def test_detector_preprocesses_and_labels_on_cuda(tmp_path: Path) -> None:
    """OWLv2 resizes and pads on the GPU; its labels on a build are valid and reproducible."""
    from synthvision.labelers.detector import DetectorLabeler, DetectorParams

    params = {"model": tiny_models.owlv2_model(), "threshold": 0.0, "device": DEVICE}
    lab = DetectorLabeler(DetectorParams(**params), ["cat", "dog"])
    image_proc = lab.processor.image_processor
    accepted = getattr(getattr(image_proc, "valid_kwargs", None), "__annotations__", {})
    if "device" in accepted:  # torchvision processors (transformers 5): resize on the GPU
        assert lab._processor_device == {"device": DEVICE}
    spec = _scene_spec(labeler={"name": "detector", "params": params}, min_instances=0)
    _built_twice_alike(spec, tmp_path, batch_size=4)


def test_cvae_quickstart_on_cuda(tmp_path: Path) -> None:
    """The shipped cVAE on the GPU: a valid dataset, identical on a re-run."""
    from synthvision.config import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(
        root / "configs" / "quickstart.yaml",
        overrides=["num_images=24", f"objects.params.device={DEVICE}"],
    )
    _built_twice_alike(spec, tmp_path, batch_size=8)


@pytest.mark.skipif(
    not os.environ.get("SYNTHVISION_SD_MODEL"),
    reason="set SYNTHVISION_SD_MODEL to a local Stable Diffusion 1.x folder",
)
def test_real_weights_label_objects_the_prompt_names(tmp_path: Path) -> None:
    """With real weights, attention labels find most of the planned objects."""
    spec = _scene_spec(
        512, model=os.environ["SYNTHVISION_SD_MODEL"], steps=25, batch_size=8, min_instances=0
    )
    build_mod.build(spec, tmp_path / "out", batch_size=8, show_progress=False)
    assert validate_dataset(tmp_path / "out") == []
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["instances"]
    planned = sum(counts["planned_per_class"].values())
    assert counts["total"] >= 0.5 * planned


def test_attention_store_buffers_live_on_the_device() -> None:
    store = attn.AttentionStore()
    weights = torch.zeros(2, 3, 77, device=DEVICE)
    with store.capture(weights, (8, 8)):
        assert all(b.device == weights.device for b in store.buffers.values())
