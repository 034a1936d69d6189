"""Augmentation stage: label-safe albumentations pipelines (the only albumentations import).

A pipeline comes from a named preset, an inline albumentations dict (`A.to_dict` format) or a
YAML/JSON file in albumentations' serialization format. Whatever the source, our own box settings
are (re)applied: pixel xyxy (`pascal_voc`), clipping, invalid boxes filtered, minimum visibility
and area from the spec.

Labels stay consistent:
- instances with masks: the masks are warped with the image, each box becomes the tight box of
  its warped mask, and an instance is dropped when its mask vanishes, its mask area falls below
  `min_area_px`, or its visibility (mask area after / mask area before, corrected for the
  pipeline's scaling of that object) falls below `min_visibility`;
- instances without masks: albumentations' bbox handling (clip + filter), boxes rounded to 1e-3 px.
Class ids come back as int64, and instances keep their order. An instance whose input mask is
empty has no box to follow and is dropped.

Determinism: `apply(sample, seed)` re-seeds the whole pipeline with fresh generators built from
`seed` right before the call, so the output depends only on (sample, seed) -- not on earlier
calls, batch size, process count or DataLoader workers. Seeds come from
`augment_seed(spec_seed, source_index, variant)`. (Why not `Compose.set_random_seed`: it gives
every transform an identically seeded generator, so all `p=0.5` transforms fire together.)
An `Augmenter` holds one Compose whose state each call resets: use one per thread (it pickles,
so DataLoader workers each get their own copy).
"""

from __future__ import annotations

import os

# albumentations otherwise checks PyPI for a newer version on import (network, latency).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import json
import math
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import albumentations as A
import numpy as np
import numpy.typing as npt
import yaml
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform

from synthvision import boxes, randomness
from synthvision.errors import SpecError
from synthvision.spec_yaml import load_yaml
from synthvision.structures import Instances, Sample

if TYPE_CHECKING:
    from synthvision.config import AugmentSpec

Transform: TypeAlias = BasicTransform | BaseCompose

# Version of our section ("synthvision") inside a saved albumentations dict.
_SECTION = "synthvision"
_SECTION_VERSION = 1
_LABEL_FIELD = "instance_index"  # carries each box's row in the input, to map labels back
_ROUND_DECIMALS = 3  # boxes rounded to 1e-3 px: hides float32 noise (e.g. 511.99997 after a flip)
_MAX_PARAM_ARRAY = 16  # arrays with more elements are recorded as shape + dtype only


def augment_seed(spec_seed: int, source_index: int, variant: int) -> int:
    """Seed of augmented variant `variant` of generated image `source_index`."""
    return randomness.derive_seed(spec_seed, source_index, f"augment.{variant}")


def output_index(source_index: int, variant: int, variants: int, keep_original: bool) -> int:
    """Global index of a variant in the augmented dataset.

    Each source image owns `variants + keep_original` consecutive slots; the kept original (if
    any) takes the first slot, augmented variant v (0-based) the slot v + keep_original. Pass
    `variant=-1` for the original itself.
    """
    per_source = variants + int(keep_original)
    slot = 0 if variant < 0 else variant + int(keep_original)
    return source_index * per_source + slot


