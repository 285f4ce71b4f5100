"""PAD (Li, Guo et al. 2024, "Prioritize Alignment in Dataset Distillation"): DATM with two filters.

1. **Information extraction** (expert training, not this module): the experts train on a difficulty
   curriculum, the easiest examples of each class first, the hardest added until ``add_end_epoch``, then
   the easiest removed: ``fastdd.train_experts(ds, curriculum=Curriculum(), scores=fastdd.el2n_scores(ds))``
   (:class:`fastdd.experts.Curriculum`; the snapshots are the same format, every MTT-family method reads them).
2. **Information embedding** (here): the matching loss leaves out the shallow parameters. With the flat
   parameter vector of length ``L`` in the functional net's order (``nn.Module.parameters()``: for
   ``convnet`` conv / norm of block 1, block 2, ..., the classifier, shallow → deep) and ``k = ⌊α·L⌋``
   (``α = pad_depth_ratio``), PAD's Eq. 4::

       L = Σ_{j≥k} (θ_N,j − θ*_j)² / Σ_{j≥k} (θ_0,j − θ*_j)²

   computed as a 0/1 weight vector over the flat parameters (:func:`depth_mask`) on the numerator and the
   denominator (:func:`masked_matching_loss`). It reaches the engine only as ``unroll_grad``'s ``outer``
   (:meth:`~fastdd.distillation.mtt.MTTPolicy.outer_loss`), so ``adjoint``, ``bptt``, ``tesla``,
   ``truncated``, the Triton kernels and torch.distributed work unchanged. ``α = 0`` is DATM's loss,
   bit for bit.

Everything else is DATM's (``init="correct"``, learnable soft labels, the start-epoch schedule, the loss
gate): ``"pad"`` registers with DATM's defaults and ``pad_depth_ratio`` 0.25 (paper Tab 7's value at IPC 10
on CIFAR-10, CIFAR-100 and Tiny ImageNet; the presets set each setting's).

``pad_mask="layers"`` is fastdd's option, not PAD's: it cuts at a layer boundary, dropping the first
``⌊α·n⌋`` of the ``n`` layers (a layer: the parameter tensors of one module, e.g. a conv, a norm, the
classifier) instead of cutting a tensor partway.

Paper ≠ code: PAD's shipped ``PAD.py`` masks by per-entry error (keeps the largest errors); its depth
variant (``PAD_depth.py``, later deleted) is the paper's Eq. 4, which fastdd implements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..models import FunctionalNet
from ..synthetic import SyntheticSet
from .mtt import DATM_DEFAULTS, MTTConfig, MTTPolicy
from .registry import register_method

MASK_UNITS = ("depth", "layers")


@dataclass
class PADConfig(MTTConfig):
    """:class:`~fastdd.distillation.mtt.MTTConfig` (DATM's options) and PAD's parameter mask."""

    pad_depth_ratio: float = 0.25  # α: the shallow share of the parameters left out of the loss, in [0, 1)
    pad_mask: str = "depth"  # "depth": the first ⌊α·L⌋ entries (PAD); "layers": the first ⌊α·n⌋ layers (fastdd)

    def validate(self) -> None:
        r = self.pad_depth_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"pad_depth_ratio must be a number in [0, 1), got {r!r}")
        if self.pad_mask not in MASK_UNITS:
            raise ValueError(f"pad_mask must be 'depth' or 'layers', got {self.pad_mask!r}")
        super().validate()


def layer_ends(net: FunctionalNet) -> list[int]:
    """The end offsets in the flat parameter vector of ``net``'s layers, in order (a layer: the consecutive
    parameter tensors of one module, named alike up to their last ``.``)."""
    ends: list[int] = []
    owner, offset = None, 0
    for p in net.params:
        module = p.name.rsplit(".", 1)[0]
        if module != owner and offset:
            ends.append(offset)
        owner, offset = module, offset + p.numel
    ends.append(offset)
    return ends


def mask_start(net: FunctionalNet, ratio: float, unit: str = "depth") -> int:
    """``k``: the mask drops the flat parameters ``[0, k)``. ``unit="depth"``: ``⌊ratio·L⌋`` (PAD's Eq. 4,
    a cut may fall inside a tensor, at output-channel granularity for ``(out, in, kh, kw)`` weights);
    ``"layers"``: the end of the first ``⌊ratio·n⌋`` of the ``n`` layers (:func:`layer_ends`). ``⌊·⌋``
    forgives float round-off of 1e-9."""
    if unit not in MASK_UNITS:
        raise ValueError(f"mask unit must be 'depth' or 'layers', got {unit!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"the depth ratio must be in [0, 1), got {ratio!r}")
    if unit == "depth":
        return math.floor(ratio * net.num_params + 1e-9)
    ends = layer_ends(net)
    n = math.floor(ratio * len(ends) + 1e-9)
    return ends[n - 1] if n else 0


def depth_mask(
    net: FunctionalNet, ratio: float, unit: str = "depth", *, device: Any = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(P,)`` weights over ``net``'s flat parameters: 0 for the first :func:`mask_start` entries, 1 after."""
    w = torch.ones(net.num_params, device=device, dtype=dtype)
    w[: mask_start(net, ratio, unit)] = 0
    return w


