"""Images/s of each labeling strategy, end to end, at Stable Diffusion 1.5 size.

`diffusion_ladder.py` takes one strategy (attention-labeled scenes) up the ladder rung by rung.
This script builds every strategy's models at full size with *random* weights (nothing can be
downloaded where this runs), saves them and loads them back through the package's loading code,
then times `synthvision.build.build` at one ladder rung (default 8: bf16, SDPA, batch 16,
channels_last, torch.compile):

  attention  scene generator `diffusion-attention`: one SD 1.5 render per image; labels from the
             class tokens' cross-attention
  compose    object source `diffusion` + background source `diffusion`: one render per object
             and one per background (all 512 px); masks from attention and the plain
             background; objects pasted by the compose stage, so labels are exact
  gligen     scene generator `gligen`: GLIGEN's UNet (SD 1.5 configs, gated self-attention and
             the box position net); labels are the layout boxes tightened by attention
  detector   attention scenes relabeled by OWLv2 base/16 at 960 px (`labeler: detector`)

The strategies do different work per image (compose renders 1 + objects images), so each is
read against its own FLOP bound. FlopCounterMode counts the matmul, convolution and attention
FLOPs of an eager build of one batch (UNet rows with CFG, VAE decodes, text encoders, GLIGEN's
grounding tokens, OWLv2) and divides by its images; bound = peak / FLOPs per image. (On a
CPU, FlopCounterMode does not see SDPA's CPU flash kernel: smoke-run counts leave attention out.)

    python benchmarks/diffusion_strategies.py --out strategies.json         # on a GPU
    python benchmarks/diffusion_strategies.py --tiny --size 32 --steps 2    # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import diffusion_ladder as ladder  # noqa: E402  (the SD 1.5 configs, rungs and helpers)

STRATEGIES = ("attention", "compose", "gligen", "detector")

# OWLv2 base/16 (google/owlv2-base-patch16-ensemble's config.json).
OWLV2_BASE: dict[str, Any] = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "image_size": 960,
        "patch_size": 16,
    },
    "projection_dim": 512,
}

# Every word the prompts use becomes one token of the benchmark tokenizers: the prompts then
# have the token counts of real ones, far below 77.
PROMPT_WORDS = tuple(
    sorted(
        {
            w.strip(",")
            for text in (
                "red blue green yellow white black silver orange front side three-quarter view "
                "from above sunny rainy foggy snowy overcast noon dusk night morning city street "
                "parking lot country road park living room warehouse empty no people single "
                "isolated plain background photo blurry low quality watermark text cropped",
            )
            for w in text.split()
        }
    )
)


def build_owlv2(root: Path, tiny: bool, device: str) -> str:
    """OWLv2 base/16 with random weights (+ its processor at 960 px), saved to `root`."""
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    from tests import tiny_models

    if tiny:
        return str(tiny_models.build_owlv2(root / "owl-tiny"))
    words = (*tiny_models.DEFAULT_WORDS, *ladder.CLASSES)
    tok = CLIPTokenizer.from_pretrained(
        tiny_models.build_clip_tokenizer(root / "_tok-owl", words, model_max_length=16)
    )
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = Owlv2ForObjectDetection(Owlv2Config(**OWLV2_BASE)).eval()
    proc = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 960, "width": 960}), tokenizer=tok
    )
    out = root / "owlv2-base-random"
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    return str(out)


def pipeline_params(model: str, rung: ladder.Rung, steps: int) -> dict[str, Any]:
    """The rung's generation parameters without the scene-only keys (objects, backgrounds)."""
    p = ladder.scene_params(model, rung, steps)
    return {k: v for k, v in p.items() if k not in ("min_instances", "min_confidence")}


def strategy_spec(
    strategy: str, models: dict[str, str], rung: ladder.Rung, args: argparse.Namespace
) -> Callable[[int, str], Any]:
    """`spec(num_images, name)` for one strategy at this rung."""

    sd, size = models["sd"], args.size
    body: dict[str, Any]
    if strategy == "attention":
        body = {
            "scene": {
                "name": "diffusion-attention",
                "params": ladder.scene_params(sd, rung, args.steps),
            }
        }
    elif strategy == "compose":
        gen = pipeline_params(sd, rung, args.steps)
        body = {
            # Random weights draw no clear object: keep every crop with at least one mask pixel.
            "objects": {
                "name": "diffusion",
                "params": {**gen, "resolution": size, "min_object_fraction": 0.0},
            },
            "background": {"name": "diffusion", "params": gen},
        }
    elif strategy == "gligen":
        gen = pipeline_params(models["gligen"], rung, args.steps)
        body = {"scene": {"name": "gligen", "params": {**gen, "phrase": "{colour} {class}"}}}
    elif strategy == "detector":
        body = {
            "scene": {
                "name": "diffusion-attention",
                "params": ladder.scene_params(sd, rung, args.steps),
            },
            "labeler": {
                "name": "detector",
                # threshold as in configs/owlv2-autolabel.yaml; max_detections caps what random
                # weights let through, so post-processing stays near a trained model's.
                "params": {
                    "model": models["owl"],
                    "threshold": 0.3,
                    "batch_size": rung.batch_size,
                    "max_detections": 20,
                },
            },
        }
    else:
        raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    layout = {"min_area_px": 4, "scale": [0.3, 0.6], "min_visibility": 0.2} if args.tiny else None
    return ladder.bench_spec(size, body, layout)


