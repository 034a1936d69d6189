"""Images/s of the diffusion generators at Stable Diffusion 1.5 size, rung by rung.

The model is SD 1.5's architecture from its published configs with *random* weights (no weights
can be downloaded where this runs), saved with `save_pretrained` and loaded back through the
package's real loading path. Work per image is what matters for speed, and it is the same.

Ladder (512x512, 25 steps, classifier-free guidance 7.5; `--list` prints the rungs):
    fp32 -> bf16 -> +SDPA -> +batching (1, 4, 16) -> +torch.compile
    then fused QKV projections, batch 32, autotuned kernels (max-autotune, inductor tuning),
    cuDNN's conv algorithm search, cuDNN attention
Each rung reports
    gen      images/s of generation + VAE decode + decode checks (no capture),
    capture  the same with cross-attention capture on (its overhead vs gen),
    e2e      `synthvision.build.build` end to end: plan, generation with capture, attention
             labels, JPEG export, COCO + YOLO merge (not for the eager-attention rungs: they
             cannot capture, and diffusion-attention refuses to build without labels),
and each against the FLOP bound (FLOPs counted with torch's FlopCounterMode; the default peak is
800 TFLOP/s, a dense bf16 H100 figure).

    python benchmarks/diffusion_ladder.py --out results.json            # on a GPU
    python benchmarks/diffusion_ladder.py --tiny --size 32 --steps 2    # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Published Stable Diffusion 1.5 component configs (runwayml/stable-diffusion-v1-5).
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}
SD15_TEXT: dict[str, Any] = {  # CLIP ViT-L/14 text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
TINY_UNET = {
    **SD15_UNET,
    "sample_size": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}
TINY_VAE = {
    **SD15_VAE,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "block_out_channels": [32, 64],
    "norm_num_groups": 8,
    "sample_size": 32,
}
TINY_TEXT = {
    **SD15_TEXT,
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}

CLASSES = ["car", "person", "bicycle"]
PROMPT = "a photo of a car, two persons and a bicycle in a city street, rainy, at dusk"


@dataclass(frozen=True)
class Rung:
    name: str
    dtype: str
    attention: str  # "eager" (diffusers' AttnProcessor, cannot capture) or "sdpa"
    batch_size: int  # engine batch (UNet rows per call: twice this with CFG)
    compile: bool = False
    channels_last: bool = False
    fuse_qkv: bool = False
    compile_mode: str | None = None
    inductor_tuning: bool = False  # conv 1x1 as matmul, coordinate-descent tuning (global)
    # cuDNN times its conv algorithms per shape (global). Not a package default: the choice can
    # differ between processes, and so can the bits of an image.
    cudnn_benchmark: bool = False
    sdpa_backend: str = "auto"  # SDPA kernel tried first (the package's `sdpa_backend`)


# Rung 8 with fused attention projections: the base of the rungs past the ladder.
FUSED = Rung("bf16+sdpa bs16+cl+fuse_qkv+compile", "bfloat16", "sdpa", 16, True, True, True)

LADDER = [
    # The ladder (measured on an H100, 2026-11-22).
    Rung("fp32", "float32", "eager", 1),
    Rung("bf16", "bfloat16", "eager", 1),
    Rung("bf16+sdpa", "bfloat16", "sdpa", 1),
    Rung("bf16+sdpa bs4", "bfloat16", "sdpa", 4),
    Rung("bf16+sdpa bs16", "bfloat16", "sdpa", 16),
    Rung("bf16+sdpa bs16+compile", "bfloat16", "sdpa", 16, compile=True),
    Rung("bf16+sdpa bs16+channels_last", "bfloat16", "sdpa", 16, channels_last=True),
    Rung("bf16+sdpa bs16+cl+compile", "bfloat16", "sdpa", 16, True, True),
    # Beyond it: the settings diffusers' speed guide adds (fused projections, autotuned kernels).
    FUSED,
    replace(FUSED, name="bf16+sdpa bs32+cl+fuse_qkv+compile", batch_size=32),
    replace(
        FUSED,
        name=f"{FUSED.name} max-autotune-no-cudagraphs",
        compile_mode="max-autotune-no-cudagraphs",
    ),
    replace(FUSED, name=f"{FUSED.name}+inductor tuning", inductor_tuning=True),
    replace(FUSED, name=f"{FUSED.name}+cudnn.benchmark", cudnn_benchmark=True),
    replace(FUSED, name=f"{FUSED.name}+cuDNN attention", sdpa_backend="cudnn"),
]


@contextmanager
def global_settings(rung: Rung) -> Iterator[None]:
    """The rung's process-wide torch settings, restored afterwards."""
    import torch

    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = rung.cudnn_benchmark
    try:
        with inductor_tuning(rung.inductor_tuning):
            yield
    finally:
        torch.backends.cudnn.benchmark = saved


