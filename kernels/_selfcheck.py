"""Kernels that check themselves: the first time a Triton op would run on a device, per (op, device, dtype),
it is compared with its torch twin on a small random input before it is trusted.

What is checked (a few milliseconds on a GPU, about a second in Triton's CPU interpreter):

* ``norm_act_pool``: forward, backward (the grads of x, weight and bias) and double backward (the grads of
  ``<hx, gx> + <hw, gw> + <hb, gb>`` w.r.t. x, weight and the upstream gradient) on ``(2, 3, 5, 7)``, against
  the torch twin :func:`~fastdd.kernels.norm_act_pool_torch` in float64; error ``max |Δ| / max |ref|`` per tensor
  (the bias's second-order gradient is zero both ways and not compared);
* ``apply_dsa``: forward, backward (the transpose) and the backward's backward on ``(6, 2, 7, 6)`` with
  per-sample parameters whose six samples carry the six families, against the torch twin
  :func:`~fastdd.kernels.apply_dsa_torch` in the same dtype; error ``max |Δ|``.

The tolerances (:data:`TOLERANCES`) are those of the kernels' own tests (``tests/test_kernel_norm_act_pool.py``,
``tests/test_kernel_dsa.py``). On a mismatch, or when compiling or launching raises, the op runs its torch path
on that device and dtype for the rest of the process, with one :class:`KernelCheckWarning` naming the op, the
device, the Triton version and the error. With backend ``triton`` forced (``FASTDD_BACKEND=triton`` or
``use_backend("triton")``) a failed check is a :class:`KernelCheckError` instead. ``FASTDD_KERNEL_CHECK=0``
skips the check. :func:`kernel_report` says, per op, which backend it took and the check's outcome; every
distillation records it in its metadata (``syn.meta["kernels"]``).

The check runs only where :func:`~fastdd.kernels.resolve` picks Triton: on the torch path (CPU tensors with
backend ``auto``, or backend ``torch``) nothing here runs, and results stay bitwise what they were.
This module imports only torch and the op layer (Triton through the kernel modules, when a check runs).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: The environment variable that turns the check off (``0``, ``false``, ``no``, ``off``).
CHECK_ENV = "FASTDD_KERNEL_CHECK"

#: The one table of tolerances: op -> dtype -> largest error accepted (the kernels' tests use the same).
TOLERANCES: dict[str, dict[torch.dtype, float]] = {
    "norm_act_pool": {torch.float64: 1e-10, torch.float32: 1e-5},
    "apply_dsa": {torch.float64: 1e-10, torch.float32: 1e-5},
}
#: How each op's error is measured against its twin (per output tensor, the worst one counts).
ERROR_MEASURE: dict[str, str] = {
    "norm_act_pool": "max |Δ| / max |ref|, reference in float64",
    "apply_dsa": "max |Δ|, reference in the same dtype",
}


class KernelCheckWarning(RuntimeWarning):
    """A Triton kernel failed its self-check: the op runs its torch path on that device from now on."""


class KernelCheckError(RuntimeError):
    """A Triton kernel failed its self-check while backend ``triton`` was forced (no fallback then)."""


@dataclass
class CheckResult:
    """The outcome for one (op, device, dtype): ``ok`` (Triton may run), ``check`` (``"passed"``,
    ``"failed: ..."`` or ``"skipped: ..."``), the worst error and the tolerance where they were measured."""

    op: str
    device: str
    dtype: str
    ok: bool
    check: str
    max_error: float | None = None
    tolerance: float | None = None
    warned: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "backend": "triton" if self.ok else "torch",
            "check": self.check,
            "max_error": self.max_error,
            "tolerance": self.tolerance,
        }


_results: dict[tuple[str, torch.device, torch.dtype], CheckResult] = {}
_lock = threading.RLock()


def enabled() -> bool:
    """False when ``FASTDD_KERNEL_CHECK`` is ``0`` / ``false`` / ``no`` / ``off`` (read each time a check would run)."""
    return os.environ.get(CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def triton_version() -> str | None:
    """The installed Triton's version (read from its metadata: Triton is not imported), or ``None``."""
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # not installed (or installed without metadata)
        import sys

        mod = sys.modules.get("triton")
        return getattr(mod, "__version__", None) if mod is not None else None


