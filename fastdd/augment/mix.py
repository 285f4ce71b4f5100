"""Batch mixing (CutMix, Mixup) and ShufflePatches, batched and replayable.

- :func:`sample_cutmix` / :func:`apply_cutmix`: CutMix (Yun et al. 2019) as SRe2L and RDED apply it to a
  batch: one ``λ ~ Beta(β, β)`` per batch (β = 1: uniform), one permutation of the batch, and one box of area
  share ``1 − λ`` (sides ``⌊H·√(1−λ)⌋``, ``⌊W·√(1−λ)⌋``, centred on a uniform pixel, clipped to the image). Row
  ``i`` gets the box from row ``perm[i]``; ``λ`` is then corrected to the box's true area share (what the
  clipped box left of the own image).
- :func:`sample_mixup` / :func:`apply_mixup`: Mixup (Zhang et al. 2018): one ``λ ~ Beta(α, α)`` per batch,
  ``λ·x + (1 − λ)·x[perm]``.
- :func:`sample_shuffle_patches` / :func:`apply_shuffle_patches`: RDED's ShufflePatches(factor), here as a
  permutation of the ``factor × factor`` grid cells of each image (its own permutation per image); factor 1 is
  the identity.

Every draw comes from an explicit ``torch.Generator`` (CPU); the parameters are plain tensors
(:meth:`as_tensors` / :meth:`from_tensors`), so a relabel store keeps them and replays exactly the same
transformation. Applying them is pure indexing (CutMix, ShufflePatches) or one affine combination (Mixup), and
differentiable in the images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CutMixParams",
    "MixupParams",
    "ShufflePatchesParams",
    "sample_beta",
    "sample_cutmix",
    "apply_cutmix",
    "sample_mixup",
    "apply_mixup",
    "sample_shuffle_patches",
    "apply_shuffle_patches",
]


def _gamma(shape: float, generator: torch.Generator) -> float:
    """One Gamma(shape, 1) draw (Marsaglia & Tsang 2000; shape < 1 boosted by ``U^(1/shape)``), from ``generator``."""
    boost = 1.0
    if shape < 1:
        boost = float(torch.rand((), generator=generator, dtype=torch.float64)) ** (1.0 / shape)
        shape += 1.0
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn((), generator=generator, dtype=torch.float64))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if u > 0 and math.log(u) < 0.5 * z * z + d - d * v + d * math.log(v):
            return boost * d * v


def sample_beta(a: float, b: float, generator: torch.Generator) -> float:
    """One ``Beta(a, b)`` draw from ``generator``: uniform (one draw) when ``a = b = 1``, else ``X / (X + Y)`` with
    ``X ~ Gamma(a)``, ``Y ~ Gamma(b)``."""
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"Beta parameters must be finite and > 0, got {a}, {b}")
    if a == 1 and b == 1:
        return float(torch.rand((), generator=generator, dtype=torch.float64))
    x, y = _gamma(a, generator), _gamma(b, generator)
    return x / (x + y)


@dataclass(eq=False)
class CutMixParams:
    """One batch's CutMix: ``perm`` ``(n,)`` int64 (row ``i`` takes its box from row ``perm[i]``), ``box`` ``(4,)``
    int64 ``(top, left, height, width)`` in pixels (possibly empty), ``lam`` 0-d float64: the share of each
    image that stays its own, ``1 − box area / image area``."""

    perm: Tensor
    box: Tensor
    lam: Tensor

    @property
    def n(self) -> int:
        return self.perm.shape[0]

    def as_tensors(self) -> dict[str, Tensor]:
        return {"perm": self.perm.cpu(), "box": self.box.cpu(), "lam": self.lam.reshape(1).cpu()}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> CutMixParams:
        return cls(t["perm"].long().cpu(), t["box"].long().cpu(), t["lam"].double().reshape(()).cpu())

    def mix_targets(self, y: Tensor) -> Tensor:
        """``λ·y + (1 − λ)·y[perm]`` for target probabilities ``y`` ``(n, K)`` (the area-weighted labels)."""
        lam = float(self.lam)
        return lam * y + (1 - lam) * y[self.perm.to(y.device)]


def sample_cutmix(
    n: int, im_hw: tuple[int, int] | Sequence[int], generator: torch.Generator, beta: float = 1.0
) -> CutMixParams:
    """CutMix parameters for a batch of ``n`` images of size ``im_hw``: ``λ ~ Beta(β, β)``, a permutation, a box
    with sides ``⌊H·√(1−λ)⌋`` × ``⌊W·√(1−λ)⌋`` around a uniform centre ``(cy, cx)``, its corners ``cy ± ⌊h/2⌋`` and
    ``cx ± ⌊w/2⌋`` clipped to the image; ``lam`` corrected to ``1 − clipped area / (H·W)``."""
    h, w = (int(s) for s in im_hw)
    lam = sample_beta(beta, beta, generator)
    perm = torch.randperm(n, generator=generator)
    cy = int(torch.randint(h, (), generator=generator))
    cx = int(torch.randint(w, (), generator=generator))
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    y0, y1 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x0, x1 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    area = (y1 - y0) * (x1 - x0)
    box = torch.tensor([y0, x0, y1 - y0, x1 - x0], dtype=torch.int64)
    return CutMixParams(perm, box, torch.tensor(1.0 - area / (h * w), dtype=torch.float64))


def apply_cutmix(x: Tensor, params: CutMixParams) -> Tensor:
    """``x`` ``(n, C, H, W)`` with each row's box replaced by the same box of row ``perm[i]`` (exact: a selection)."""
    if x.dim() != 4 or x.shape[0] != params.n:
        raise ValueError(f"CutMix parameters cover {params.n} images, x has shape {tuple(x.shape)}")
    top, left, bh, bw = (int(v) for v in params.box)
    h, w = x.shape[2], x.shape[3]
    if top < 0 or left < 0 or bh < 0 or bw < 0 or top + bh > h or left + bw > w:
        raise ValueError(f"CutMix box {params.box.tolist()} falls outside {h}x{w} images")
    mask = torch.zeros(h, w, dtype=torch.bool, device=x.device)
    mask[top : top + bh, left : left + bw] = True
    return torch.where(mask, x[params.perm.to(x.device)], x)


