"""Train a cVAE on a few classes of a real COCO dataset, audit it, and draw samples vs real crops.

    python benchmarks/cvae_real_data.py --data ../shared/data/coco-val100 \\
        --classes "person,cup,broccoli,wine glass,car" --work /tmp/cvae-coco \\
        --images benchmarks/images --real-images /tmp/cvae-coco-real

Same as `synthvision train-cvae DATA --classes ... --balanced` followed by `synthvision audit`;
the data are only read (nothing is copied next to the code). Prints the training summary and the
audit report as JSON; `--images` gets the cVAE samples per class (PNG); `--real-images` (keep it
outside the repository: the PNGs show pieces of the dataset's photos) gets real training crops in
the same layout and the audit's nearest pairs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--classes", default="person,cup,broccoli,wine glass,car")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cvae-coco"))
    ap.add_argument("--images", type=Path, default=None, help="folder for the samples PNG")
    ap.add_argument(
        "--real-images",
        type=Path,
        default=None,
        help="folder for the PNGs that show real crops (real crops per class, nearest pairs): "
        "they hold pieces of the dataset's photos, so keep them out of the repository",
    )
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--min-size", type=int, default=24)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--prior", default="auto", help="auto | fitted | learned (sampling p(z|c))")
    args = ap.parse_args(argv)

    import torch

    from synthvision import randomness
    from synthvision.audit import audit_run
    from synthvision.crops import grid_image, load_crops, resolve_source
    from synthvision.generators.cvae import load_cvae
    from synthvision.train_cvae import TrainConfig, to_uint8, train_cvae

    torch.set_num_threads(args.threads)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    source = resolve_source(args.data, classes=classes, min_size=args.min_size, seed=args.seed)
    config = TrainConfig(
        epochs=args.epochs, balanced=True, holdout=args.holdout, seed=args.seed, device="cpu"
    )
    t0 = time.perf_counter()
    result = train_cvae(source, args.work, config, progress=False)
    wall = time.perf_counter() - t0
    info = json.loads((args.work / "training.json").read_text())
    print(
        json.dumps(
            {
                "classes": classes,
                "train_counts": info["train_counts"],
                "num_heldout": info["num_heldout_crops"],
                "epochs": info["epochs"],
                "final": info["final"],
                "crops_per_s": round(result.crops_per_second, 1),
                "wall_s": round(wall, 1),
            },
            indent=1,
        )
    )
    _, report = audit_run(
        args.work,
        samples_per_class=50,
        temperature=args.temperature,
        prior=args.prior,
        seed=args.seed,
    )
    print(json.dumps(report, indent=1))

    if args.images:
        args.images.mkdir(parents=True, exist_ok=True)
        crops = load_crops(source)
        held = set(info["heldout_keys"])
        model = load_cvae(str(args.work), "cpu")
        real_rows, fake_rows = [], []
        for ci, name in enumerate(classes):
            real_rows.append(
                [c.rgba for c in crops if c.class_name == name and c.key not in held][:8]
            )
            gens = [randomness.torch_generator(args.seed, k, "bench.real.grid") for k in range(8)]
            fake = model.sample([ci] * 8, gens, args.temperature, args.prior)
            fake_rows.append(list(to_uint8(fake)))
        grid_image(fake_rows, cell=48, labels=classes).save(args.images / "cvae_coco_samples.png")
        if args.real_images:
            args.real_images.mkdir(parents=True, exist_ok=True)
            real = args.real_images / "cvae_coco_real.png"
            grid_image(real_rows, cell=48, labels=classes).save(real)
            pairs = args.real_images / "cvae_coco_pairs.png"
            shutil.copy2(args.work / "audit" / "nearest_pairs.png", pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
