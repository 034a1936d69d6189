"""Labels from a diffusion model's own cross-attention.

Two halves:

1. Capture (torch): `CaptureAttnProcessor` replaces the stock scaled-dot-product processor on the
   UNet's cross-attention layers (`Attention.is_cross_attention`). Its output is computed exactly
   like diffusers' `AttnProcessor2_0`, so the image does not change; when an `AttentionStore` is
   armed it also records, for the conditional half of the classifier-free-guidance batch, the
   softmax attention of every query pixel on the prompt tokens, reduced to a few *queries*
   (a query = a weighted set of token positions, e.g. the tokens of "fire truck"). Maps are summed
   over layers and steps per layer resolution and upsampled to the latent grid at the end
   (DAAM, Tang et al. 2022; prompt-to-prompt, Hertz et al. 2022).
2. Maps -> labels (numpy + OpenCV): normalise, threshold, connected components, boxes.

Shapes: B = images in the batch, Q = queries, T = text tokens (77), HW = query pixels of one layer,
(h, w) = latent grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from synthvision import boxes as box_ops
from synthvision.structures import Instances

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------------------------
# Token spans
# ---------------------------------------------------------------------------------------------


def token_span(tokenizer: Any, prompt: str, start: int, end: int) -> list[int]:
    """Token positions (with the BOS token at 0) covering characters [start, end) of `prompt`.

    Positions past the tokenizer's max length (truncated away) are dropped. Fast tokenizers use
    offsets; others fall back to counting the tokens of the text before and through the span,
    which is exact for word-level BPE tokenizers such as CLIP's when the span is whole words.
    """
    max_len = int(getattr(tokenizer, "model_max_length", 77))
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=max_len)
        return [
            i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start
        ]
    n_before = len(tokenizer(prompt[:start], add_special_tokens=False)["input_ids"])
    n_through = len(tokenizer(prompt[:end], add_special_tokens=False)["input_ids"])
    bos = 1 if getattr(tokenizer, "bos_token_id", None) is not None else 0
    return [i for i in range(bos + n_before, bos + n_through) if i < max_len - 1]


def token_weights(spans: Sequence[Sequence[int]], num_tokens: int) -> npt.NDArray[np.float32]:
    """Query weights (Q, T): each query averages the maps of its tokens (empty span -> zeros)."""
    w = np.zeros((len(spans), num_tokens), dtype=np.float32)
    for q, span in enumerate(spans):
        idx = [i for i in span if 0 <= i < num_tokens]
        if idx:
            w[q, idx] = 1.0 / len(idx)
    return w


# ---------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------


class AttentionStore:
    """Running sums of per-query cross-attention maps, one buffer per layer resolution.

    Arm it with `capture(weights, latent_hw)` around one pipeline call; read `maps()` after.
    `layer_factors` restricts capture to layers whose grid is the latent grid divided by one of
    these factors (None = every cross-attention layer). Buffers are allocated when armed and
    updated in place, so a `torch.compile`d UNet records without graph breaks or recompiles.
    """

    MAX_FACTOR = 64

    def __init__(self, layer_factors: Sequence[int] | None = None) -> None:
        self.layer_factors = None if layer_factors is None else tuple(int(f) for f in layer_factors)
        self.active = False
        self.weights: torch.Tensor | None = None  # (B, Q, T) float32
        self.latent_hw: tuple[int, int] = (0, 0)
        self.buffers: dict[int, torch.Tensor] = {}  # factor -> (B, Q, h*w) float32 sums

    @property
    def batch(self) -> int:
        assert self.weights is not None
        return int(self.weights.shape[0])

    @contextmanager
    def capture(
        self, weights: torch.Tensor, latent_hw: tuple[int, int]
    ) -> Iterator[AttentionStore]:
        """Record maps for queries `weights` (B, Q, T) inside the block; B counts images."""
        import torch

        self.reset()
        self.weights = weights.float()
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        b, q = self.weights.shape[:2]
        f = 1
        while f <= self.MAX_FACTOR and f <= max(self.latent_hw):
            if self.layer_factors is None or f in self.layer_factors:
                h, w = self._grid(f)
                self.buffers[f] = torch.zeros(b, q, h * w, device=weights.device)
            f *= 2
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def reset(self) -> None:
        self.buffers = {}
        self.weights = None

    def _grid(self, factor: int) -> tuple[int, int]:
        # Stride-2 convolutions with padding 1 round up.
        lh, lw = self.latent_hw
        return -(-lh // factor), -(-lw // factor)

    def factor_of(self, num_pixels: int) -> int | None:
        """Downsampling factor of a layer with `num_pixels` query pixels, None if not captured."""
        for f in self.buffers:
            h, w = self._grid(f)
            if h * w == num_pixels:
                return f
        return None

    def add(self, factor: int, maps: torch.Tensor) -> None:
        """Accumulate `maps` (B, Q, h*w) of one layer call at `factor` (in place)."""
        self.buffers[factor].add_(maps)

    def maps(self) -> torch.Tensor:
        """Aggregated maps (B, Q, h, w) on the latent grid, float32 on the CPU: the sum over
        captured layers and steps, each layer bilinearly upsampled first (DAAM). The scale is
        arbitrary; consumers normalise each map by its maximum."""
        return self.maps_on_device().cpu()

    def maps_on_device(self) -> torch.Tensor:
        """`maps()` left on the buffers' device, so the caller chooses when to wait for it.

        Why: summed where the buffers are, the maps cross to the host in one copy (one sync)
        instead of one per layer resolution, and the engine can queue the VAE decode before
        it waits. float32 additions in the same order give the same bits on either device.
        """
        import torch
        import torch.nn.functional as F

        lh, lw = self.latent_hw
        b, q = (0, 0) if self.weights is None else self.weights.shape[:2]
        device = None if self.weights is None else self.weights.device
        acc = torch.zeros((b, q, lh, lw), device=device)
        for f, buf in self.buffers.items():
            h, w = self._grid(f)
            grid = buf.reshape(b, q, h, w)
            if (h, w) != (lh, lw):
                grid = F.interpolate(grid, size=(lh, lw), mode="bilinear", align_corners=False)
            acc = acc + grid.float()
        return acc


class CaptureAttnProcessor:
    """Scaled-dot-product attention that also records cross-attention maps into a store.

    The output path mirrors diffusers' `AttnProcessor2_0` op for op, or `FusedAttnProcessor2_0`
    on layers with fused projections (so images are bit-identical to the stock processor); the
    recording path (`query_maps`) attends once more, for the conditional half only, with the
    query weights as values: a fused (HW x T) attention per head, small next to the UNet.
    """

    def __init__(self, store: AttentionStore, name: str) -> None:
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(
                attention_mask, sequence_length, batch_size
            )
            attention_mask = attention_mask.view(
                batch_size, attn.heads, -1, attention_mask.shape[-1]
            )
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_kv"):
            # `fuse_qkv_projections()`: one K|V matmul, as diffusers' FusedAttnProcessor2_0.
            kv = attn.to_kv(encoder_hidden_states)
            key, value = torch.split(kv, kv.shape[-1] // 2, dim=-1)
        else:
            key = attn.to_k(encoder_hidden_states)
            value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B', H, N, d)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B', H, T, d)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if self.store.active:
            self._record(attn, query, key)

        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor  # type: ignore[no-any-return]

    def _record(self, attn: Any, query: torch.Tensor, key: torch.Tensor) -> None:
        store = self.store
        weights = store.weights
        assert weights is not None
        n_img = store.batch
        if query.shape[0] < n_img or key.shape[2] != weights.shape[2]:
            return  # not the prompt's text tokens (e.g. an added-KV layer): nothing to record
        factor = store.factor_of(query.shape[2])
        if factor is None:
            return
        # Classifier-free guidance runs [uncond, cond]: the conditional images are the last n_img.
        store.add(factor, query_maps(query[-n_img:], key[-n_img:], weights, attn.scale))


def install_capture(unet: Any, store: AttentionStore) -> int:
    """Put a `CaptureAttnProcessor` on every cross-attention layer of `unet`; returns how many."""
    from diffusers.models.attention_processor import Attention

    n = 0
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            module.set_processor(CaptureAttnProcessor(store, name))  # type: ignore[arg-type]
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Maps -> masks -> instances (numpy / OpenCV)
# ---------------------------------------------------------------------------------------------


def upsample_maps(
    maps: npt.NDArray[np.floating], size_hw: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """(Q, h, w) -> (Q, H, W) bilinear, each map divided by its max (so values are in [0, 1])."""
    import cv2

    h, w = size_hw
    out = np.zeros((len(maps), h, w), dtype=np.float32)
    for q, m in enumerate(np.asarray(maps, dtype=np.float32)):
        up = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        peak = float(up.max())
        if np.isfinite(peak) and peak > 0:
            np.clip(np.divide(up, np.float32(peak), out=up), 0.0, 1.0, out=out[q])
    return out


def largest_component(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest 8-connected component of a bool mask (H, W), holes filled."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(mask, dtype=bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return fill_holes(labels == k)


def fill_holes(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Fill background regions not connected to the image border."""
    import cv2

    m = mask.astype(np.uint8)
    padded = np.pad(1 - m, 1, constant_values=1)
    ff = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, ff, (0, 0), 2)
    return mask | (padded[1:-1, 1:-1] == 1)


