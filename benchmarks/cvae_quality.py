"""Quality of a cVAE checkpoint on the procedural classes: do samples look like their class?

Small CNNs ("judges", see JUDGES) are trained on *real* procedural crops (seed 12345, not the
cVAE's training data), checked on more real crops, then asked to label crops sampled from the
cVAE through the `cvae` object source (the same path a build uses: per-request seeds, trimming).
The accuracy on samples, against the class each was conditioned on, is the figure of merit
(target >= 90%). The exit code is 0 when every judge reaches it.

    python benchmarks/cvae_quality.py                      # the shipped checkpoint, 3 judges
    python benchmarks/cvae_quality.py --checkpoint DIR --judges plain --grid out.png

Prints one JSON line per judge x checkpoint x temperature; `--grid` saves samples per class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE = 32  # classifier input (px)


def _tensor(crops: Sequence[npt.NDArray[np.uint8]]):  # type: ignore[no-untyped-def]
    import torch

    from synthvision.crops import to_square

    arr = np.stack([to_square(c, SIZE) for c in crops])  # (N, S, S, 4)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    rgb = x[:, :3] * x[:, 3:] + 0.5 * (1 - x[:, 3:])  # over grey: colour outside alpha ignored
    return torch.cat([rgb, x[:, 3:]], dim=1)  # (N, 4, S, S)


def _classifier(num_classes: int):  # type: ignore[no-untyped-def]
    from torch import nn

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)
        )

    return nn.Sequential(
        block(4, 32),
        block(32, 64),
        block(64, 128),  # 32 -> 4
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(128 * 16, num_classes),
    )


def _init(net, gen) -> None:  # type: ignore[no-untyped-def]
    """PyTorch's default init drawn from `gen` (the global RNG is never used)."""
    import math

    import torch
    from torch import nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                bound = 1 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)


def blur(x, sigma: float):  # type: ignore[no-untyped-def]
    """Separable Gaussian blur of (N, C, S, S) with std `sigma` px (0 = unchanged)."""
    import torch

    if sigma <= 0:
        return x
    r = max(1, round(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


BLUR_SIGMAS = (0.0, 0.6, 1.0, 1.5)  # px at the classifier's 32 x 32 input


def train_classifier(  # type: ignore[no-untyped-def]
    names: Sequence[str], per_class: int, seed: int, epochs: int, blur_aug: bool = True
):
    """CNN on real procedural crops; flips, and with `blur_aug` a random Gaussian blur per
    batch quarter (so the classifier judges shape and colour, not edge sharpness)."""
    import torch

    from synthvision import randomness
    from synthvision.crops import crops_from_procedural

    crops = crops_from_procedural(names, per_class, seed)
    x = _tensor([c.rgba for c in crops])
    y = torch.tensor([names.index(c.class_name) for c in crops])
    gen = randomness.torch_generator(seed, 0, "bench.classifier")
    net = _classifier(len(names))
    _init(net, gen)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), 64):
            idx = perm[s : s + 64]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            if blur_aug:
                q = (len(idx) + 3) // 4
                parts = [blur(xb[i * q : (i + 1) * q], sg) for i, sg in enumerate(BLUR_SIGMAS)]
                xb = torch.cat(parts)
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(
    net, crops: Sequence[npt.NDArray[np.uint8]], labels: Sequence[int], sigma: float = 0.0
) -> tuple[float, npt.NDArray[np.int64]]:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        pred = torch.cat(
            [
                net(blur(_tensor(crops[s : s + 256]), sigma)).argmax(1)
                for s in range(0, len(crops), 256)
            ]
        )
    lab = torch.tensor(list(labels))
    conf = np.zeros((int(lab.max()) + 1, int(lab.max()) + 1), np.int64)
    for t, p in zip(lab.tolist(), pred.tolist(), strict=True):
        conf[t, p] += 1
    return float((pred == lab).float().mean()), conf


