"""Cross-attention capture and maps -> masks -> boxes (tiny random UNet, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from synthvision import boxes as box_ops
from synthvision.labelers import attention as attn

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    from diffusers import AutoPipelineForText2Image

    p = AutoPipelineForText2Image.from_pretrained(tiny_models.sd_model(), use_safetensors=True)
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, prompts: list[str], seeds: list[int], guidance: float = 5.0):  # type: ignore[no-untyped-def]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.inference_mode():
        return pipe(
            prompts,
            negative_prompt=[""] * len(prompts),
            generator=gens,
            num_inference_steps=2,
            height=32,
            width=32,
            guidance_scale=guidance,
            output_type="latent",
        ).images


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_capture_gives_one_map_per_query_on_the_latent_grid_and_same_image(pipe, guidance) -> None:  # type: ignore[no-untyped-def]
    from diffusers.models.attention_processor import AttnProcessor2_0

    prompts = ["a photo of a red cat", "two dogs on a street"]
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    stock = _run(pipe, prompts, [1, 2], guidance)

    store = attn.AttentionStore()
    n_layers = attn.install_capture(pipe.unet, store)
    assert n_layers > 0
    spans = [
        attn.token_span(pipe.tokenizer, prompts[0], 16, 19),  # "cat"
        attn.token_span(pipe.tokenizer, prompts[1], 4, 8),  # "dogs"
        [1],  # a single token
    ]
    w = np.stack([attn.token_weights(spans, 77)] * 2)  # (B=2, Q=3, T=77)
    with store.capture(torch.from_numpy(w), latent_hw=(16, 16)):
        captured = _run(pipe, prompts, [1, 2], guidance)
    maps = store.maps()

    assert maps.shape == (2, 3, 16, 16)  # (B, Q, latent h, latent w)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.flatten(2).sum(-1) > 0).all()
    assert torch.equal(stock, captured)  # capture leaves the image bit-identical
    store.reset()
    # Unarmed, the capture processor is the stock computation too.
    assert torch.equal(stock, _run(pipe, prompts, [1, 2], guidance))
    pipe.unet.set_attn_processor(AttnProcessor2_0())


def test_capture_on_fused_projections_matches_the_fused_stock_processor() -> None:
    """With `fuse_qkv_projections()` (one K|V matmul) capture still leaves the image
    bit-identical to diffusers' fused processor, and records the same maps as unfused."""
    from diffusers import AutoPipelineForText2Image

    fresh = AutoPipelineForText2Image.from_pretrained(tiny_models.sd_model(), use_safetensors=True)
    fresh.set_progress_bar_config(disable=True)
    prompts = ["a photo of a red cat", "two dogs on a street"]
    spans = [attn.token_span(fresh.tokenizer, prompts[0], 16, 19), [2, 3]]
    w = torch.from_numpy(np.stack([attn.token_weights(spans, 77)] * 2))

    def captured_run():  # type: ignore[no-untyped-def]
        store = attn.AttentionStore()
        attn.install_capture(fresh.unet, store)
        with store.capture(w, latent_hw=(16, 16)):
            image = _run(fresh, prompts, [1, 2])
        return image, store.maps()

    _, unfused_maps = captured_run()
    fresh.unet.fuse_qkv_projections()  # FusedAttnProcessor2_0 on every layer
    with torch.no_grad():  # the unfused copies stay on the modules: they must go unused
        for module in fresh.unet.modules():
            if hasattr(module, "to_kv"):
                module.to_k.weight.zero_()
                module.to_v.weight.zero_()
    stock = _run(fresh, prompts, [1, 2])
    image, maps = captured_run()
    assert torch.equal(stock, image)
    torch.testing.assert_close(maps, unfused_maps, rtol=1e-4, atol=1e-6)


