"""From a planned image to the dataset items a build writes and a stream yields.

One generated image becomes `variants_per_image(spec)` dataset items: itself, and/or its
augmented variants. Item `j` of generated image `i` has the global index `i * k + j`, so the
numbering is the same whoever produces it (`build`, a resumed build, `SynthStream`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from synthvision.config import Spec
from synthvision.formats.records import instance_records
from synthvision.generators import SCENE_GENERATORS, SceneGenerator
from synthvision.structures import Sample


def variants_per_image(spec: Spec) -> int:
    """Dataset images per generated image: augmented variants (+ the original if kept)."""
    aug = spec.augment
    return aug.variants + int(aug.keep_original) if aug.enabled else 1


def create_labeler(spec: Spec) -> Any:
    """The spec's labeler (e.g. an open-vocabulary detector), or None."""
    if spec.labeler is None:
        return None
    from synthvision.labelers.base import LABELERS

    return LABELERS.create(spec.labeler.name, spec.labeler.params, "labeler", spec=spec)


DEFAULT_BATCH_SIZE = 8


def generation_batch_size(generator: Any, requested: int | None) -> int:
    """Images per generator call: `requested`, else the generator's `preferred_batch_size`
    (diffusion models: their engine batch, so each call hands on a full one), else
    `DEFAULT_BATCH_SIZE`."""
    if requested is not None:
        return requested
    preferred = getattr(generator, "preferred_batch_size", None)
    return int(preferred) if preferred else DEFAULT_BATCH_SIZE


def create_scene_generator(spec: Spec) -> SceneGenerator:
    """Validate the spec's components and build its scene generator (SpecError on bad input)."""
    return SCENE_GENERATORS.create(spec.scene.name, spec.scene.params, "scene", spec=spec)


class Variants:
    """Turns one generated sample into its dataset items (variants), with their global indices."""

    def __init__(self, spec: Spec) -> None:
        self.k = variants_per_image(spec)
        self.keep_original = spec.augment.keep_original
        self.seed = spec.seed
        self.augmenter: Any = None
        if spec.augment.enabled:
            from synthvision.augment import Augmenter

            self.augmenter = Augmenter.from_spec(spec.augment)

    def items(
        self, sample: Sample, wanted: Collection[int] | None = None, *, seed: int | None = None
    ) -> Iterator[tuple[int, Sample]]:
        """(global index, item) for each variant of `sample` in `wanted` (None: all of them).

        `seed` is the dataset seed the variants derive from; default: the spec's.
        """
        seed = self.seed if seed is None else seed
        from_index = sample.index * self.k
        for slot in range(self.k):
            out_index = from_index + slot
            if wanted is not None and out_index not in wanted:
                continue
            if self.augmenter is None or (self.keep_original and slot == 0):
                item = Sample(out_index, sample.image, sample.instances, dict(sample.metadata))
            else:
                from synthvision.augment import augment_seed

                variant = slot - int(self.keep_original)
                # Provenance (source index, variant, seed, drawn params) goes into metadata.
                variant_seed = augment_seed(seed, sample.index, variant)
                item = self.augmenter.apply(sample, variant_seed, variant=variant, index=out_index)
            item.metadata["source_index"] = sample.index
            yield out_index, item


def sample_record(sample: Sample, split: str, spec: Spec) -> dict[str, Any]:
    """The shard record of one item: its split, size, labels as the export writes them
    (`formats.records`), and metadata."""
    export = spec.export
    h, w = sample.size_hw
    return {
        "split": split,
        "height": h,
        "width": w,
        "instances": instance_records(
            sample.instances,
            coco_masks=export.coco_masks,
            polygons=export.yolo_task == "segment" or export.coco_masks == "polygon",
            size_hw=sample.size_hw,
        ),
        "metadata": sample.metadata,
    }