def masked_matching_loss(
    start_params: torch.Tensor, target_params: torch.Tensor, weight: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``θ -> Σ w·(θ − θ*)² / Σ w·(θ_0 − θ*)²``: MTT's normalised matching loss with the weights ``weight``
    ``(P,)`` on the numerator and the denominator (0/1: PAD's mask; the weights are cast to the parameters'
    dtype). All ones gives :func:`fastdd.engine.matching_loss`'s value (summed in another order)."""
    target = target_params.detach()
    w = weight.to(device=target.device, dtype=target.dtype)
    denom = (w * (start_params.detach() - target).pow(2)).sum()
    return lambda theta: (w * (theta - target).pow(2)).sum() / denom


class PADPolicy(MTTPolicy):
    """DATM's policy (:class:`~fastdd.distillation.mtt.MTTPolicy` with DATM's options) whose outer loss is
    :func:`masked_matching_loss` under :func:`depth_mask`; with nothing masked (``k = 0``) it is MTT's
    :func:`~fastdd.engine.matching_loss` itself. The set's ``meta["pad_mask_start"]`` records ``k``."""

    config: PADConfig

    def __init__(self, ds, ipc, experts, cfg: PADConfig, seed, method, scores=None, resident_experts=None):
        if not isinstance(cfg, PADConfig):
            raise TypeError(f"{method}: the config must be a PADConfig, got {type(cfg).__name__}")
        super().__init__(ds, ipc, experts, cfg, seed, method, scores, resident_experts)
        self.mask_start = mask_start(self.net, cfg.pad_depth_ratio, cfg.pad_mask)
        self.mask = None
        if self.mask_start:
            self.mask = depth_mask(self.net, cfg.pad_depth_ratio, cfg.pad_mask, device=ds.device)

    def outer_loss(self, theta0: torch.Tensor, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.mask is None:
            return super().outer_loss(theta0, target)
        return masked_matching_loss(theta0, target, self.mask)

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        return super().result(iterations, skipped, {"pad_mask_start": self.mask_start, **(extra_meta or {})})


register_method(
    "pad",
    config=PADConfig,
    policy=PADPolicy,
    defaults=DATM_DEFAULTS,
    needs_experts=True,
    soft_labels=True,
    distributed="rows",
    description="DATM with a masked matching loss (shallow parameters out) on curriculum experts (Li et al. 2024)",
)

__all__ = ["PADConfig", "PADPolicy", "depth_mask", "layer_ends", "mask_start", "masked_matching_loss"]
