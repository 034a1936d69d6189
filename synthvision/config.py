"""The build spec: pydantic models loaded from YAML, with `--set a.b=value` overrides.

Unknown keys are rejected everywhere; every error names the key path and what was expected.
Component parameters (`objects.params`, `background.params`) are validated by the component's own
registered `Params` model when the build resolves its sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import to_jsonable_python

from synthvision.errors import SpecError
from synthvision.registry import format_validation_error
from synthvision.spec_model import SpecModel
from synthvision.spec_yaml import load_yaml, yaml_problem


class _Strict(SpecModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# data.yaml keys other than splits (Ultralytics): a split of that name would replace them.
RESERVED_SPLIT_NAMES = frozenset(
    {"names", "nc", "path", "download", "yaml_file", "channels", "kpt_shape", "flip_idx"}
)

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ClassSpec(_Strict):
    """One class: its name, optional prompts (for text-conditioned generators), and its target.

    Targets: `count` (instances of this class in the whole dataset) or `weight` (relative share
    of the placed objects). Either every class has a `count`, or none has.
    """

    name: Annotated[str, Field(min_length=1, max_length=128)]
    prompts: list[str] = Field(default_factory=list)
    count: PositiveInt | None = None
    # Finite: an infinite weight makes the class CDF NaN, and every object the first class.
    weight: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # Class names end up in file contents (data.yaml), previews and terminals, and possibly
        # file names: keep them tame. Control characters (Unicode Cc, e.g. ESC) included.
        if (
            v.strip() != v
            or any(c in v for c in "/\\")
            or any(unicodedata.category(c) == "Cc" for c in v)
            or v in (".", "..")
        ):
            raise ValueError("must be a plain name without slashes, control characters or padding")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> ClassSpec:
        if self.count is not None and self.weight is not None:
            raise ValueError("give either count or weight, not both")
        return self


class ComponentSpec(_Strict):
    """A registered component by name, with its own parameters."""

    name: Annotated[str, Field(min_length=1)]
    params: dict[str, Any] = Field(default_factory=dict)


class LayoutSpec(_Strict):
    """How objects are placed. Sizes are fractions of the image's shorter side."""

    scale: tuple[Fraction, Fraction] = (0.12, 0.4)
    aspect: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.75, 1.333)
    max_iou: Fraction = 0.3
    min_visibility: Fraction = 0.35
    min_area_px: Annotated[int, Field(ge=1)] = 16
    edge_softness_px: Annotated[float, Field(ge=0.0, le=16.0)] = 1.0
    placement_tries: Annotated[int, Field(ge=1, le=1000)] = 30

    @model_validator(mode="after")
    def _ranges(self) -> LayoutSpec:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be [low, high] with 0 < low <= high <= 1")
        if self.aspect[0] > self.aspect[1]:
            raise ValueError("aspect must be [low, high] with low <= high")
        return self


class ExportSpec(_Strict):
    formats: list[Literal["coco", "yolo"]] = Field(default_factory=lambda: ["coco", "yolo"])  # type: ignore[arg-type]
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    png_compress_level: Annotated[int, Field(ge=0, le=9)] = 1
    coco_masks: Literal["rle", "polygon", "none"] = "rle"
    yolo_task: Literal["detect", "segment"] = "detect"
    preview_images: Annotated[int, Field(ge=0, le=64)] = 16

    @field_validator("formats")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one export format (coco, yolo)")
        return sorted(set(v))