def reset() -> None:
    """Forget every check result (tests; a later call checks again)."""
    with _lock:
        _results.clear()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _message(r: CheckResult) -> str:
    return (
        f"the Triton kernel of {r.op} failed its self-check on {r.device} ({r.dtype}, Triton "
        f"{triton_version() or 'not installed'}): {r.check.removeprefix('failed: ')}"
    )


def gate(x: torch.Tensor, op: str, forced: bool) -> str:
    """Called by :func:`~fastdd.kernels.resolve` where it picked Triton for ``op`` on ``x``: ``"triton"`` when the
    op's kernel passed (or skipped) its check on x's device and dtype (checked now on the first call), else
    ``"torch"`` with one :class:`KernelCheckWarning` for the process, or a :class:`KernelCheckError` when
    ``forced``. Ops without a twin here and dtypes the kernels do not take pass through unchecked."""
    tols = TOLERANCES.get(op)
    if tols is None or x.dtype not in tols:
        return "triton"
    key = (op, x.device, x.dtype)
    r = _results.get(key)
    if r is None:
        with _lock:
            r = _results.get(key)
            if r is None:
                r = _results[key] = _check(op, x.device, x.dtype)
    if r.ok:
        return "triton"
    if forced:
        raise KernelCheckError(
            _message(r) + "; backend 'triton' is forced, so this is an error (backend 'auto' falls back to torch, "
            f"{CHECK_ENV}=0 skips the check)"
        )
    if not r.warned:
        r.warned = True
        warnings.warn(
            _message(r) + f"; {op} runs its torch path on {r.device} ({r.dtype}) for the rest of this process",
            KernelCheckWarning,
            stacklevel=4,  # gate <- resolve <- the op <- its caller
        )
    return "torch"