def evaluate(
    net,
    checkpoint: str,
    names: list[str],
    temperature: float,
    per_class: int,
    seed: int,
    grid: Path | None = None,
) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Accuracy of `net` on `per_class` samples per class drawn through the cvae source."""
    from synthvision import randomness
    from synthvision.crops import grid_image
    from synthvision.generators import OBJECT_SOURCES, CropRequest

    source = OBJECT_SOURCES.create(
        "cvae",
        {"checkpoint": checkpoint, "temperature": temperature, "decode_batch": 64},
        "objects",
        class_names=tuple(names),
    )
    requests = [
        CropRequest(name, (64, 64), randomness.derive_seed(seed, k, f"bench.{name}"), k)
        for name in names
        for k in range(per_class)
    ]
    t0 = time.perf_counter()
    samples = source.crops(requests)
    t_sample = time.perf_counter() - t0
    labels = [names.index(r.class_name) for r in requests]
    acc, conf = accuracy(net, samples, labels)
    if grid is not None:
        rows = [samples[i * per_class : i * per_class + 10] for i in range(len(names))]
        grid_image(rows, cell=64, labels=names).save(grid)
    return {
        "checkpoint": checkpoint,
        "temperature": temperature,
        "classifier_accuracy_on_cvae_samples": round(acc, 4),
        "per_class_accuracy_on_samples": {
            n: round(float(conf[i, i] / conf[i].sum()), 3) for i, n in enumerate(names)
        },
        "samples": len(samples),
        "sampling_crops_per_s_cpu": round(len(samples) / t_sample, 1),
    }


# Three judges, all small CNNs on real procedural crops (seed 12345): the figure depends on the
# judge, so all three are reported. name -> (crops per class, epochs, blur augmentation)
JUDGES: dict[str, tuple[int, int, bool]] = {
    "plain": (300, 6, False),  # flips only: the "small classifier on real crops"
    "blur": (300, 6, True),  # + Gaussian blur, so edge sharpness alone does not decide
    "large": (600, 10, True),  # twice the data, longer: 100% on real crops, stricter on samples
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default="builtin", help="'builtin' or folders, comma-separated")
    ap.add_argument("--per-class", type=int, default=100, help="cVAE samples per class")
    ap.add_argument("--judges", default=",".join(JUDGES), help=f"some of {', '.join(JUDGES)}")
    ap.add_argument("--temperature", default="1.0", help="one or more, comma-separated")
    ap.add_argument("--seed", type=int, default=12345, help="differs from the cVAE's data seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=Path, default=None, help="save a PNG of samples per class")
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep trained judges in")
    args = ap.parse_args(argv)

    import torch

    from synthvision.crops import crops_from_procedural
    from synthvision.generators.cvae import load_cvae, resolve_checkpoint

    torch.set_num_threads(args.threads)
    checkpoints = args.checkpoint.split(",")
    names = list(load_cvae(str(resolve_checkpoint(checkpoints[0])), "cpu").class_names)
    real = crops_from_procedural(names, 50, args.seed + 1)
    real_labels = [names.index(c.class_name) for c in real]
    worst = 1.0
    for judge in args.judges.split(","):
        per_class, epochs, blur_aug = JUDGES[judge]
        cached = args.cache / f"judge-{judge}-{args.seed}.pt" if args.cache else None
        t0 = time.perf_counter()
        if cached is not None and cached.is_file():
            net = _classifier(len(names))
            net.load_state_dict(torch.load(cached))
            net.eval()
        else:
            net = train_classifier(names, per_class, args.seed, epochs, blur_aug=blur_aug)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), cached)
        t_train = time.perf_counter() - t0
        real_acc, _ = accuracy(net, [c.rgba for c in real], real_labels)
        real_blur_acc, _ = accuracy(net, [c.rgba for c in real], real_labels, sigma=1.0)
        for ckpt in checkpoints:
            for temp in (float(t) for t in args.temperature.split(",")):
                res = evaluate(net, ckpt, names, temp, args.per_class, args.seed, args.grid)
                acc = float(res["classifier_accuracy_on_cvae_samples"])  # type: ignore[arg-type]
                worst = min(worst, acc)
                head = {
                    "judge": judge,
                    "judge_real_crops_per_class": per_class,
                    "judge_epochs": epochs,
                    "judge_blur_augmentation": blur_aug,
                    "judge_accuracy_on_real_crops": round(real_acc, 4),
                    "judge_accuracy_on_real_crops_blurred_1px": round(real_blur_acc, 4),
                    "judge_train_s": round(t_train, 1),
                }
                print(json.dumps({**head, **res}), flush=True)
    return 0 if worst >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
