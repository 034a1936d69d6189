"""Every diffusion strategy builds a valid dataset end to end (tiny random models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from synthvision.config import Spec, parse_spec

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from synthvision import build as build_mod
from synthvision.validate import validate_dataset
from tests import tiny_models

PIPE = {"steps": 2, "batch_size": 4}


def _spec(**over: Any) -> Spec:
    data: dict[str, Any] = {
        "name": "tiny-diffusion-build",
        "seed": 5,
        "num_images": 4,
        "image_size": [32, 32],
        "splits": {"train": 0.5, "val": 0.5},
        "classes": [{"name": "cat"}, {"name": "dog"}],
        "objects_per_image": [1, 2],
        "layout": {"min_area_px": 4, "scale": [0.3, 0.6], "min_visibility": 0.2},
        "export": {"preview_images": 0},
    }
    data.update(over)
    return parse_spec(data)


STRATEGIES = {
    "diffusion-attention": lambda: _spec(
        scene={"name": "diffusion-attention", "params": {"model": tiny_models.sd_model(), **PIPE}}
    ),
    "gligen": lambda: _spec(
        scene={"name": "gligen", "params": {"model": tiny_models.gligen_model(), **PIPE}}
    ),
    "compose+diffusion": lambda: _spec(
        objects={"name": "diffusion", "params": {"model": tiny_models.sd_model(), **PIPE}},
        background={"name": "diffusion", "params": {"model": tiny_models.sd_model(), **PIPE}},
    ),
}


class OneAfterTheOther:
    """A generator with `generate` only: the build cannot pipeline or pack it, so every call
    generates, retries and labels on its own (each engine batch padded)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate(self, jobs: Any) -> Any:
        return self.inner.generate(jobs)


def count_engine_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the real rows of every engine call, per engine: under `calls[calls["key"]]`."""
    from synthvision.generators.diffusion import DiffusionEngine

    calls: dict[str, Any] = {"key": None}
    real_batch = DiffusionEngine._batch

    def counted(engine: Any, requests: Any) -> Any:
        calls.setdefault(calls["key"], {}).setdefault(id(engine), []).append(len(requests))
        return real_batch(engine, requests)

    monkeypatch.setattr(DiffusionEngine, "_batch", counted)
    return calls


def packed_and_one_after_the_other(
    spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> tuple[dict[str, Any], dict[str, list[list[int]]]]:
    """Build `spec` as a build does (sessions: labels in flight, packed batches) and with
    `OneAfterTheOther`: (digests, retries, rejected) and each engine's call rows, per way."""
    from tests.helpers import dataset_digests

    calls = count_engine_calls(monkeypatch)
    make = build_mod.create_scene_generator
    results = {}
    for way in ("packed", "sequential"):
        if way == "sequential":
            monkeypatch.setattr(
                build_mod, "create_scene_generator", lambda s: OneAfterTheOther(make(s))
            )
        calls["key"] = way
        out = tmp_path / way
        build_mod.build(spec, out, batch_size=batch_size, show_progress=False)
        counts = json.loads((out / "manifest.json").read_text())["counts"]
        results[way] = (dataset_digests(out), counts["retries"], counts["rejected_images"])
    return results, {way: list(calls[way].values()) for way in ("packed", "sequential")}


def full_but_the_final_rounds(rows: list[int], batch_size: int, max_retries: int) -> bool:
    """Every call full, but for `finish`'s rounds: the rest, then its retries."""
    first_padded = next((i for i, n in enumerate(rows) if n < batch_size), len(rows))
    return len(rows) - first_padded <= max_retries + 1


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_builds_a_valid_dataset(strategy: str, tmp_path: Path) -> None:
    spec = STRATEGIES[strategy]()
    result = build_mod.build(spec, tmp_path / "out", batch_size=4, show_progress=False)
    assert validate_dataset(tmp_path / "out") == []
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["retries"] == 0
    assert result.generated == spec.num_images
    coco = json.loads(
        (tmp_path / "out" / "coco" / "annotations" / "instances_train.json").read_text()
    )
    assert len(coco["images"]) == 2


def test_detector_labeler_in_a_build(tmp_path: Path) -> None:
    spec = _spec(
        scene={"name": "diffusion-attention", "params": {"model": tiny_models.sd_model(), **PIPE}},
        labeler={
            "name": "detector",
            "params": {"model": tiny_models.owlv2_model(), "threshold": 0.0},
        },
    )
    build_mod.build(spec, tmp_path / "out", batch_size=4, show_progress=False)
    assert validate_dataset(tmp_path / "out") == []


