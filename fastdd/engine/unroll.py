"""The engine: unrolled student training and its meta-gradient.

Student (one step per entry of ``batches``)::

    θ_{i+1} = θ_i − η_i · ∇_θ ℓ(f(aug_i(X[b_i]); θ_i), y[b_i]),   i = 0 .. N−1

and an outer loss ``L(θ_N)`` (trajectory matching, or Wang et al.'s loss on real data). We need
∂L/∂X, ∂L/∂η_i (and ∂L/∂y for learnable soft labels). Gradient modes:

``bptt``
    autograd through the whole unroll (``create_graph=True`` at every step): memory grows with N.
``adjoint``
    exact reverse mode with recomputation. The forward keeps only θ_i (no graph); the backward walks
    i = N−1 .. 0 carrying the adjoint λ = ∂L/∂θ_{i+1}, recomputes step i with a graph, and one
    double-backward of ``g_iᵀλ`` gives ∂L/∂X[b_i] += −η_i ∂(g_iᵀλ)/∂X, ∂L/∂η_i = −g_iᵀλ and the
    Hessian-vector product for λ ← λ − η_i H_i λ. Activation memory of one step, independent of N.
``tesla``
    the direct-term approximation (TESLA): the same backward walk with λ frozen at ∂L/∂θ_N, i.e.
    no Hessian terms. Exact for the last step, approximate for earlier ones.
``truncated``
    truncated back-propagation through the last ``window`` = W steps: θ_0 → θ_{N−W} without a graph
    (θ_{N−W} is then a constant), and the exact adjoint over steps N−W .. N−1 only. The gradient of
    L(θ_N) as a function of the last W steps' images, labels and rates; images used only before and the
    first N−W rates get zero. ``window >= N`` is ``adjoint`` (bitwise). Activation memory of one step.
``auto``
    ``bptt`` when its predicted graph memory fits ``memory_budget`` bytes (default
    :data:`DEFAULT_MEMORY_BUDGET`, a constant: never the machine's free memory), else ``adjoint``.
    The distillation runs resolve it once per run with :func:`choose_mode` and record the result.

Data parallelism (:class:`StepReduce`, for a synthetic set split over processes by
:mod:`fastdd.distributed`): each process holds some rows of X and, per step, the part of the step's
batch among them; it computes its part's share of the step gradient, ``(|part| / |batch|)·∇ mean ℓ``,
and one all-reduce of P floats gives every process the same θ_{i+1}. The adjoint walk recomputes its
part's share and all-reduces ``[H_i λ, g_iᵀλ]`` (P + 1 floats), so λ and ∂L/∂η stay the same on every
process while each keeps the gradients of its own rows. ``bptt`` is refused there.

Augmentation is a callable ``(x, step) -> x`` that must be deterministic per step (sample once,
replay): the adjoint recomputes step i and must see the same augmentation.

No host synchronisation happens inside the unroll (no ``.item()``, ``float()``, ``bool()`` on device
tensors, no per-step host→device copies): batches, augmentation parameters and start parameters
should already be on the device (:func:`to_device_once` moves many small host tensors with one copy).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import FunctionalNet

MODES = ("bptt", "adjoint", "tesla", "truncated", "auto")
Augment = Callable[[torch.Tensor, int], torch.Tensor]
#: What ``mode="auto"`` may spend on a BPTT graph when no ``memory_budget`` is given: 4 GiB.
DEFAULT_MEMORY_BUDGET = 4 << 30


@dataclass
class UnrollGrads:
    """What one unroll returns. Gradients are ``None`` for inputs that do not require them."""

    loss: torch.Tensor  # 0-d, detached
    images: torch.Tensor | None  # (M, C, H, W)
    lrs: torch.Tensor | None  # (N,) ∂L/∂η_i per step
    labels: torch.Tensor | None  # (M, K) for soft labels
    theta_final: torch.Tensor  # (P,) detached θ_N
    mode: str  # the mode actually used ("auto" resolved)
    theta_storage: str | None = None  # adjoint / tesla / truncated: the θ_i storage ("auto" resolved); bptt: None


@dataclass
class StepReduce:
    """This process's share of every step's batch, for a set split over processes.

    ``weights[i]`` is ``|this process's part of batch i| / |batch i|`` (0 when it holds none of it);
    ``all_reduce(t)`` sums ``t`` over the processes in place and returns it
    (:func:`fastdd.distributed.all_reduce_`)."""

    weights: Sequence[float]
    all_reduce: Callable[[torch.Tensor], torch.Tensor]

    def reduce_vjp(
        self, gl: torch.Tensor, hvp: torch.Tensor | None, lam: torch.Tensor, exact: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One all-reduce of ``[H_iλ, g_iᵀλ]`` (``tesla``, not ``exact``: of ``g_iᵀλ`` only), so that λ and
        ∂L/∂α are the same on every process; returns the summed ``(g_iᵀλ, H_iλ)``."""
        hv = hvp if hvp is not None else lam.new_zeros(lam.shape)
        both = self.all_reduce(
            torch.cat([hv.detach().reshape(-1), gl.detach().reshape(1)]) if exact else gl.detach().reshape(1).clone()
        )
        return both[-1], both[:-1].view_as(lam) if exact else hvp


