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


# The model configs, each run with tiny random models in place of the hub ids (no download):
# what a user runs on a GPU builds, with the config's own strategy, scheduler and thresholds.
TINY_SWAPS = {
    "sd15-compose.yaml": {"objects": "sd", "background": "sd"},
    "sdxl-turbo-scenes.yaml": {"scene": "sdxl"},
    "gligen-layout.yaml": {"scene": "gligen"},
    "owlv2-autolabel.yaml": {"scene": "sd", "labeler": "owlv2"},
}


@pytest.mark.parametrize("name", sorted(TINY_SWAPS))
def test_model_config_builds_with_tiny_models(name: str, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from synthvision.build import build
    from synthvision.validate import validate_dataset
    from tests import tiny_models

    overrides = ["num_images=4", "image_size=[32,32]", "layout.min_area_px=4"]
    for part, model in TINY_SWAPS[name].items():
        overrides.append(f"{part}.params.model={getattr(tiny_models, f'{model}_model')()}")
        if part == "labeler":
            overrides.append("labeler.params.threshold=0.0")
            continue
        overrides += [f"{part}.params.steps=2", f"{part}.params.batch_size=4"]
        overrides.append(f"{part}.params.variant=null")  # tiny models are saved in one precision
    if name == "sd15-compose.yaml":
        overrides.append("objects.params.resolution=32")
    if name == "sdxl-turbo-scenes.yaml":
        overrides.append("scene.params.min_instances=0")  # random weights name no object
    spec = load_spec(CONFIGS[0].parent / name, overrides)
    build(spec, tmp_path / "out", batch_size=4, show_progress=False)
    assert validate_dataset(tmp_path / "out") == []