class AugmentSpec(_Strict):
    """Augmentation after generation (see `augment.py`).

    Exactly one of `preset` (a named preset), `pipeline` (an inline albumentations dict, as from
    `A.to_dict`) or `file` (a YAML/JSON file in albumentations' serialization format), or none of
    them to disable augmentation. `variants` augmented copies are written per generated image.
    """

    preset: str | None = None
    pipeline: dict[str, Any] | None = None
    file: str | None = None
    variants: Annotated[int, Field(ge=1, le=100)] = 1
    keep_original: bool = False
    min_visibility: Fraction = 0.3
    min_area_px: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 16.0  # inf drops all

    @model_validator(mode="after")
    def _one_source(self) -> AugmentSpec:
        given = [k for k in ("preset", "pipeline", "file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of preset, pipeline or file, not {' and '.join(given)}")
        return self

    @property
    def enabled(self) -> bool:
        return any(getattr(self, k) is not None for k in ("preset", "pipeline", "file"))


class Spec(_Strict):
    """A dataset build: what to generate, how many, and how to export it."""

    name: Annotated[
        str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ]
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    # With class weights a rank draws only its own images' jobs (~50 us each) and holds a split
    # byte per image; count targets need the whole plan (~23 bytes and ~50 us per image) in
    # every process: 10 million is ~230 MB and ~8 minutes there (benchmarks/README.md).
    num_images: Annotated[int, Field(gt=0, le=10_000_000)]
    image_size: tuple[PositiveInt, PositiveInt] = Field(
        default=(512, 512), description="(height, width) in pixels"
    )
    splits: dict[str, Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=lambda: {"train": 0.9, "val": 0.1}
    )
    classes: list[ClassSpec]
    objects_per_image: tuple[
        Annotated[int, Field(ge=0, le=1000)], Annotated[int, Field(ge=0, le=1000)]
    ] = (1, 6)
    objects: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="procedural"))
    background: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="procedural"))
    scene: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="compose"),
        description="scene generator: compose (objects on backgrounds) or a diffusion one",
    )
    labeler: ComponentSpec | None = None
    layout: LayoutSpec = Field(default_factory=LayoutSpec)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)

    @field_validator("image_size")
    @classmethod
    def _size_cap(cls, v: tuple[int, int]) -> tuple[int, int]:
        if max(v) > 8192:
            raise ValueError("image_size must be at most 8192 px per side")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[ClassSpec]) -> list[ClassSpec]:
        if not v:
            raise ValueError("give at least one class")
        names = [c.name for c in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"class names must be unique (repeated: {', '.join(dupes)})")
        # "é" typed as one character or as "e" + accent: two classes that look the same.
        nfc = [unicodedata.normalize("NFC", n) for n in names]
        lookalike = sorted({n for n, k in zip(names, nfc, strict=True) if nfc.count(k) > 1})
        if lookalike:
            raise ValueError(
                "class names must differ in more than their Unicode normalization "
                f"(repeated: {', '.join(map(ascii, lookalike))}); type them the same way"
            )
        weights = [c.weight for c in v if c.weight is not None]
        if not math.isfinite(sum(weights)):  # each is finite; their sum may overflow
            raise ValueError("class weights are too large: their sum overflows; scale them down")
        with_count = sum(c.count is not None for c in v)
        if 0 < with_count < len(v):
            raise ValueError("either every class has a count or none has (use weight instead)")
        return v

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one split, e.g. {train: 0.9, val: 0.1}")
        for name in v:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"split name {name!r} must be letters, digits, - or _")
            if name in RESERVED_SPLIT_NAMES:
                raise ValueError(
                    f"split name {name!r} is a key of YOLO's data.yaml, where each split is "
                    "listed by name; choose another name"
                )
        total = sum(v.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1 (they sum to {total:g})")
        return v

    @model_validator(mode="after")
    def _objects_range(self) -> Spec:
        lo, hi = self.objects_per_image
        if lo > hi:
            raise ValueError("objects_per_image must be [low, high] with low <= high")
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """sha256 of the resolved spec: a build directory belongs to exactly one spec.

        Local files the spec names (an augmentation file, a checkpoint or model folder) count by
        their contents, so editing one between an interrupted run and its resume is refused as a
        different spec instead of mixing two datasets.
        """
        data = self.to_dict()
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        # sort_keys forgets the order of `splits`, which the plan uses (round-robin ties go to
        # the first split): {val, train} assigns other images than {train, val}. Stated when it
        # is not the sorted order, so fingerprints of existing builds stay what they were.
        if list(self.splits) != sorted(self.splits):
            blob += "\nsplit order:" + json.dumps(list(self.splits))
        files = {value: content_digest(path) for value, path in referenced_files(data)}
        if files:
            blob += "\n" + json.dumps(files, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Spec keys whose value may name a local file or folder (else a hub id or a keyword).
PATH_KEYS = frozenset({"file", "checkpoint", "model"})
PATH_KEYWORDS = frozenset({"builtin"})  # the shipped cVAE, never a folder of that name
_WHOLE_FILE_BYTES = 64 << 20  # larger files count by size, head and tail (model weights)
_EDGE_BYTES = 1 << 20


def referenced_files(node: Any, key: str | None = None) -> list[tuple[str, Path]]:
    """(value, path) of every value under a PATH_KEYS key that names an existing local path."""
    found: list[tuple[str, Path]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found += referenced_files(v, str(k))
    elif isinstance(node, list):
        for v in node:
            found += referenced_files(v, key)
    elif isinstance(node, str) and key in PATH_KEYS and node not in PATH_KEYWORDS:
        path = Path(node).expanduser()
        if path.exists():
            found.append((node, path))
    return found


def content_digest(path: Path) -> str:
    """sha256 over a file's bytes, or over a folder's files (relative names and contents).

    Files over 64 MiB count by their size and first and last MiB: cheap for model weights, and
    still content (a copy of the same model on another machine gives the same digest).
    """
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        size = f.stat().st_size
        h.update(size.to_bytes(8, "little"))
        try:
            with open(f, "rb") as fh:
                if size <= _WHOLE_FILE_BYTES:
                    h.update(fh.read())
                else:
                    h.update(fh.read(_EDGE_BYTES))
                    fh.seek(size - _EDGE_BYTES)
                    h.update(fh.read(_EDGE_BYTES))
        except OSError:  # unreadable here: its loader reports that with a clear error
            h.update(b"unreadable")
    return h.hexdigest()


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/collections: 3, 0.5, true, [1, 2], {a: 1}, plain text."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a raw spec dict (list items by index: `classes.0.n=5`)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_images=100")
        parts = key.strip().split(".")
        if not all(parts):  # "a..b" or ".a": an empty key would be reported with no name
            raise SpecError(f"--set {item!r}: a key part is empty; write keys like layout.max_iou")
        node: Any = data
        model: Any = Spec  # the spec model `node` is an instance of (None: free-form params)
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"--set {key}: {where} must be a list index below {len(node)}")
                if last:
                    node[int(part)] = _parse_value(raw)
                else:
                    node = node[int(part)]
                    model = model if _is_model(model) else None
            elif isinstance(node, dict):
                if last:
                    node[part] = _parse_value(raw)
                else:
                    # A key the file leaves out starts from its default, so that `image_size.0=`,
                    # `objects.params.x=` or `export.formats.0=` override one part of it.
                    if node.get(part) is None:
                        node[part] = _default_of(model, part)
                    model = _sub_model(model, part)
                    node = node[part]
            else:
                raise SpecError(f"--set {key}: {'.'.join(parts[:depth])} is not a mapping or list")
    return data


def _is_model(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, SpecModel)


def _model_in(annotation: Any) -> Any:
    """The spec model inside a field's annotation (`LayoutSpec`, `ComponentSpec | None`, and
    `list[ClassSpec]`, whose items are ClassSpec), or None."""
    if _is_model(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _sub_model(model: Any, part: str) -> Any:
    field = model.model_fields.get(part) if _is_model(model) else None
    return None if field is None else _model_in(field.annotation)


def _default_of(model: Any, part: str) -> Any:
    """The plain-data default of `model.part` ({} when it has none or defaults to None)."""
    field = model.model_fields.get(part) if _is_model(model) else None
    if field is None or field.is_required():
        return {}
    value = field.get_default(call_default_factory=True)
    if isinstance(value, SpecModel):  # only what its factory set (`name`): what the user did
        return value.model_dump(mode="json", exclude_unset=True)  # not set stays a default
    return {} if value is None else to_jsonable_python(value)


def parse_spec(data: Any, source: str = "spec") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the spec must be a YAML mapping of keys, got {type(data).__name__}"
        )
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {format_validation_error(exc)}") from None


def load_spec_dict(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"spec file {str(p)!r} is a folder (give the path to a YAML spec)")
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist (give the path to a YAML spec)")
    try:
        data = load_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        problem, where = yaml_problem(exc)
        raise SpecError(f"{p}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a UTF-8 text file") from None
    if data is None:
        raise SpecError(f"{p}: the spec file is empty")
    return data  # type: ignore[no-any-return]


def load_spec(path: str | Path, overrides: list[str] | None = None) -> Spec:
    """Load, override and validate a spec file."""
    data = load_spec_dict(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping of keys")
    data = _paths_next_to_the_spec(data, Path(path).parent)
    # `--set` values are typed in a shell: their relative paths are the working directory's.
    data = apply_overrides(data, overrides or [])
    return parse_spec(data, source=str(path))


def _paths_next_to_the_spec(node: Any, spec_dir: Path, key: str | None = None) -> Any:
    """Relative paths under PATH_KEYS become absolute, taken from the spec file's folder, so a
    spec builds the same from any working directory. A `file` always names a file (an error
    then names where it was looked for); a `checkpoint` or `model` only when it exists there,
    since otherwise it is a hub id ("owner/name") or a keyword ("builtin")."""
    if isinstance(node, dict):
        return {k: _paths_next_to_the_spec(v, spec_dir, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_paths_next_to_the_spec(v, spec_dir, key) for v in node]
    if isinstance(node, str) and key in PATH_KEYS and node not in PATH_KEYWORDS:
        path = Path(node).expanduser()
        if not path.is_absolute() and (key == "file" or (spec_dir / path).exists()):
            return str((spec_dir / path).resolve())
    return node