@contextmanager
def inductor_tuning(on: bool) -> Iterator[None]:
    """The inductor settings of diffusers' "speed up inference" guide, for one rung (global)."""
    if not on:
        yield
        return
    import torch._inductor.config as ic

    wanted = {
        "conv_1x1_as_mm": True,
        "coordinate_descent_tuning": True,
        "coordinate_descent_check_all_directions": True,
        "epilogue_fusion": False,
    }
    saved = {k: getattr(ic, k) for k in wanted}
    for k, v in wanted.items():
        setattr(ic, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ic, k, v)


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def build_model(
    root: Path, tiny: bool, device: str, *, gated: bool = False, words: tuple[str, ...] = ()
) -> str:
    """SD 1.5 layout with random weights, saved (fp16) to `root`; returns the directory.

    `gated`: GLIGEN's UNet (the same configs with gated self-attention and the box position
    net), saved as a StableDiffusionGLIGENPipeline. `words`: extra single-token vocabulary.
    """
    import torch
    from diffusers import AutoencoderKL
    from diffusers import UNet2DConditionModel as UNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.tiny_models import DEFAULT_WORDS, assemble_sd_pipeline, build_clip_tokenizer

    vocab = (*DEFAULT_WORDS, *CLASSES, "persons", "city", "dusk", "rainy", "street", *words)
    name = "gligen-random" if gated else "sd15-random"
    tok = CLIPTokenizer.from_pretrained(build_clip_tokenizer(root / f"_tok-{name}", vocab))
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)  # random weights for a benchmark only
        unet_cfg = TINY_UNET if tiny else SD15_UNET
        unet = UNet(**unet_cfg, attention_type="gated" if gated else "default")
        vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE))
        text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT)))
    pipe = assemble_sd_pipeline(unet, vae, text, tok, gated=gated)
    out = root / name
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    return str(out)


