"""Random resized crops (torchvision's ``RandomResizedCrop`` + flip), batched, differentiable and replayable.

:func:`sample_resized_crops` draws one box per sample with torchvision's rule (10 attempts of an area share
``U(scale)`` and a log-uniform aspect ratio in ``ratio``, the first that fits; else a centre crop with the
ratio clamped), plus a horizontal flip with probability ``prob_flip``. :func:`apply_resized_crops` cuts each
box and resizes it bilinearly (``F.interpolate(mode="bilinear", align_corners=False)``, no antialias) to the
output size, as two batched matrix products per image: differentiable in the images, deterministic on CUDA.

SRe2L's recovery views, RDED's candidate patches and the ``kd`` protocol's region crops all use it; the
parameters (:class:`ResizedCrops`) are plain tensors, so a relabel store can keep and replay them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ResizedCrops", "sample_resized_crops", "apply_resized_crops", "bilinear_matrix", "crop_matrix"]


def bilinear_matrix(out: int, inp: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``(out, inp)``: the weights with which ``F.interpolate(mode="bilinear", align_corners=False)`` resizes one
    axis of length ``inp`` to ``out`` (source position ``(i + 0.5)·inp/out − 0.5``, clamped at 0)."""
    src = ((torch.arange(out, dtype=torch.float64) + 0.5) * (inp / out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(inp - 1)
    i1, w1, rows = (i0 + 1).clamp_max(inp - 1), src - src.floor(), torch.arange(out)
    m = torch.zeros(out, inp, dtype=torch.float64)
    m[rows, i0] += 1 - w1
    m[rows, i1] += w1
    return m.to(dtype=dtype, device=device)


def crop_matrix(out: int, full: int, start: Tensor, length: Tensor, flip: Tensor | None = None) -> Tensor:
    """``(N, out, full)`` float64 on the CPU: per sample, the weights that cut ``[start, start + length)`` from an
    axis of length ``full`` and resize it bilinearly to ``out`` (reversed along the output when ``flip``)."""
    n = len(start)
    m = torch.zeros(n, out, full, dtype=torch.float64)
    cache: dict[int, Tensor] = {}
    for i, (s, ln) in enumerate(zip(start.tolist(), length.tolist())):
        if ln not in cache:
            cache[ln] = bilinear_matrix(out, ln, torch.float64, "cpu")
        m[i, :, s : s + ln] = cache[ln]
    if flip is not None:
        f = flip.cpu().bool()
        m[f] = m[f].flip(1)
    return m


@dataclass(eq=False)
class ResizedCrops:
    """Boxes and flips for ``n`` samples: ``top``, ``left``, ``height``, ``width`` ``(n,)`` int64 pixels of the
    input; ``flip`` ``(n,)`` bool (mirror after resizing)."""

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    flip: Tensor

    def __post_init__(self) -> None:
        n = self.top.shape
        if any(t.shape != n or t.dim() != 1 for t in (self.left, self.height, self.width, self.flip)):
            raise ValueError("ResizedCrops needs five (n,) tensors of one length")

    @property
    def n(self) -> int:
        return self.top.shape[0]

    def index(self, idx: Tensor | slice | Sequence[int]) -> ResizedCrops:
        return ResizedCrops(*(t[idx] for t in (self.top, self.left, self.height, self.width, self.flip)))

    def as_tensor(self) -> Tensor:
        """``(n, 5)`` int64: top, left, height, width, flip (what a store keeps)."""
        return torch.stack([self.top, self.left, self.height, self.width, self.flip.long()], 1).cpu()

    @classmethod
    def from_tensor(cls, t: Tensor) -> ResizedCrops:
        t = t.long().cpu()
        return cls(t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4].bool())

    def check(self, im_hw: tuple[int, int]) -> None:
        """``ValueError`` unless every box lies inside an image of ``im_hw`` and is at least one pixel."""
        h, w = im_hw
        ok = (self.top >= 0) & (self.left >= 0) & (self.height >= 1) & (self.width >= 1)
        ok &= (self.top + self.height <= h) & (self.left + self.width <= w)
        if not bool(ok.all()):
            raise ValueError(f"crop boxes fall outside {h}x{w} images")


def sample_resized_crops(
    n: int,
    im_hw: tuple[int, int] | Sequence[int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    prob_flip: float = 0.5,
) -> ResizedCrops:
    """``n`` boxes by torchvision's ``RandomResizedCrop.get_params`` rule (vectorised: 10 attempts per sample, the
    first that fits, else the centre crop with the aspect ratio clamped to ``ratio``) and flips with probability
    ``prob_flip``. Draws only from ``generator`` (CPU), a fixed number of values per call."""
    h, w = (int(s) for s in im_hw)
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")
    area = h * w
    u = torch.rand(n, 10, 4, generator=generator, dtype=torch.float64)
    target = area * (lo + (hi - lo) * u[..., 0])
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[..., 1])
    cw = torch.sqrt(target * aspect).round().long()
    ch = torch.sqrt(target / aspect).round().long()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.long().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    pick = first.clamp_min(0)
    bh, bw = ch[rows, pick], cw[rows, pick]
    top = (u[rows, pick, 2] * (h - bh + 1)).floor().long().clamp(max=h - bh)
    left = (u[rows, pick, 3] * (w - bw + 1)).floor().long().clamp(max=w - bw)
    fail = first < 0
    if bool(fail.any()):  # torchvision's fallback: the centre crop, the whole image at a ratio within bounds
        in_ratio = w / h
        if in_ratio < ratio[0]:
            fw, fh = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            fh, fw = h, int(round(h * ratio[1]))
        else:
            fw, fh = w, h
        bh, bw = torch.where(fail, fh, bh), torch.where(fail, fw, bw)
        top = torch.where(fail, (h - fh) // 2, top)
        left = torch.where(fail, (w - fw) // 2, left)
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < prob_flip
    return ResizedCrops(top, left, bh, bw, flip)


def apply_resized_crops(x: Tensor, crops: ResizedCrops, out_hw: tuple[int, int] | Sequence[int]) -> Tensor:
    """``(N, C, out_h, out_w)``: each image of ``x`` ``(N, C, H, W)`` cut to its box, resized bilinearly
    (``align_corners=False``, no antialias: ``F.interpolate`` of the crop) and flipped where ``crops.flip``.
    Differentiable in ``x``."""
    if x.dim() != 4 or crops.n != x.shape[0]:
        raise ValueError(f"crops cover {crops.n} samples, x has shape {tuple(x.shape)}")
    crops.check((x.shape[2], x.shape[3]))
    oh, ow = (int(s) for s in out_hw)
    rows = crop_matrix(oh, x.shape[2], crops.top, crops.height).to(dtype=x.dtype, device=x.device)
    cols = crop_matrix(ow, x.shape[3], crops.left, crops.width, crops.flip).to(dtype=x.dtype, device=x.device)
    return rows.unsqueeze(1) @ x @ cols.transpose(1, 2).unsqueeze(1)
