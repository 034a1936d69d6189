"""Explicit, derived randomness.

Every random draw comes from a generator derived from (spec seed, sample index, stream name).
Nothing here reads or seeds a global RNG, so a sample's pixels and labels do not depend on batch
size, process count, or where a build was interrupted.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# Index used for dataset-level streams (e.g. the class plan), outside any sample's index.
GLOBAL_INDEX = -1


@functools.lru_cache(maxsize=4096)  # a few names, asked for once per sample and stage
def _stream_key(stream: str) -> int:
    # Stable across processes and Python versions (unlike hash()).
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "little")


def seed_sequence(seed: int, index: int, stream: str) -> np.random.SeedSequence:
    """The SeedSequence of (seed, index, stream); index GLOBAL_INDEX for dataset-level draws."""
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(index + 1, _stream_key(stream)))


def rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """A numpy Generator for one (seed, index, stream)."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, index, stream)))


def derive_seed(seed: int, index: int, stream: str) -> int:
    """A 63-bit integer seed for libraries that take ints (torch, albumentations)."""
    return int(
        seed_sequence(seed, index, stream).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


def torch_generator(seed: int, index: int, stream: str, device: Any = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded from (seed, index, stream)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, index, stream))
    return gen
