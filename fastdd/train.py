"""The one training loop: SGD on a flat parameter vector over seeded minibatches.

Experts (:mod:`fastdd.experts`), evaluation (:mod:`fastdd.evaluate`), forgetting scores
(:mod:`fastdd.scores`) and DC's inner network updates (:mod:`fastdd.distillation.matching`) all train
through :func:`fit`; they differ only in the :class:`SGD` settings, the augmentation and the callbacks.
With a :class:`SAM` (FTD's flat experts) every SGD step follows the sharpness-aware direction of
:func:`sam_direction` instead of the plain gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .data import minibatches
from .engine import student_loss
from .models import FunctionalNet

Augment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (batch, its indices) -> augmented batch


@dataclass(frozen=True)
class SGD:
    """SGD with an optional once-only step decay or cosine annealing (per epoch).

    - ``schedule="constant"``: ``lr`` throughout.
    - ``schedule="step"``: ``lr · decay_factor`` from epoch ``decay_epoch`` on (0-based); the optimiser
      is re-created there, so momentum restarts (as the DC/MTT evaluation code does).
    - ``schedule="cosine"``: :class:`torch.optim.lr_scheduler.CosineAnnealingLR` with
      ``T_max=cosine_epochs`` and ``eta_min``, stepped after every epoch.
    """

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    decay_epoch: int | None = None
    decay_factor: float = 0.1
    cosine_epochs: int | None = None
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "step", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose 'constant', 'step' or 'cosine'")
        if self.schedule == "step" and self.decay_epoch is None:
            raise ValueError("schedule='step' needs decay_epoch")
        if self.schedule == "cosine" and self.cosine_epochs is None:
            raise ValueError("schedule='cosine' needs cosine_epochs")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")

    def optimizer(self, theta: torch.Tensor, lr: float | None = None) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            [theta], lr=self.lr if lr is None else lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The per-epoch scheduler of ``opt`` (cosine annealing), ``None`` for the other schedules."""
        if self.schedule != "cosine":
            return None
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.cosine_epochs, eta_min=self.eta_min)


