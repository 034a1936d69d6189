"""Labeler "detector": an open-vocabulary detector labels (or verifies) generated images.

Models: OWLv2 / OWL-ViT (`AutoModelForZeroShotObjectDetection`, text queries per class) and
Grounding DINO (one caption "cat . fire truck ."; a class's score is its tokens' best logit),
from a hub id or a local directory. Post-processing is the same for both: per-class score
threshold, per-class NMS, then a class-agnostic duplicate filter (one object detected as two
classes keeps the higher score).

Modes:
- `replace`: the detections become the sample's instances (boxes, classes, scores; no masks).
- `verify`: keep only existing instances that a detection of the same class overlaps with
  IoU >= `verify_iou` (a check on the attention and GLIGEN labels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, Field

from synthvision import boxes as box_ops
from synthvision.errors import SpecError
from synthvision.filters import check_model_path
from synthvision.hub import follow_hub_progress_setting, local_files_only_for
from synthvision.labelers.base import LABELERS
from synthvision.spec_model import SpecModel
from synthvision.structures import Instances, Sample

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class DetectorParams(SpecModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)] = "google/owlv2-base-patch16-ensemble"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    revision: str | None = None
    use_safetensors: bool = True
    local_files_only: bool = False
    mode: Literal["replace", "verify"] = "replace"
    threshold: Fraction = 0.3
    nms_iou: Fraction = 0.5
    duplicate_iou: Fraction = Field(
        default=0.85, description="class-agnostic duplicate filter (1 disables)"
    )
    verify_iou: Fraction = 0.5
    query_template: str = Field(
        default="a photo of a {class}", description="OWL query per class ({class} = class words)"
    )
    queries: dict[str, list[str]] = Field(
        default_factory=dict, description="class name -> its own query texts"
    )
    batch_size: Annotated[int, Field(ge=1, le=256)] = 8
    min_area_px: Annotated[float, Field(ge=0.0)] | None = None
    max_detections: Annotated[int, Field(ge=1)] = 100


def nms(
    xyxy: npt.NDArray[np.floating], scores: npt.NDArray[np.floating], iou: float
) -> npt.NDArray[np.int64]:
    """Greedy NMS: indices kept, best score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_ops.iou_xyxy(xyxy[i], xyxy[order[1:]])[0]
        order = order[1:][ious <= iou]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    xyxy: npt.NDArray[np.floating],
    class_scores: npt.NDArray[np.floating],
    size_hw: tuple[int, int],
    *,
    threshold: float,
    nms_iou: float,
    duplicate_iou: float,
    min_area_px: float = 0.0,
    max_detections: int = 100,
) -> Instances:
    """Candidate boxes (P, 4) px with per-class scores (P, C) -> detections.

    Each candidate takes its best class; then threshold, area filter, per-class NMS and the
    class-agnostic duplicate filter, best scores first.
    """
    if len(xyxy) == 0 or class_scores.shape[1] == 0:
        return Instances.empty()
    cls = class_scores.argmax(axis=1)
    score = class_scores.max(axis=1)
    b = box_ops.clip_xyxy(xyxy, size_hw)
    ok = (score >= threshold) & (box_ops.area_xyxy(b) > max(min_area_px, 0.0))
    b, cls, score = b[ok], cls[ok], score[ok]
    kept: list[int] = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        kept.extend(idx[nms(b[idx], score[idx], nms_iou)].tolist())
    sel = np.asarray(kept, dtype=np.int64)
    if sel.size and duplicate_iou < 1.0:
        sel = sel[nms(b[sel], score[sel], duplicate_iou)]
    sel = sel[np.argsort(-score[sel], kind="stable")][:max_detections]
    return Instances(b[sel].astype(np.float32), cls[sel], scores=score[sel].astype(np.float32))


# Loaded detectors by load parameters: a second build in the same process (a notebook, a
# benchmark) reuses the model, as diffusion pipelines are reused.
_DETECTORS: dict[str, tuple[Any, Any]] = {}


def clear_detector_cache() -> None:
    """Drop cached detectors (frees GPU memory once no labeler holds them)."""
    _DETECTORS.clear()


