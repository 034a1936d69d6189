"""train-cvae: crops from COCO / YOLO / procedural data, end-to-end training, resume, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from synthvision.crops import (  # noqa: E402
    DataSource,
    crops_from_coco,
    crops_from_yolo,
    cut_crop,
    resolve_source,
    split_holdout,
    to_square,
)
from synthvision.errors import SpecError  # noqa: E402
from synthvision.models.cvae import ConditionalVAE  # noqa: E402
from synthvision.train_cvae import TrainConfig, fit, train_cvae  # noqa: E402

TINY = dict(
    resolution=16,
    latent_dim=4,
    embedding_dim=8,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    batch_size=8,
    samples_per_class=2,
    warmup_steps=5,
    device="cpu",
)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _scene(rng: np.random.Generator, h: int = 64, w: int = 80):
    """An RGB image with a red disc and a blue rectangle, and their masks."""
    img = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 60, size=3, dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = rng.integers(14, 24), rng.integers(14, 30), rng.integers(8, 12)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    rect = np.zeros((h, w), bool)
    y0, x0 = rng.integers(30, 40), rng.integers(40, 55)
    rect[y0 : y0 + 20, x0 : x0 + 22] = True
    img[disc] = (220, 30, 30)
    img[rect] = (30, 30, 220)
    return img, [("disc", disc), ("box", rect)]


@pytest.fixture()
def coco_dir(tmp_path: Path) -> Path:
    from synthvision.formats.masks import encode_rle

    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    cats = [{"id": 1, "name": "disc"}, {"id": 2, "name": "box"}, {"id": 3, "name": "unused"}]
    for i in range(6):
        img, objs = _scene(rng)
        name = f"{i:04d}.png"
        Image.fromarray(img).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": 64, "width": 80})
        for k, (_, mask) in enumerate(objs):
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1 + k,
                    "iscrowd": 0,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(mask.sum()),
                    "segmentation": encode_rle(mask),
                }
            )
    doc = {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return root


@pytest.fixture()
def yolo_dir(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "data.yaml").write_text("names:\n  0: disc\n  1: box\ntrain: images/train\n")
    rng = np.random.default_rng(1)
    for i in range(4):
        img, objs = _scene(rng)
        Image.fromarray(img).save(root / "images" / "train" / f"{i}.png")
        rows = []
        for k, (_, mask) in enumerate(objs):
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            rows.append(
                f"{k} {(x0 + x1) / 160} {(y0 + y1) / 128} {(x1 - x0) / 80} {(y1 - y0) / 64}"
            )
        (root / "labels" / "train" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_cut_crop_and_square() -> None:
    img = np.zeros((10, 12, 3), np.uint8)
    img[2:5, 3:9] = 200
    mask = img[..., 0] > 0
    crop = cut_crop(img, (0, 0, 12, 10), mask)
    assert crop is not None and crop.shape == (3, 6, 4) and (crop[..., 3] == 255).all()
    rect = cut_crop(img, (1, 1, 4, 3), None)
    assert rect is not None and rect.shape == (2, 3, 4) and (rect[..., 3] == 255).all()
    assert cut_crop(img, (0, 0, 12, 10), np.zeros((10, 12), bool)) is None
    sq = to_square(crop, 16)  # 3 x 6 -> 8 x 16, centred, transparent above and below
    assert sq.shape == (16, 16, 4)
    assert (
        (sq[:4, :, 3] == 0).all() and (sq[12:, :, 3] == 0).all() and (sq[4:12, :, 3] == 255).all()
    )
    assert (sq[4:12, :, :3] == 200).all()  # premultiplied resampling: no dark fringe


def test_crops_from_coco_masks_and_filters(coco_dir: Path) -> None:
    ann = coco_dir / "annotations" / "instances_train.json"
    crops = crops_from_coco(ann)
    assert len(crops) == 12 and {c.class_name for c in crops} == {"disc", "box"}
    disc = next(c for c in crops if c.class_name == "disc")
    assert 0 < (disc.rgba[..., 3] == 0).sum()  # corners of a disc are transparent
    assert disc.rgba[..., 0][disc.rgba[..., 3] > 0].min() == 220
    assert len(crops_from_coco(ann, classes=["box"])) == 6
    assert len(crops_from_coco(ann, min_size=20)) == 6 + sum(
        min(c.rgba.shape[:2]) >= 20 for c in crops if c.class_name == "disc"
    )
    boxes_only = crops_from_coco(ann, classes=["disc"], use_masks=False)
    assert all((c.rgba[..., 3] == 255).all() for c in boxes_only)
    with pytest.raises(SpecError, match=r"unknown class.*'zebra'.*disc, box, unused"):
        crops_from_coco(ann, classes=["zebra"])
    src = resolve_source(str(coco_dir))
    assert src.kind == "coco" and src.path.endswith("instances_train.json")
    # a crowd annotation (one region over a group of objects) is not an object to learn from
    data = json.loads(ann.read_text())
    data["annotations"][0]["iscrowd"] = 1
    crowd = coco_dir / "annotations" / "instances_crowd.json"
    crowd.write_text(json.dumps(data))
    assert len(crops_from_coco(crowd)) == 11


def test_crops_from_yolo(yolo_dir: Path) -> None:
    crops = crops_from_yolo(yolo_dir, "train")
    assert len(crops) == 8 and all((c.rgba[..., 3] == 255).all() for c in crops)
    assert resolve_source(str(yolo_dir)).kind == "yolo"
    with pytest.raises(SpecError, match="does not exist"):
        resolve_source(str(yolo_dir / "nope"))


def test_crops_from_a_synthvision_build(tmp_path: Path) -> None:
    """A build folder, its coco/ folder, or its annotations file: images/{split} is found."""
    from synthvision.build import build
    from synthvision.crops import load_crops

    from .helpers import small_spec

    build(small_spec(num_images=3, objects_per_image=[1, 2]), tmp_path, show_progress=False)
    ann = tmp_path / "coco/annotations/instances_train.json"
    counts = set()
    for data in (tmp_path, tmp_path / "coco", ann):
        source = resolve_source(str(data), min_size=4)
        assert source.kind == "coco" and Path(source.path) == ann.resolve()
        counts.add(len(load_crops(source)))
    assert len(counts) == 1 and counts.pop() > 0


def test_holdout_split_is_per_class_and_seeded(coco_dir: Path) -> None:
    crops = crops_from_coco(coco_dir / "annotations" / "instances_train.json")
    train, held = split_holdout(crops, 0.34, seed=3)
    assert len(held) == 4 and {c.class_name for c in held} == {"disc", "box"}
    assert [c.key for c in split_holdout(crops, 0.34, seed=3)[1]] == [c.key for c in held]
    assert not {c.key for c in train} & {c.key for c in held}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "diffusion_pytorch_model.safetensors")


def test_train_from_coco_end_to_end_and_resume(coco_dir: Path, tmp_path: Path) -> None:
    src = resolve_source(str(coco_dir), min_size=8)
    cfg = TrainConfig(epochs=3, holdout=0.2, **TINY)  # type: ignore[arg-type]
    full = train_cvae(src, tmp_path / "full", cfg, progress=False)
    out = full.output_dir
    for name in (
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "README.md",
        "training.json",
    ):
        assert (out / name).is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "epoch-0001.png",
        "epoch-0002.png",
        "epoch-0003.png",
        "final.png",
    ]
    info = json.loads((out / "training.json").read_text())
    assert info["class_names"] == ["box", "disc"] and info["epochs"] == 3
    assert len(info["history"]) == 3 and len(info["heldout_keys"]) == 2
    card = (out / "README.md").read_text()
    assert info["fingerprint"] in card and "box, disc" in card and "final losses" in card

    # interrupt after epoch 2's checkpoint, then resume: same weights as the uninterrupted run
    class Stop(Exception):
        pass

    def stop_at_epoch_3(msg: str) -> None:
        if msg.startswith("epoch 3/"):
            raise Stop

    with pytest.raises(Stop):
        train_cvae(src, tmp_path / "cut", cfg, progress=False, log=stop_at_epoch_3)
    state = json.loads((tmp_path / "cut" / "checkpoints/last/trainer_state.json").read_text())
    assert state["epoch"] == 2
    resumed = train_cvae(src, tmp_path / "cut", cfg, progress=False)
    assert resumed.resumed_from_epoch == 2
    a, b = _weights(out), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert "_name_or_path" not in config  # no local path leaks into a shared model folder

    # a resume with other optimisation settings is refused (its epochs would mix two trainings);
    # more epochs are fine
    changed = TrainConfig(epochs=4, holdout=0.2, **{**TINY, "batch_size": 4})  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="other settings \\(batch_size 8 -> 4\\)"):
        train_cvae(src, tmp_path / "cut", changed, progress=False)

    # other data in the same folder is refused
    other = resolve_source(str(coco_dir), min_size=8, classes=["disc"])
    with pytest.raises(SpecError, match="other data"):
        train_cvae(other, tmp_path / "cut", cfg, progress=False)


def test_fit_on_arrays_and_sample_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(12, 16, 16, 4), dtype=np.uint8)
    ids = np.arange(12) % 3
    cfg = TrainConfig(epochs=1, **TINY)  # type: ignore[arg-type]
    res = fit(data, ids, ["a", "b", "c"], tmp_path / "arr", cfg, progress=False)
    assert res.crops_per_second > 0 and res.history[0]["loss"] > 0
    with Image.open(tmp_path / "arr" / "samples" / "epoch-0001.png") as im:
        assert im.size[1] >= 3 * 16
    # after training, sampling uses a Gaussian fitted to the training latents
    model = ConditionalVAE.from_pretrained(tmp_path / "arr", use_safetensors=True)
    assert model.has_fitted_prior and model.fitted_count.tolist() == [8.0, 8.0, 8.0]  # + flips
    assert (tmp_path / "arr" / "samples" / "final.png").is_file()
    # Starting over in the same folder replaces the run's own files and nothing else.
    mine = tmp_path / "arr" / "samples" / "my_photo.txt"
    mine.write_text("mine")
    fit(data, ids, ["a", "b", "c"], tmp_path / "arr", cfg, progress=False, resume=False)
    assert mine.read_text() == "mine"
    # A folder that holds no train-cvae run is refused before anything is written.
    foreign = tmp_path / "foreign"
    (foreign / "samples").mkdir(parents=True)
    (foreign / "config.json").write_text("mine")
    with pytest.raises(SpecError, match="holds no train-cvae run"):
        fit(data, ids, ["a", "b", "c"], foreign, cfg, progress=False)
    assert sorted(p.name for p in foreign.rglob("*")) == ["config.json", "samples"]


def test_bad_training_inputs_are_spec_errors(tmp_path: Path, coco_dir: Path) -> None:
    with pytest.raises(SpecError, match="divisible"):
        TrainConfig(resolution=18, block_out_channels=(8, 16), norm_num_groups=4).validate()
    with pytest.raises(SpecError, match="--format"):
        resolve_source("procedural", kind="parquet")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SpecError, match=r"cannot read COCO|not a COCO|no crops"):
        train_cvae(DataSource(kind="coco", path=str(bad)), tmp_path / "o", TrainConfig(**TINY))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="no crops of at least 500 px"):
        src = resolve_source(str(coco_dir), min_size=500)
        train_cvae(src, tmp_path / "o", TrainConfig(**TINY))  # type: ignore[arg-type]


def _cli():
    from typer.testing import CliRunner

    from synthvision.cli import app

    return CliRunner(), app


def test_cli_train_cvae_procedural_and_errors(tmp_path: Path) -> None:
    runner, app = _cli()
    out = tmp_path / "run"
    args = ["train-cvae", "procedural", "--output", str(out), "--classes", "disc,square"]
    args += (
        "--procedural-count 6 --resolution 16 --channels 8,16 --latent-dim 4 --epochs 1 "
        "--batch-size 4 --device cpu --no-progress --min-size 4"
    ).split()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    info = json.loads((out / "training.json").read_text())
    assert info["class_names"] == ["disc", "square"] and info["source"]["kind"] == "procedural"
    # re-running resumes (nothing left to train) instead of starting over
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "resuming from epoch 1" in res.output

    res = runner.invoke(app, [*args[:5], "zebra", *args[6:]])
    assert res.exit_code == 2 and "zebra" in res.output and "\n" == res.output[-1]
    assert "Traceback" not in res.output
    # found before an epoch is trained, not as "no latents for class(es) disc" after it
    res = runner.invoke(app, [*args[:5], "disc,square,disc", *args[6:]])
    assert res.exit_code == 2 and "--classes: 'disc' given more than once" in res.output
    res = runner.invoke(app, ["train-cvae", str(tmp_path / "missing"), "-o", str(out)])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_second_run_into_a_folder_being_trained_is_refused(tmp_path: Path) -> None:
    """Two train-cvae runs into one folder would interleave their checkpoints."""
    import signal
    import subprocess
    import sys

    from synthvision.errors import OutputDirError

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from synthvision.folder_lock import lock_folder\n"
            "lock_folder(Path(sys.argv[1]), '--output')\n"
            "print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    data = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 4), dtype=np.uint8)
    ids, cfg = np.arange(6) % 2, TrainConfig(epochs=1, **TINY)  # type: ignore[arg-type]
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=r"another synthvision run is writing.*--output"):
            fit(data, ids, ["a", "b"], out, cfg, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    fit(data, ids, ["a", "b"], out, cfg, progress=False)  # the lock file alone is no foreign file
    assert (out / "training.json").is_file() and not (out / ".synthvision.lock").exists()
