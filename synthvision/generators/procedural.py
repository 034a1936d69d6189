"""Built-in procedural sources: shape objects and synthetic backgrounds (numpy, Pillow, OpenCV).

Registered as "procedural" in both `OBJECT_SOURCES` and `BACKGROUND_SOURCES`. No weights, no
downloads, and fast enough for the quickstart (see `benchmarks/README.md`): about 1 ms for a
512x512 background and under 1 ms for a ~150x150 crop on one CPU core.

Objects: each class is a built-in shape (`PROCEDURAL_CLASSES`) drawn as polygons on a
supersampled alpha canvas (anti-aliased edges after box downsampling), rotated, then stretched so
the shape fills the requested (h, w) box. Within a class the colour (class hue range + jitter),
texture, rotation, aspect, thickness (ring, cross, star, crescent, arrow), shading and outline
vary. Colours and patterns are composited by Pillow on whole images (no per-pixel Python).

Backgrounds: linear and radial gradients, multi-octave smooth noise, near-solid colours, stripes
and tiles. Each kind computes one scalar field (uint8 (H, W)) plus a colour ramp; a single
palette lookup turns it into RGB, with dither and monochrome grain folded into the palette index
(OpenCV does the two full-image resampling/repacking steps that are slow in Pillow).

Every draw comes from `np.random.default_rng(request.seed)`: the same request gives the same
bytes, whatever else is in the batch.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, get_args

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageChops, ImageDraw
from pydantic import ConfigDict, Field, model_validator

from synthvision.errors import SpecError
from synthvision.generators.base import (
    BACKGROUND_SOURCES,
    OBJECT_SOURCES,
    BackgroundRequest,
    CropRequest,
)
from synthvision.spec_model import SpecModel

ShapeName = Literal[
    "disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent", "heart", "arrow"
]
TextureName = Literal["flat", "stripes", "dots", "checker", "noise", "gradient"]
BackgroundKind = Literal["linear", "radial", "noise", "solid", "stripes", "tiles"]

PROCEDURAL_CLASSES: tuple[str, ...] = get_args(ShapeName)
TEXTURES: tuple[TextureName, ...] = get_args(TextureName)
BACKGROUND_KINDS: tuple[BackgroundKind, ...] = get_args(BackgroundKind)

# Base hue of each shape in degrees: classes differ by colour on average, but the jitter
# (hue_jitter_deg) makes neighbouring ranges overlap so colour alone does not give the class away.
_SHAPE_HUE_DEG: dict[str, float] = {
    "disc": 0.0,
    "crescent": 32.0,
    "triangle": 58.0,
    "cross": 95.0,
    "hexagon": 140.0,
    "ring": 180.0,
    "square": 215.0,
    "star": 250.0,
    "arrow": 285.0,
    "heart": 325.0,
}

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
FloatArray = npt.NDArray[np.float32]
Polygons = list[tuple[npt.NDArray[np.float64], bool]]  # (points (K, 2) in unit coords, is_hole)


class ProceduralObjectParams(SpecModel):
    """`objects.params` of the procedural object source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shapes: dict[str, ShapeName] = Field(
        default_factory=dict,
        description="spec class name -> built-in shape; classes not listed must be shape names",
    )
    textures: Annotated[list[TextureName], Field(min_length=1)] = Field(
        default_factory=lambda: list(TEXTURES)
    )
    texture_prob: Fraction = 0.6  # chance of a patterned (non-flat) fill
    rotation_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 180.0  # max |rotation|
    hue_jitter_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 22.0
    random_hue_prob: Fraction = 0.08  # chance of an off-palette hue for the class
    outline_prob: Fraction = 0.25
    shading_prob: Fraction = 0.5  # chance of a directional light ramp over the fill


class ProceduralBackgroundParams(SpecModel):
    """`background.params` of the procedural background source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: Annotated[list[BackgroundKind], Field(min_length=1)] = Field(
        default_factory=lambda: list(BACKGROUND_KINDS)
    )
    weights: list[Annotated[float, Field(gt=0.0)]] | None = None  # one per kind, relative
    grain: Annotated[float, Field(ge=0.0, le=32.0)] = 5.0  # grain amplitude in 8-bit levels

    @model_validator(mode="after")
    def _weights_match(self) -> ProceduralBackgroundParams:
        if self.weights is not None and len(self.weights) != len(self.kinds):
            raise ValueError(
                f"weights needs one number per kind ({len(self.kinds)}), got {len(self.weights)}"
            )
        return self


# ----------------------------------------------------------------------------- colours


def _hsv(h_deg: float, s: float, v: float) -> npt.NDArray[np.float32]:
    """RGB float32 (3,) in 0..255 from hue in degrees and s, v in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb(
        (h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)
    )
    return np.array([r, g, b], dtype=np.float32) * 255.0


