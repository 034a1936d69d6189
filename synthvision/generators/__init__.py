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
    SceneGenerator,
)

OBJECT_SOURCES.register_lazy("cvae", "synthvision.generators.cvae")
OBJECT_SOURCES.register_lazy("diffusion", "synthvision.generators.diffusion_sources")
BACKGROUND_SOURCES.register_lazy("diffusion", "synthvision.generators.diffusion_sources")
SCENE_GENERATORS.register_lazy("diffusion-attention", "synthvision.generators.diffusion_scenes")
SCENE_GENERATORS.register_lazy("gligen", "synthvision.generators.gligen")

__all__ = [
    "BACKGROUND_SOURCES",
    "OBJECT_SOURCES",
    "SCENE_GENERATORS",
    "BackgroundRequest",
    "BackgroundSource",
    "CropRequest",
    "ObjectSource",
    "SceneGenerator",
]
