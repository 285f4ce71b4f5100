"""Explicit random streams. Every random draw in fastdd comes from a ``torch.Generator`` built here
from a user-given seed (never the clock, never the global RNG)."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and any labels (e.g. ``"expert", 3``), stable across runs."""
    h = hashlib.blake2b(repr((int(seed),) + keys).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``derive_seed(seed, *keys)``: one independent stream per purpose."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))
