"""Per-step augmentation for the unrolled student: sampled once per step, replayed exactly.

The adjoint gradient recomputes each student step on the way back, so step ``i`` must see the
same augmentation both times. :class:`StepAugment` stores each step's DSA parameters (parameters,
not the augmented batch). They are drawn either all at once before the unroll with
:meth:`StepAugment.prepare` (one host→device copy for every step: what the distillation loops do), or
lazily, step ``i`` the first time it is seen (one copy per step). Both draw the same random numbers
in the same order from the generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..engine import to_device_once
from .dsa import DSAConfig, DSAParams, apply_dsa, sample_dsa


class StepAugment:
    """Callable ``(x, step) -> x``: DSA with per-sample parameters, one random family per step
    (the reference's non-siamese mode 'S'), deterministic per step."""

    def __init__(self, config: DSAConfig | None, generator: torch.Generator):
        self.config = config or DSAConfig()
        self.generator = generator
        self.params: dict[int, DSAParams] = {}

    def prepare(
        self, sizes: Sequence[int], im_size: int | Sequence[int], device: torch.device | str, start: int = 0
    ) -> StepAugment:
        """Draw the parameters of steps ``start .. start + len(sizes) − 1`` now, step ``start + j`` for
        ``sizes[j]`` images of size ``im_size``, in step order (the same numbers the lazy path draws
        when the unroll visits the steps in order), and move all of them to ``device`` with one
        asynchronous copy (:func:`fastdd.engine.to_device_once`). Returns ``self``."""
        steps = range(start, start + len(sizes))
        taken = [i for i in steps if i in self.params]
        if taken:
            raise ValueError(f"steps {taken} already have augmentation parameters; call reset() first")
        hw = tuple(im_size) if not isinstance(im_size, int) else im_size
        drawn = [sample_dsa(int(n), hw, self.config, self.generator) for n in sizes]
        flat = [t for p in drawn for t in p.tensors.values()]
        moved = iter(to_device_once(flat, device))
        for i, p in zip(steps, drawn):
            self.params[i] = DSAParams(p.family, {k: next(moved) for k in p.tensors}, p.families)
        return self

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        p = self.params.get(step)
        if p is None:
            p = sample_dsa(x.shape[0], tuple(x.shape[2:]), self.config, self.generator).to(x.device)
            self.params[step] = p
        elif p.n != x.shape[0]:
            raise ValueError(f"step {step} was augmented for a batch of {p.n} images, now called with {x.shape[0]}")
        return apply_dsa(x, p)

    def subset(self, positions: Sequence[torch.Tensor], start: int = 0) -> StepAugment:
        """A :class:`StepAugment` for part of every prepared step's batch: step ``start + j`` applies to
        the images at ``positions[j]`` (index tensors on the parameters' device) the parameters those
        images have in the whole batch. A process that holds part of each batch
        (:mod:`fastdd.distributed`) augments its images exactly as one process augments them all."""
        out = StepAugment(self.config, self.generator)
        for j, pos in enumerate(positions):
            p = self.params[start + j]
            out.params[start + j] = DSAParams(p.family, {k: v[pos] for k, v in p.tensors.items()}, p.families)
        return out

    def reset(self) -> None:
        """Forget the stored parameters (call between outer iterations)."""
        self.params.clear()
