"""Which torch device a model goes on.

`device: auto` means this process's pinned device when a (distributed) build set one in
`SYNTHVISION_DEVICE` (cuda:<local rank>, or cpu), else cuda when available, else cpu. torch is
imported only when called.
"""

from __future__ import annotations

import os

from synthvision.errors import SpecError

DEVICE_ENV = "SYNTHVISION_DEVICE"


def resolve_device(device: str, key_path: str = "device") -> str:
    """`auto` | `cpu` | `cuda[:N]` | `mps` -> a concrete device string; SpecError if unusable."""
    import torch

    if device == "auto":
        pinned = os.environ.get(DEVICE_ENV)
        if pinned:
            return pinned
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"{key_path}: {device!r} asked for, but CUDA is not available")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise SpecError(f"{key_path}: expected auto, cpu, cuda[:N] or mps, got {device!r}")
    return device


def model_device(device: str, key_path: str = "device") -> str:
    """`resolve_device` for a model about to load: a `SYNTHVISION_DEVICE` that `auto` picked up
    and this machine cannot use (e.g. cuda without CUDA) is a SpecError naming the variable,
    instead of a driver error from inside torch."""
    resolved = resolve_device(device, key_path)
    if device == "auto" and os.environ.get(DEVICE_ENV) == resolved and resolved != "auto":
        resolve_device(resolved, f"{DEVICE_ENV}={resolved} (for {key_path}: auto)")
    return resolved