def _load(params: DetectorParams, device: str, dtype: Any, where: str) -> tuple[Any, Any]:
    """(processor, model in eval mode on `device` in `dtype`); SpecError with one line."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    loads = (params.model, params.revision, params.use_safetensors, params.local_files_only)
    key = json.dumps([*loads, device, str(dtype)])
    if key in _DETECTORS:
        return _DETECTORS[key]
    local_only = local_files_only_for(
        params.model,
        filename="config.json",
        revision=params.revision,
        asked=params.local_files_only,
        where=f"{where}.model",
    )
    follow_hub_progress_setting()
    try:
        processor = AutoProcessor.from_pretrained(
            params.model, revision=params.revision, local_files_only=local_only
        )
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            params.model,
            revision=params.revision,
            use_safetensors=params.use_safetensors,
            local_files_only=local_only,
        )
    except (OSError, ValueError) as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise SpecError(
            f"{where}.model: could not load detector {params.model!r}: "
            f"{lines[0] if lines else type(exc).__name__}"
        ) from None
    model.to(device, dtype).eval()
    _DETECTORS[key] = (processor, model)
    return processor, model


class DetectorLabeler:
    """OWLv2 / OWL-ViT / Grounding DINO labeler over a batch of samples."""

    def __init__(
        self,
        params: DetectorParams,
        class_names: Sequence[str],
        min_area_px: float = 0.0,
        where: str = "labeler.params",
    ) -> None:
        import torch

        from synthvision.devices import model_device
        from synthvision.generators.diffusion import resolve_dtype
        from synthvision.generators.prompts import class_phrase

        self.params = params
        self.class_names = list(class_names)
        unknown = sorted(set(params.queries) - set(self.class_names))
        if unknown:
            raise SpecError(f"{where}.queries: unknown class(es) {', '.join(unknown)}")
        if "{class}" not in params.query_template:
            raise SpecError(f"{where}.query_template: must contain {{class}}")
        self.min_area_px = params.min_area_px if params.min_area_px is not None else min_area_px
        check_model_path(params.model, f"{where}.model")
        self.device = model_device(params.device, f"{where}.device")
        self.dtype = resolve_dtype(params.dtype, self.device)
        self.processor, self.model = _load(params, self.device, self.dtype, where)
        self.family = str(self.model.config.model_type)
        if self.family not in ("owlv2", "owlvit") and "grounding" not in self.family:
            raise SpecError(
                f"{where}.model: {self.family!r} models are not supported "
                "(use OWLv2, OWL-ViT or Grounding DINO)"
            )
        # Flat list of query texts and the class of each.
        self.query_texts: list[str] = []
        self.query_class: list[int] = []
        for c, name in enumerate(self.class_names):
            texts = params.queries.get(name) or [
                params.query_template.replace("{class}", class_phrase(name))
            ]
            for t in texts:
                self.query_texts.append(t)
                self.query_class.append(c)
        self._torch = torch
        # torchvision image processors resize and pad on the model's device: OWLv2's resize to
        # 960 px costs ~19 ms per 512 px image on a CPU core, against ~0.13 s of GPU time per image.
        image_proc = getattr(self.processor, "image_processor", None)
        accepts = getattr(getattr(image_proc, "valid_kwargs", None), "__annotations__", {})
        self._processor_device = {"device": self.device} if "device" in accepts else {}

    # -- model-specific scoring --------------------------------------------------------------

    def _owl(self, images: list[npt.NDArray[np.uint8]]) -> list[tuple[Any, Any]]:
        """Per image: (boxes (P, 4) px, class scores (P, C))."""
        torch = self._torch
        inputs = self.processor(
            text=[self.query_texts] * len(images),
            images=images,
            return_tensors="pt",
            **self._processor_device,
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs)
        # The whole batch crosses to the host at once: two copies (and waits) per batch, not
        # two per image.
        q_scores = out.logits.float().sigmoid().cpu().numpy()  # (B, P, Qtext)
        pred_boxes = out.pred_boxes.float().cpu().numpy()  # (B, P, 4)
        out_list = []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            # OWLv2 pads images to a square (bottom/right) before resizing: boxes are relative to
            # the padded side; OWL-ViT resizes without padding.
            scale = [max(h, w)] * 4 if self.family == "owlv2" else [w, h, w, h]
            boxes = _cxcywh_to_xyxy(pred_boxes[i]) * np.array(scale)
            out_list.append((boxes, self._per_class(q_scores[i])))
        return out_list

    def _grounding_dino(self, images: list[npt.NDArray[np.uint8]]) -> list[tuple[Any, Any]]:
        torch = self._torch
        caption, spans = "", []
        for t in self.query_texts:
            start = len(caption)
            caption += t.lower()
            spans.append((start, len(caption)))
            caption += " . "
        caption = caption.strip()
        inputs = self.processor(
            images=images,
            text=[caption] * len(images),
            return_tensors="pt",
            **self._processor_device,
        )
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        enc = self.processor.tokenizer(caption, return_offsets_mapping=True)
        token_query = np.full(len(enc["input_ids"]), -1)
        for ti, (a, b) in enumerate(enc["offset_mapping"]):
            for q, (s, e) in enumerate(spans):
                if b > a and a < e and b > s:
                    token_query[ti] = q
        with torch.inference_mode():
            out = self.model(**inputs)
        logits = out.logits.float().sigmoid().cpu().numpy()  # (B, P, max_text_len)
        pred_boxes = out.pred_boxes.float().cpu().numpy()  # (B, P, 4): one copy per batch
        out_list = []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            q_scores = np.zeros((logits.shape[1], len(self.query_texts)), np.float32)
            for q in range(len(self.query_texts)):
                cols = np.flatnonzero(token_query == q)
                cols = cols[cols < logits.shape[2]]
                if cols.size:
                    q_scores[:, q] = logits[i][:, cols].max(axis=1)
            boxes = _cxcywh_to_xyxy(pred_boxes[i]) * np.array([w, h, w, h])
            out_list.append((boxes, self._per_class(q_scores)))
        return out_list

    def _per_class(self, q_scores: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """(P, Qtext) -> (P, C): a class scores its best query."""
        c = np.zeros((q_scores.shape[0], len(self.class_names)), np.float32)
        for q, cls in enumerate(self.query_class):
            c[:, cls] = np.maximum(c[:, cls], q_scores[:, q])
        return c

    # -- public ------------------------------------------------------------------------------

    def detect(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Instances]:
        """Detections (boxes px, class ids, scores) for images (H, W, 3) uint8."""
        results: list[Instances] = []
        step = self.params.batch_size
        for start in range(0, len(images), step):
            chunk = [np.ascontiguousarray(im) for im in images[start : start + step]]
            raw = (
                self._owl(chunk)
                if self.family in ("owlv2", "owlvit")
                else self._grounding_dino(chunk)
            )
            for img, (xyxy, scores) in zip(chunk, raw, strict=True):
                results.append(
                    postprocess(
                        xyxy,
                        scores,
                        img.shape[:2],
                        threshold=self.params.threshold,
                        nms_iou=self.params.nms_iou,
                        duplicate_iou=self.params.duplicate_iou,
                        min_area_px=self.min_area_px,
                        max_detections=self.params.max_detections,
                    )
                )
        return results

    def label(self, samples: Sequence[Sample]) -> list[Sample]:
        todo = [i for i, s in enumerate(samples) if "rejected" not in s.metadata]
        dets = self.detect([samples[i].image for i in todo])
        out = list(samples)
        for i, det in zip(todo, dets, strict=True):
            s = samples[i]
            md = dict(s.metadata)
            info: dict[str, Any] = {
                "model": self.params.model,
                "mode": self.params.mode,
                "detections": len(det),
            }
            if self.params.mode == "replace":
                inst = det
            else:
                keep = verified(s.instances, det, self.params.verify_iou)
                inst = s.instances[keep]
                info.update(kept=int(keep.sum()), dropped=int((~keep).sum()))
            md["detector"] = info
            out[i] = Sample(s.index, s.image, inst, md)
        return out


def verified(existing: Instances, detections: Instances, iou: float) -> npt.NDArray[np.bool_]:
    """(N,) bool: existing instance confirmed by a same-class detection with IoU >= `iou`."""
    keep = np.zeros(len(existing), dtype=bool)
    if len(existing) == 0 or len(detections) == 0:
        return keep
    ious = box_ops.iou_xyxy(existing.xyxy, detections.xyxy)
    same = existing.class_id[:, None] == detections.class_id[None, :]
    return np.asarray(((ious >= iou) & same).any(axis=1), dtype=bool)


def _cxcywh_to_xyxy(b: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return np.stack(
        [
            b[:, 0] - b[:, 2] / 2,
            b[:, 1] - b[:, 3] / 2,
            b[:, 0] + b[:, 2] / 2,
            b[:, 1] + b[:, 3] / 2,
        ],
        axis=1,
    )


@LABELERS.register("detector", DetectorParams)
def _make(
    params: DetectorParams, *, spec: Any = None, class_names: Sequence[str] = (), **_: Any
) -> DetectorLabeler:
    if spec is not None:
        class_names = [c.name for c in spec.classes]
        return DetectorLabeler(params, class_names, float(spec.layout.min_area_px))
    return DetectorLabeler(params, class_names)