@dataclass(eq=False)
class MixupParams:
    """One batch's Mixup: ``perm`` ``(n,)`` int64 and ``lam`` 0-d float64; row ``i`` becomes
    ``λ·x[i] + (1 − λ)·x[perm[i]]``."""

    perm: Tensor
    lam: Tensor

    @property
    def n(self) -> int:
        return self.perm.shape[0]

    def as_tensors(self) -> dict[str, Tensor]:
        return {"perm": self.perm.cpu(), "lam": self.lam.reshape(1).cpu()}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor]) -> MixupParams:
        return cls(t["perm"].long().cpu(), t["lam"].double().reshape(()).cpu())

    def mix_targets(self, y: Tensor) -> Tensor:
        lam = float(self.lam)
        return lam * y + (1 - lam) * y[self.perm.to(y.device)]


def sample_mixup(n: int, generator: torch.Generator, alpha: float = 0.8) -> MixupParams:
    """Mixup parameters for a batch of ``n``: ``λ ~ Beta(α, α)`` and a permutation."""
    lam = sample_beta(alpha, alpha, generator)
    perm = torch.randperm(n, generator=generator)
    return MixupParams(perm, torch.tensor(lam, dtype=torch.float64))


def apply_mixup(x: Tensor, params: MixupParams) -> Tensor:
    """``λ·x + (1 − λ)·x[perm]`` (``λ`` a Python float, the arithmetic in ``x``'s dtype)."""
    if x.dim() < 1 or x.shape[0] != params.n:
        raise ValueError(f"Mixup parameters cover {params.n} images, x has shape {tuple(x.shape)}")
    lam = float(params.lam)
    return lam * x + (1 - lam) * x[params.perm.to(x.device)]


@dataclass(eq=False)
class ShufflePatchesParams:
    """Per image a permutation of its ``factor × factor`` grid cells (row-major): ``perm`` ``(n, factor²)`` int64;
    output cell ``j`` of image ``i`` is input cell ``perm[i, j]``."""

    factor: int
    perm: Tensor

    def __post_init__(self) -> None:
        if self.perm.dim() != 2 or self.perm.shape[1] != self.factor**2:
            raise ValueError(
                f"ShufflePatches(factor={self.factor}) needs perm (n, {self.factor**2}), got {tuple(self.perm.shape)}"
            )

    @property
    def n(self) -> int:
        return self.perm.shape[0]

    def as_tensors(self) -> dict[str, Tensor]:
        return {"perm": self.perm.cpu()}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], factor: int) -> ShufflePatchesParams:
        return cls(factor, t["perm"].long().cpu())


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"ShufflePatches factor must be an integer >= 1, got {factor!r}")


def sample_shuffle_patches(n: int, factor: int, generator: torch.Generator) -> ShufflePatchesParams:
    """A random permutation of the ``factor²`` cells for each of ``n`` images (``n·factor²`` uniform draws, then a
    stable argsort per image); factor 1 draws nothing (the identity)."""
    _check_factor(factor)
    if factor == 1:
        return ShufflePatchesParams(1, torch.zeros(n, 1, dtype=torch.int64))
    u = torch.rand(n, factor * factor, generator=generator, dtype=torch.float64)
    return ShufflePatchesParams(factor, u.argsort(dim=1, stable=True))


def apply_shuffle_patches(x: Tensor, params: ShufflePatchesParams) -> Tensor:
    """``x`` ``(n, C, H, W)`` cut into ``factor × factor`` cells of ``(H/factor, W/factor)``, each image's cells
    permuted by its row of ``params.perm``, reassembled. ``H`` and ``W`` must be multiples of the factor."""
    f = params.factor
    _check_factor(f)
    if x.dim() != 4 or x.shape[0] != params.n:
        raise ValueError(f"ShufflePatches parameters cover {params.n} images, x has shape {tuple(x.shape)}")
    if f == 1:
        return x
    n, c, h, w = x.shape
    if h % f or w % f:
        raise ValueError(f"ShufflePatches(factor={f}) needs an image size divisible by {f}, got {h}x{w}")
    ph, pw = h // f, w // f
    cells = x.reshape(n, c, f, ph, f, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, f * f, c, ph, pw)
    rows = torch.arange(n, device=x.device).unsqueeze(1)
    cells = cells[rows, params.perm.to(x.device)]
    return cells.reshape(n, f, f, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