def count_flops(model: str, size: int, device: str) -> dict[str, float]:
    """FLOPs of one UNet call per image, one VAE decode per image, one text encoding."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lat = size // 8 if size >= 64 else size // 2
    out: dict[str, float] = {}
    with torch.inference_mode():
        unet = UNet2DConditionModel.from_pretrained(f"{model}/unet", torch_dtype=dtype).to(device)
        dim = unet.config.cross_attention_dim
        x = torch.randn(1, 4, lat, lat, device=device, dtype=dtype)
        e = torch.randn(1, 77, dim, device=device, dtype=dtype)
        with FlopCounterMode(display=False) as fc:
            unet(x, torch.tensor(500, device=device), e)
        out["unet_call_per_image"] = float(fc.get_total_flops())
        del unet
        vae = AutoencoderKL.from_pretrained(f"{model}/vae", torch_dtype=dtype).to(device)
        with FlopCounterMode(display=False) as fc:
            vae.decode(x)
        out["vae_decode_per_image"] = float(fc.get_total_flops())
        del vae
        te: Any = CLIPTextModel.from_pretrained(f"{model}/text_encoder", dtype=dtype)
        te = te.to(device)
        with FlopCounterMode(display=False) as fc:
            te(torch.zeros(1, 77, dtype=torch.long, device=device))
        out["text_encode_per_prompt"] = float(fc.get_total_flops())
    return out


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def scene_params(model: str, rung: Rung, steps: int) -> dict[str, Any]:
    return {
        "model": model,
        "dtype": rung.dtype,
        "attention": rung.attention,
        "batch_size": rung.batch_size,
        "compile": rung.compile,
        "compile_mode": rung.compile_mode,
        "channels_last": rung.channels_last,
        "fuse_qkv": rung.fuse_qkv,
        "sdpa_backend": rung.sdpa_backend,
        "steps": steps,
        "guidance_scale": 7.5,
        # Random weights make odd-looking images: keep every sample (no retries, no rejects).
        "max_retries": 0,
        "black_max": 0.0,
        "blank_std": 0.0,
        "min_instances": 0,
        "min_confidence": 0.0,
    }


def engine_rate(params: dict[str, Any], n: int, size: int, capture: bool) -> dict[str, Any]:
    """Images/s of the engine alone (generation, decode, checks), capture on or off."""
    from synthvision.generators import diffusion as dif
    from synthvision.generators import prompts

    p = {k: v for k, v in params.items() if k not in ("min_instances", "min_confidence")}
    engine = dif.DiffusionEngine.from_params(dif.PipelineParams(**p), "bench")
    tok = engine.loaded.tokenizer
    w, _ = prompts.query_weights(tok, PROMPT, prompts.phrase_spans(PROMPT, CLASSES))
    reqs = [
        dif.GenRequest(
            PROMPT, "blurry", seed=i, size_hw=(size, size), weights=w if capture else None
        )
        for i in range(n)
    ]
    bs = params["batch_size"]
    t0 = time.perf_counter()
    engine.run(reqs[:bs])  # warm-up (compiles when compile is on)
    sync()
    warm = time.perf_counter() - t0
    engine.profile = True
    engine.timings = dict.fromkeys(engine.timings, 0.0)
    t0 = time.perf_counter()
    res = engine.run(reqs)
    sync()
    dt = time.perf_counter() - t0
    split = {k: round(v / n, 4) for k, v in engine.timings.items()}  # seconds per image
    maps_ok = (not capture) or all(r.maps is not None and r.maps.shape[0] == 3 for r in res)
    return {
        "images": n,
        "seconds": dt,
        "img_s": n / dt,
        "warmup_s": warm,
        "maps_ok": maps_ok,
        "s_per_image": split,
    }


def build_rate(params: dict[str, Any], n: int, size: int, tmp: Path) -> dict[str, Any]:
    """Images/s of `build()` end to end (warm pipeline): generate, label, export, merge."""
    scene = {"scene": {"name": "diffusion-attention", "params": params}}
    return timed_build(bench_spec(size, scene), n, params["batch_size"], tmp)


def bench_spec(
    size: int, parts: dict[str, Any], layout: dict[str, Any] | None = None
) -> Callable[[int, str], Any]:
    """`spec(num_images, name)`: the benchmark scenes (CLASSES, 1-3 objects, square `size`,
    no preview) with the given generator `parts` (scene / objects / background / labeler)."""
    from synthvision.config import parse_spec

    def spec(num: int, name: str) -> Any:
        return parse_spec(
            {
                "name": name,
                "seed": 1,
                "num_images": num,
                "image_size": [size, size],
                "classes": [{"name": c} for c in CLASSES],
                "objects_per_image": [1, 3],
                "layout": layout or {},
                "export": {"preview_images": 0},
                **parts,
            }
        )

    return spec


def timed_build(spec: Callable[[int, str], Any], n: int, bs: int, tmp: Path) -> dict[str, Any]:
    """A warm-up build of one batch (loads models, compiles), then a timed build of `n` images
    from `spec(num_images, name)`."""
    from synthvision.build import build

    t0 = time.perf_counter()
    build(spec(bs, "warm"), tmp / "warm", overwrite=True, batch_size=bs, show_progress=False)
    sync()
    warm = time.perf_counter() - t0
    out = tmp / "timed"
    t0 = time.perf_counter()
    res = build(spec(n, "timed"), out, overwrite=True, batch_size=bs, show_progress=False)
    sync()
    dt = time.perf_counter() - t0
    manifest = res.manifest or {}
    counts = manifest.get("counts", {})
    return {
        "images": n,
        "seconds": dt,
        "img_s": n / dt,
        "warmup_s": warm,
        "instances": counts.get("instances", {}).get("total"),
        "manifest_timings": manifest.get("timings_s"),
    }


def results_header(args: argparse.Namespace, **extra: Any) -> tuple[str, dict[str, Any]]:
    """(device, the results dict's run description): where, with what, at which settings."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "steps": args.steps,
        "guidance_scale": 7.5,
        "peak_tflops": args.peak_tflops,
        **extra,
    }