def test_label_threads_do_not_change_the_dataset(tmp_path: Path) -> None:
    """Scene labels are computed on a thread pool: the bytes are those of a one-thread build."""
    from tests.helpers import dataset_digests

    digests = []
    for threads in (1, 3):
        params = {"model": tiny_models.sd_model(), **PIPE, "label_threads": threads}
        spec = _spec(num_images=6, scene={"name": "diffusion-attention", "params": params})
        out = tmp_path / f"threads-{threads}"
        build_mod.build(spec, out, batch_size=4, show_progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["instances"]["total"] > 0
        digests.append(dataset_digests(out))
    assert digests[0] == digests[1]


def test_pipelined_and_packed_batches_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build keeps one batch in flight and packs retries and small build batches into full
    engine batches (`generator.session()`): its bytes, retries included, are those of a build
    that generates and labels one batch after the other, each padded on its own."""
    params = {"model": tiny_models.sd_model(), **PIPE, "min_instances": 2, "max_retries": 1}
    spec = _spec(num_images=7, scene={"name": "diffusion-attention", "params": params})
    # Build batches of 2: half an engine batch.
    results, calls = packed_and_one_after_the_other(spec, tmp_path, monkeypatch, 2)
    assert results["packed"][1] > 0  # the case does exercise retries
    assert results["packed"] == results["sequential"]
    [packed], [sequential] = calls["packed"], calls["sequential"]
    assert sum(packed) == sum(sequential)  # the same rows, in fewer calls
    assert full_but_the_final_rounds(packed, 4, max_retries=1), packed
    assert len(packed) < len(sequential), calls


def test_a_build_whose_every_image_is_rejected_is_an_error_not_a_dataset(tmp_path: Path) -> None:
    from synthvision.errors import SpecError

    params = {"model": tiny_models.sd_model(), **PIPE, "black_max": 255, "max_retries": 0}
    spec = _spec(scene={"name": "diffusion-attention", "params": params})
    with pytest.raises(SpecError, match=r"all 4 images were rejected after their retries \(black"):
        build_mod.build(spec, tmp_path, batch_size=4, show_progress=False)
    assert not (tmp_path / "manifest.json").exists()
    assert validate_dataset(tmp_path)[0].startswith("manifest.json is missing")


def test_a_stream_of_attention_labeled_scenes_is_the_png_build(tmp_path: Path) -> None:
    import torch

    from synthvision.data import SynthDetection
    from synthvision.stream import SynthStream

    spec = STRATEGIES["diffusion-attention"]().model_copy(
        update={"export": _spec(export={"image_format": "png", "preview_images": 0}).export}
    )
    build_mod.build(spec, tmp_path / "out", batch_size=4, show_progress=False)
    on_disk = SynthDetection(tmp_path / "out", "val")
    streamed = list(SynthStream(spec, "val", batch_size=1))  # two batches: one in flight
    assert len(streamed) == len(on_disk) == 2
    for (image, target), (want_image, want) in zip(
        streamed, (on_disk[i] for i in range(len(on_disk))), strict=True
    ):
        assert torch.equal(image, want_image) and target["image_id"] == want["image_id"]
        assert torch.equal(target["boxes"], want["boxes"])
        assert torch.equal(target["masks"], want["masks"])


def test_default_generation_batch_follows_the_models_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --batch-size a build hands a diffusion generator whole engine batches, so no
    call is padded."""
    from synthvision.dataset_items import generation_batch_size

    calls = count_engine_calls(monkeypatch)
    spec = _spec(num_images=8, scene=STRATEGIES["diffusion-attention"]().scene)
    build_mod.build(spec, tmp_path / "out", show_progress=False)
    assert list(calls[None].values()) == [[4, 4]]  # PIPE's batch_size: two full calls
    for name, want in (("diffusion-attention", 4), ("gligen", 4), ("compose+diffusion", 4)):
        generator = build_mod.create_scene_generator(STRATEGIES[name]())
        assert generation_batch_size(generator, None) == want, name
        assert generation_batch_size(generator, 3) == 3
    shapes = {"cat": "disc", "dog": "star"}
    procedural = build_mod.create_scene_generator(
        _spec(objects={"name": "procedural", "params": {"shapes": shapes}})
    )
    assert generation_batch_size(procedural, None) == 8


def test_compose_with_diffusion_sources_packs_crops_and_backgrounds_across_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crops and backgrounds of successive build batches, and their retries, share full engine
    batches (`ComposeScene.session`): the bytes are those of one call after the other."""
    sd = tiny_models.sd_model()
    spec = _spec(
        num_images=12,
        objects={"name": "diffusion", "params": {"model": sd, **PIPE, "min_object_fraction": 0.5}},
        background={"name": "diffusion", "params": {"model": sd, **PIPE}},
    )
    results, calls = packed_and_one_after_the_other(spec, tmp_path, monkeypatch, 2)
    assert results["packed"][1] > 0  # crops were retried
    assert results["packed"] == results["sequential"]
    assert len(calls["packed"]) == 2  # the object and the background engine
    for rows in calls["packed"]:
        assert full_but_the_final_rounds(rows, 4, max_retries=2), rows
    assert sum(map(len, calls["packed"])) < sum(map(len, calls["sequential"])), calls
