"""Triton kernels for fastdd's hot paths, installed as ``fastdd.kernels``.

This folder sits at the top of the repository and is mapped onto the subpackage ``fastdd.kernels``
by ``pyproject.toml``; it never becomes a top-level ``kernels`` module. Fused kernels (the DSA
families; the ConvNet block's norm + activation + pool with its double backward) are planned; until
they land every operation runs its plain torch implementation, and ``use_backend("triton")`` says so.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

BACKENDS = ("torch", "triton")
_state = {"backend": os.environ.get("FASTDD_BACKEND", "auto")}


def triton_available() -> bool:
    """True when Triton can be imported (kernels need a CUDA device, or TRITON_INTERPRET=1 on CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def current_backend() -> str:
    """``"torch"`` or ``"triton"``: the backend operations dispatch to (``auto`` = torch until kernels land)."""
    b = _state["backend"]
    if b not in ("auto",) + BACKENDS:
        raise ValueError(f"FASTDD_BACKEND={b!r}: choose one of auto, {', '.join(BACKENDS)}")
    if b == "triton":
        raise NotImplementedError("FASTDD_BACKEND=triton: fastdd's Triton kernels have not landed yet")
    return "torch" if b == "auto" else b


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select the backend inside a ``with`` block. ``"triton"`` raises until the kernels exist."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "triton":
        raise NotImplementedError("fastdd's Triton kernels have not landed yet: every operation runs on torch")
    old = _state["backend"]
    _state["backend"] = name
    try:
        yield
    finally:
        _state["backend"] = old