def student_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; ``targets`` are class indices ``(B,)`` or target probabilities ``(B, K)``."""
    if targets.dim() == 2:
        return -(targets * F.log_softmax(logits, 1)).sum(1).mean()
    return F.cross_entropy(logits, targets)


def _step_grad(
    model: FunctionalNet,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    create_graph: bool,
    weight: float | None = None,
) -> torch.Tensor:
    """∇_θ of the step's mean loss; ``weight`` scales the loss (a process's share of a split batch)."""
    loss = student_loss(model(x, theta), y)
    if weight is not None:
        loss = loss * weight
    return torch.autograd.grad(loss, theta, create_graph=create_graph)[0]


def _check(model, images, labels, lrs, theta0, batches):
    if images.dim() != 4:
        raise ValueError(f"images must be (M, C, H, W), got {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows, images {images.shape[0]}")
    if lrs.dim() != 1 or lrs.shape[0] != len(batches):
        raise ValueError(f"need one learning rate per step: lrs has shape {tuple(lrs.shape)}, {len(batches)} batches")
    if theta0.shape != (model.num_params,):
        raise ValueError(f"start parameters have shape {tuple(theta0.shape)}, the model needs ({model.num_params},)")
    if len(batches) == 0:
        raise ValueError("batches is empty: at least one unrolled step is needed")


def check_mode(mode: str) -> None:
    """``ValueError`` unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"unknown gradient mode {mode!r}; choose one of: {', '.join(MODES)}")


