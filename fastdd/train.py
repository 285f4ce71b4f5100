"""The one training loop: SGD on a flat parameter vector over seeded minibatches.

Experts (:mod:`fastdd.experts`), evaluation (:mod:`fastdd.evaluate`), forgetting scores
(:mod:`fastdd.scores`) and DC's inner network updates (:mod:`fastdd.distillation.matching`) all train
through :func:`fit`; they differ only in the :class:`SGD` settings, the augmentation and the callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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

    The loop never reads a tensor back to the host; the callbacks may.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    dev = images.device
    theta = torch.nn.Parameter(theta.detach().clone())
    opt = sgd.optimizer(theta)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sgd.cosine_epochs, eta_min=sgd.eta_min)
        if sgd.schedule == "cosine"
        else None
    )
    min_last = 2 if net.has_batchnorm else 1
    for ep in range(epochs):
        if sgd.schedule == "step" and ep == sgd.decay_epoch:
            opt = sgd.optimizer(theta, sgd.lr * sgd.decay_factor)
        for idx in minibatches(len(images), batch_size, generator, dev, min_last=min_last):
            x = images[idx]
            if augment is not None:
                x = augment(x, idx)
            logits = net(x, theta, buffers, train=True)
            if on_batch is not None:
                on_batch(idx, logits)
            loss = student_loss(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(ep, loss.detach(), theta.detach())
    return theta.detach()


__all__ = ["SGD", "fit", "Augment"]
