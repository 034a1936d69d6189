"""Sources of objects, backgrounds and scenes, by registered name.

Built-in procedural sources register on import (numpy + Pillow only); ML sources register lazily
so importing this package never imports torch.
"""

from synthvision.generators import (  # noqa: F401  (built-ins register on import)
    compose_scene,
    procedural,
)
from synthvision.generators.base import (
    BACKGROUND_SOURCES,
    OBJECT_SOURCES,
    SCENE_GENERATORS,
    BackgroundRequest,
    BackgroundSource,
    CropRequest,
    ObjectSource,
)

__all__ = [
    "BACKGROUND_SOURCES",
    "OBJECT_SOURCES",
    "SCENE_GENERATORS",
    "BackgroundRequest",
    "BackgroundSource",
    "CropRequest",
    "ObjectSource",
]