# ----------------------------------------------------------------------------- shapes
# Each builder returns polygons in unit coordinates (roughly [-1, 1], y down); holes are drawn
# after the solid parts with alpha 0. Scale/aspect are fixed later by fitting to the box.


def _circle(n: int, cx: float = 0.0, cy: float = 0.0, r: float = 1.0) -> npt.NDArray[np.float64]:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, phase: float = -np.pi / 2) -> npt.NDArray[np.float64]:
    t = phase + np.arange(n) * (2.0 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _shape_disc(rng: np.random.Generator) -> Polygons:
    return [(_circle(72), False)]


def _shape_square(rng: np.random.Generator) -> Polygons:
    return [(np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), False)]


def _shape_triangle(rng: np.random.Generator) -> Polygons:
    apex_x = rng.uniform(-0.35, 0.35)  # isosceles to slightly scalene
    return [(np.array([[apex_x, -1.0], [1.0, 0.75], [-1.0, 0.75]]), False)]


def _shape_star(rng: np.random.Generator) -> Polygons:
    inner = rng.uniform(0.36, 0.55)  # thickness of the arms
    outer = _regular(10)
    radius = np.where(np.arange(10) % 2 == 0, 1.0, inner)
    return [(outer * radius[:, None], False)]


def _shape_ring(rng: np.random.Generator) -> Polygons:
    inner = rng.uniform(0.45, 0.72)
    return [(_circle(72), False), (_circle(72, r=inner), True)]


