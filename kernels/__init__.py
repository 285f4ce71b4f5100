"""Triton kernels for fastdd's hot paths, installed as ``fastdd.kernels``.

This folder sits at the top of the repository and is mapped onto the subpackage ``fastdd.kernels``
by ``pyproject.toml``; it never becomes a top-level ``kernels`` module. The kernels themselves (DSA
families, the ConvNet block's norm + activation + pool with its double backward) arrive with the
distillation engine; until then fastdd runs its plain torch paths everywhere.
"""
from __future__ import annotations


def triton_available() -> bool:
    """True when Triton can be imported (kernels need a CUDA device, or TRITON_INTERPRET=1 on CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
