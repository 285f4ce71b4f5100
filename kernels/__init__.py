"""fastdd's op layer, installed as ``fastdd.kernels``: the hot-path operations that models and
augmentation call, each with a plain torch implementation and a Triton one computing the same function.

=====================  ==========================================  =================================
op                     what                                         Triton module
=====================  ==========================================  =================================
:func:`norm_act_pool`  the default ConvNet block after its conv:    :mod:`.convnet_block`
                       instance norm (affine) → ReLU → 2×2 avg
                       pool; forward, backward, double backward
:func:`apply_dsa`      DSA augmentation (all six families, per-     :mod:`.dsa`
                       sample parameters) in one launch; backward
                       (the transpose) and its backward
=====================  ==========================================  =================================

Torch-only ops (no Triton twin): :func:`cf_discrepancy` (:mod:`.cf_loss`), NCFM's characteristic-function
discrepancy between two feature sets at sampled frequencies.

The backend (``FASTDD_BACKEND`` or :func:`use_backend`): ``auto`` (default) runs Triton on CUDA
tensors and torch on CPU tensors; ``triton`` forces the kernels (CUDA, or CPU under
``TRITON_INTERPRET=1``); ``torch`` forces the torch ops. Convolutions always stay on cuDNN / oneDNN. The torch path of
:func:`norm_act_pool` has closed-form backward and double backward (:mod:`.convnet_block_torch`);
:func:`norm_act_pool_reference` is eager's composite, the reference of the tests.

Self-check (:mod:`._selfcheck`): the first time a Triton op would run on a device (per op, device, dtype) it is
compared with its torch twin on a small input (forward, backward, double backward); one that fails runs the torch
path there for the rest of the process, with one :class:`KernelCheckWarning` (backend ``triton`` forced: a
:class:`KernelCheckError`). ``FASTDD_KERNEL_CHECK=0`` skips it; :func:`kernel_report` says what each op used.

This folder sits at the top of the repository and is mapped onto the subpackage ``fastdd.kernels``
by ``pyproject.toml``; it never becomes a top-level ``kernels`` module. Triton is imported only when
a Triton path runs, so the package also imports where Triton is not installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import BACKENDS, current_backend, interpreting, resolve, triton_available, use_backend
from ._selfcheck import KernelCheckError, KernelCheckWarning, check_kernels, kernel_report
from ._selfcheck import reset as reset_kernel_checks
from .cf_loss import cf_discrepancy, characteristic_function
from .convnet_block_torch import norm_act_pool_closed
from .dsa_torch import apply_dsa_torch


def norm_act_pool_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """:func:`norm_act_pool` as eager's composite ``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``
    (what ``nn.GroupNorm`` → ``nn.ReLU`` → ``nn.AvgPool2d`` computes): the reference the other paths are
    tested against, and the way the research code computes the block."""
    return F.avg_pool2d(F.relu(F.group_norm(x, x.shape[1], weight, bias, eps=eps)), 2, 2)


#: The torch path of :func:`norm_act_pool`: the composite's forward ops (bitwise its output) with a
#: closed-form backward and double backward (:mod:`.convnet_block_torch`; 3.2× faster than eager's
#: composite for forward + create_graph backward + double backward on the CPU, docs/benchmarks.md).
norm_act_pool_torch = norm_act_pool_closed


def norm_act_pool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Instance norm with affine ``weight``/``bias`` ``(C,)``, ReLU and 2×2 average pool of ``x``
    ``(N, C, H, W)`` → ``(N, C, H // 2, W // 2)``: the default ConvNet block after its convolution.

    Statistics are over each full ``H × W`` plane (biased variance, ``eps`` added); the pool drops an
    odd last row / column. Differentiable twice (``create_graph=True`` and the engine's adjoint run the
    fused double-backward kernel on the Triton path).
    """
    if resolve(x, "norm_act_pool") == "torch":
        return norm_act_pool_torch(x, weight, bias, eps)
    from .convnet_block import norm_act_pool_triton

    return norm_act_pool_triton(x, weight, bias, eps)


def apply_dsa(x: torch.Tensor, params) -> torch.Tensor:
    """DSA augmentation with sampled parameters (``params``: ``n``, ``family``, ``tensors``, e.g. a
    :class:`fastdd.augment.DSAParams`; the contract of :func:`fastdd.augment.apply_dsa`, which calls this op):
    one fused Triton launch on CUDA tensors, the torch twin :func:`apply_dsa_torch` on CPU tensors."""
    if resolve(x, "apply_dsa") == "torch":
        return apply_dsa_torch(x, params)
    from .dsa import apply_dsa_triton

    return apply_dsa_triton(x, params)


__all__ = [
    "BACKENDS",
    "current_backend",
    "interpreting",
    "resolve",
    "triton_available",
    "use_backend",
    "kernel_report",
    "check_kernels",
    "reset_kernel_checks",
    "KernelCheckWarning",
    "KernelCheckError",
    "norm_act_pool",
    "norm_act_pool_torch",
    "norm_act_pool_reference",
    "norm_act_pool_closed",
    "apply_dsa",
    "apply_dsa_torch",
    "cf_discrepancy",
    "characteristic_function",
]