def batch_invariance(model: str, size: int, steps: int) -> dict[str, Any]:
    """Max pixel difference of one image generated at batch size 1 vs inside a batch of 4."""
    import numpy as np

    from synthvision.generators import diffusion as dif

    out: dict[str, Any] = {}
    imgs = {}
    for bs in (1, 4):
        p = dif.PipelineParams(model=model, dtype="bfloat16", batch_size=bs, steps=steps)
        eng = dif.DiffusionEngine.from_params(p, "bench")
        reqs = [dif.GenRequest(PROMPT, "", seed=s, size_hw=(size, size)) for s in range(4)]
        imgs[bs] = eng.run(reqs[: 1 if bs == 1 else 4])[0].image.astype(int)
        # The same image with other batch-mates at the same batch size.
        if bs == 4:
            other = [
                reqs[0],
                *[dif.GenRequest(PROMPT, "", seed=9 + s, size_hw=(size, size)) for s in range(3)],
            ]
            out["same_bs_other_mates_max_diff"] = int(
                np.abs(eng.run(other)[0].image.astype(int) - imgs[4]).max()
            )
    out["bs1_vs_bs4_max_diff"] = int(np.abs(imgs[1] - imgs[4]).max())
    out["bs1_vs_bs4_frac_pixels_diff"] = float((imgs[1] != imgs[4]).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU debugging)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--peak-tflops", type=float, default=800.0)
    ap.add_argument("--rungs", default="all", help="comma-separated rung numbers (1-based)")
    ap.add_argument(
        "--images", type=int, default=0, help="images per gen/capture rate (0: 4 batches)"
    )
    ap.add_argument("--e2e-images", type=int, default=0, help="images per e2e build (0: 8 batches)")
    ap.add_argument("--list", action="store_true", help="print the numbered rungs and exit")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--invariance", action="store_true", help="also check batch invariance")
    ap.add_argument("--model", default=None, help="reuse a saved model directory")
    ap.add_argument("--out", default=None, help="write results JSON here")
    args = ap.parse_args()
    if args.list:
        for k, rung in enumerate(LADDER, 1):
            print(f"{k:2d}  {rung.name}")
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device, results = results_header(args, rungs=[])
    tmp = Path(tempfile.mkdtemp(prefix="sv-ladder-"))

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))

    try:
        t0 = time.perf_counter()
        model = args.model or build_model(tmp, args.tiny, device)
        log(f"model ready in {time.perf_counter() - t0:.1f}s: {model}")
        flops = count_flops(model, args.size, device)
        per_image = (
            args.steps * 2 * flops["unet_call_per_image"]  # CFG: two UNet rows per step
            + flops["vae_decode_per_image"]
            + 2 * flops["text_encode_per_prompt"]
        )
        bound = args.peak_tflops * 1e12 / per_image
        results["flops"] = {**flops, "per_image_total": per_image, "bound_img_s": bound}
        log(f"FLOPs/image {per_image / 1e12:.2f} TFLOP -> bound {bound:.2f} img/s", flops)
        save()
        if args.invariance:
            results["batch_invariance"] = batch_invariance(model, args.size, args.steps)
            log("batch invariance", results["batch_invariance"])
            save()
        wanted = (
            range(len(LADDER))
            if args.rungs == "all"
            else [int(r) - 1 for r in args.rungs.split(",")]
        )
        for k in wanted:
            rung = LADDER[k]
            # In the results before it is measured: save_partial() then keeps its gen/capture
            # numbers if the call is stopped (or fails) later in the rung.
            row: dict[str, Any] = {"rung": rung.name, **asdict(rung)}
            results["rungs"].append(row)
            try:
                with global_settings(rung):
                    measure_rung(rung, model, args, tmp, bound, device, row, save_partial=save)
            except Exception as exc:  # keep the other rungs (e.g. one whose compile fails)
                row["error"] = repr(exc)
                log(rung.name, "failed", repr(exc))
            save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown(results))
    save()