def clear_caches() -> None:
    import torch

    from synthvision.generators.diffusion import clear_pipeline_cache
    from synthvision.labelers.detector import clear_detector_cache

    clear_pipeline_cache()
    clear_detector_cache()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_build_flops(spec: Any, out: Path, batch_size: int) -> dict[str, Any]:
    """FLOPs per image of an eager build of `spec` (one batch): what the strategy costs."""
    from torch.utils.flop_counter import FlopCounterMode

    from synthvision.build import build

    clear_caches()
    with FlopCounterMode(display=False) as fc:
        res = build(spec, out, overwrite=True, batch_size=batch_size, show_progress=False)
    clear_caches()
    images = res.generated
    by_module = fc.get_flop_counts()
    top = {  # the big consumers, per image
        name: sum(by_module[name].values()) / images
        for name in by_module
        if name.count(".") <= 1 and name != "Global"
    }
    return {
        "images": images,
        "per_image": fc.get_total_flops() / images,
        "per_image_by_module": dict(sorted(top.items(), key=lambda kv: -kv[1])[:8]),
    }


def measure(
    strategy: str, models: dict[str, str], rung: ladder.Rung, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    bs = rung.batch_size
    eager = replace(rung, compile=False, compile_mode=None)
    flops = count_build_flops(
        strategy_spec(strategy, models, eager, args)(bs, "flops"), tmp / "flops", bs
    )
    bound = args.peak_tflops * 1e12 / flops["per_image"]
    ladder.log(
        strategy,
        f"{flops['per_image'] / 1e12:.2f} TFLOP/image -> bound {bound:.2f} img/s",
        flops["per_image_by_module"],
    )
    n = args.images or 4 * bs
    with ladder.global_settings(rung):
        if rung.compile:
            import torch

            torch._dynamo.reset()
        e2e = ladder.timed_build(strategy_spec(strategy, models, rung, args), n, bs, tmp)
    clear_caches()
    row = {
        "strategy": strategy,
        "rung": rung.name,
        "flops": flops,
        "bound_img_s": bound,
        "e2e": e2e,
    }
    row["e2e"]["of_bound"] = e2e["img_s"] / bound
    ladder.log(strategy, "e2e", e2e)
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"device: {results['device']}, {results['size']}x{results['size']}, {results['steps']} "
        f"steps, CFG 7.5, rung {results['rung']} ({results['rung_name']}); "
        f"peak {results['peak_tflops']:.0f} TFLOP/s",
        "",
        "| strategy | TFLOP/image | bound img/s | e2e img/s | % of bound | instances |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["strategies"]:
        e = r["e2e"]
        lines.append(
            f"| {r['strategy']} | {r['flops']['per_image'] / 1e12:.1f} | {r['bound_img_s']:.2f} | "
            f"{e['img_s']:.2f} | {e['of_bound']:.0%} | {e['instances']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    ap.add_argument("--rung", type=int, default=8, help="ladder rung (diffusion_ladder.py --list)")
    ap.add_argument("--batch-size", type=int, default=0, help="override the rung's batch size")
    ap.add_argument("--dtype", default=None, help="override the rung's dtype (e.g. float32)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU debugging)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--images", type=int, default=0, help="images per timed build (0: 4 batches)")
    ap.add_argument("--peak-tflops", type=float, default=800.0)
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()
    wanted = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STRATEGIES))
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    if not 1 <= args.rung <= len(ladder.LADDER):
        ap.error(f"--rung must be 1..{len(ladder.LADDER)}")
    rung = ladder.LADDER[args.rung - 1]
    if args.batch_size or args.dtype:  # e.g. a full-size CPU check: --batch-size 1 --dtype float32
        bs, dtype = args.batch_size or rung.batch_size, args.dtype or rung.dtype
        rung = replace(rung, name=f"{rung.name} (batch {bs}, {dtype})", batch_size=bs, dtype=dtype)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device, results = ladder.results_header(
        args, rung=args.rung, rung_name=rung.name, strategies=[]
    )
    tmp = Path(tempfile.mkdtemp(prefix="sv-strategies-"))

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))

    try:
        t0 = time.perf_counter()
        models = {"sd": ladder.build_model(tmp, args.tiny, device, words=PROMPT_WORDS)}
        if "gligen" in wanted:
            models["gligen"] = ladder.build_model(
                tmp, args.tiny, device, gated=True, words=PROMPT_WORDS
            )
        if "detector" in wanted:
            models["owl"] = build_owlv2(tmp, args.tiny, device)
        ladder.log(f"models ready in {time.perf_counter() - t0:.1f}s", models)
        for strategy in wanted:
            try:
                results["strategies"].append(measure(strategy, models, rung, args, tmp))
            except Exception as exc:  # keep the other strategies' numbers
                results.setdefault("errors", {})[strategy] = repr(exc)
                ladder.log(strategy, "failed", repr(exc))
                clear_caches()
            save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown(results))
    save()


if __name__ == "__main__":
    main()
