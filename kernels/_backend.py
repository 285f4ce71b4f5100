"""Backend selection for fastdd's op layer: which implementation (plain torch or Triton) an op runs.

``auto`` (the default) runs Triton kernels on CUDA tensors and the torch implementation on CPU
tensors. ``triton`` forces the kernels: on CUDA tensors, or on CPU tensors when the Triton
interpreter is on (``TRITON_INTERPRET=1``, how the kernels are tested without a GPU); anywhere else
it is an error. ``torch`` forces the torch implementation everywhere. The choice is read from
``FASTDD_BACKEND`` at import (an unknown value is an error then) and changed with
:func:`use_backend`.

Where Triton is picked, the op's kernel is first checked against its torch twin, once per (op, device,
dtype) (:mod:`._selfcheck`): a kernel that fails runs the torch path instead (backend ``auto``, with one
:class:`~._selfcheck.KernelCheckWarning`) or raises (backend ``triton``).
"""

from __future__ import annotations

import os

import torch

from . import _selfcheck

BACKENDS = ("auto", "torch", "triton")


def _validated(name: str, what: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{what}={name!r} is not a fastdd backend; choose one of: {', '.join(BACKENDS)}")
    return name


_state: dict[str, str | None] = {"backend": None}  # None: not chosen yet, FASTDD_BACKEND decides on first use


def _selected() -> str:
    """The backend in force: one set by :class:`use_backend`, else ``FASTDD_BACKEND`` (checked on first use,
    not at import, so that a bad value is an error of the command that uses it, not of ``import fastdd``)."""
    backend = _state["backend"]
    if backend is None:
        backend = _validated(os.environ.get("FASTDD_BACKEND", "auto").strip().lower() or "auto", "FASTDD_BACKEND")
        _state["backend"] = backend
    return backend


def triton_available() -> bool:
    """True when Triton can be imported (kernels also need a CUDA device, or ``TRITON_INTERPRET=1``)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def current_backend() -> str:
    """The selected backend: ``"auto"``, ``"torch"`` or ``"triton"``."""
    return _selected()


def _auto_uses_triton(x: torch.Tensor) -> bool:
    """Backend ``auto``: Triton for CUDA tensors (where Triton is installed), torch for the rest."""
    return x.is_cuda and triton_available()


def resolve(x: torch.Tensor, op: str = "op") -> str:
    """The implementation ``op`` runs on tensor ``x``: ``"torch"`` or ``"triton"``. Where it would be Triton, the
    op's self-check decides (run on the first such call per device and dtype; :mod:`._selfcheck`)."""
    b = _selected()
    if b == "torch":
        return "torch"
    if b == "auto":
        return _selfcheck.gate(x, op, forced=False) if _auto_uses_triton(x) else "torch"
    if not triton_available():
        raise RuntimeError(f"backend 'triton' was selected for {op}, but Triton is not installed")
    if x.is_cuda or (x.device.type == "cpu" and interpreting()):
        return _selfcheck.gate(x, op, forced=True)
    raise RuntimeError(
        f"backend 'triton' was selected for {op} on a {x.device.type} tensor: Triton kernels run on "
        "CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (its interpreter, for tests); "
        "use backend 'auto' or 'torch' here"
    )


class use_backend:
    """Select the backend: ``use_backend("triton")`` sets it for the process; ``with use_backend("torch"):``
    sets it inside the block and restores the previous one after."""

    def __init__(self, name: str):
        new = _validated(str(name).strip().lower(), "backend")
        self._old = _state["backend"]
        _state["backend"] = new

    def __enter__(self) -> use_backend:
        return self

    def __exit__(self, *exc) -> None:
        _state["backend"] = self._old