@dataclass(frozen=True)
class BoxSettings:
    """Box handling that is ours, not the pipeline's: it survives any user-supplied pipeline.

    `clip` and `filter_invalid_bboxes` are always on (they are recorded so a saved pipeline
    shows them, since albumentations' `to_dict` drops `filter_invalid_bboxes`).
    """

    min_visibility: float = 0.3
    min_area_px: float = 16.0
    min_width_px: float = 0.0
    min_height_px: float = 0.0
    max_accept_ratio: float | None = None
    clip: bool = True
    filter_invalid_bboxes: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_visibility <= 1.0:
            raise SpecError(f"augment.min_visibility must be in [0, 1], got {self.min_visibility}")
        if min(self.min_area_px, self.min_width_px, self.min_height_px) < 0:
            raise SpecError("augment box minimums (area, width, height) must be >= 0")
        if not (self.clip and self.filter_invalid_bboxes):
            raise SpecError("augment: clip and filter_invalid_bboxes must stay true (label safety)")

    def bbox_params(self) -> A.BboxParams:
        return A.BboxParams(
            format="pascal_voc",  # absolute pixel xyxy, our Instances.xyxy convention
            label_fields=[_LABEL_FIELD],
            min_area=self.min_area_px,
            min_visibility=self.min_visibility,
            min_width=self.min_width_px,
            min_height=self.min_height_px,
            clip=self.clip,
            filter_invalid_bboxes=self.filter_invalid_bboxes,
            max_accept_ratio=self.max_accept_ratio,
        )

    @classmethod
    def from_dict(cls, data: Any, key: str) -> BoxSettings:
        if not isinstance(data, Mapping):
            raise SpecError(f"{key}.{_SECTION}.box must be a mapping of box settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"{key}.{_SECTION}.box: unknown setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


# ----------------------------------------------------------------------------------- presets
# Every preset is size-agnostic (no fixed-size crop or resize) and label-safe: geometric
# transforms are affine/perspective/flip, occlusion (CoarseDropout) also cuts the masks.


def _light() -> list[Transform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=15, val_shift_limit=10, p=0.3),
    ]


def _medium() -> list[Transform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), rotate=(-8, 8), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
        A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=15, p=0.3),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=0.2),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.2),
        A.ImageCompression(quality_range=(60, 95), p=0.2),
    ]


def _heavy() -> list[Transform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.6, 1.4),
            translate_percent=(-0.1, 0.1),
            rotate=(-20, 20),
            shear=(-6, 6),
            balanced_scale=True,
            p=0.7,
        ),
        A.Perspective(scale=(0.02, 0.06), p=0.3),
        A.OneOf(
            [
                A.ColorJitter(
                    brightness=(0.6, 1.4),
                    contrast=(0.6, 1.4),
                    saturation=(0.5, 1.5),
                    hue=(-0.05, 0.05),
                ),
                A.RGBShift(r_shift_limit=25, g_shift_limit=25, b_shift_limit=25),
                A.CLAHE(clip_limit=(1.0, 4.0)),
            ],
            p=0.7,
        ),
        A.OneOf(
            [
                A.GaussianBlur(blur_limit=(3, 7)),
                A.MotionBlur(blur_limit=(3, 11)),
                A.Defocus(radius=(2, 4), alias_blur=(0.1, 0.3)),
            ],
            p=0.3,
        ),
        A.OneOf(
            [
                A.GaussNoise(std_range=(0.03, 0.1)),
                A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.2, 0.6)),
            ],
            p=0.3,
        ),
        A.ImageCompression(quality_range=(30, 90), p=0.3),
        # Occluders: fill_mask=0 cuts the masks too, so boxes shrink to what stays visible.
        A.CoarseDropout(
            num_holes_range=(1, 4),
            hole_height_range=(0.05, 0.15),
            hole_width_range=(0.05, 0.15),
            fill=0,
            fill_mask=0,
            p=0.3,
        ),
    ]


def _weather() -> list[Transform]:
    return [
        A.OneOf(
            [
                A.RandomFog(fog_coef_range=(0.3, 0.7), alpha_coef=0.1),
                A.RandomRain(
                    slant_range=(-15, 15), drop_width=1, blur_value=3, rain_type="drizzle"
                ),
                A.RandomRain(slant_range=(-15, 15), drop_width=1, blur_value=5, rain_type="heavy"),
                A.RandomSnow(snow_point_range=(0.1, 0.3), brightness_coeff=2.0, method="bleach"),
                # Sun flare / glare from the upper half of the frame.
                A.RandomSunFlare(
                    flare_roi=(0.0, 0.0, 1.0, 0.5), src_radius=120, num_flare_circles_range=(4, 8)
                ),
            ],
            p=1.0,
        ),
        A.RandomShadow(p=0.2),
        A.RandomBrightnessContrast(brightness_limit=(-0.2, 0.1), contrast_limit=(-0.3, 0.0), p=0.5),
    ]