def _shape_cross(rng: np.random.Generator) -> Polygons:
    t = rng.uniform(0.26, 0.42)  # half arm width
    pts = [
        (-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
        (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t),
    ]  # fmt: skip
    return [(np.array(pts, dtype=np.float64), False)]


def _shape_hexagon(rng: np.random.Generator) -> Polygons:
    return [(_regular(6, phase=0.0), False)]


def _shape_crescent(rng: np.random.Generator) -> Polygons:
    # Unit disc minus a disc of radius r centred at (d, 0); the outline is the outer arc through
    # the left side plus the inner disc's arc that lies inside the unit disc.
    r = rng.uniform(0.75, 0.92)
    d = rng.uniform(0.36, 0.6)
    x = (1.0 - r * r + d * d) / (2.0 * d)
    y = math.sqrt(max(1.0 - x * x, 1e-9))
    th0 = math.atan2(y, x)
    ph0 = math.atan2(y, x - d)
    outer_t = np.linspace(th0, 2.0 * np.pi - th0, 48)
    inner_t = np.linspace(2.0 * np.pi - ph0, ph0, 40)
    outer = np.stack([np.cos(outer_t), np.sin(outer_t)], axis=1)
    inner = np.stack([d + r * np.cos(inner_t), r * np.sin(inner_t)], axis=1)
    return [(np.concatenate([outer, inner]), False)]


def _shape_heart(rng: np.random.Generator) -> Polygons:
    t = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return [(np.stack([x, y], axis=1) / 16.0, False)]


def _shape_arrow(rng: np.random.Generator) -> Polygons:
    shaft = rng.uniform(0.18, 0.34)  # half shaft width
    head = rng.uniform(0.0, 0.35)  # x where the head starts
    pts = [
        (-1, -shaft),
        (head, -shaft),
        (head, -0.85),
        (1, 0),
        (head, 0.85),
        (head, shaft),
        (-1, shaft),
    ]
    return [(np.array(pts, dtype=np.float64), False)]


_SHAPES: dict[str, Callable[[np.random.Generator], Polygons]] = {
    "disc": _shape_disc,
    "square": _shape_square,
    "triangle": _shape_triangle,
    "star": _shape_star,
    "ring": _shape_ring,
    "cross": _shape_cross,
    "hexagon": _shape_hexagon,
    "crescent": _shape_crescent,
    "heart": _shape_heart,
    "arrow": _shape_arrow,
}


def _supersample(h: int, w: int) -> int:
    # Small crops need more subsamples for smooth edges; big ones are smooth at 2x.
    m = max(h, w)
    return 4 if m < 64 else 3 if m < 160 else 2


def _fit_polygons(
    polys: Polygons, angle_rad: float, h: int, w: int, ss: int
) -> list[tuple[list[float], bool]]:
    """Rotate polygons and stretch them so the solid parts fill the (h*ss, w*ss) canvas.

    Returns flat [x0, y0, x1, y1, ...] pixel coordinates on the supersampled canvas.
    """
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    rot = np.array([[c, -s], [s, c]])
    rotated = [(p @ rot.T, hole) for p, hole in polys]
    solid = np.concatenate([p for p, hole in rotated if not hole])
    lo, hi = solid.min(axis=0), solid.max(axis=0)
    margin = 0.25 * ss  # keep the anti-aliased edge inside the canvas
    size = np.array([w * ss - 1.0 - 2 * margin, h * ss - 1.0 - 2 * margin])
    scale = size / np.maximum(hi - lo, 1e-9)
    return [(((p - lo) * scale + margin).ravel().tolist(), hole) for p, hole in rotated]


def _alpha_masks(
    flat_polys: list[tuple[list[float], bool]], h: int, w: int, ss: int, outline_px: float
) -> tuple[Image.Image, Image.Image | None]:
    """Anti-aliased alpha (L, w x h) and, if outline_px > 0, an outline mask (L, w x h)."""
    canvas = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for xy, hole in flat_polys:
        draw.polygon(xy, fill=0 if hole else 255)
    alpha = canvas.reduce(ss)
    if outline_px <= 0:
        return alpha, None
    line = Image.new("L", canvas.size, 0)
    ldraw = ImageDraw.Draw(line)
    width = max(1, round(outline_px * ss))
    for xy, hole in flat_polys:
        if hole:  # polygon outlines go inside the polygon: a hole's would be invisible
            ldraw.line([*xy, xy[0], xy[1]], fill=255, width=2 * width)
        else:
            ldraw.polygon(xy, outline=255, width=width)
    return alpha, ImageChops.multiply(line.reduce(ss), alpha)


# ----------------------------------------------------------------------------- textures


def _pattern(rng: np.random.Generator, kind: str, h: int, w: int) -> Image.Image | None:
    """Mix mask (L, w x h; 0 = first colour, 255 = second) of a fill texture; None for flat."""
    if kind == "flat":
        return None
    if kind == "noise":
        cells = int(rng.integers(3, 7))
        small = rng.random((cells, cells), dtype=np.float32)
        lo, hi = float(small.min()), float(small.max())
        small = (small - lo) * np.float32(255.0 / max(hi - lo, 1e-6))
        up = Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC)
        return up.convert("L")  # clamps the bicubic overshoot
    theta = rng.uniform(0.0, 2.0 * np.pi)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if kind == "gradient":
        u = xs * cos + ys * sin
        lo, hi = float(u.min()), float(u.max())
        m = (u - np.float32(lo)) * np.float32(255.0 / max(hi - lo, 1e-6))
        return Image.fromarray(m.astype(np.uint8), "L")
    period = max(4.0, max(h, w) * float(rng.uniform(0.1, 0.25)))  # px
    k = np.float32(2.0 * np.pi / period)
    u = xs * (cos * k) + ys * (sin * k)  # phase along the pattern direction, radians
    if kind == "stripes":
        wave = np.sin(u)
    elif kind == "checker":
        v = ys * (cos * k) - xs * (sin * k)
        wave = np.sin(u) * np.sin(v)
    else:  # dots: signed px distance to the nearest lattice point's disc
        v = ys * (cos * k) - xs * (sin * k)
        two_pi = np.float32(2.0 * np.pi)
        fu = np.float32(1.0 / (2.0 * np.pi)) * ((u % two_pi) - np.float32(np.pi))
        fv = np.float32(1.0 / (2.0 * np.pi)) * ((v % two_pi) - np.float32(np.pi))
        radius = np.float32(rng.uniform(0.18, 0.32))
        wave = (radius - np.sqrt(fu * fu + fv * fv)) * np.float32(4.0)
    # Steep but smooth: about a pixel of transition at the pattern edges.
    m = np.clip(wave * np.float32(255.0 * period / 4.0) + np.float32(127.5), 0.0, 255.0)
    return Image.fromarray(m.astype(np.uint8), "L")