def check_window(mode: str, window: int | None) -> None:
    """``ValueError`` naming ``window`` unless it is ``None`` or an int >= 1, given exactly when ``mode`` is
    ``"truncated"``."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an int >= 1 (the number of last steps differentiated), got {window!r}")
    if mode == "truncated" and window is None:
        raise ValueError("mode='truncated' needs window=W, the number of last unrolled steps differentiated (>= 1)")
    if mode != "truncated" and window is not None:
        raise ValueError(f"window={window} applies to mode='truncated' only, not mode={mode!r}")


def check_theta_storage(theta_storage: str) -> None:
    """``ValueError`` unless ``theta_storage`` is one of :data:`THETA_STORAGE`."""
    if theta_storage not in THETA_STORAGE:
        raise ValueError(f"theta_storage must be one of {', '.join(THETA_STORAGE)}, got {theta_storage!r}")


def unroll_grad(
    model: FunctionalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    lrs: torch.Tensor,
    theta0: torch.Tensor,
    batches: Sequence[torch.Tensor],
    outer: Callable[[torch.Tensor], torch.Tensor],
    augment: Augment | None = None,
    mode: str = "adjoint",
    *,
    memory_budget: int | None = None,
    theta_storage: str = "auto",
    reduce: StepReduce | None = None,
    window: int | None = None,
) -> UnrollGrads:
    """Run the student unroll and return the outer loss and its gradients.

    Args:
        model: the student network (``fastdd.build_model``).
        images: ``(M, C, H, W)`` the (synthetic) images X; its gradient is returned if it requires grad.
        labels: ``(M,)`` int64 or ``(M, K)`` probabilities; gradient returned if it requires grad.
        lrs: ``(N,)`` per-step learning rates η_i; gradient returned if it requires grad.
        theta0: ``(P,)`` start parameters (a constant).
        batches: ``N`` index tensors into ``images``, one per step.
        outer: ``θ_N -> L`` differentiable outer loss (a 0-d tensor).
        augment: ``None`` or ``(x, step) -> x`` deterministic per step.
        mode: ``"bptt"``, ``"adjoint"``, ``"tesla"``, ``"truncated"`` (needs ``window``) or ``"auto"``
            (decided by :func:`choose_mode` from ``memory_budget``, never ``truncated``; a run that calls
            this many times should resolve it once itself).
        memory_budget: bytes ``auto`` may spend on a BPTT graph (default :data:`DEFAULT_MEMORY_BUDGET`;
            the free memory is never read, so the choice is reproducible).
        theta_storage: where adjoint / tesla / truncated keep the parameters θ_i of the forward pass: ``"auto"``
            (default: ``"all"`` when N·P floats are small against one step's activations, see
            :func:`auto_theta_storage`, else ``"checkpoint"``), ``"checkpoint"``
            (every ⌈√N⌉-th, the others recomputed on the way back: memory flat in N, about one extra
            forward-backward per step), ``"all"`` (every θ_i: N·P floats, no recomputation) or ``"host"``
            (every θ_i in CPU memory, for CUDA students: pinned buffers and asynchronous copies when
            CUDA is available; on a CPU-only machine the same as ``"all"``).
        reduce: for a set split over processes: ``images``/``labels`` are this process's rows,
            ``batches`` index them (possibly empty) and ``reduce`` gives the weights and the all-reduce
            (:class:`StepReduce`). ``mode`` must be ``adjoint``, ``tesla`` or ``truncated`` (``auto`` means
            ``adjoint``).
        window: ``mode="truncated"`` only: differentiate through the last ``window`` steps (an int >= 1;
            ``window >= N`` is the whole unroll, the same numbers as ``adjoint``).
    """
    check_mode(mode)
    check_window(mode, window)
    _check(model, images, labels, lrs, theta0, batches)
    if reduce is not None:
        if len(reduce.weights) != len(batches):
            raise ValueError(f"reduce has {len(reduce.weights)} weights for {len(batches)} batches")
        if mode == "bptt":
            raise ValueError(
                "mode='bptt' cannot run on a set split over processes (torch.distributed): its graph "
                "would span the all-reduces; use mode='adjoint' (exact, the same gradients) or 'tesla'"
            )
        if mode == "auto":
            mode = "adjoint"
    if mode == "auto":
        mode = choose_mode(model, images, labels, theta0, batches, augment, memory_budget)
    if mode == "bptt":
        return _bptt(model, images, labels, lrs, theta0, batches, outer, augment)
    check_theta_storage(theta_storage)
    if mode == "truncated":
        assert window is not None  # check_window
        return _truncated(model, images, labels, lrs, theta0, batches, outer, augment, window, theta_storage, reduce)
    exact = mode == "adjoint"
    return _adjoint(model, images, labels, lrs, theta0, batches, outer, augment, exact, theta_storage, reduce)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(t.requires_grad)


def _bptt(model, images, labels, lrs, theta0, batches, outer, augment) -> UnrollGrads:
    X, Y, eta = _leaf(images), _leaf(labels), _leaf(lrs)
    with torch.enable_grad():
        theta = theta0.detach().requires_grad_(True)
        for i, idx in enumerate(batches):
            x = X[idx]
            if augment is not None:
                x = augment(x, i)
            g = _step_grad(model, theta, x, Y[idx], create_graph=True)
            theta = theta - eta[i] * g
        loss = outer(theta)
        wrt = [t for t in (X, eta, Y) if t.requires_grad]
        grads = list(torch.autograd.grad(loss, wrt, allow_unused=True)) if wrt else []
    out: list[torch.Tensor | None] = []
    for t in (X, eta, Y):
        if not t.requires_grad:
            out.append(None)
            continue
        gr = grads.pop(0)
        out.append(torch.zeros_like(t) if gr is None else gr)  # e.g. images no batch ever used
    return UnrollGrads(loss.detach(), out[0], out[1], out[2], theta.detach(), "bptt")


THETA_STORAGE = ("auto", "checkpoint", "all", "host")
#: ``theta_storage="auto"`` keeps every θ_i when the N parameter vectors take at most this fraction of
#: the bytes autograd saves for one step (its activations), else checkpoints every ⌈√N⌉-th.
AUTO_THETA_FRACTION = 0.25


def auto_theta_storage(n: int, param_bytes: int, activation_bytes: int) -> str:
    """``"all"`` when ``n`` parameter vectors of ``param_bytes`` are small against one step's
    ``activation_bytes`` (at most :data:`AUTO_THETA_FRACTION` of them), else ``"checkpoint"``.

    The default ConvNet at batch 100 saves about 216 MiB per step against 1.2 MiB per θ: every θ_i
    is kept up to 44 steps (no recomputation), beyond that peak memory stays flat in N."""
    return "all" if n * param_bytes <= AUTO_THETA_FRACTION * activation_bytes else "checkpoint"


def checkpoint_interval(n: int) -> int:
    """k = ⌈√N⌉ for N ≥ 1 steps: ``theta_storage="checkpoint"`` keeps θ_0, θ_k, θ_2k, … (O(√N) vectors) and
    recomputes each segment once on the way back."""
    return max(1, math.isqrt(max(n - 1, 0)) + 1)


class _ThetaStore:
    """Where the forward pass leaves θ_i for the walk back: every θ_i (``"all"``), every k-th
    (``"checkpoint"``, :func:`checkpoint_interval`), or every θ_i in host memory (``"host"``: on a CUDA student
    one pinned (N, P) buffer, filled and read back with asynchronous, stream-ordered copies)."""

    def __init__(self, n: int, storage: str, theta: torch.Tensor):
        self.n, self.host = n, storage == "host"
        self.choose(storage)
        pin = self.host and theta.device.type == "cuda"
        self._buf = _pinned((n, theta.numel()), theta.dtype) if pin else None
        self._kept: dict[int, torch.Tensor] = {}

    def choose(self, storage: str) -> None:
        """Set the storage (``"auto"`` is decided after step 0, from the bytes that step saved)."""
        self.storage = storage
        self.k = checkpoint_interval(self.n) if storage == "checkpoint" else 1

    def put(self, i: int, theta: torch.Tensor) -> None:
        if i % self.k:
            return
        if self._buf is not None:
            self._kept[i] = self._buf[i].copy_(theta, non_blocking=True)
        else:
            self._kept[i] = theta.to("cpu", non_blocking=True) if self.host else theta

    def segments(self) -> range:
        """The first step of every segment, last segment first."""
        return range((self.n - 1) // self.k * self.k, -1, -self.k)

    def take(self, i: int, device: torch.device) -> torch.Tensor:
        theta = self._kept.pop(i)
        return theta.to(device, non_blocking=True) if self.host else theta


def _step_vjp(
    model,
    theta: torch.Tensor,
    X: torch.Tensor,
    Y: torch.Tensor,
    idx: torch.Tensor,
    i: int,
    lam: torch.Tensor,
    augment,
    exact: bool,
    want_x: bool,
    want_y: bool,
    weight: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Step ``i`` recomputed with a graph and one double-backward of ``g_iᵀλ``: returns ``(g_iᵀλ, H_iλ,
    ∂(g_iᵀλ)/∂X[b_i], ∂(g_iᵀλ)/∂y[b_i])``, the last three ``None`` when not asked for (``tesla`` keeps λ
    fixed: no Hessian-vector product, so θ is not asked for)."""
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        xb = X[idx].detach().requires_grad_(want_x)
        yb = Y[idx].detach().requires_grad_(want_y)
        x = augment(xb, i) if augment is not None else xb
        wrt = ([th] if exact else []) + [t for t, w in ((xb, want_x), (yb, want_y)) if w]
        g = _step_grad(model, th, x, yb, create_graph=bool(wrt), weight=weight)
        gl = torch.dot(g.reshape(-1), lam)
        parts: list[torch.Tensor | None] = list(torch.autograd.grad(gl, wrt, allow_unused=True)) if wrt else []
    hvp = parts.pop(0) if exact else None
    gx = parts.pop(0) if want_x else None
    gy = parts.pop(0) if want_y else None
    return gl, hvp, gx, gy