def background_difference(
    image: npt.NDArray[np.uint8], threshold: float = 30.0, border_px: int = 2
) -> npt.NDArray[np.bool_]:
    """Pixels whose colour differs from the (median) border colour by more than `threshold`
    levels in any channel: the object on an object-centric "plain background" image (H, W)."""
    border = np.concatenate(
        [
            image[:border_px].reshape(-1, 3),
            image[-border_px:].reshape(-1, 3),
            image[:, :border_px].reshape(-1, 3),
            image[:, -border_px:].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0)
    return np.asarray((np.abs(image.astype(np.float32) - bg) > threshold).any(axis=-1), dtype=bool)


def object_mask(
    image: npt.NDArray[np.uint8],
    attn_map: npt.NDArray[np.floating],
    *,
    threshold: float = 0.35,
    bg_threshold: float = 30.0,
    dilate_px: int = 0,
) -> npt.NDArray[np.bool_]:
    """Mask (H, W) of the one object in an object-centric image.

    `attn_map` (h, w) is the class token's aggregated map. The attention says *where* the object
    is (coarse, latent resolution); the difference from the plain background gives its edges.
    Result: largest component of (background difference within the dilated attention region),
    falling back to the attention mask alone when the two do not overlap.
    """
    import cv2

    h, w = image.shape[:2]
    norm = upsample_maps(np.asarray(attn_map)[None], (h, w))[0]
    attn = largest_component(norm >= threshold)
    if not attn.any():
        return attn
    if dilate_px <= 0:
        dilate_px = max(1, round(0.05 * min(h, w)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
    region = cv2.dilate(attn.astype(np.uint8), kernel).astype(bool)
    diff = background_difference(image, bg_threshold) & region
    diff = cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    combined = largest_component(diff)
    # Too small a difference region means a low-contrast object: trust the attention instead.
    return combined if combined.sum() >= 0.25 * attn.sum() else attn


def _winner(norm: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """(argmax over queries, max over queries) of maps (Q, H, W), first query on ties.

    A loop over the few queries: `np.argmax(axis=0)` walks the large (H, W) planes with a
    stride and is several times slower.
    """
    best = norm[0].copy()
    winner = np.zeros(best.shape, dtype=np.intp)
    for qi in range(1, len(norm)):
        better = norm[qi] > best
        winner[better] = qi
        np.maximum(best, norm[qi], out=best)
    return winner, best


def _components(
    region: npt.NDArray[np.uint8], score_map: npt.NDArray[np.float32], min_area_px: int
) -> list[tuple[float, tuple[int, int, int, int], npt.NDArray[np.bool_]]]:
    """8-connected components of `region` (H, W) with area >= `min_area_px`, as
    (mean of `score_map` over the component, (x, y, w, h) box, component mask inside the box).

    Works inside the region's bounding box, so the cost follows the region, not the image.
    """
    import cv2

    x0, y0, bw, bh = cv2.boundingRect(region)
    if bw == 0 or bh == 0:
        return []
    crop = region[y0 : y0 + bh, x0 : x0 + bw]
    scores = score_map[y0 : y0 + bh, x0 : x0 + bw]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
    out = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area_px:
            continue
        inside = labels[y : y + h, x : x + w] == k
        conf = float(scores[y : y + h, x : x + w][inside].mean())
        out.append((conf, (x0 + x, y0 + y, w, h), inside))
    return out


def instances_from_maps(
    maps: npt.NDArray[np.floating],
    class_ids: Sequence[int],
    size_hw: tuple[int, int],
    *,
    threshold: float = 0.4,
    min_confidence: float = 0.5,
    min_area_px: int = 16,
    max_per_query: Sequence[int | None] | None = None,
) -> Instances:
    """Instances from per-class maps (Q, h, w); query q labels class `class_ids[q]`.

    Each pixel goes to the query with the highest normalised map among those at or above
    `threshold` (so masks never overlap); each 8-connected component of a query's pixels is an
    instance if its area >= `min_area_px` and its mean normalised attention (the score) >=
    `min_confidence`. `max_per_query` keeps the highest-scoring components per query.
    Masks are bool (N, H, W); boxes are their tight boxes.
    """
    q = len(class_ids)
    if q == 0:
        return Instances.empty(size_hw)
    h, w = size_hw
    norm = upsample_maps(np.asarray(maps)[:q], size_hw)  # (Q, H, W)
    winner, best = _winner(norm)
    above = best >= threshold
    boxes: list[tuple[int, int, int, int]] = []
    cls: list[int] = []
    scores: list[float] = []
    crops: list[npt.NDArray[np.bool_]] = []
    for qi in range(q):
        region = (above & (winner == qi)).astype(np.uint8)
        found = [c for c in _components(region, norm[qi], min_area_px) if c[0] >= min_confidence]
        found.sort(key=lambda c: -c[0])
        limit = None if max_per_query is None else max_per_query[qi]
        for conf, box, inside in found[:limit]:
            boxes.append(box)
            crops.append(inside)
            cls.append(int(class_ids[qi]))
            scores.append(conf)
    if not boxes:
        return Instances.empty(size_hw)
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for i, ((x, y, bw, bh), inside) in enumerate(zip(boxes, crops, strict=True)):
        masks[i, y : y + bh, x : x + bw] = inside
    # A component's stats box is the tight box of its mask (pixel edges).
    xyxy = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in boxes], dtype=np.float32)
    return Instances(
        xyxy=xyxy,
        class_id=np.asarray(cls, dtype=np.int64),
        masks=masks,
        scores=np.asarray(scores, dtype=np.float32),
    )


def refine_boxes_with_maps(
    boxes_xyxy: npt.NDArray[np.floating],
    maps: npt.NDArray[np.floating],
    size_hw: tuple[int, int],
    *,
    threshold: float = 0.4,
    min_fill: float = 0.15,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Tighten layout boxes (N, 4) with their maps (N, h, w): each box's mask is the largest
    component of its above-threshold attention *inside* the box (pixels claimed by several boxes go
    to the strongest map; on a tie, to the smaller box). A box whose mask fills less than
    `min_fill` of it keeps the full box.
    Returns (xyxy (N, 4) float32, masks (N, H, W) bool)."""
    h, w = size_hw
    n = len(boxes_xyxy)
    b = box_ops.clip_xyxy(boxes_xyxy, size_hw) if n else np.zeros((0, 4))
    if n == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, h, w), bool)
    norm = upsample_maps(np.asarray(maps)[:n], size_hw)
    inside = np.zeros((n, h, w), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(np.round(b).astype(int)):
        inside[i, y1:y2, x1:x2] = True
    scored = np.where(inside, norm, np.float32(-1.0))
    # Ties (boxes of one class share one map, so every overlap ties) go to the smaller box: a
    # box nested in a larger one would otherwise lose all its pixels to it and its object its
    # label, while the larger box's mask still covers the overlap once its holes are filled.
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = np.argsort(-areas, kind="stable")  # largest first: later (smaller) boxes win ties
    best = np.full((h, w), -np.inf, dtype=np.float32)
    winner = np.zeros((h, w), dtype=np.intp)
    for i in order:
        better = scored[i] >= best
        winner[better] = i
        np.maximum(best, scored[i], out=best)
    out_boxes = np.zeros((n, 4), np.float32)
    out_masks = np.zeros((n, h, w), bool)
    for i in range(n):
        own = inside[i] & (winner == i)
        m = largest_component(own & (norm[i] >= threshold))
        box_area = max(1.0, float(inside[i].sum()))
        if m.sum() < min_fill * box_area:
            m = own  # attention too weak here: the layout box is the label
        out_masks[i] = m
        out_boxes[i] = box_ops.mask_to_xyxy(m) if m.any() else b[i]
    return out_boxes, out_masks


def query_maps(
    query: torch.Tensor, key: torch.Tensor, weights: torch.Tensor, scale: float
) -> torch.Tensor:
    """Per-query cross-attention maps (B, Q, N) float32: for each image pixel n, the mean over
    heads of sum_t weights[b, q, t] * softmax_t(scale * q_n . k_t).

    query (B, H, N, d), key (B, H, T, d); weights (B, Q, T). The weighted sum over tokens is an
    attention whose values are the weights, so one fused SDPA call computes it without writing
    the (B, H, N, T) probabilities to memory, in the model's own precision (its attention runs
    in it too). Values are padded to the head size d, Q columns at a time.
    """
    import torch
    import torch.nn.functional as F

    b, h, _, d = query.shape
    w = weights.to(device=query.device, dtype=query.dtype).transpose(1, 2)  # (B, T, Q)
    out = []
    for start in range(0, w.shape[2], d):
        chunk = w[:, :, start : start + d]
        width = chunk.shape[2]
        values = F.pad(chunk, (0, d - width)).unsqueeze(1).expand(b, h, -1, d)  # (B, H, T, d)
        per_head = F.scaled_dot_product_attention(query, key, values, scale=scale)  # (B,H,N,d)
        out.append(per_head[..., :width].float().mean(dim=1))  # (B, N, width)
    # One chunk (Q <= d, the usual case) needs no cat: in eager mode that would be one more
    # (B, N, Q) copy per layer call and step.
    joined = out[0] if len(out) == 1 else torch.cat(out, dim=2)
    return joined.transpose(1, 2)  # (B, Q, N)