def _rgb(c: FloatArray) -> tuple[int, int, int]:
    r, g, b = (round(float(x)) for x in np.clip(c, 0.0, 255.0))
    return r, g, b


class ProceduralObjects:
    """Object source drawing built-in shapes; one shape per spec class (see the module doc)."""

    def __init__(self, params: ProceduralObjectParams, class_names: tuple[str, ...]) -> None:
        self.params = params
        for name in params.shapes:
            if name not in class_names:
                raise SpecError(
                    f"objects.params.shapes: {name!r} is not a class of this spec "
                    f"(classes: {', '.join(class_names)}); remove it or fix its spelling"
                )
        self.shape_of: dict[str, str] = {name: self._resolve(name) for name in class_names}

    def _resolve(self, name: str) -> str:
        shape = self.params.shapes.get(name)
        if shape is not None:
            return shape
        if name in _SHAPES:
            return name
        raise SpecError(
            f"objects: class {name!r} is not a built-in procedural shape "
            f"(known shapes: {', '.join(PROCEDURAL_CLASSES)}); map it to one with "
            f"objects.params.shapes, e.g. shapes: {{{name}: disc}}"
        )

    def crops(self, requests: Sequence[CropRequest]) -> list[npt.NDArray[np.uint8]]:
        """RGBA uint8 crops (h, w, 4) of each request's `size_hw`, alpha 0 outside the shape."""
        return [self.render(req.class_name, req.size_hw, req.seed) for req in requests]

    def render(self, class_name: str, size_hw: tuple[int, int], seed: int) -> npt.NDArray[np.uint8]:
        """One RGBA crop (h, w, 4) of `class_name` filling the box, drawn from `seed` only."""
        shape = self.shape_of.get(class_name) or self._resolve(class_name)
        p = self.params
        rng = np.random.default_rng(seed)
        h, w = max(2, int(size_hw[0])), max(2, int(size_hw[1]))
        ss = _supersample(h, w)

        # Geometry, then colours, then texture: the order of draws is part of the output.
        polys = _SHAPES[shape](rng)
        angle = math.radians(rng.uniform(-p.rotation_deg, p.rotation_deg))
        outline_px = 0.0
        if rng.random() < p.outline_prob:
            outline_px = max(1.0, min(h, w) * float(rng.uniform(0.03, 0.07)))

        hue = _SHAPE_HUE_DEG[shape] + rng.uniform(-p.hue_jitter_deg, p.hue_jitter_deg)
        if rng.random() < p.random_hue_prob:
            hue = rng.uniform(0.0, 360.0)
        sat, val = rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0)
        c0 = _hsv(hue, sat, val)
        if rng.random() < 0.5:  # same hue, other lightness
            c1 = _hsv(
                hue + rng.uniform(-12, 12), sat * rng.uniform(0.3, 1.0), val * rng.uniform(0.3, 0.7)
            )
        else:  # contrasting accent colour
            c1 = _hsv(hue + rng.uniform(120, 240), rng.uniform(0.2, 0.9), rng.uniform(0.5, 1.0))
        edge = _hsv(hue, sat, val * rng.uniform(0.15, 0.4))

        texture: str = "flat"
        if rng.random() < p.texture_prob:
            patterned: list[str] = [t for t in p.textures if t != "flat"] or ["flat"]
            texture = patterned[int(rng.integers(len(patterned)))]
        elif "flat" not in p.textures:
            texture = p.textures[int(rng.integers(len(p.textures)))]
        mix = _pattern(rng, texture, h, w)
        img = Image.new("RGB", (w, h), _rgb(c0))
        if mix is not None:
            img = Image.composite(Image.new("RGB", (w, h), _rgb(c1)), img, mix)

        if rng.random() < p.shading_prob:
            # Directional light ramp (x0.6..1): reads as a slightly curved, lit surface.
            theta = rng.uniform(0.0, 2.0 * np.pi)
            lo = np.float32(rng.uniform(0.55, 0.8) * 255.0)
            span = np.float32(255.0) - lo
            ys = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] * np.float32(math.sin(theta))
            xs = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :] * np.float32(math.cos(theta))
            ramp = ys + xs
            rmin, rmax = float(ramp.min()), float(ramp.max())
            light = lo + (ramp - np.float32(rmin)) * np.float32(span / max(rmax - rmin, 1e-6))
            shade = Image.fromarray(light.astype(np.uint8), "L").convert("RGB")
            img = ImageChops.multiply(img, shade)

        flat_polys = _fit_polygons(polys, angle, h, w, ss)
        alpha, outline = _alpha_masks(flat_polys, h, w, ss, outline_px)
        if outline is not None:
            img.paste(_rgb(edge), (0, 0, w, h), outline)
        img.putalpha(alpha)
        return np.array(img, dtype=np.uint8)  # (h, w, 4), a writable copy