def _night() -> list[Transform]:
    return [
        # Dark and flat: lower brightness and contrast, then a gamma that crushes the shadows.
        A.RandomBrightnessContrast(
            brightness_limit=(-0.55, -0.3), contrast_limit=(-0.5, -0.2), p=1.0
        ),
        A.RandomGamma(gamma_limit=(130, 220), p=0.7),
        # Colour cast: bluish moonlight or warm (sodium-lamp) light.
        A.OneOf(
            [
                A.RGBShift(r_shift_limit=(-25, 0), g_shift_limit=(-10, 5), b_shift_limit=(5, 30)),
                A.RGBShift(r_shift_limit=(10, 35), g_shift_limit=(0, 15), b_shift_limit=(-30, -5)),
            ],
            p=0.8,
        ),
        # High-ISO sensor noise.
        A.OneOf(
            [
                A.ISONoise(color_shift=(0.02, 0.06), intensity=(0.3, 0.8)),
                A.GaussNoise(std_range=(0.03, 0.08)),
            ],
            p=0.8,
        ),
    ]


def _camera() -> list[Transform]:
    return [
        A.OneOf(
            [
                A.MotionBlur(blur_limit=(5, 15)),
                A.Defocus(radius=(2, 5), alias_blur=(0.1, 0.4)),
                A.ZoomBlur(max_factor=(1.02, 1.1)),
            ],
            p=0.7,
        ),
        A.ISONoise(color_shift=(0.01, 0.04), intensity=(0.2, 0.6), p=0.5),
        A.Downscale(scale_range=(0.35, 0.7), p=0.3),
        A.ImageCompression(quality_range=(15, 60), p=0.6),
        A.ChromaticAberration(p=0.2),
    ]


def _viewpoint() -> list[Transform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.5, 1.5),
            translate_percent=(-0.15, 0.15),
            rotate=(-25, 25),
            shear=(-10, 10),
            balanced_scale=True,
            p=0.9,
        ),
        A.Perspective(scale=(0.03, 0.1), p=0.5),
    ]


PRESETS: dict[str, Callable[[], list[Transform]]] = {
    "light": _light,
    "medium": _medium,
    "heavy": _heavy,
    "weather": _weather,
    "night": _night,
    "camera": _camera,
    "viewpoint": _viewpoint,
}


def preset_names() -> list[str]:
    return list(PRESETS)


# --------------------------------------------------------------------------- (de)serialising


def _first_line(exc: BaseException) -> str:
    """One readable line; albumentations' pydantic errors become `field: message`."""
    lines = [ln.strip() for ln in (str(exc).strip() or type(exc).__name__).splitlines()]
    if len(lines) >= 3 and "validation error" in lines[0]:
        msg = lines[2].split(" [type=")[0].removeprefix("Value error, ")
        return f"{lines[1]}: {msg}"[:300]
    return lines[0][:300]


def _locate_error(node: Any, where: str) -> tuple[str, str, Exception] | None:
    """On a failed `A.from_dict`: the first leaf transform that fails on its own."""
    if not isinstance(node, Mapping):
        return None
    children = node.get("transforms")
    if isinstance(children, list):
        for i, child in enumerate(children):
            found = _locate_error(child, f"{where}.transforms[{i}]")
            if found:
                return found
        return None
    try:
        A.from_dict({"transform": dict(node)})
    except Exception as exc:
        return where, str(node.get("__class_fullname__", "?")), exc
    return None


def _iter_transforms(node: Transform) -> list[Transform]:
    """The node and all nested transforms, depth first."""
    out: list[Transform] = [node]
    if isinstance(node, BaseCompose):
        for child in node.transforms:
            out.extend(_iter_transforms(child))
    return out