class _SGDStep:
    """One student step without a graph, θ_{i+1} = θ_i − α_i·g_i(θ_i) on batch ``batches[i]`` (augmented);
    under torch.distributed (``reduce``) this process's part of the gradient, all-reduced."""

    def __init__(self, model, X, Y, eta, batches, augment, reduce: StepReduce | None):
        self.model, self.X, self.Y, self.eta, self.batches = model, X, Y, eta, batches
        self.augment, self.reduce = augment, reduce

    def holds(self, i: int) -> bool:
        """Whether this process holds part of step ``i``'s batch."""
        return self.reduce is None or self.reduce.weights[i] > 0

    def weight(self, i: int) -> float | None:
        return None if self.reduce is None else self.reduce.weights[i]

    def __call__(self, theta: torch.Tensor, i: int) -> torch.Tensor:
        if not self.holds(i):
            g = torch.zeros_like(theta)
        else:
            with torch.enable_grad():
                th = theta.detach().requires_grad_(True)
                x = self.X[self.batches[i]]
                if self.augment is not None:
                    x = self.augment(x, i)
                g = _step_grad(self.model, th, x, self.Y[self.batches[i]], create_graph=False, weight=self.weight(i))
        if self.reduce is not None:
            g = self.reduce.all_reduce(g)
        return (theta - self.eta[i] * g).detach()

    def first(self, theta: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Step 0, and the bytes autograd saved for it (≈ one step's activations; summed over the processes,
        which must all choose the same θ storage since recomputation makes collectives)."""
        with saved_bytes() as saved:
            out = self(theta, 0)
        if self.reduce is None:
            return out, saved[0]
        total = self.reduce.all_reduce(torch.tensor([float(saved[0])], dtype=torch.float64, device=theta.device))
        return out, int(total.item())


def _adjoint(
    model,
    images,
    labels,
    lrs,
    theta0,
    batches,
    outer,
    augment,
    exact: bool,
    theta_storage: str,
    reduce: StepReduce | None = None,
) -> UnrollGrads:
    """The exact reverse pass (``exact``; ``tesla`` without it): forward θ_0 → θ_N keeping θ_i in a
    :class:`_ThetaStore`, λ = ∂L/∂θ_N, then for i = N−1 … 0: ∂L/∂α_i = −g_iᵀλ, ∂L/∂X[b_i] −= α_i·∂(g_iᵀλ)/∂X,
    λ ← λ − α_i·H_iλ. Under torch.distributed (``reduce``) every step's gradient and ``[H_iλ, g_iᵀλ]`` are
    all-reduced (:meth:`StepReduce.reduce_vjp`)."""
    X, Y, eta = images.detach(), labels.detach(), lrs.detach()
    want_x, want_y = images.requires_grad, labels.requires_grad
    n = len(batches)
    step = _SGDStep(model, X, Y, eta, batches, augment, reduce)
    store = _ThetaStore(n, theta_storage, theta0)
    theta = theta0.detach()
    for i in range(n):
        store.put(i, theta)
        if i == 0 and theta_storage == "auto":  # decided from the bytes step 0 saved (≈ one step's activations)
            theta, activation_bytes = step.first(theta)
            store.choose(auto_theta_storage(n, theta.numel() * theta.element_size(), activation_bytes))
            continue
        theta = step(theta, i)
    theta_n = theta
    with torch.enable_grad():
        th_n = theta_n.detach().requires_grad_(True)
        loss = outer(th_n)
        lam = torch.autograd.grad(loss, th_n)[0].detach()
    gX = torch.zeros_like(X) if want_x else None
    gY = torch.zeros_like(Y) if want_y else None
    g_eta = torch.zeros_like(eta) if lrs.requires_grad else None
    for seg in store.segments():
        segment = [store.take(seg, theta0.device)]
        for i in range(seg, min(seg + store.k, n) - 1):  # recompute θ_{seg+1} .. inside the segment
            segment.append(step(segment[-1], i))
        for i in range(min(seg + store.k, n) - 1, seg - 1, -1):
            idx, th_i = batches[i], segment.pop()
            if step.holds(i):
                gl, hvp, gx, gy = _step_vjp(
                    model, th_i, X, Y, idx, i, lam, augment, exact, want_x, want_y, step.weight(i)
                )
            else:  # none of this step's batch is here: this process adds zeros to the reductions
                gl, hvp, gx, gy = lam.new_zeros(()), lam.new_zeros(lam.shape) if exact else None, None, None
            if reduce is not None:
                gl, hvp = reduce.reduce_vjp(gl, hvp, lam, exact)
            if g_eta is not None:
                g_eta[i] = -gl.detach()
            if gX is not None and gx is not None:
                gX.index_add_(0, idx, -eta[i] * gx)
            if gY is not None and gy is not None:
                gY.index_add_(0, idx, -eta[i] * gy)
            if exact and hvp is not None:
                lam = lam - eta[i] * hvp.detach()
    return UnrollGrads(loss.detach(), gX, g_eta, gY, theta_n, "adjoint" if exact else "tesla", store.storage)


class _Shifted:
    """``augment`` seen from step ``start`` on: step ``i`` of the tail is step ``start + i`` of the unroll."""

    def __init__(self, augment: Augment, start: int):
        self.augment, self.start = augment, start

    def __call__(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return self.augment(x, self.start + i)


def _truncated(
    model,
    images,
    labels,
    lrs,
    theta0,
    batches,
    outer,
    augment,
    window: int,
    theta_storage: str,
    reduce: StepReduce | None,
) -> UnrollGrads:
    """Truncated back-propagation: with s = max(N − W, 0), the prefix θ_0 → θ_s runs without a graph (the
    adjoint's forward step), then :func:`_adjoint` runs on the tail, steps s .. N−1 from the constant θ_s
    (their batches, rates, augmentation and, under torch.distributed, their weights). ∂L/∂η_i = 0 for
    i < s; images and labels only the prefix uses get zero. With s = 0 it is exactly :func:`_adjoint`."""
    start = max(len(batches) - window, 0)
    step = _SGDStep(model, images.detach(), labels.detach(), lrs.detach(), batches, augment, reduce)
    theta = theta0.detach()
    for i in range(start):
        theta = step(theta, i)
    tail_aug = _Shifted(augment, start) if augment is not None and start else augment
    tail_reduce = None if reduce is None else StepReduce(reduce.weights[start:], reduce.all_reduce)
    res = _adjoint(
        model, images, labels, lrs[start:], theta, batches[start:], outer, tail_aug, True, theta_storage, tail_reduce
    )
    if res.lrs is not None and start:
        res.lrs = torch.cat([res.lrs.new_zeros(start), res.lrs])
    res.mode = "truncated"
    return res


def predict_bptt_bytes(
    model: FunctionalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    theta0: torch.Tensor,
    batches: Sequence[torch.Tensor],
    augment: Augment | None = None,
) -> int:
    """BPTT's predicted graph memory in bytes: what autograd saves for one probe step (with
    ``create_graph=True`` and its double backward) on ``batches[0]``, times N, scaled to the largest batch."""
    with torch.enable_grad(), saved_bytes() as saved:
        th = theta0.detach().requires_grad_(True)
        x = images.detach()[batches[0]].requires_grad_(True)
        if augment is not None:
            x = augment(x, 0)
        g = _step_grad(model, th, x, labels.detach()[batches[0]], create_graph=True)
        torch.autograd.grad(g.sum(), th, retain_graph=False)
    max_b = max(len(b) for b in batches)
    return math.ceil(saved[0] * len(batches) * max_b / max(len(batches[0]), 1))


@contextlib.contextmanager
def saved_bytes() -> Iterator[list[int]]:
    """Inside the block, count the bytes autograd saves for backward: yields a one-element list whose
    value grows as tensors are saved (``with saved_bytes() as n: ...; n[0]``)."""
    count = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        count[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield count


def choose_mode(
    model: FunctionalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    theta0: torch.Tensor,
    batches: Sequence[torch.Tensor],
    augment: Augment | Sequence[Augment | None] | None = None,
    memory_budget: int | None = None,
) -> str:
    """``"bptt"`` when :func:`predict_bptt_bytes` fits ``memory_budget`` bytes (default
    :data:`DEFAULT_MEMORY_BUDGET`), else ``"adjoint"``. A function of the shapes and the budget only:
    the machine's free memory is never read. Runs one probe step per augmentation (``augment`` is called
    for step 0); given a sequence of augmentations, the largest prediction over them counts."""
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    augs: list[Augment | None] = list(augment) if isinstance(augment, (list, tuple)) else [augment]  # type: ignore[list-item]
    predicted = max(predict_bptt_bytes(model, images, labels, theta0, batches, a) for a in augs)
    return "bptt" if predicted <= budget else "adjoint"


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_bytes(value: int | float | str) -> int:
    """A byte count: an integer, or a number with a unit (``"8GiB"``, ``"512MiB"``, ``"1.5G"``;
    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB powers of 1000)."""
    if isinstance(value, bool):
        raise ValueError(f"not a byte count: {value!r}")
    if isinstance(value, (int, float)):
        out = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a byte count: {value!r} (give bytes, or e.g. 8GiB, 512MiB, 2GB)")
        out = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if out < 0:
        raise ValueError(f"a byte count must be >= 0, got {value!r}")
    return out


# ------------------------------------------------------------------------------------ transfers
def _pinned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """A pinned host buffer, or ``None`` where pinning is impossible (no CUDA, or the driver refuses)."""
    if not torch.cuda.is_available():
        return None
    try:
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    except RuntimeError:  # pragma: no cover - e.g. locked-memory limits
        return None


def _on_device(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


_ALIGN = 16  # bytes: every dtype's element size divides it, so each part can be re-viewed in place


def _pack(tensors: Sequence[torch.Tensor], pin: bool) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """One uint8 host buffer holding every tensor's bytes, each part aligned; returns it and the
    ``(offset, nbytes)`` of each part."""
    layout, total = [], 0
    for t in tensors:
        total = -(-total // _ALIGN) * _ALIGN
        nbytes = t.numel() * t.element_size()
        layout.append((total, nbytes))
        total += nbytes
    buf = _pinned((total,), torch.uint8) if pin else None
    if buf is None:
        buf = torch.empty(total, dtype=torch.uint8)
    for t, (off, nbytes) in zip(tensors, layout):
        if nbytes:
            buf[off : off + nbytes].copy_(t.detach().reshape(-1).view(torch.uint8))
    return buf, layout


def _unpack(buf: torch.Tensor, layout: list[tuple[int, int]], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``buf`` (on any device) shaped and typed like ``like``: slicing, no copy, no sync."""
    return [buf[off : off + nbytes].view(t.dtype).view(t.shape) for t, (off, nbytes) in zip(like, layout)]