def test_token_span_covers_the_words(pipe) -> None:  # type: ignore[no-untyped-def]
    tok = pipe.tokenizer
    prompt = "a photo of a fire truck and two cats"
    start = prompt.index("fire truck")
    span = attn.token_span(tok, prompt, start, start + len("fire truck"))
    ids = tok(prompt).input_ids
    assert tok.decode([ids[i] for i in span]).strip() == "fire truck"
    assert span == sorted(span) and span[0] >= 1


def test_instances_from_maps_boxes_are_tight_boxes_of_masks() -> None:
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 1:3, 1:3] = 1.0  # class 4: one blob top-left
    maps[0, 5:7, 5:7] = 0.9  # ... and another bottom-right
    maps[1, 1:3, 5:7] = 1.0  # class 7
    inst = attn.instances_from_maps(
        maps, [4, 7], (64, 64), threshold=0.5, min_confidence=0.3, min_area_px=4
    )
    assert sorted(inst.class_id.tolist()) == [4, 4, 7]
    assert inst.masks is not None and inst.masks.shape == (3, 64, 64)
    np.testing.assert_array_equal(inst.xyxy, box_ops.masks_to_xyxy(inst.masks))
    assert (inst.area > 0).all()
    assert (inst.xyxy[:, :2] >= 0).all() and (inst.xyxy[:, 2:] <= 64).all()
    assert not (inst.masks.sum(axis=0) > 1).any()  # no pixel in two masks
    limited = attn.instances_from_maps(
        maps, [4, 7], (64, 64), threshold=0.5, min_confidence=0.3, max_per_query=[1, 1]
    )
    assert sorted(limited.class_id.tolist()) == [4, 7]
    strict = attn.instances_from_maps(maps, [4, 7], (64, 64), threshold=0.5, min_area_px=10**6)
    assert len(strict) == 0 and strict.masks is not None


def _reference_instances(maps, class_ids, size_hw, threshold, min_confidence, min_area_px, limits):  # type: ignore[no-untyped-def]
    """The rule of `instances_from_maps` written plainly, over the whole image."""
    import cv2

    norm = attn.upsample_maps(maps, size_hw)
    winner, above = norm.argmax(axis=0), norm.max(axis=0) >= threshold
    out = []
    for qi, c in enumerate(class_ids):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            (above & (winner == qi)).astype(np.uint8), connectivity=8
        )
        found = []
        for k in range(1, n):
            m = labels == k
            if stats[k, cv2.CC_STAT_AREA] >= min_area_px and norm[qi][m].mean() >= min_confidence:
                found.append((float(norm[qi][m].mean()), m))
        found.sort(key=lambda t: -t[0])
        out += [(c, s, m) for s, m in found[: limits[qi]]]
    return out


def test_instances_from_maps_matches_the_plain_rule_on_random_maps() -> None:
    """The bounding-box-cropped implementation labels exactly like the plain whole-image rule."""
    rng = np.random.default_rng(0)
    total = 0
    for _ in range(60):
        q = int(rng.integers(1, 4))
        coarse = torch.from_numpy(rng.random((1, q, 6, 6)).astype(np.float32) ** 3)
        maps = torch.nn.functional.interpolate(coarse, size=(24, 24), mode="bilinear")[0].numpy()
        size_hw = (int(rng.choice([48, 96, 130])), int(rng.choice([64, 100])))
        limits = [int(rng.integers(1, 4)) for _ in range(q)]
        kw = {"threshold": 0.45, "min_confidence": 0.55, "min_area_px": int(rng.choice([1, 30]))}
        got = attn.instances_from_maps(maps, list(range(q)), size_hw, max_per_query=limits, **kw)
        want = _reference_instances(maps, list(range(q)), size_hw, **kw, limits=limits)
        assert len(got) == len(want)
        total += len(got)
        for i, (c, score, mask) in enumerate(want):
            assert got.class_id[i] == c and got.scores[i] == np.float32(score)
            assert got.masks is not None and np.array_equal(got.masks[i], mask)
        np.testing.assert_array_equal(got.xyxy, box_ops.masks_to_xyxy(got.masks))
    assert total > 60  # the cases do find instances


