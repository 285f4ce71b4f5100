"""The engine's options in one dataclass, shared by the API (``fastdd.distill(engine=...)``), the methods'
configs that unroll student training (:class:`~fastdd.distillation.MTTConfig` and :class:`~fastdd.distillation.DDConfig`
inherit them, so checkpoints record them with the method's settings) and the command line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from .unroll import check_mode, check_theta_storage, check_window, choose_mode


@dataclass
class EngineConfig:
    """How the engine computes the meta-gradient.

    Attributes:
        mode: ``"auto"`` (resolved once per run from the shapes and ``memory_budget``: ``bptt`` when its
            graph fits, else ``adjoint``; never ``truncated``), ``"bptt"``, ``"adjoint"`` (exact, activation
            memory of one step), ``"tesla"`` (the direct-term approximation) or ``"truncated"`` (exact
            back-propagation through the last ``window`` steps only, the earlier ones run without a graph).
        theta_storage: where the adjoint keeps the student's parameters θ_i: ``"auto"``, ``"checkpoint"``
            (every ⌈√N⌉-th, the rest recomputed), ``"all"`` or ``"host"`` (CPU memory, pinned on CUDA).
        memory_budget: bytes ``mode="auto"`` may give a BPTT graph (``None``: 4 GiB).
        deterministic: deterministic cuDNN and algorithms for the run (previous settings restored after).
        window: ``mode="truncated"`` only (and required there): the number W >= 1 of last unrolled steps
            differentiated; W >= N is the whole unroll (the same gradients as ``adjoint``).
    """

    mode: str = "auto"
    theta_storage: str = "auto"
    memory_budget: int | None = None
    deterministic: bool = False
    window: int | None = None

    def validate_engine(self) -> None:
        """``ValueError`` naming the option when one is not one of its allowed values."""
        check_mode(self.mode)
        check_window(self.mode, self.window)
        check_theta_storage(self.theta_storage)
        budget = self.memory_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"memory_budget must be a byte count >= 0 (an int) or None, got {budget!r}")

    def resolve_mode(
        self,
        net,
        images: torch.Tensor,
        labels: torch.Tensor,
        theta0: torch.Tensor,
        batches: list[torch.Tensor],
        augments: Sequence[Callable | None] = (None,),
    ) -> str:
        """The run's gradient mode: ``mode``, or for ``"auto"`` ``"bptt"`` when the predicted BPTT graph
        (:func:`fastdd.engine.predict_bptt_bytes` for these shapes, the largest over ``augments``, each
        ``None`` or a callable ``(x, step) -> x``) fits ``memory_budget`` (default
        :data:`fastdd.engine.DEFAULT_MEMORY_BUDGET`), else ``"adjoint"``. Depends on the configuration and
        shapes only, never on the free memory."""
        if self.mode != "auto":
            return self.mode
        return choose_mode(net, images, labels, theta0, batches, list(augments), self.memory_budget)

    def changed(self) -> dict[str, object]:
        """The fields that differ from their defaults: what an explicit ``engine=`` overrides."""
        return {f.name: getattr(self, f.name) for f in fields(EngineConfig) if getattr(self, f.name) != f.default}


ENGINE_FIELDS = tuple(f.name for f in fields(EngineConfig))

__all__ = ["EngineConfig", "ENGINE_FIELDS"]