def check_kernels(
    device: torch.device | str, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
) -> dict[str, list[dict[str, Any]]]:
    """Run the check of every op on ``device`` for ``dtypes`` now (also under ``FASTDD_KERNEL_CHECK=0``), record
    the results as the first calls would (a failure makes the op fall back there), and return them as
    :func:`kernel_report` entries, ``{op: [entry per dtype]}``. ``fastdd env`` and ``bench/gpu_check.py`` call it
    on each CUDA device; on a CPU it needs ``TRITON_INTERPRET=1``."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    out: dict[str, list[dict[str, Any]]] = {}
    with _lock:
        for op in TOLERANCES:
            for dt in dtypes:
                old = _results.get((op, dev, dt))
                r = _results[(op, dev, dt)] = _check(op, dev, dt, force=True)
                r.warned = old is not None and old.warned and not r.ok  # still one warning per process
                out.setdefault(op, []).append(r.as_dict())
    return out


def kernel_report() -> dict[str, Any]:
    """What the op layer did in this process, JSON-able: the backend selected, whether the self-check is on, the
    Triton version, and per op a list of entries, one per (device, dtype) where its Triton path was asked for:
    ``backend`` (``"triton"``, or ``"torch"`` after a failed check), ``check`` (``"passed"``, ``"failed: ..."``,
    ``"skipped: ..."``), ``max_error`` and ``tolerance``. An op whose Triton path was never asked for has one
    entry ``{"device": None, "dtype": None, "backend": "torch", "check": "not run"}`` (it ran its torch twin,
    or did not run)."""
    from ._backend import current_backend

    try:
        backend = current_backend()
    except ValueError as e:  # a bad FASTDD_BACKEND: the report still says what there is
        backend = f"invalid: {e}"
    ops: dict[str, list[dict[str, Any]]] = {}
    with _lock:
        for op in TOLERANCES:
            rows = [r.as_dict() for (name, _, _), r in _results.items() if name == op]
            ops[op] = rows or [
                {
                    "device": None,
                    "dtype": None,
                    "backend": "torch",
                    "check": "not run",
                    "max_error": None,
                    "tolerance": None,
                }
            ]
    return {
        "backend": backend,
        "self_check": "on" if enabled() else f"off ({CHECK_ENV}=0)",
        "triton": triton_version(),
        "ops": ops,
    }


# --------------------------------------------------------------------------------------------------
# the check itself
# --------------------------------------------------------------------------------------------------


def _check(op: str, device: torch.device, dtype: torch.dtype, force: bool = False) -> CheckResult:
    name = _dtype_name(dtype)
    tol = TOLERANCES[op][dtype]
    if not force and not enabled():
        return CheckResult(op, str(device), name, True, f"skipped: {CHECK_ENV}=0")
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return CheckResult(op, str(device), name, True, "skipped: first call inside a CUDA graph capture")
    try:
        with _quiet_state(device):
            errors = _CHECKS[op](device, dtype)
    except Exception as e:  # a compile or launch error of the kernel (or a wrong shape, dtype, ...)
        text = " ".join(str(e).split())
        text = text if len(text) <= 300 else text[:297] + "..."
        return CheckResult(op, str(device), name, False, f"failed: {type(e).__name__}: {text}", None, tol)
    for phase, err in errors.items():  # in order: forward, backward, double backward
        if not err <= tol:  # NaN fails too
            return CheckResult(
                op,
                str(device),
                name,
                False,
                f"failed: {phase}: max error {err:.3g} > tolerance {tol:g} ({ERROR_MEASURE[op]})",
                err if math.isfinite(err) else None,
                tol,
            )
    return CheckResult(op, str(device), name, True, "passed", max(errors.values()), tol)


@contextlib.contextmanager
def _quiet_state(device: torch.device) -> Iterator[None]:
    """Gradients on (even inside ``no_grad`` / ``inference_mode``), no autocast, deterministic algorithms off
    (the torch twin's ``grid_sample`` backward has no deterministic CUDA version), warnings of the torch
    reference silenced, and ``device`` current; every setting restored afterwards."""
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    on_dev = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        if det:
            torch.use_deterministic_algorithms(False)
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device.type, enabled=False),
            on_dev,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        if det:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)


def _max_rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float(((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item())


def _max_abs(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double() - ref.detach().double()).abs().max().item())


def _check_norm_act_pool(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    from . import convnet_block, norm_act_pool_torch  # looked up on the module: what the op runs

    g = torch.Generator().manual_seed(0)
    n, c, h, w = 2, 3, 5, 7  # not block multiples; the odd last row and column the pool drops
    f64 = torch.float64
    base = {
        "x": torch.randn(n, c, h, w, generator=g, dtype=f64) * 2 + 0.5,
        "w": torch.randn(c, generator=g, dtype=f64),
        "b": torch.randn(c, generator=g, dtype=f64) * 0.5,
        "gy": torch.randn(n, c, h // 2, w // 2, generator=g, dtype=f64),
        "hx": torch.randn(n, c, h, w, generator=g, dtype=f64),
        "hw": torch.randn(c, generator=g, dtype=f64),
        "hb": torch.randn(c, generator=g, dtype=f64),
    }

    def orders(fn: Callable, dt: torch.dtype) -> list[list[torch.Tensor]]:
        t = {k: v.to(device, dt) for k, v in base.items()}
        x, wt, b, gy = (t[k].clone().requires_grad_(True) for k in ("x", "w", "b", "gy"))
        y = fn(x, wt, b, 1e-5)
        gx, gw, gb = torch.autograd.grad(y, (x, wt, b), gy, create_graph=True)
        s = (gx * t["hx"]).sum() + (gw * t["hw"]).sum() + (gb * t["hb"]).sum()
        ddx, ddw, ddgy = torch.autograd.grad(s, (x, wt, gy))
        return [[y], [gx, gw, gb], [ddx, ddw, ddgy]]

    ref = orders(norm_act_pool_torch, f64)
    out = orders(convnet_block.norm_act_pool_triton, dtype)
    return {
        phase: max(_max_rel(a, r) for a, r in zip(o, rr))
        for phase, o, rr in zip(("forward", "backward", "double backward"), out, ref)
    }


@dataclass
class _DSAParams:
    """The op's parameter contract (``n``, ``family``, ``families``, ``tensors``, ``active_families()``), as
    :class:`fastdd.augment.DSAParams` has it (the op layer does not import fastdd.augment)."""

    family: str
    tensors: dict[str, torch.Tensor]
    families: tuple[str, ...]

    @property
    def n(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def active_families(self) -> tuple[str, ...]:
        return self.families


def _dsa_params(n: int, h: int, w: int, device: torch.device, g: torch.Generator) -> _DSAParams:
    """Per-sample parameters for ``n = 6`` samples, one of each family (in a shuffled order), in DSA's ranges."""
    from .dsa_torch import FAMILIES, PER_SAMPLE

    f64, i64 = torch.float64, torch.int64
    t = {
        "brightness": torch.rand(n, generator=g, dtype=f64) - 0.5,
        "saturation": torch.rand(n, generator=g, dtype=f64) * 2,
        "contrast": torch.rand(n, generator=g, dtype=f64) + 0.5,
        "shift": torch.randint(-2, 3, (n, 2), generator=g, dtype=i64),
        "cutout_centre": torch.stack(
            [torch.randint(0, h, (n,), generator=g, dtype=i64), torch.randint(0, w, (n,), generator=g, dtype=i64)], 1
        ),
        "cutout_size": torch.tensor([[h // 2, w // 2]] * n, dtype=i64),
        "flip": torch.rand(n, generator=g) < 0.5,
        "scale": torch.rand(n, 2, generator=g, dtype=f64) * 0.4 + 0.8,
        "angle": (torch.rand(n, generator=g, dtype=f64) - 0.5) * 2 * math.radians(15),
        "family_index": torch.tensor([3, 0, 5, 1, 4, 2], dtype=i64)[:n],
    }
    return _DSAParams(PER_SAMPLE, {k: v.to(device) for k, v in t.items()}, tuple(FAMILIES))


def _check_apply_dsa(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    from . import apply_dsa_torch, dsa  # looked up on the module: what the op runs

    g = torch.Generator().manual_seed(0)
    shape = (6, 2, 7, 6)
    p = _dsa_params(shape[0], shape[2], shape[3], device, g)
    x, gy, v = (torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype) for _ in range(3))

    def orders(fn: Callable) -> list[torch.Tensor]:
        xx, gg = x.clone().requires_grad_(True), gy.clone().requires_grad_(True)
        y = fn(xx, p)
        (gx,) = torch.autograd.grad(y, xx, gg, create_graph=True)  # Aᵀ gy
        (ggy,) = torch.autograd.grad((gx * v).sum(), gg)  # A v
        return [y, gx, ggy]

    ref, out = orders(apply_dsa_torch), orders(dsa.apply_dsa_triton)
    return {phase: _max_abs(a, r) for phase, a, r in zip(("forward", "backward", "double backward"), out, ref)}


_CHECKS: dict[str, Callable[[torch.device, torch.dtype], dict[str, float]]] = {
    "norm_act_pool": _check_norm_act_pool,
    "apply_dsa": _check_apply_dsa,
}

__all__ = [
    "CHECK_ENV",
    "TOLERANCES",
    "ERROR_MEASURE",
    "KernelCheckWarning",
    "KernelCheckError",
    "CheckResult",
    "check_kernels",
    "kernel_report",
    "enabled",
    "reset",
    "gate",
    "triton_version",
]