def _transforms_from_dict(data: Any, key: str) -> tuple[list[Transform], float, BoxSettings | None]:
    """Transforms, top-level p, and our saved box settings (if any) of a serialized pipeline."""
    if not isinstance(data, Mapping):
        raise SpecError(
            f"{key}: expected a mapping as written by albumentations.to_dict "
            f"({{'transform': {{'__class_fullname__': 'Compose', 'transforms': [...]}}}}), "
            f"got {type(data).__name__}"
        )
    data = dict(data)
    section = data.pop(_SECTION, None)
    box: BoxSettings | None = None
    if section is not None:
        if not isinstance(section, Mapping) or "box" not in section:
            raise SpecError(f"{key}.{_SECTION} must be a mapping with a 'box' entry")
        box = BoxSettings.from_dict(section["box"], key)
    if "transform" not in data and "__class_fullname__" in data:
        data = {"transform": data}  # accept the bare transform dict too
    if not isinstance(data.get("transform"), Mapping):
        raise SpecError(
            f"{key}: missing the 'transform' entry; give a dict as written by "
            "albumentations.to_dict, e.g. {'transform': {'__class_fullname__': 'Compose', "
            "'transforms': [{'__class_fullname__': 'HorizontalFlip', 'p': 0.5}]}}"
        )
    with warnings.catch_warnings():
        # albumentations warns (and ignores) invalid arguments: we turn them into errors below.
        warnings.simplefilter("ignore")
        try:
            loaded = A.from_dict(data)
        except KeyError as exc:
            raise SpecError(
                f"{key}: unknown albumentations transform or missing entry {_first_line(exc)}; "
                "check the '__class_fullname__' names (albumentations 2.0) and required keys"
            ) from None
        except Exception as exc:
            found = _locate_error(data["transform"], "transform")
            where, culprit = (f"{found[0]} ({found[1]}): ", found[2]) if found else ("", exc)
            raise SpecError(
                f"{key}: cannot build the albumentations pipeline: {where}"
                f"{_first_line(culprit)}; fix the transform arguments (albumentations 2.0 names)"
            ) from None
    if not isinstance(loaded, (BasicTransform, BaseCompose)):
        raise SpecError(f"{key}: the pipeline is not an albumentations transform")
    for t in _iter_transforms(loaded):
        # Some args albumentations' own to_dict writes (RGBShift's inherited noise_type, ...)
        # count as invalid on reload; they are attributes of the transform, typos are not.
        bad = [a for a in getattr(t, "invalid_args", None) or [] if not hasattr(t, a)]
        if bad:
            raise SpecError(
                f"{key}: {type(t).__name__} got unknown argument(s) {', '.join(bad)}; "
                "remove or rename them (albumentations 2.0 names)"
            )
    if isinstance(loaded, A.Compose):
        return list(loaded.transforms), float(loaded.p), box
    return [loaded], 1.0, box


def _read_pipeline_file(path: Path, key: str) -> Any:
    if not path.is_file():
        raise SpecError(
            f"{key}: pipeline file {str(path)!r} does not exist; give the path to a YAML/JSON "
            "file written by albumentations.save or Augmenter.save"
        )
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return load_yaml(text)  # YAML also reads JSON
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{key}: {path} is not valid YAML/JSON: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------ param record


