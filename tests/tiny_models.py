"""Tiny random models built from configs and saved to a temp dir (no downloads).

Shapes follow diffusers' own `get_dummy_components`: a UNet2DConditionModel with
`block_out_channels=(32, 64)`, a two-level AutoencoderKL (pixel/latent factor 2), a CLIPTextModel
with `hidden_size=32` and a CLIPTokenizer built from a small byte-level vocab + merges. The saved
directories load through the real code paths (`from_pretrained(path, use_safetensors=True)`).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Words the test prompts use: merged to single tokens so prompts stay far below 77 tokens.
DEFAULT_WORDS = (
    "a",
    "an",
    "the",
    "photo",
    "of",
    "single",
    "isolated",
    "on",
    "plain",
    "white",
    "background",
    "and",
    "with",
    "two",
    "three",
    "four",
    "five",
    "in",
    "at",
    "street",
    "empty",
    "scene",
    "red",
    "blue",
    "green",
    "cat",
    "cats",
    "dog",
    "dogs",
    "bicycle",
    "bicycles",
    "car",
    "cars",
    "fire",
    "truck",
    "trucks",
    "front",
    "side",
    "view",
    "rainy",
    "sunny",
    "night",
    "day",
    "noon",
    "blurry",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode char table (the byte-level BPE alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_clip_tokenizer(
    out_dir: Path, words: Iterable[str] = DEFAULT_WORDS, model_max_length: int = 77
) -> Path:
    """Write vocab.json + merges.txt and save a CLIPTokenizer to `out_dir`; vocab size < 1000."""
    from transformers import CLIPTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for piece in ["<|startoftext|>", "<|endoftext|>", *alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(piece, len(vocab))
    merges: list[str] = []
    for word in words:
        symbols = [*word[:-1], word[-1] + "</w>"]
        cur = symbols[0]
        for nxt in symbols[1:]:
            line = f"{cur} {nxt}"
            if line not in merges:
                merges.append(line)
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    src = out_dir / "_src"
    src.mkdir(exist_ok=True)
    (src / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok: Any = CLIPTokenizer(
        vocab=str(src / "vocab.json"),
        merges=str(src / "merges.txt"),
        model_max_length=model_max_length,
    )
    tok.save_pretrained(out_dir)
    return out_dir


def _text_encoder(seed: int = 0):  # type: ignore[no-untyped-def]
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)  # inside the callers' fork_rng: random init needs the global RNG
    cfg = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        max_position_embeddings=77,
    )
    return CLIPTextModel(cfg).eval()


def _tiny_vae():  # type: ignore[no-untyped-def]
    """A two-level AutoencoderKL (pixel/latent factor 2) for 32 px images."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def assemble_sd_pipeline(
    unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, *, gated: bool = False
) -> Any:
    """A Stable Diffusion (or GLIGEN, if `gated`) pipeline of these components with SD's DDIM
    schedule and no safety checker (shared by the tiny test models and the SD 1.5 benchmark)."""
    from diffusers import DDIMScheduler, StableDiffusionGLIGENPipeline, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    cls: Any = StableDiffusionGLIGENPipeline if gated else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd_pipeline(out_dir: Path, *, gated: bool = False, seed: int = 0) -> Path:
    """A tiny Stable-Diffusion-layout pipeline (GLIGEN's gated UNet if `gated`) saved to `out_dir`.

    Pixel size must be a multiple of 4 (VAE factor 2 x one UNet downsample); 32 px -> 16x16 latent.
    """
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
        attention_type="gated" if gated else "default",
    )
    vae = _tiny_vae()
    tok_dir = build_clip_tokenizer(out_dir / "_tokenizer")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    pipe = assemble_sd_pipeline(unet, vae, _text_encoder(seed), tokenizer, gated=gated)
    model_dir = out_dir / ("gligen" if gated else "sd")
    pipe.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


def build_sdxl_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Stable Diffusion XL pipeline (two text encoders, text-time conditioning), after
    diffusers' own SDXL `get_dummy_components`, saved to `out_dir`; 32 px -> 16x16 latent."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the pooled text (32)
        cross_attention_dim=64,  # both text encoders' hidden states side by side
        norm_num_groups=1,
    )
    vae = _tiny_vae()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    text_encoder = _text_encoder(seed)
    cfg = text_encoder.config.to_dict()
    cfg["projection_dim"] = 32
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(build_clip_tokenizer(out_dir / "_tokenizer"))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    model_dir = out_dir / "sdxl"
    pipe.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


def _tiny_clip_towers(max_positions: int) -> dict[str, Any]:
    """Text + vision tower configs shared by the tiny OWLv2 and CLIP models (32 px images)."""
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2}
    return {
        "text_config": {
            "vocab_size": 1000,
            **tower,
            "num_attention_heads": 4,
            "max_position_embeddings": max_positions,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        "vision_config": {**tower, "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        "projection_dim": 32,
    }


def build_owlv2(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random OWLv2 detector + processor (32 px images, 16-token queries)."""
    import torch
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    torch.manual_seed(seed)
    cfg = Owlv2Config(
        **_tiny_clip_towers(max_positions=16),
    )
    model = Owlv2ForObjectDetection(cfg).eval()
    tok = CLIPTokenizer.from_pretrained(
        build_clip_tokenizer(out_dir / "_tok16", model_max_length=16)
    )
    proc = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    )
    model_dir = out_dir / "owlv2"
    model.save_pretrained(model_dir, safe_serialization=True)
    proc.save_pretrained(model_dir)
    return model_dir


def build_clip(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel + processor for the CLIP-score filter."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        **_tiny_clip_towers(max_positions=77),
    )
    model = CLIPModel(cfg).eval()
    tok = CLIPTokenizer.from_pretrained(build_clip_tokenizer(out_dir / "_tokclip"))
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
    )
    model_dir = out_dir / "clip"
    model.save_pretrained(model_dir, safe_serialization=True)
    proc.save_pretrained(model_dir)
    return model_dir


# ---------------------------------------------------------------------------------------------
# Built once per test process, in a temp dir removed at exit (never the working directory).
# ---------------------------------------------------------------------------------------------


@functools.cache
def _root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="synthvision-tiny-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def _isolated(build, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a builder without touching the caller's global torch RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return build(*args, **kwargs)


@functools.cache
def sd_model() -> str:
    return str(_isolated(build_sd_pipeline, _root() / "sd"))


@functools.cache
def gligen_model() -> str:
    return str(_isolated(build_sd_pipeline, _root() / "gligen", gated=True))


@functools.cache
def sdxl_model() -> str:
    return str(_isolated(build_sdxl_pipeline, _root() / "sdxl"))


@functools.cache
def owlv2_model() -> str:
    return str(_isolated(build_owlv2, _root() / "owl"))


@functools.cache
def clip_model() -> str:
    return str(_isolated(build_clip, _root() / "clip"))
