"""Differentiable Siamese Augmentation (DSA), vectorised, with explicit and replayable parameters.

The six families and their ranges follow the DSA reference behaviour (``reference/`` §6.2 / §2.1):

=========  ===================================================================================
family     what it does to a batch ``x`` of shape ``(N, C, H, W)`` (per-sample parameters)
=========  ===================================================================================
color      brightness ``x + b`` (b in [-0.5, 0.5)), then saturation ``(x - m_c)·s + m_c`` with
           ``m_c`` the per-pixel channel mean (s in [0, 2)), then contrast ``(x - m)·c + m`` with
           ``m`` the per-sample mean over (C, H, W) (c in [0.5, 1.5))
crop       integer translation with zero fill: ``out[h, w] = x[h + dy, w + dx]`` (0 outside),
           dy in [-s_H, s_H], dx in [-s_W, s_W], ``s = int(size·ratio_crop_pad + 0.5)``
cutout     a ``k_H × k_W`` square set to 0, ``k = int(size·ratio_cutout + 0.5)``, centre per axis
           uniform in ``[0, size + (1 - k mod 2))``, rows ``[c - k//2, c - k//2 + k)`` ∩ image
flip       horizontal flip (last axis) with probability ``prob_flip``
scale      ``affine_grid([[sx, 0, 0], [0, sy, 0]])`` + bilinear ``grid_sample`` (zero padding,
           ``align_corners=True``), sx, sy in [1/ratio_scale, ratio_scale)
rotate     same sampling with ``[[cos φ, -sin φ, 0], [sin φ, cos φ, 0]]``,
           φ in [-ratio_rotate, ratio_rotate) degrees
=========  ===================================================================================

Sampling (:func:`sample_dsa`) and application (:func:`apply_dsa`) are separate: parameters are drawn
from an explicit :class:`torch.Generator` (never the global RNG) into a :class:`DSAParams`, which can be
stored (:meth:`DSAParams.state_dict`), moved (:meth:`DSAParams.to`), broadcast for siamese use
(:meth:`DSAParams.expand`) and replayed bit-identically. Application is differentiable w.r.t. the pixels
and has no Python loop over samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .. import kernels
from ..kernels.dsa_torch import FAMILIES, PER_SAMPLE, apply_dsa_torch  # the op's torch twin

__all__ = [
    "FAMILIES",
    "PER_SAMPLE",
    "FULL_STRATEGY",
    "NO_FLIP_STRATEGY",
    "DSAConfig",
    "DSAParams",
    "DSA",
    "strategy_for",
    "sample_dsa",
    "apply_dsa",
    "apply_dsa_torch",
    "siamese_dsa",
]

#: The default strategy string (all six families).
FULL_STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: The strategy for digit-like data (MNIST, SVHN): no horizontal flip.
NO_FLIP_STRATEGY = "color_crop_cutout_scale_rotate"

# Data sets whose classes are not flip-invariant (digits): the reference README drops ``flip`` for them.
_NO_FLIP_DATASETS = frozenset({"mnist", "mnist5k", "digits", "svhn"})

# Which parameter tensors each family needs (keys of ``DSAParams.tensors``).
_FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("shift",),
    "cutout": ("cutout_centre", "cutout_size"),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("angle",),
}


def strategy_for(dataset_name: str) -> str:
    """The DSA strategy string for a data set: no ``flip`` for MNIST-like digits and SVHN, else all six.

    ``dataset_name`` is matched case-insensitively (``"mnist"``, ``"mnist5k"``, ``"digits"``, ``"svhn"``
    get :data:`NO_FLIP_STRATEGY`; everything else :data:`FULL_STRATEGY`).
    """
    return NO_FLIP_STRATEGY if dataset_name.strip().lower() in _NO_FLIP_DATASETS else FULL_STRATEGY


def _parse_strategy(strategy: str) -> tuple[str, ...]:
    tokens = tuple(t for t in strategy.split("_") if t)
    if not tokens:
        raise ValueError(f"DSA strategy {strategy!r} names no family; choose from {', '.join(FAMILIES)}")
    for t in tokens:
        if t not in _FAMILY_KEYS:
            raise ValueError(
                f"unknown DSA family {t!r} in strategy {strategy!r}; known families: {', '.join(FAMILIES)}"
            )
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"DSA strategy {strategy!r} repeats a family")
    return tokens


@dataclass
class DSAConfig:
    """DSA ranges (reference defaults) and the strategy (families joined by ``"_"``).

    Attributes:
        prob_flip: probability of a horizontal flip per sample.
        ratio_scale: scale factors are drawn from ``[1/ratio_scale, ratio_scale)`` (unitless).
        ratio_rotate: rotation angles are drawn from ``[-ratio_rotate, ratio_rotate)`` (degrees).
        ratio_crop_pad: maximal translation as a fraction of the image side (rounded to pixels).
        ratio_cutout: side of the cut-out square as a fraction of the image side (rounded to pixels).
        brightness: additive brightness shift ``(u - 0.5)·brightness``, u ~ U[0, 1).
        saturation: saturation factor ``u·saturation``.
        contrast: contrast factor ``u + contrast``.
        strategy: families separated by ``"_"``; unknown names raise :class:`ValueError`.
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    strategy: str = FULL_STRATEGY

    def __post_init__(self) -> None:
        _parse_strategy(self.strategy)
        if not 0.0 <= self.prob_flip <= 1.0:
            raise ValueError(f"prob_flip must lie in [0, 1], got {self.prob_flip}")
        if self.ratio_scale < 1.0:
            raise ValueError(f"ratio_scale must be >= 1, got {self.ratio_scale}")

    @property
    def families(self) -> tuple[str, ...]:
        """The strategy's families, in order."""
        return _parse_strategy(self.strategy)