def test_object_mask_combines_attention_and_background_difference() -> None:
    img = np.full((64, 64, 3), 250, np.uint8)
    img[20:40, 10:30] = (200, 30, 30)  # the object
    img[2:6, 55:60] = (0, 0, 0)  # a speck far from the attention
    amap = np.zeros((8, 8), np.float32)
    amap[3:5, 2:3] = 1.0  # coarse attention around the object
    mask = attn.object_mask(img, amap, threshold=0.3)
    truth = np.zeros((64, 64), bool)
    truth[20:40, 10:30] = True
    assert (mask == truth).mean() > 0.98
    assert not mask[2:6, 55:60].any()


def test_refine_boxes_with_maps_tightens_inside_the_box() -> None:
    maps = np.zeros((1, 16, 16), np.float32)
    maps[0, 4:8, 4:8] = 1.0
    boxes, masks = attn.refine_boxes_with_maps(
        np.array([[0.0, 0.0, 48.0, 48.0]]), maps, (64, 64), threshold=0.5, min_fill=0.05
    )
    assert boxes.shape == (1, 4) and masks.shape == (1, 64, 64)
    np.testing.assert_array_equal(boxes[0], box_ops.mask_to_xyxy(masks[0]))
    assert boxes[0, 0] >= 12 and boxes[0, 2] <= 36  # tighter than the layout box
    # No attention in the box: the layout box stays the label.
    boxes, masks = attn.refine_boxes_with_maps(
        np.array([[40.0, 40.0, 60.0, 60.0]]), maps, (64, 64), threshold=0.5
    )
    np.testing.assert_array_equal(boxes[0], [40, 40, 60, 60])


def test_a_box_nested_in_a_larger_box_of_its_class_keeps_a_mask() -> None:
    """Boxes of one class share one map, so every pixel they share ties: the smaller (nested)
    box takes them, else it would lose all its pixels to the larger one and its object its
    label. The larger box's mask still covers the whole object (holes filled)."""
    class_map = np.zeros((16, 16), np.float32)
    class_map[1:15, 1:15] = 1.0
    layout = np.array([[8.0, 8.0, 120.0, 120.0], [50.0, 50.0, 80.0, 80.0]])
    for order in ([0, 1], [1, 0]):
        _, masks = attn.refine_boxes_with_maps(
            layout[order], np.stack([class_map, class_map]), (128, 128)
        )
        by_box = dict(zip(order, masks, strict=True))
        assert by_box[1].sum() == 30 * 30 and by_box[1][50:80, 50:80].all()
        assert by_box[0][50:80, 50:80].all() and by_box[0].sum() > 0.99 * 112 * 112


@pytest.mark.parametrize(("dtype", "num_queries"), [(torch.float32, 3), (torch.bfloat16, 11)])
def test_query_maps_are_the_head_mean_of_weighted_softmax_probabilities(
    dtype: torch.dtype, num_queries: int
) -> None:
    """The fused recording equals the definition: mean over heads of sum_t w_qt softmax_t(q.k);
    11 queries with head size 8 take two value chunks."""
    gen = torch.Generator().manual_seed(0)
    b, h, n, t, d = 2, 3, 20, 9, 8
    q = torch.randn(b, h, n, d, generator=gen)
    k = torch.randn(b, h, t, d, generator=gen)
    w = torch.rand(b, num_queries, t, generator=gen)
    scale = d**-0.5
    probs = (q @ k.transpose(-1, -2) * scale).softmax(dim=-1).mean(dim=1)  # (B, N, T)
    want = w @ probs.transpose(1, 2)  # (B, Q, N)
    got = attn.query_maps(q.to(dtype), k.to(dtype), w, scale)
    assert got.dtype == torch.float32 and got.shape == (b, num_queries, n)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