@OBJECT_SOURCES.register("procedural", ProceduralObjectParams)
def _make_objects(
    params: ProceduralObjectParams, *, class_names: tuple[str, ...]
) -> ProceduralObjects:
    return ProceduralObjects(params, class_names)


# ----------------------------------------------------------------------------- backgrounds
# Every kind produces a scalar field (uint8 (H, W)) and a 256-entry colour table; one palette
# lookup in Pillow turns them into RGB. Grain costs almost nothing this way: the field is
# quantised to 32 levels (randomly dithered, so no banding) and the low 3 index bits pick one of
# 8 grain offsets, so a palette entry is (level colour + grain offset).
# Field modes: "smooth" values lie in 0..SMOOTH_MAX (headroom for the dither, no wrap-around),
# "periodic" values wrap around 256 on purpose (stripes), "exact" values are level * 8 (tiles).

FieldMode = Literal["smooth", "periodic", "exact"]


def _cv2() -> Any:
    # OpenCV (a dependency through albumentations and the mask formats) is imported on first use
    # so that importing the generators package stays quick.
    import cv2

    return cv2


_N_LEVELS = 32
SMOOTH_MAX = 248


def _random_colour(rng: np.random.Generator, sat: tuple[float, float] = (0.05, 0.6)) -> FloatArray:
    return _hsv(rng.uniform(0.0, 360.0), rng.uniform(*sat), rng.uniform(0.2, 0.95))


def _ramp(stops: Sequence[FloatArray], gamma: float = 1.0) -> FloatArray:
    """Colour table (256, 3) of a smooth field: entry v is the colour at t = (v / SMOOTH_MAX)^gamma
    on a piecewise-linear ramp through evenly spaced stops (entries past SMOOTH_MAX repeat)."""
    k = len(stops) - 1
    t = (np.minimum(np.arange(256), SMOOTH_MAX) / SMOOTH_MAX) ** gamma
    pos = (t * k).astype(np.float32)
    i = np.minimum(pos.astype(np.int64), k - 1)
    f = (pos - i)[:, None]
    arr = np.stack(stops).astype(np.float32)
    return arr[i] + f * (arr[i + 1] - arr[i])


def _smooth_noise(
    rng: np.random.Generator, gh: int, gw: int, cells: int, octaves: int
) -> FloatArray:
    """Multi-octave value noise float32 (gh, gw) in [0, 1]; the coarsest octave has `cells`."""
    acc = np.zeros((gh, gw), dtype=np.float32)
    amp = 1.0
    for _ in range(octaves):
        ch = max(2, min(gh, round(cells * gh / max(gh, gw))))
        cw = max(2, min(gw, round(cells * gw / max(gh, gw))))
        small = rng.random((ch, cw), dtype=np.float32)
        up = np.asarray(Image.fromarray(small, "F").resize((gw, gh), Image.Resampling.BICUBIC))
        acc += np.float32(amp) * up
        amp *= 0.55
        cells *= 2
    lo, hi = float(acc.min()), float(acc.max())
    return (acc - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-6))


def _noise_field(
    rng: np.random.Generator, h: int, w: int, cells: int, octaves: int
) -> npt.NDArray[np.uint8]:
    """Smooth noise field uint8 (h, w) in 0..SMOOTH_MAX: a coarse grid upsampled bilinearly."""
    g = 48  # coarse grid side; finer detail comes from the grain
    gh = max(2, min(h, round(g * h / max(h, w))))
    gw = max(2, min(w, round(g * w / max(h, w))))
    coarse = _smooth_noise(rng, gh, gw, cells, octaves) * np.float32(SMOOTH_MAX)
    small = np.round(coarse).astype(np.uint8)
    cv2 = _cv2()  # 7x faster than Pillow's bilinear upsampling here
    return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8)


