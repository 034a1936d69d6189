"""Properties of the GPU hot path that a CPU can check: the compiled UNet with attention capture
traces as one graph and is not traced again batch after batch; the host waits once per batch
for the decode checks and pixels; GLIGEN's grounding inputs and the attention maps are the
values of the simpler code they replace; a build's augmentations run off the thread that feeds
the GPU."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthvision.build import build
from synthvision.filters import RetryPolicy, checked_uint8, decode_failure
from tests.helpers import dataset_digests, small_spec

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from synthvision.generators import diffusion as dif  # noqa: E402
from synthvision.labelers import attention as attn_labels  # noqa: E402
from tests import tiny_models  # noqa: E402

T = 77


def _request(seed: int, queries: int = 2) -> dif.GenRequest:
    w = np.zeros((queries, T), np.float32)
    for q in range(queries):
        w[q, 1 + q] = 1.0
    return dif.GenRequest("a photo of a cat and a dog", "blurry", seed, (32, 32), weights=w)


def _recording_backend(graphs: list[Any]) -> Any:
    """A torch.compile backend that runs each graph eagerly and appends it to `graphs`: one
    entry per trace, so a recompile shows as a second one."""

    def backend(gm: Any, _inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    return backend


@pytest.fixture()
def compiled_engine() -> Iterator[tuple[dif.DiffusionEngine, list[Any]]]:
    """An engine whose UNet (capture processors installed) is compiled with a backend that
    only records the graphs dynamo hands it. Its own pipeline: the cached one stays eager."""
    from torch._dynamo.utils import counters

    # A load key no other test uses (the explicit dtype), removed from the cache afterwards.
    params = dif.PipelineParams(
        model=tiny_models.sd_model(), device="cpu", dtype="float32", steps=2, batch_size=2
    )
    key = params.load_key() + "|auto"
    assert key not in dif._PIPELINES
    loaded = dif.load_pipeline(params, "test")
    graphs: list[Any] = []
    torch._dynamo.reset()
    counters.clear()
    loaded.pipe.unet.compile(backend=_recording_backend(graphs))
    try:
        yield dif.DiffusionEngine(loaded, params, "test"), graphs
    finally:
        dif._PIPELINES.pop(key, None)
        torch._dynamo.reset()


def test_compiled_unet_with_capture_traces_once_without_graph_breaks(
    compiled_engine: tuple[dif.DiffusionEngine, list[Any]],
) -> None:
    """One graph per UNet call, traced on the first batch only: the store's buffers are made
    when it is armed and updated in place, so new batches (new buffers, weights, seeds and
    timesteps of the same shapes) meet the same guards."""
    from torch._dynamo.utils import counters

    engine, graphs = compiled_engine
    first = engine._batch([_request(1), _request(2)])
    assert len(graphs) == 1
    assert dict(counters["graph_break"]) == {}
    assert first[0].maps is not None and first[0].maps.shape == (2, 16, 16)
    assert np.abs(first[0].maps).sum() > 0
    for seed in (3, 5):  # the 2nd and 3rd batches: no new trace
        out = engine._batch([_request(seed), _request(seed + 1)])
        assert out[0].maps is not None
    assert len(graphs) == 1  # a recompile would hand the backend a second graph
    assert dict(counters["graph_break"]) == {}


def test_capture_off_and_on_each_trace_once(
    compiled_engine: tuple[dif.DiffusionEngine, list[Any]],
) -> None:
    """Batches without capture (e.g. backgrounds on the same pipeline) trace their own graph
    once; alternating with capture batches traces nothing more."""
    engine, graphs = compiled_engine
    plain = [dif.GenRequest("a photo of a street", "blurry", s, (32, 32)) for s in (1, 2)]
    engine._batch(plain)
    engine._batch([_request(1), _request(2)])
    assert len(graphs) == 2
    engine._batch(plain)
    engine._batch([_request(3), _request(4)])
    assert len(graphs) == 2


def test_checked_uint8_is_the_checks_and_pixels_of_one_pass() -> None:
    """`checked_uint8` = the per-image numpy rule and diffusers' uint8 rounding, bit for bit,
    on images that are fine, NaN, black and blank."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 16, 24, generator=g) * 2 - 1
    x[1, 0, 3, 4] = float("nan")
    x[2] = -1.0  # black
    x[3] = 0.25  # blank (flat)
    x[4, :, :2] = float("inf")
    policy = RetryPolicy()
    for dtype in (torch.float32, torch.bfloat16):
        d = x.to(dtype)
        failures, pixels = checked_uint8(d, policy)
        assert failures == [decode_failure(d[i].float().numpy(), policy) for i in range(5)]
        assert failures[:4] == [None, "nan", "black", "blank"]
        rounded = ((d.float() / 2 + 0.5).clamp(0, 1) * 255).round().nan_to_num(0.0)
        np.testing.assert_array_equal(pixels, rounded.to(torch.uint8).permute(0, 2, 3, 1).numpy())
        assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous


