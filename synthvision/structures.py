"""Core data types: one `Sample` flows through every stage (generate -> filter -> augment -> write).

Shapes and units:
- `Instances.xyxy`: float32 (N, 4), absolute pixel-edge coordinates.
- `Instances.class_id`: int64 (N,), ids into the dataset's `ClassMap` (0-based).
- `Instances.masks`: optional bool (N, H, W), the *visible* part of each instance.
- `Instances.scores`: optional float32 (N,) (confidence of a labeler; 1 for constructed labels).
- `Sample.image`: uint8 (H, W, 3) RGB.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from synthvision.errors import SpecError


@dataclass
class Instances:
    """Labeled objects of one image, shape-checked like supervision's `Detections`."""

    xyxy: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    masks: npt.NDArray[np.bool_] | None = None
    scores: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        n = len(self.xyxy)
        if self.class_id.shape != (n,):
            raise ValueError(f"class_id must have shape ({n},), got {self.class_id.shape}")
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            if self.masks.ndim != 3 or self.masks.shape[0] != n:
                raise ValueError(f"masks must have shape ({n}, H, W), got {self.masks.shape}")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
            if self.scores.shape != (n,):
                raise ValueError(f"scores must have shape ({n},), got {self.scores.shape}")

    @classmethod
    def empty(cls, size_hw: tuple[int, int] | None = None) -> Instances:
        masks = None if size_hw is None else np.zeros((0, *size_hw), dtype=bool)
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), masks=masks)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: int | slice | Sequence[int] | npt.NDArray[Any]) -> Instances:
        """Select instances by int, slice, index list or bool array."""
        if isinstance(index, int):
            index = [index]
        return Instances(
            xyxy=self.xyxy[index],
            class_id=self.class_id[index],
            masks=None if self.masks is None else self.masks[index],
            scores=None if self.scores is None else self.scores[index],
        )

    @property
    def area(self) -> npt.NDArray[np.float64]:
        """Mask area in px when masks exist, else box area, shape (N,)."""
        if self.masks is not None:
            return self.masks.sum(axis=(1, 2), dtype=np.int64).astype(np.float64)
        b = self.xyxy.astype(np.float64)
        return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)

    @classmethod
    def concatenate(cls, parts: Iterable[Instances]) -> Instances:
        items = list(parts)
        if not items:
            return cls.empty()
        has_masks = all(p.masks is not None for p in items)
        has_scores = all(p.scores is not None for p in items)
        return cls(
            xyxy=np.concatenate([p.xyxy for p in items]),
            class_id=np.concatenate([p.class_id for p in items]),
            masks=np.concatenate([p.masks for p in items]) if has_masks else None,  # type: ignore[misc]
            scores=np.concatenate([p.scores for p in items]) if has_scores else None,  # type: ignore[misc]
        )


@dataclass
class Sample:
    """One dataset image with its labels.

    `index` is the global dataset index, stable across batch sizes and world sizes; the image
    file is named by it. `metadata` holds JSON-serialisable provenance (seeds, prompts, generator,
    drawn augmentation parameters).
    """

    index: int
    image: npt.NDArray[np.uint8]
    instances: Instances
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"image must be uint8 (H, W, 3), got {self.image.dtype} {self.image.shape}"
            )
        if self.instances.masks is not None and self.instances.masks.shape[1:] != self.size_hw:
            raise ValueError(
                f"masks {self.instances.masks.shape[1:]} do not match image size {self.size_hw}"
            )

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True)
class ClassMap:
    """Class names <-> ids. Internal and YOLO ids are 0-based; COCO category ids are id + 1.

    A map read from a COCO file keeps that file's category ids (`coco_ids`, ascending, e.g.
    COCO's 1..90 with gaps) and supercategories, so an augmented copy of a dataset keeps them.
    """

    names: tuple[str, ...]
    coco_ids: tuple[int, ...] = ()  # empty: class id + 1
    supercategories: tuple[str, ...] = ()  # empty: "object"

    def __post_init__(self) -> None:
        if not self.names:
            raise SpecError("the class list is empty: give at least one class")
        seen: set[str] = set()
        for name in self.names:
            if name in seen:
                raise SpecError(f"class name {name!r} appears twice: class names must be unique")
            seen.add(name)
        if self.coco_ids and (
            len(self.coco_ids) != len(self.names)
            or self.coco_ids[0] < 1
            or any(a >= b for a, b in zip(self.coco_ids, self.coco_ids[1:], strict=False))
        ):
            raise SpecError(
                f"COCO category ids {list(self.coco_ids)} must be unique positive integers, one "
                "per class"
            )
        if self.supercategories and len(self.supercategories) != len(self.names):
            raise SpecError("give one supercategory per class")

    def __len__(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SpecError(
                f"unknown class {name!r}; known classes: {', '.join(self.names)}"
            ) from None

    def name(self, class_id: int) -> str:
        return self.names[class_id]

    def coco_category_id(self, class_id: int) -> int:
        return self.coco_ids[class_id] if self.coco_ids else class_id + 1

    def coco_categories(self) -> list[dict[str, Any]]:
        return [
            {
                "id": self.coco_category_id(i),
                "name": n,
                "supercategory": self.supercategories[i] if self.supercategories else "object",
            }
            for i, n in enumerate(self.names)
        ]