@dataclass(frozen=True)
class SAM:
    """Sharpness-aware minimisation around the base :class:`SGD` step, in GSAM's form (Zhuang et al. 2022), as
    FTD (Du et al. 2023) trains its flat experts. See :func:`sam_direction` for the step.

    - ``rho``: the perturbation radius ρ (>= 0; 0 turns SAM off: :func:`fit` takes its plain SGD steps).
    - ``alpha``: GSAM's α (>= 0), the share of the component of ``g`` orthogonal to ``g_p`` taken out of the
      direction; 0 is plain SAM (Foret et al. 2021).
    - ``adaptive``: ASAM's perturbation ``e = ρ·θ²⊙g / ‖|θ|⊙g‖`` instead of SAM's ``e = ρ·g / ‖g‖``.

    FTD's code trains with ``SAM(0.01, 0.4, adaptive=True)``.
    """

    rho: float
    alpha: float = 0.0
    adaptive: bool = False

    def __post_init__(self) -> None:
        for name in ("rho", "alpha"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"SAM {name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"SAM adaptive must be True or False, got {self.adaptive!r}")


def sam_direction(
    grad_at: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, g: torch.Tensor, sam: SAM
) -> torch.Tensor:
    """The GSAM update direction ``d`` ``(P,)`` at flat parameters ``theta`` ``(P,)``, for the base SGD step.

    ``g`` ``(P,)`` is ``∇L(θ)`` (the first pass); ``grad_at(w)`` returns ``∇L(w)`` ``(P,)`` on the same
    minibatch (the second pass, at ``w = θ + e``). With ``ρ = sam.rho`` and ``α = sam.alpha``:

    - ``e = ρ·g/‖g‖`` (SAM), or ``e = ρ·θ²⊙g/‖|θ|⊙g‖`` with ``sam.adaptive`` (ASAM);
    - ``g_p = ∇L(θ + e)``;
    - ``g_⊥ = g − cos(g, g_p)·‖g‖·g_p/‖g_p‖``, the part of ``g`` orthogonal to ``g_p``;
    - ``d = g_p − α·g_⊥``.

    A pure function: ``theta`` is not changed (nothing to undo). A zero norm in a denominator counts as the
    smallest positive float (a zero gradient gives ``e = 0``). Nothing is read back to the host."""
    theta, g = theta.detach(), g.detach()
    tiny = torch.finfo(g.dtype).tiny
    if sam.adaptive:
        e = sam.rho * theta * theta * g / (theta.abs() * g).norm().clamp_min(tiny)
    else:
        e = sam.rho * g / g.norm().clamp_min(tiny)
    gp = grad_at(theta + e).detach()
    if sam.alpha == 0:
        return gp
    g_norm, gp_norm = g.norm(), gp.norm().clamp_min(tiny)
    cos = (g * gp).sum() / (g_norm * gp_norm).clamp_min(tiny)
    g_perp = g - cos * g_norm * gp / gp_norm
    return gp - sam.alpha * g_perp


@dataclass
class FitState:
    """Where :func:`fit` stands after ``epoch`` epochs: enough to continue it bitwise (with the caller's generators
    and batch-norm buffers, which the caller keeps).

    - ``theta``: the flat parameters ``(P,)`` after ``epoch`` epochs.
    - ``optimizer``: the :class:`torch.optim.SGD` ``state_dict()`` (momentum buffers, the current lr).
    - ``scheduler``: the cosine scheduler's ``state_dict()``; ``None`` for the other schedules.

    The tensors are :func:`fit`'s own (live): copy or save them inside the callback that receives them."""

    epoch: int
    theta: torch.Tensor
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None


def fit(
    net: FunctionalNet,
    theta: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    sgd: SGD,
    generator: torch.Generator,
    *,
    batch_size: int = 256,
    buffers: torch.Tensor | None = None,
    augment: Augment | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    sam: SAM | None = None,
    epoch_subset: Callable[[int], torch.Tensor] | None = None,
    start: FitState | None = None,
    on_state: Callable[[FitState], None] | None = None,
) -> torch.Tensor:
    """Train ``net`` from ``theta`` for ``epochs`` passes over ``(images, labels)``; return the final parameters.

    Args:
        theta: flat start parameters ``(P,)`` (not modified); the result is a new detached tensor.
        images: ``(N, C, H, W)`` on the training device; ``labels`` ``(N,)`` int64 or ``(N, K)``
            target probabilities (soft labels: cross-entropy against them).
        generator: the minibatch order: one permutation of ``range(N)`` per epoch, in chunks of
            ``batch_size`` (with batch norm a last chunk of one image joins the one before).
        buffers: batch-norm running statistics, updated in place (train-mode forward).
        augment: ``(x, idx) -> x`` applied to each minibatch ``x = images[idx]`` (it draws its own
            random parameters from its own generator).
        on_batch: ``(idx, logits)`` after each forward, before the optimiser step (forgetting counts).
        on_epoch: ``(epoch, last minibatch loss, current parameters)`` after each epoch.
        sam: with ``rho > 0``, SGD steps along :func:`sam_direction` (a second pass on the same augmented
            minibatch, batch-norm statistics frozen; callbacks see the first pass). ``None``: plain SGD.
        epoch_subset: ``epoch -> (n_e,)`` int64 indices into ``images``: epoch ``epoch`` (0-based) passes over
            those examples only (a curriculum, :class:`fastdd.experts.Curriculum`); the permutation is one of
            ``range(n_e)`` mapped through them, and ``on_batch`` / ``augment`` see the mapped indices. ``None``
            (the default): every example, every epoch.
        start: continue a run from its :class:`FitState` (epochs ``start.epoch .. epochs - 1`` remain; the
            caller restores its generators and buffers to where they stood then). With the same arguments the
            result is bitwise the uninterrupted run's.
        on_state: ``(FitState)`` after each epoch (after ``on_epoch``), for checkpoints.

    The loop never reads a tensor back to the host; the callbacks may.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    dev = images.device
    first = 0 if start is None else start.epoch
    if start is not None and not 0 <= first <= epochs:
        raise ValueError(f"start.epoch must be in 0..{epochs} (the epochs to train), got {first}")
    theta = torch.nn.Parameter((theta if start is None else start.theta).detach().clone())
    decayed = sgd.schedule == "step" and sgd.decay_epoch is not None and first > sgd.decay_epoch
    opt = sgd.optimizer(theta, sgd.lr * sgd.decay_factor if decayed else None)
    sched = sgd.scheduler(opt)
    if start is not None:
        opt.load_state_dict(start.optimizer)
        if sched is not None:
            if start.scheduler is None:
                raise ValueError("start.scheduler is None but this SGD anneals (schedule='cosine')")
            sched.load_state_dict(start.scheduler)
    sharp = sam if sam is not None and sam.rho > 0 else None
    min_last = 2 if net.has_batchnorm else 1
    for ep in range(first, epochs):
        if sgd.schedule == "step" and ep == sgd.decay_epoch:
            opt = sgd.optimizer(theta, sgd.lr * sgd.decay_factor)
        sub = None if epoch_subset is None else epoch_subset(ep).to(dev)
        for idx in minibatches(len(images) if sub is None else len(sub), batch_size, generator, dev, min_last=min_last):
            if sub is not None:
                idx = sub[idx]
            x = images[idx]
            if augment is not None:
                x = augment(x, idx)
            logits = net(x, theta, buffers, train=True)
            if on_batch is not None:
                on_batch(idx, logits)
            loss = student_loss(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sharp is not None:
                theta.grad = _sam_grad(net, theta, x, labels[idx], buffers, sharp)
            opt.step()
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(ep, loss.detach(), theta.detach())
        if on_state is not None:
            on_state(FitState(ep + 1, theta.detach(), opt.state_dict(), None if sched is None else sched.state_dict()))
    return theta.detach()


def _sam_grad(
    net: FunctionalNet,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    buffers: torch.Tensor | None,
    sam: SAM,
) -> torch.Tensor:
    """:func:`sam_direction` for :func:`fit`'s minibatch ``(x, y)`` (already augmented), from ``theta.grad``
    (the first pass's gradient); the second pass runs on a copy of the batch-norm ``buffers`` (frozen, as
    GSAM does)."""

    def grad_at(w: torch.Tensor) -> torch.Tensor:
        w = w.requires_grad_(True)
        bufs = buffers.clone() if buffers is not None else None
        return torch.autograd.grad(student_loss(net(x, w, bufs, train=True), y), w)[0]

    assert theta.grad is not None  # the first pass's backward set it
    return sam_direction(grad_at, theta, theta.grad, sam)


__all__ = ["SGD", "SAM", "FitState", "fit", "sam_direction", "Augment"]
