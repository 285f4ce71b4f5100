"""Per-step augmentation for the unrolled student: sampled once per step, replayed exactly.

The adjoint gradient recomputes each student step on the way back, so step ``i`` must see the
same augmentation both times. :class:`StepAugment` draws the DSA parameters of step ``i`` from its
generator the first time step ``i`` is seen and stores them (parameters, not the augmented batch).
"""
from __future__ import annotations

import torch

from .dsa import DSAConfig, DSAParams, apply_dsa, sample_dsa


class StepAugment:
    """Callable ``(x, step) -> x``: DSA with per-sample parameters, one random family per step
    (the reference's non-siamese mode 'S'), deterministic per step."""

    def __init__(self, config: DSAConfig | None, generator: torch.Generator):
        self.config = config or DSAConfig()
        self.generator = generator
        self.params: dict[int, DSAParams] = {}

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        p = self.params.get(step)
        if p is None:
            p = sample_dsa(x.shape[0], tuple(x.shape[2:]), self.config, self.generator).to(x.device)
            self.params[step] = p
        elif p.n != x.shape[0]:
            raise ValueError(f"step {step} was augmented for a batch of {p.n} images, now called with {x.shape[0]}")
        return apply_dsa(x, p)

    def reset(self) -> None:
        """Forget the stored parameters (call between outer iterations)."""
        self.params.clear()
