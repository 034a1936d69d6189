"""Every shipped config parses and names registered sources with valid params; the quickstart
builds with what the package ships (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthvision.config import load_spec
from synthvision.generators import (
    BACKGROUND_SOURCES,
    OBJECT_SOURCES,
    SCENE_GENERATORS,
)

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def test_configs_are_found() -> None:
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "quickstart-procedural.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_its_sources_take_its_params(path: Path) -> None:
    spec = load_spec(path)
    assert spec.num_images > 0 and spec.classes
    SCENE_GENERATORS.validate_params(spec.scene.name, spec.scene.params, "scene")
    OBJECT_SOURCES.validate_params(spec.objects.name, spec.objects.params, "objects")
    BACKGROUND_SOURCES.validate_params(spec.background.name, spec.background.params, "background")


def test_quickstart_uses_the_shipped_cvae_and_builds(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from synthvision.build import build

    spec = load_spec(
        CONFIGS[0].parent / "quickstart.yaml", ["num_images=6", "image_size=[128,128]"]
    )
    assert spec.objects.name == "cvae" and spec.objects.params["checkpoint"] == "builtin"
    result = build(spec, tmp_path / "qs", show_progress=False)
    assert result.manifest["counts"]["images"]["total"] == 6
    assert result.manifest["counts"]["instances"]["total"] > 0