def measure_rung(  # type: ignore[no-untyped-def]
    rung: Rung, model: str, args, tmp: Path, bound: float, device: str, row, save_partial
) -> dict[str, Any]:
    """gen / capture / e2e rates of one rung, each also as a share of the FLOP bound, written
    into `row` as they come (`save_partial()` saves the results it belongs to)."""
    import torch

    from synthvision.generators.diffusion import clear_pipeline_cache

    clear_pipeline_cache()  # one model copy on the GPU at a time
    if device == "cuda":
        torch.cuda.empty_cache()
    if rung.compile:
        torch._dynamo.reset()  # fresh caches: earlier rungs' graphs must not count against limits
    bs = rung.batch_size
    params = scene_params(model, rung, args.steps)
    # Steady state: several batches per measurement (fp32 at batch 1 is slow: 3 images).
    n = args.images or (3 if rung.dtype == "float32" else max(4 * bs, 4))
    n_e2e = args.e2e_images or (3 if rung.dtype == "float32" else max(8 * bs, 8))
    row["gen"] = engine_rate(params, n, args.size, capture=False)
    row["gen"]["of_bound"] = row["gen"]["img_s"] / bound
    log(rung.name, "gen", row["gen"])
    save_partial()
    if rung.attention == "sdpa":
        row["capture"] = engine_rate(params, n, args.size, capture=True)
        row["capture_overhead"] = row["gen"]["img_s"] / row["capture"]["img_s"] - 1.0
        log(rung.name, "capture", row["capture"], f"overhead {row['capture_overhead']:.1%}")
        if bs == 16 and not rung.compile:
            # Prompt-to-prompt style: only the 32x32 and 16x16 layers (factors 2, 4).
            coarse = {**params, "capture_layers": [2, 4]}
            row["capture_coarse"] = engine_rate(coarse, n, args.size, capture=True)
            log(rung.name, "capture (32/16 px layers only)", row["capture_coarse"])
    save_partial()
    if not args.no_e2e and rung.attention == "eager":
        row["e2e_skipped"] = "eager attention cannot capture: diffusion-attention cannot label"
    elif not args.no_e2e:
        try:
            row["e2e"] = build_rate(params, n_e2e, args.size, tmp)
            log(rung.name, "e2e", row["e2e"])
        except Exception as exc:  # keep the other numbers if the build path breaks
            row["e2e_error"] = repr(exc)
            log(rung.name, "e2e failed", repr(exc))
    for key in ("gen", "capture", "capture_coarse", "e2e"):
        if key in row:
            row[key]["of_bound"] = row[key]["img_s"] / bound
    return row


def markdown(results: dict[str, Any]) -> str:
    b = results.get("flops", {}).get("bound_img_s", float("nan"))
    lines = [
        f"device: {results['device']}, {results['size']}x{results['size']}, "
        f"{results['steps']} steps, CFG; bound {b:.2f} img/s "
        f"at {results['peak_tflops']:.0f} TFLOP/s",
        "",
        "| rung | gen img/s | capture img/s | capture overhead | end-to-end img/s "
        "| e2e % of bound |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rungs"]:
        if "gen" not in r:
            lines.append(f"| {r['rung']} | failed: {r.get('error', '?')} | | | | |")
            continue
        cap = r.get("capture", {}).get("img_s")
        e2e = r.get("e2e", {}).get("img_s")
        over = r.get("capture_overhead")
        lines.append(
            f"| {r['rung']} | {r['gen']['img_s']:.2f} | "
            f"{'-' if cap is None else f'{cap:.2f}'} | "
            f"{'-' if over is None else f'{over:+.1%}'} | "
            f"{'-' if e2e is None else f'{e2e:.2f}'} | "
            f"{'-' if e2e is None else f'{e2e / b:.0%}'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