@dataclass(eq=False)
class DSAParams:
    """One call's sampled DSA parameters, for ``n`` samples; replay them with :func:`apply_dsa`.

    Attributes:
        family: the family applied to every sample, or :data:`PER_SAMPLE` when each sample has its own
            (then ``tensors["family_index"]`` (n,) int64 indexes ``families``).
        tensors: per-sample parameter tensors, all with leading dimension ``n``; only the keys of the
            families that can occur are present:

            - ``brightness`` (n,) float64: additive shift; ``saturation`` (n,) float64: factor;
              ``contrast`` (n,) float64: factor (family ``color``);
            - ``shift`` (n, 2) int64: translation ``(dy, dx)`` in pixels (``crop``);
            - ``cutout_centre`` (n, 2) int64 ``(cy, cx)`` and ``cutout_size`` (n, 2) int64 ``(kh, kw)``
              in pixels (``cutout``);
            - ``flip`` (n,) bool (``flip``);
            - ``scale`` (n, 2) float64: ``(sx, sy)``, sx multiplies the width coordinate (``scale``);
            - ``angle`` (n,) float64: rotation in radians (``rotate``);
            - ``family_index`` (n,) int64 (per-sample mode only).
        families: the candidate families (the strategy's), indexed by ``family_index``.
    """

    family: str
    tensors: dict[str, Tensor]
    families: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.family != PER_SAMPLE and self.family not in _FAMILY_KEYS:
            raise ValueError(f"unknown DSA family {self.family!r}; known families: {', '.join(FAMILIES)}")
        if not self.families:
            self.families = (self.family,) if self.family != PER_SAMPLE else ()
        self.families = tuple(self.families)
        needed = self.active_families()
        missing = [k for f in needed for k in _FAMILY_KEYS[f] if k not in self.tensors]
        if self.family == PER_SAMPLE and "family_index" not in self.tensors:
            missing.append("family_index")
        if missing:
            raise ValueError(f"DSAParams for family {self.family!r} lacks tensors {missing}")
        sizes = {t.shape[0] for t in self.tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"DSAParams tensors disagree on the batch size: {sorted(sizes)}")

    def active_families(self) -> tuple[str, ...]:
        """The families these parameters can apply (one, or ``families`` in per-sample mode)."""
        return self.families if self.family == PER_SAMPLE else (self.family,)

    @property
    def n(self) -> int:
        """Number of samples the parameters cover."""
        return next(iter(self.tensors.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DSAParams:
        """A copy with every tensor on ``device`` (dtypes unchanged)."""
        return DSAParams(
            self.family, {k: v.to(device, non_blocking=non_blocking) for k, v in self.tensors.items()}, self.families
        )

    def expand(self, n: int) -> DSAParams:
        """Broadcast a one-sample parameter set to ``n`` samples (siamese: every sample, same transform)."""
        if self.n != 1:
            raise ValueError(f"expand needs parameters for exactly 1 sample, these cover {self.n}")
        return DSAParams(self.family, {k: v.expand(n, *v.shape[1:]) for k, v in self.tensors.items()}, self.families)

    def index(self, idx: Tensor | slice | Sequence[int]) -> DSAParams:
        """The parameters of the selected samples (``idx``: int64 indices, a bool mask, or a slice)."""
        if isinstance(idx, slice):
            return DSAParams(self.family, {k: v[idx] for k, v in self.tensors.items()}, self.families)
        idx_t = torch.as_tensor(idx)
        return DSAParams(self.family, {k: v[idx_t.to(v.device)] for k, v in self.tensors.items()}, self.families)

    def state_dict(self) -> dict[str, Any]:
        """A plain dict (str, list of str, tensors) loadable with ``torch.load(weights_only=True)``."""
        return {
            "family": self.family,
            "families": list(self.families),
            "tensors": {k: v.contiguous().clone() for k, v in self.tensors.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DSAParams:
        """Inverse of :meth:`state_dict`."""
        return cls(str(state["family"]), dict(state["tensors"]), tuple(state.get("families", ())))


# ----------------------------------------------------------------------------------------------------
# sampling


def _as_hw(im_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(im_size, int):
        return im_size, im_size
    hw = tuple(int(s) for s in im_size)
    if len(hw) != 2:
        raise ValueError(f"im_size must be an int or (H, W), got {im_size!r}")
    return hw[0], hw[1]


def _rand(n: int, *shape: int, generator: torch.Generator) -> Tensor:
    return torch.rand((n, *shape), generator=generator, dtype=torch.float64, device=generator.device)


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform integers in ``[low, high)`` (int64)."""
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64, device=generator.device)


def _sample_family(fam: str, n: int, hw: tuple[int, int], cfg: DSAConfig, g: torch.Generator) -> dict[str, Tensor]:
    h, w = hw
    if fam == "color":
        b = (_rand(n, generator=g) - 0.5) * cfg.brightness
        s = _rand(n, generator=g) * cfg.saturation
        c = _rand(n, generator=g) + cfg.contrast
        return {"brightness": b, "saturation": s, "contrast": c}
    if fam == "crop":
        sh, sw = int(h * cfg.ratio_crop_pad + 0.5), int(w * cfg.ratio_crop_pad + 0.5)
        dy = _randint(-sh, sh + 1, (n,), g)
        dx = _randint(-sw, sw + 1, (n,), g)
        return {"shift": torch.stack([dy, dx], dim=1)}
    if fam == "cutout":
        kh, kw = int(h * cfg.ratio_cutout + 0.5), int(w * cfg.ratio_cutout + 0.5)
        cy = _randint(0, h + (1 - kh % 2), (n,), g)
        cx = _randint(0, w + (1 - kw % 2), (n,), g)
        size = torch.tensor([kh, kw], dtype=torch.int64, device=g.device).expand(n, 2).clone()
        return {"cutout_centre": torch.stack([cy, cx], dim=1), "cutout_size": size}
    if fam == "flip":
        return {"flip": _rand(n, generator=g) < cfg.prob_flip}
    if fam == "scale":
        lo = 1.0 / cfg.ratio_scale
        return {"scale": _rand(n, 2, generator=g) * (cfg.ratio_scale - lo) + lo}
    if fam == "rotate":
        return {"angle": (_rand(n, generator=g) - 0.5) * (2.0 * cfg.ratio_rotate * math.pi / 180.0)}
    raise ValueError(f"unknown DSA family {fam!r}; known families: {', '.join(FAMILIES)}")


def sample_dsa(
    n: int,
    im_size: int | Sequence[int],
    config: DSAConfig | None = None,
    generator: torch.Generator | None = None,
    family: str | None = None,
    per_sample_family: bool = False,
) -> DSAParams:
    """Draw DSA parameters for ``n`` images of size ``im_size`` (``H`` or ``(H, W)``, pixels).

    Only ``generator`` is consumed (the global RNG is never touched); the parameters live on the
    generator's device. Modes:

    - default ('S' mode): one family drawn uniformly from ``config.strategy`` for the whole call, with
      per-sample parameters;
    - ``family=...``: that family (any known family), no family draw;
    - ``per_sample_family=True``: every sample draws its own family from the strategy (SelMatch's
      per-image DSA); parameters for all the strategy's families are drawn for every sample.
    """
    if generator is None:
        raise ValueError("sample_dsa needs an explicit torch.Generator (the global RNG is never used)")
    cfg = config if config is not None else DSAConfig()
    hw = _as_hw(im_size)
    fams = cfg.families
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if per_sample_family:
        if family is not None:
            raise ValueError("give either family or per_sample_family=True, not both")
        fidx = _randint(0, len(fams), (n,), generator)
        tensors: dict[str, Tensor] = {"family_index": fidx}
        for f in fams:
            tensors.update(_sample_family(f, n, hw, cfg, generator))
        return DSAParams(PER_SAMPLE, tensors, fams)
    if family is None:
        family = fams[int(_randint(0, len(fams), (1,), generator)[0])]
    elif family not in _FAMILY_KEYS:
        raise ValueError(f"unknown DSA family {family!r}; known families: {', '.join(FAMILIES)}")
    return DSAParams(family, _sample_family(family, n, hw, cfg, generator))


# ----------------------------------------------------------------------------------------------------
# the families themselves: the op layer (fastdd.kernels.dsa_torch, fastdd.kernels.dsa)


def apply_dsa(x: Tensor, params: DSAParams) -> Tensor:
    """Apply sampled DSA parameters to ``x`` ``(N, C, H, W)`` (any float dtype, any device).

    Deterministic given ``params`` (replaying gives identical output) and differentiable w.r.t. ``x``
    (twice: the engine differentiates through it with ``create_graph=True``). ``params.n`` must equal
    ``N`` (use :meth:`DSAParams.expand` to broadcast one sample's transform). Parameters are moved to
    ``x.device`` if needed. Runs the op :func:`fastdd.kernels.apply_dsa`: one fused Triton launch on
    CUDA tensors, its torch twin (:func:`fastdd.kernels.dsa_torch.apply_dsa_torch`) on CPU tensors.
    """
    return kernels.apply_dsa(x, params)


def siamese_dsa(
    xs: Sequence[Tensor], config: DSAConfig | None, generator: torch.Generator, family: str | None = None
) -> tuple[list[Tensor], DSAParams]:
    """Siamese DSA: draw ONE transformation and apply it to every sample of every batch in ``xs``.

    All batches must share ``(H, W)``; batch sizes may differ. Returns the augmented batches and the
    one-sample parameters (replay with ``apply_dsa(x, params.expand(len(x)))``).
    """
    if not xs:
        raise ValueError("siamese_dsa needs at least one batch")
    hw = tuple(xs[0].shape[-2:])
    for x in xs:
        if tuple(x.shape[-2:]) != hw:
            raise ValueError(f"siamese batches must share (H, W): {hw} vs {tuple(x.shape[-2:])}")
    p1 = sample_dsa(1, hw, config, generator, family=family)
    return [apply_dsa(x, p1.expand(x.shape[0])) for x in xs], p1


class DSA:
    """Convenience wrapper: ``DSA(config)(x, generator)`` samples parameters and applies them.

    ``siamese=True`` draws one transform for the whole batch; ``per_sample_family=True`` draws a
    family per sample (SelMatch); ``return_params=True`` also returns the :class:`DSAParams`.
    """

    def __init__(self, config: DSAConfig | None = None) -> None:
        self.config = config if config is not None else DSAConfig()

    @overload
    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator,
        *,
        family: str | None = ...,
        per_sample_family: bool = ...,
        siamese: bool = ...,
        return_params: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator,
        *,
        family: str | None = ...,
        per_sample_family: bool = ...,
        siamese: bool = ...,
        return_params: Literal[True],
    ) -> tuple[Tensor, DSAParams]: ...

    def __call__(
        self,
        x: Tensor,
        generator: torch.Generator,
        *,
        family: str | None = None,
        per_sample_family: bool = False,
        siamese: bool = False,
        return_params: bool = False,
    ) -> Tensor | tuple[Tensor, DSAParams]:
        n = x.shape[0]
        if siamese:
            params = sample_dsa(
                1, x.shape[-2:], self.config, generator, family=family, per_sample_family=per_sample_family
            ).expand(n)
        else:
            params = self.sample(n, x.shape[-2:], generator, family=family, per_sample_family=per_sample_family)
        out = apply_dsa(x, params)
        return (out, params) if return_params else out

    def sample(
        self,
        n: int,
        im_size: int | Sequence[int],
        generator: torch.Generator,
        family: str | None = None,
        per_sample_family: bool = False,
    ) -> DSAParams:
        """:func:`sample_dsa` with this wrapper's config."""
        return sample_dsa(n, im_size, self.config, generator, family=family, per_sample_family=per_sample_family)

    @staticmethod
    def replay(x: Tensor, params: DSAParams) -> Tensor:
        """Re-apply stored parameters (same as :func:`apply_dsa`)."""
        return apply_dsa(x, params)

    def __repr__(self) -> str:
        return f"DSA({self.config!r})"
