"""Helpers shared by the kernel modules: launch settings picked by shape, and the description of a
kernel configuration that the compile-only test builds for sm_80 / sm_90 without a GPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

#: Largest block a kernel uses for one plane / pixel tile (elements, a power of two).
MAX_BLOCK = 4096


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def block_and_warps(n: int, max_block: int = MAX_BLOCK) -> tuple[int, int]:
    """Block size (power of two, at least 16, at most ``max_block``) covering ``n`` elements when it can,
    and a warp count for it. Chosen from the shape, never by autotuning (the interpreter cannot autotune)."""
    block = min(max(16, next_pow2(n)), max_block)
    warps = 1 if block <= 128 else 2 if block <= 256 else 4 if block <= 1024 else 8
    return block, warps


def on_device_of(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch kernels on ``x``'s GPU (Triton launches on the current CUDA device); a no-op for CPU tensors."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def triton_dtype(dtype: torch.dtype) -> str:
    """The pointer type string of ``dtype`` in a Triton signature (``"fp32"``, ``"fp64"``, ...)."""
    return {
        torch.float32: "fp32",
        torch.float64: "fp64",
        torch.float16: "fp16",
        torch.bfloat16: "bf16",
        torch.int32: "i32",
        torch.int64: "i64",
        torch.int8: "i8",
        torch.bool: "i1",
    }[dtype]


@dataclass
class KernelSpec:
    """One kernel configuration the dispatcher can launch: the ``@triton.jit`` function, its signature
    (argument name -> Triton type string, ``"constexpr"`` for compile-time constants), the constexpr
    values, and the warp count. ``triton.compile(ASTSource(fn, signature, constexprs),
    target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})`` must build it."""

    name: str
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