def _jsonable(value: Any) -> Any:
    """Drawn parameters as plain JSON data; big arrays (noise maps) as shape + dtype only."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        if value.size > _MAX_PARAM_ARRAY:
            return {"array_shape": list(value.shape), "dtype": str(value.dtype)}
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > 4 * _MAX_PARAM_ARRAY:
            return {"sequence_len": len(value)}
        return [_jsonable(v) for v in value]
    return type(value).__name__  # e.g. a callable: keep the record JSON-clean


# ------------------------------------------------------------------------------ the augmenter


@contextmanager
def _quiet_processors() -> Iterator[None]:
    # Pixel-only pipelines (weather, night) make albumentations warn that no transform uses
    # the bbox/keypoint processors; we always attach them on purpose.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Got processor for", category=UserWarning)
        yield


def _mask_area_and_box(
    masks: npt.NDArray[np.bool_], hints_xyxy: npt.NDArray[np.floating] | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(N, H, W) bool masks -> areas (N,) in px and tight pixel-edge xyxy boxes (N, 4).

    Same boxes as `boxes.masks_to_xyxy`, faster: `hints_xyxy` (N, 4) are guesses of where each
    mask lies (its labeled box, or its warped box corners); the box is searched in the hint
    (+2 px) when that window holds all of the mask's pixels, checked by count, else everywhere.
    Whole-mask `count_nonzero` is cheap; reductions over a 512x512 mask are not.
    """
    n, h, w = masks.shape
    areas = np.zeros(n, np.float64)
    xyxy = np.zeros((n, 4), np.float64)
    windows: list[list[int]] | None = None
    if hints_xyxy is not None and n:
        hint = np.asarray(hints_xyxy, np.float64).reshape(n, 4)
        lo = np.floor(np.nan_to_num(hint[:, :2], nan=0.0, posinf=0.0, neginf=0.0)) - 2
        hi = np.ceil(np.nan_to_num(hint[:, 2:], nan=1e9, posinf=1e9, neginf=1e9)) + 2
        windows = (
            np.concatenate([lo.clip(0, [w, h]), hi.clip(0, [w, h])], axis=1).astype(int).tolist()
        )
    for i in range(n):
        m = masks[i]
        area = int(np.count_nonzero(m))
        areas[i] = area
        if area == 0:
            continue
        sub, x0, y0 = m, 0, 0
        if windows is not None:
            c0, r0, c1, r1 = windows[i]
            if c1 > c0 and r1 > r0:
                win = m[r0:r1, c0:c1]
                if np.count_nonzero(win) == area:
                    sub, x0, y0 = win, c0, r0
        rows = sub.any(axis=1)
        cols = sub.any(axis=0)
        # First and last True via argmax (C loops, no index arrays).
        top, left = int(rows.argmax()), int(cols.argmax())
        bottom = len(rows) - int(rows[::-1].argmax())
        right = len(cols) - int(cols[::-1].argmax())
        xyxy[i] = (x0 + left, y0 + top, x0 + right, y0 + bottom)
    return areas, xyxy


@dataclass
class _Prepared:
    """A sample's albumentations inputs and its (kept) masked instances' stats before."""

    data: dict[str, Any]
    src_rows: npt.NDArray[np.int64]  # input rows of the instances handed to albumentations
    area_before: npt.NDArray[np.float64]  # (K,) mask areas, masked samples only
    box_before: npt.NDArray[np.float64]  # (K, 4) tight boxes, masked samples only


def _box_corners(xyxy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 4) boxes -> (N * 4, 2) corner points, clockwise per box."""
    x1, y1, x2, y2 = xyxy.T
    return np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1).reshape(-1, 2)


def _quad_areas(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N * 4, 2) quadrilateral corners -> (N,) areas (shoelace; order/orientation free)."""
    q = points.reshape(-1, 4, 2)
    x, y = q[..., 0], q[..., 1]
    return 0.5 * np.abs(np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1))