def to_device_once(tensors: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Move many small constant host tensors (index batches, augmentation parameters) to ``device``
    with ONE asynchronous copy: their bytes are packed into one (pinned, when CUDA is available) host
    buffer, copied with ``non_blocking=True``, and each tensor comes back as a view of the device
    buffer (same dtype, shape and values; no autograd history). Tensors already on ``device`` are
    returned as they are; with all of them there, nothing is copied."""
    device = torch.device(device)
    ts = list(tensors)
    todo = [j for j, t in enumerate(ts) if not _on_device(t, device)]
    if not todo:
        return ts
    src = [ts[j] for j in todo]
    if any(t.device.type != "cpu" for t in src):  # not host tensors: no packing, one move each
        moved = [t.to(device, non_blocking=True) for t in src]
    else:
        buf, layout = _pack(src, pin=device.type == "cuda")
        moved = _unpack(buf.to(device, non_blocking=True), layout, src)
    out = list(ts)
    for j, t in zip(todo, moved):
        out[j] = t
    return out


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Inside the block: ``torch.backends.cudnn.deterministic = True``, ``cudnn.benchmark = False`` and
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
    if unset, which cuBLAS reads when it creates its handle), so that on CUDA repeated runs, and
    ``adjoint`` against ``bptt``, give the same numbers. Every setting is restored afterwards.
    ``enabled=False`` changes nothing."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    prev = (
        cudnn.deterministic,
        cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    set_env = "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    if set_env:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    try:
        cudnn.deterministic, cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = prev[0], prev[1]
        torch.use_deterministic_algorithms(prev[2], warn_only=prev[3])
        if set_env:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


# ------------------------------------------------------------------------------------ objectives
def matching_loss(start_params: torch.Tensor, target_params: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """MTT's normalised parameter-matching loss ``‖θ_N − θ*‖² / ‖θ_0 − θ*‖²``."""
    target = target_params.detach()
    denom = (start_params.detach() - target).pow(2).sum()
    return lambda theta: (theta - target).pow(2).sum() / denom


def trajectory_matching_grad(
    model: FunctionalNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    start_params: torch.Tensor,
    target_params: torch.Tensor,
    batches: Sequence[torch.Tensor],
    augment: Augment | None = None,
    mode: str = "adjoint",
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MTT's objective and its gradients: returns ``(loss, ∂L/∂images, ∂L/∂syn_lr)``.

    The student takes ``len(batches)`` SGD steps with the one learning rate ``syn_lr`` (0-d) from
    ``start_params`` on ``images[b]``; the loss is ``‖θ_N − θ*‖² / ‖θ_0 − θ*‖²`` with
    ``θ* = target_params``. ``mode``: ``"bptt"``, ``"adjoint"`` (exact, constant activation
    memory), ``"tesla"`` (approximate), ``"truncated"`` (the last ``window=`` steps only) or ``"auto"``.
    Extra keyword arguments (``window``, ``theta_storage``, ...) go to :func:`unroll_grad`.
    """
    if syn_lr.dim() != 0:
        raise ValueError(f"syn_lr must be a 0-d tensor, got shape {tuple(syn_lr.shape)}")
    for name, t in (("start parameters", start_params), ("target parameters", target_params)):
        if t.shape != (model.num_params,):
            raise ValueError(f"{name} have shape {tuple(t.shape)}, the model needs ({model.num_params},)")
    n = len(batches)
    lrs = syn_lr.detach().expand(n).clone().requires_grad_(True)
    res = unroll_grad(
        model,
        images.detach().requires_grad_(True),
        labels,
        lrs,
        start_params,
        batches,
        matching_loss(start_params, target_params),
        augment,
        mode,
        **kwargs,
    )
    assert res.images is not None and res.lrs is not None  # both were asked for
    return res.loss, res.images, res.lrs.sum()


def real_data_loss(
    model: FunctionalNet, x_real: torch.Tensor, y_real: torch.Tensor, buffers: torch.Tensor | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wang et al.'s outer objective: cross-entropy of ``f(x_real; θ_T)`` on real data (labels may be
    relabelled by the caller for the poisoning objective). Uses batch statistics for batch norm
    unless ``buffers`` (running statistics) are given."""
    return lambda theta: F.cross_entropy(model(x_real, theta, buffers, train=buffers is None), y_real)


def dd_grad(
    model: FunctionalNet,
    step_images: torch.Tensor,
    step_labels: torch.Tensor,
    lrs: torch.Tensor,
    theta0: torch.Tensor,
    x_real: torch.Tensor,
    y_real: torch.Tensor,
    epochs: int = 1,
    mode: str = "adjoint",
    *,
    length: int | None = None,
    **kwargs,
) -> UnrollGrads:
    """Wang et al.'s objective: ``S`` steps of images ``step_images`` ``(S, n, C, H, W)`` (labels
    ``(S, n)`` or ``(S, n, K)``) cycled ``epochs`` times with one learning rate per applied step
    (``lrs`` ``(S·epochs,)``), then cross-entropy on ``(x_real, y_real)``.

    ``length``: apply only the first ``length`` of the S·epochs steps (RaT-BPTT's random-length unroll;
    ``None``: all of them); the rates of the steps not applied get zero gradient. Extra keyword arguments
    (``window``, ``theta_storage``, ...) go to :func:`unroll_grad`.

    Returns :class:`UnrollGrads` whose ``images`` has the shape of ``step_images``.
    """
    s, n = step_images.shape[:2]
    if lrs.shape != (s * epochs,):
        raise ValueError(f"lrs must have shape ({s * epochs},) = steps × epochs, got {tuple(lrs.shape)}")
    total = s * epochs if length is None else length
    if not 1 <= total <= s * epochs:
        raise ValueError(f"length must be in [1, {s * epochs}] (steps × epochs), got {length}")
    flat_x = step_images.reshape(s * n, *step_images.shape[2:])
    flat_y = step_labels.reshape(s * n, *step_labels.shape[2:])
    ar = torch.arange(s * n, device=step_images.device).view(s, n)
    batches = [ar[t % s] for t in range(total)]
    outer = real_data_loss(model, x_real, y_real)
    res = unroll_grad(model, flat_x, flat_y, lrs[:total], theta0, batches, outer, None, mode, **kwargs)
    if res.lrs is not None and total < s * epochs:
        res.lrs = torch.cat([res.lrs, res.lrs.new_zeros(s * epochs - total)])
    if res.images is not None:
        res.images = res.images.view_as(step_images)
    if res.labels is not None:
        res.labels = res.labels.view_as(step_labels)
    return res