def _bg_linear(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]:
    theta = rng.uniform(0.0, 2.0 * np.pi)
    cos, sin = math.cos(theta), math.sin(theta)
    corners = [0.0, (w - 1) * cos, (h - 1) * sin, (w - 1) * cos + (h - 1) * sin]
    lo, scale = min(corners), (SMOOTH_MAX + 0.99) / max(max(corners) - min(corners), 1e-6)
    col = (np.arange(w, dtype=np.float32) * np.float32(cos * scale))[None, :]
    row = (np.arange(h, dtype=np.float32) * np.float32(sin) - np.float32(lo)) * np.float32(scale)
    field = (row[:, None] + col).astype(np.uint8)
    n_stops = 3 if rng.random() < 0.4 else 2
    return field, _ramp([_random_colour(rng) for _ in range(n_stops)]), "smooth"


def _bg_radial(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]:
    cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
    radius = rng.uniform(0.5, 1.3) * max(h, w)
    k = np.float32((SMOOTH_MAX + 0.99) / radius)
    dy = (np.arange(h, dtype=np.float32) - np.float32(cy)) * k
    dx = (np.arange(w, dtype=np.float32) - np.float32(cx)) * k
    dist = np.sqrt((dy * dy)[:, None] + (dx * dx)[None, :])
    field = np.minimum(dist, np.float32(SMOOTH_MAX + 0.99)).astype(np.uint8)
    gamma = rng.uniform(0.6, 1.8)  # how fast the colour changes near the centre
    return field, _ramp([_random_colour(rng), _random_colour(rng)], gamma), "smooth"


def _bg_noise(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]:
    field = _noise_field(rng, h, w, cells=int(rng.integers(2, 5)), octaves=int(rng.integers(3, 5)))
    stops = [_random_colour(rng) for _ in range(int(rng.integers(2, 4)))]
    return field, _ramp(stops), "smooth"


def _bg_solid(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]:
    field = _noise_field(rng, h, w, cells=3, octaves=2)
    c = _random_colour(rng, sat=(0.0, 0.7))
    spread = np.float32(rng.uniform(0.03, 0.1))  # a gentle unevenness of +-3..10 %
    return field, _ramp([c * (1 - spread), c * (1 + spread)]), "smooth"


def _bg_stripes(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]:
    period = max(4.0, min(h, w) * float(rng.uniform(0.02, 0.12)))  # px
    theta = rng.uniform(0.0, np.pi)
    k = 256.0 / period  # field units per px: one period = 256, wrapping in uint8
    offset = 256.0 * math.ceil((h + w) * k / 256.0 + 1)  # keep values positive before int cast
    col = (np.arange(w, dtype=np.float32) * np.float32(math.cos(theta) * k))[None, :]
    row = np.arange(h, dtype=np.float32) * np.float32(math.sin(theta) * k) + np.float32(offset)
    field = (row[:, None] + col).astype(np.int32).astype(np.uint8)
    duty = rng.uniform(0.25, 0.75)
    f = np.arange(256) / 256.0
    # Signed px distance to the band [0, duty) of each period -> ~1 px anti-aliased edges.
    inside = np.minimum(f, duty - f)
    outside = -np.minimum(f - duty, 1.0 - f)
    sd_px = np.where(f < duty, inside, outside) * period
    m = np.clip(sd_px + 0.5, 0.0, 1.0).astype(np.float32)[:, None]
    c0, c1 = _random_colour(rng), _random_colour(rng)
    return field, c1 + m * (c0 - c1), "periodic"


def _bg_tiles(
    rng: np.random.Generator, h: int, w: int
) -> tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]:
    tile_px = max(6.0, min(h, w) * float(rng.uniform(0.06, 0.2)))
    ny, nx = math.ceil(h / tile_px) + 1, math.ceil(w / tile_px) + 1
    # Levels: 0..14 shades of colour A, 15..29 shades of colour B (checkered), 31 grout.
    shade = rng.integers(0, 15, size=(ny, nx))
    checker = (np.arange(ny)[:, None] + np.arange(nx)[None, :]) % 2
    levels = (shade + 15 * checker).astype(np.uint8) * np.uint8(8)
    small = Image.fromarray(levels, "L")
    img = small.resize((round(nx * tile_px), round(ny * tile_px)), Image.Resampling.NEAREST)
    img = img.crop((0, 0, w, h))
    base = _random_colour(rng)
    other = _random_colour(rng) if rng.random() < 0.5 else base * np.float32(0.75)
    grout = base * np.float32(rng.uniform(0.3, 1.4))
    if rng.random() < 0.6:
        draw = ImageDraw.Draw(img)
        lw = max(1, round(tile_px * 0.06))
        for i in range(1, ny):
            draw.line([(0, i * tile_px), (w, i * tile_px)], fill=31 * 8, width=lw)
        for j in range(1, nx):
            draw.line([(j * tile_px, 0), (j * tile_px, h)], fill=31 * 8, width=lw)
    jitter = np.linspace(0.9, 1.1, 15, dtype=np.float32)[:, None]
    level_colours = np.concatenate([base * jitter, other * jitter, grout[None], grout[None]])
    colours = np.repeat(level_colours, 8, axis=0)  # field value level*8 -> its level colour
    return np.asarray(img, dtype=np.uint8), colours, "exact"