def test_maps_summed_on_the_device_equal_the_per_layer_host_sum() -> None:
    """The maps are the float32 sum of each resolution's upsampled buffer, in the order the
    buffers were made, added on the host one resolution at a time (the previous code)."""
    import torch.nn.functional as F

    store = attn_labels.AttentionStore()
    weights = torch.rand(3, 4, T)
    with store.capture(weights, (8, 12)):
        g = torch.Generator().manual_seed(1)
        for f, buf in store.buffers.items():
            buf.add_(torch.rand(buf.shape, generator=g) * 10**f)
    want = torch.zeros(3, 4, 8, 12)
    for f, buf in store.buffers.items():
        h, w = store._grid(f)
        grid = buf.reshape(3, 4, h, w)
        if (h, w) != (8, 12):
            grid = F.interpolate(grid, size=(8, 12), mode="bilinear", align_corners=False)
        want = want + grid.float().cpu()
    assert sorted(store.buffers) == [1, 2, 4, 8]
    got = store.maps()
    assert got.device.type == "cpu"
    assert torch.equal(got, want)
    assert torch.equal(store.maps_on_device(), want)


def test_gligen_grounding_inputs_are_those_of_the_per_box_loop() -> None:
    from synthvision.generators import gligen

    params = gligen.GligenParams(model=tiny_models.gligen_model(), steps=1, batch_size=3)
    engine = gligen.GligenEngine(params, "test")
    reqs = [
        dif.GenRequest(
            "a cat",
            "",
            1,
            (32, 32),
            extra={
                "boxes": [[0.1, 0.2, 0.5, 0.7], [0.0, 0.0, 1.0, 0.333333]],
                "phrases": ["cat", "red dog"],
            },
        ),
        dif.GenRequest("an empty street", "", 2, (32, 32)),
        dif.GenRequest(
            "a dog", "", 3, (32, 32), extra={"boxes": [[0.25, 0.5, 0.75, 1.0]], "phrases": ["dog"]}
        ),
    ]
    for dtype in (torch.float32, torch.bfloat16):
        boxes, emb, masks = engine._grounding(reqs, dtype, "cpu")
        dim = engine.loaded.pipe.unet.config.cross_attention_dim
        n, m = len(reqs), gligen.MAX_OBJECTS
        want_boxes = torch.zeros(n, m, 4, dtype=dtype)
        want_emb = torch.zeros(n, m, dim, dtype=dtype)
        want_masks = torch.zeros(n, m, dtype=dtype)
        for b, r in enumerate(reqs):
            for k, phrase in enumerate(list(r.extra.get("phrases", []))[:m]):
                want_emb[b, k] = engine._phrase_embedding(phrase).to(dtype)
                want_boxes[b, k] = torch.tensor(r.extra["boxes"][k], dtype=dtype)
                want_masks[b, k] = 1.0
        for got, want in ((boxes, want_boxes), (emb, want_emb), (masks, want_masks)):
            assert got.dtype == dtype and got.shape == want.shape
            assert torch.equal(got, want)


def test_augmentations_run_on_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build thread (the one that feeds the GPU) makes no variant; the dataset is the same
    bytes whichever thread made them."""
    from synthvision.augment import Augmenter

    spec = small_spec(num_images=4, augment={"preset": "medium", "variants": 2})
    build(spec, tmp_path / "ref", show_progress=False, batch_size=2)
    threads: list[str] = []
    real = Augmenter.apply

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Augmenter, "apply", spy)
    result = build(spec, tmp_path / "out", show_progress=False, batch_size=2)
    assert result.generated == 8
    assert len(threads) == 8 and all(t.startswith("synthvision-writer") for t in threads)
    assert dataset_digests(tmp_path / "out") == dataset_digests(tmp_path / "ref")


def test_the_float32_retry_of_a_failed_decode_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 decode that fails is redone in float32 on the uncompiled decoder: on a compiled
    one, its new dtype and batch size would trace and compile a second graph."""
    params = dif.PipelineParams(
        model=tiny_models.sd_model(),
        device="cpu",
        dtype="bfloat16",
        channels_last=True,  # a load key no other test uses: this pipeline's decoder is compiled
        steps=2,
        batch_size=2,
    )
    key = params.load_key() + "|auto"
    dif._PIPELINES.pop(key, None)
    loaded = dif.load_pipeline(params, "test")
    graphs: list[Any] = []
    torch._dynamo.reset()
    vae = loaded.pipe.vae
    vae.decoder.compile(backend=_recording_backend(graphs))
    real = vae.decode

    def decode(z: Any, return_dict: bool = True) -> Any:
        out = real(z, return_dict=False)[0]
        if vae.dtype != torch.float32:  # every half-precision decode fails
            out = torch.full_like(out, float("nan"))
        return (out,)

    monkeypatch.setattr(vae, "decode", decode)
    try:
        out = dif.DiffusionEngine(loaded, params, "test")._batch([_request(1), _request(2)])
        assert [(o.failure, o.extra_decodes) for o in out] == [(None, 1), (None, 1)]
        assert len(graphs) == 1  # the bf16 batch's decoder graph; the retries traced none
        assert vae.dtype == torch.bfloat16
    finally:
        dif._PIPELINES.pop(key, None)
        torch._dynamo.reset()