class Augmenter:
    """An albumentations pipeline with our box settings, applied label-safely to `Sample`s."""

    def __init__(
        self,
        transforms: Sequence[Transform],
        box: BoxSettings | None = None,
        *,
        p: float = 1.0,
        name: str = "custom",
    ) -> None:
        self.box = box or BoxSettings()
        self.name = name
        self._transforms = list(transforms)
        self._p = float(p)
        with _quiet_processors():
            self._compose = A.Compose(
                self._transforms,
                bbox_params=self.box.bbox_params(),
                # Box corners of masked instances ride along as keypoints, never dropped, to
                # measure how much the pipeline scaled each object (scale-aware visibility).
                keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                p=self._p,
                save_applied_params=True,
            )

    def __repr__(self) -> str:
        names = [repr(t) for t in self._transforms]
        return f"Augmenter(name={self.name!r}, p={self._p}, box={self.box}, transforms={names})"

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, box: BoxSettings | None = None) -> Augmenter:
        if name not in PRESETS:
            raise SpecError(
                f"augment.preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)} "
                "(or give augment.pipeline / augment.file)"
            )
        return cls(PRESETS[name](), box, name=name)

    @classmethod
    def from_dict(
        cls, data: Any, box: BoxSettings | None = None, *, key: str = "augment.pipeline"
    ) -> Augmenter:
        """From an albumentations dict; `box` overrides box settings saved in the dict."""
        transforms, p, saved_box = _transforms_from_dict(data, key)
        return cls(transforms, box or saved_box, p=p, name="pipeline")

    @classmethod
    def from_file(
        cls, path: str | Path, box: BoxSettings | None = None, *, key: str = "augment.file"
    ) -> Augmenter:
        transforms, p, saved_box = _transforms_from_dict(_read_pipeline_file(Path(path), key), key)
        return cls(transforms, box or saved_box, p=p, name=f"file:{Path(path).name}")

    @classmethod
    def load(cls, path: str | Path) -> Augmenter:
        """Reload a pipeline written by `save`, with every box setting it had."""
        return cls.from_file(path, None, key=str(path))

    @classmethod
    def from_spec(cls, spec: AugmentSpec, base_dir: str | Path | None = None) -> Augmenter:
        """The augmenter of an enabled `augment` spec section.

        Box settings: `min_visibility`/`min_area_px` set explicitly in the spec win; otherwise a
        pipeline saved by `Augmenter.save` keeps its own; otherwise the spec defaults apply.
        A relative `file` is resolved against `base_dir` (e.g. the spec file's folder).
        """
        if not spec.enabled:
            raise SpecError("augment: no pipeline given; set augment.preset, pipeline or file")
        if spec.preset is not None:
            return cls.from_preset(spec.preset, BoxSettings(spec.min_visibility, spec.min_area_px))
        if spec.pipeline is not None:
            key, data = "augment.pipeline", spec.pipeline
        else:
            path = Path(str(spec.file))
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            key, data = "augment.file", _read_pipeline_file(path, "augment.file")
        transforms, p, saved = _transforms_from_dict(data, key)
        explicit = spec.model_fields_set
        box = saved or BoxSettings()
        box = replace(
            box,
            **{
                k: getattr(spec, k)
                for k in ("min_visibility", "min_area_px")
                if saved is None or k in explicit
            },
        )
        return cls(transforms, box, p=p, name=spec.preset or key.split(".")[-1])

    # -- serialising -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """albumentations' own dict (loadable by `A.from_dict`) plus our box section."""
        # Serialise our own Compose: wrapping the same transform objects in a second Compose
        # would re-point their bbox/keypoint processors at that one.
        data: dict[str, Any] = A.to_dict(self._compose)
        data["transform"]["keypoint_params"] = None  # internal (mask visibility), not the user's
        # to_dict drops filter_invalid_bboxes (and strict): our section keeps every box setting.
        data[_SECTION] = {"version": _SECTION_VERSION, "box": asdict(self.box)}
        return data

    def save(self, path: str | Path) -> None:
        """Write YAML (`.yaml`/`.yml`) or JSON (anything else)."""
        p = Path(path)
        data = self.to_dict()
        if p.suffix.lower() in (".yaml", ".yml"):
            p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        else:
            p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    @property
    def compose(self) -> A.Compose:
        """The underlying Compose (our bbox + keypoint params); seed it via `apply`."""
        return self._compose

    # -- applying ----------------------------------------------------------------------------

    def apply_variant(
        self, sample: Sample, spec_seed: int, variant: int, index: int | None = None
    ) -> Sample:
        """Variant `variant` of `sample`, seeded from (spec_seed, sample.index, variant)."""
        seed = augment_seed(spec_seed, sample.index, variant)
        return self.apply(sample, seed, variant=variant, index=index)

    def apply_variants(
        self,
        sample: Sample,
        spec_seed: int,
        variants: int | Sequence[int],
        indices: Sequence[int] | None = None,
    ) -> list[Sample]:
        """Several variants of one sample (the input mask statistics are computed once).

        Variant v is identical to `apply_variant(sample, spec_seed, v, indices[k])`.
        """
        numbers = list(range(variants)) if isinstance(variants, int) else list(variants)
        if indices is not None and len(indices) != len(numbers):
            raise ValueError(f"got {len(indices)} indices for {len(numbers)} variants")
        prepared = self._prepare(sample)
        return [
            self._run(
                sample,
                prepared,
                augment_seed(spec_seed, sample.index, v),
                v,
                None if indices is None else indices[k],
            )
            for k, v in enumerate(numbers)
        ]

    def apply(
        self, sample: Sample, seed: int, *, variant: int = 0, index: int | None = None
    ) -> Sample:
        """Augment one sample; depends only on (sample, seed).

        The result has index `index` (default: the source's), masks/boxes/class ids of the
        surviving instances in their original order, and `metadata["augment"]` =
        {source_index, variant, seed, pipeline, params: [{name, params}, ...]}.
        """
        return self._run(sample, self._prepare(sample), seed, variant, index)

    def _prepare(self, sample: Sample) -> _Prepared:
        """albumentations inputs of a sample, and its mask statistics before augmentation."""
        inst = sample.instances
        n = len(inst)
        data: dict[str, Any] = {
            "image": sample.image,
            "bboxes": np.zeros((0, 4), np.float64),
            _LABEL_FIELD: np.zeros(0, np.int64),
            "keypoints": np.zeros((0, 2), np.float64),
        }
        src_rows = np.arange(n)
        area_before = np.zeros(0)
        box_before = np.zeros((0, 4))
        if inst.masks is not None:
            # An empty input mask has no tight box: such an instance cannot stay consistent.
            masks = inst.masks
            area_before, box_before = _mask_area_and_box(masks, inst.xyxy)
            src_rows = np.flatnonzero(area_before > 0)
            if len(src_rows) < n:
                masks = masks[src_rows]
                area_before, box_before = area_before[src_rows], box_before[src_rows]
            if len(src_rows):
                data["masks"] = masks.view(np.uint8)  # bool -> 0/1 bytes without a copy
                data["keypoints"] = _box_corners(box_before)
        elif n:
            data["bboxes"] = inst.xyxy.astype(np.float64)
            data[_LABEL_FIELD] = src_rows
        return _Prepared(data, src_rows, area_before, box_before)

    def _run(
        self, sample: Sample, prepared: _Prepared, seed: int, variant: int, index: int | None
    ) -> Sample:
        # Fresh generators shared by all transforms, so draws are sequential, not correlated.
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        with np.errstate(divide="ignore", invalid="ignore"):  # 0-area boxes in albumentations
            out = self._compose(**prepared.data)

        image = out["image"]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise SpecError(
                "augment: the pipeline must return uint8 (H, W, 3) images; remove Normalize, "
                f"ToFloat or ToTensorV2 (got {getattr(image, 'dtype', type(image))})"
            )
        size_hw = (int(image.shape[0]), int(image.shape[1]))
        if sample.instances.masks is not None:
            instances = self._masked_result(sample.instances, prepared, out, size_hw)
        else:
            instances = self._box_result(sample.instances, out, size_hw)

        metadata = dict(sample.metadata)
        metadata["augment"] = {
            "source_index": int(sample.index),
            "variant": int(variant),
            "seed": int(seed),
            "pipeline": self.name,
            "params": [
                {"name": str(name), "params": _jsonable(params)}
                for name, params in out.get("applied_transforms", [])
            ],
        }
        return Sample(
            index=sample.index if index is None else int(index),
            # A no-op draw returns the source's own array: copy, never share with the source.
            image=image.copy() if image is sample.image else np.ascontiguousarray(image),
            instances=instances,
            metadata=metadata,
        )

    def _box_result(
        self, inst: Instances, out: dict[str, Any], size_hw: tuple[int, int]
    ) -> Instances:
        h, w = size_hw
        xyxy = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        # Labels come back as floats: round to the row index they started as.
        rows = np.rint(np.asarray(out[_LABEL_FIELD], dtype=np.float64)).astype(np.int64)
        xyxy = np.round(xyxy, _ROUND_DECIMALS)
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        xyxy, rows = xyxy[ok], rows[ok]
        return Instances(
            xyxy=xyxy.astype(np.float32),
            class_id=inst.class_id[rows],
            masks=None,
            scores=None if inst.scores is None else inst.scores[rows],
        )

    @staticmethod
    def _warped_mask_stats(
        out: dict[str, Any],
        k: int,
        size_hw: tuple[int, int],
        area_before: npt.NDArray[np.float64],
        box_before: npt.NDArray[np.float64],
    ) -> tuple[
        npt.NDArray[np.bool_],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
    ]:
        """Augmented masks (K, H, W), their areas, tight boxes and visibilities."""
        masks_u8 = np.ascontiguousarray(out["masks"]).reshape(k, *size_hw)
        if masks_u8.dtype != np.uint8 or masks_u8.max(initial=0) > 1:
            masks_u8 = (masks_u8 != 0).view(np.uint8)  # e.g. a pipeline with fill_mask=255
        masks = masks_u8.view(bool)  # 0/1 bytes: a valid bool view, no copy
        # Scale-aware visibility: how much area the object *should* have after the pipeline's
        # scaling (from its warped box corners), against what is left inside the frame.
        corners = np.asarray(out["keypoints"], dtype=np.float64)
        scale = np.ones(k)
        hints = None
        if corners.shape[0] == 4 * k and np.isfinite(corners).all():
            quads = corners[:, :2].reshape(k, 4, 2)
            hints = np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1)
            box_area = boxes.area_xyxy(box_before)
            scale = np.where(
                box_area > 0, _quad_areas(corners[:, :2]) / np.maximum(box_area, 1e-9), 1
            )
        area_after, xyxy = _mask_area_and_box(masks, hints)
        visibility = np.minimum(1.0, area_after / np.maximum(area_before * scale, 1e-9))
        return masks, area_after, xyxy, visibility

    def _masked_result(
        self,
        inst: Instances,
        prepared: _Prepared,
        out: dict[str, Any],
        size_hw: tuple[int, int],
    ) -> Instances:
        src_rows, area_before, box_before = (
            prepared.src_rows,
            prepared.area_before,
            prepared.box_before,
        )
        k = len(src_rows)
        if k == 0:
            return Instances(
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.int64),
                masks=np.zeros((0, *size_hw), bool),
                scores=None if inst.scores is None else np.zeros(0, np.float32),
            )
        masks_in = prepared.data["masks"]
        if out["masks"] is masks_in and masks_in.shape[1:] == size_hw:
            # No transform touched the masks (pixel-level pipeline): nothing moved or vanished.
            # Copied: the output must not share memory with the source (the next variant's).
            masks, area_after, xyxy = masks_in.view(bool).copy(), area_before, box_before
            visibility = np.ones(k)
        else:
            masks, area_after, xyxy, visibility = self._warped_mask_stats(
                out, k, size_hw, area_before, box_before
            )
        wh = xyxy[:, 2:] - xyxy[:, :2]
        b = self.box
        keep = (
            (area_after > 0)
            & (area_after >= b.min_area_px)
            & (visibility >= b.min_visibility - 1e-9)
            & (wh[:, 0] >= b.min_width_px)
            & (wh[:, 1] >= b.min_height_px)
        )
        if b.max_accept_ratio is not None:
            ratio = np.maximum(
                wh[:, 0] / np.maximum(wh[:, 1], 1), wh[:, 1] / np.maximum(wh[:, 0], 1)
            )
            keep &= ratio <= b.max_accept_ratio
        rows = src_rows[keep]
        return Instances(
            xyxy=xyxy[keep].astype(np.float32),
            class_id=inst.class_id[rows],
            masks=masks if keep.all() else masks[keep],  # no 1 MB copy in the common case
            scores=None if inst.scores is None else inst.scores[rows],
        )