_BACKGROUNDS: dict[
    str,
    Callable[[np.random.Generator, int, int], tuple[npt.NDArray[np.uint8], FloatArray, FieldMode]],
] = {
    "linear": _bg_linear,
    "radial": _bg_radial,
    "noise": _bg_noise,
    "solid": _bg_solid,
    "stripes": _bg_stripes,
    "tiles": _bg_tiles,
}


def _paint(
    field: npt.NDArray[np.uint8],
    colours: FloatArray,
    mode: FieldMode,
    rng: np.random.Generator,
    grain: float,
) -> npt.NDArray[np.uint8]:
    """Field uint8 (H, W) + colours (256, 3) -> RGB uint8 (H, W, 3), with dither and grain."""
    h, w = field.shape
    if grain <= 0:
        index, palette = field, colours
    else:
        n = h * w
        bits = rng.bit_generator.random_raw((n + 7) // 8).view(np.uint8)[:n].reshape(h, w)
        if mode == "exact":
            index = field | (bits & np.uint8(7))
        else:
            # Random dither of the 32-level quantisation (top 3 random bits), then the grain
            # offset in the low 3 bits. uint8 arithmetic wraps: wanted for periodic fields, and
            # smooth fields stay <= SMOOTH_MAX + 7 = 255.
            index = bits >> 5
            index += field
            index &= np.uint8(0xF8)
            bits &= np.uint8(7)
            index |= bits
        at = np.minimum(np.arange(_N_LEVELS) * 8, 255)  # field value each level stands for
        offsets = (np.arange(8, dtype=np.float32) - np.float32(3.5)) * np.float32(grain / 3.5)
        palette = (colours[at][:, None, :] + offsets[None, :, None]).reshape(256, 3)
    # Lookup as packed RGBA uint32 (one gather per pixel), then a SIMD repack to RGB: about
    # half the cost of Pillow's P -> RGB -> numpy route, and the result is writable.
    rgba = np.full((256, 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.clip(np.round(palette), 0, 255)
    packed = np.take(rgba.view(np.uint32).reshape(256), index)
    cv2 = _cv2()
    out = cv2.cvtColor(packed.view(np.uint8).reshape(h, w, 4), cv2.COLOR_RGBA2RGB)
    return np.asarray(out, dtype=np.uint8)


class ProceduralBackgrounds:
    """Background source of synthetic textures (see the module doc)."""

    def __init__(self, params: ProceduralBackgroundParams) -> None:
        self.params = params
        weights = np.asarray(params.weights or [1.0] * len(params.kinds), dtype=np.float64)
        self._cum = np.cumsum(weights / weights.sum())

    def backgrounds(self, requests: Sequence[BackgroundRequest]) -> list[npt.NDArray[np.uint8]]:
        """RGB uint8 images (H, W, 3) of each request's exact `size_hw`."""
        return [self.render(req.size_hw, req.seed) for req in requests]

    def render(self, size_hw: tuple[int, int], seed: int) -> npt.NDArray[np.uint8]:
        """One RGB background uint8 (H, W, 3), drawn from `seed` only."""
        h, w = int(size_hw[0]), int(size_hw[1])
        if h < 1 or w < 1:
            raise ValueError(f"background size must be positive, got {size_hw}")
        rng = np.random.default_rng(seed)
        k = min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self._cum) - 1)
        field, colours, mode = _BACKGROUNDS[self.params.kinds[k]](rng, h, w)
        return _paint(field, colours, mode, rng, self.params.grain)


@BACKGROUND_SOURCES.register("procedural", ProceduralBackgroundParams)
def _make_backgrounds(
    params: ProceduralBackgroundParams, *, class_names: tuple[str, ...] = ()
) -> ProceduralBackgrounds:
    return ProceduralBackgrounds(params)
