"""Crop + flip augmentation and SelMatch's combined evaluation augmentation, batched and replayable.

- :func:`crop_flip`: ``RandomCrop(size, padding=p)`` with zero fill (an integer translation in
  ``[-p, p]`` per axis) followed by a horizontal flip with probability 0.5, per sample.
- :func:`combined_augment`: SelMatch's ``combined`` augmentation. Rows marked distilled get DSA with a
  family drawn per sample (the reference applies DSA to one image at a time); the other (selected real)
  rows get crop(pad 4) + flip. Done on the whole batch at once, no per-image loop.

Like DSA, sampling draws only from an explicit :class:`torch.Generator`, and the returned parameter
objects replay the exact same transformation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor

from ..kernels.dsa_torch import _flip, _translate, apply_by_rows
from .dsa import DSAConfig, DSAParams, apply_dsa, sample_dsa

__all__ = [
    "CropFlipParams",
    "CombinedParams",
    "sample_crop_flip",
    "apply_crop_flip",
    "crop_flip",
    "sample_combined",
    "apply_combined",
    "combined_augment",
]


@dataclass(eq=False)
class CropFlipParams:
    """Parameters of crop + flip for ``n`` samples.

    Attributes:
        shift: (n, 2) int64 translation ``(dy, dx)`` in pixels: ``out[h, w] = x[h + dy, w + dx]``
            (0 outside); a zero-padded random crop with offset ``o`` is ``shift = o - padding``.
        flip: (n,) bool, flip horizontally (after the crop).
    """

    shift: Tensor
    flip: Tensor

    def __post_init__(self) -> None:
        if self.shift.dim() != 2 or self.shift.shape[1] != 2 or self.flip.shape != self.shift.shape[:1]:
            raise ValueError(
                f"CropFlipParams needs shift (n, 2) and flip (n,), got "
                f"{tuple(self.shift.shape)} and {tuple(self.flip.shape)}"
            )

    @property
    def n(self) -> int:
        return self.shift.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CropFlipParams:
        return CropFlipParams(
            self.shift.to(device, non_blocking=non_blocking), self.flip.to(device, non_blocking=non_blocking)
        )

    def expand(self, n: int) -> CropFlipParams:
        """Broadcast a one-sample transform to ``n`` samples."""
        if self.n != 1:
            raise ValueError(f"expand needs parameters for exactly 1 sample, these cover {self.n}")
        return CropFlipParams(self.shift.expand(n, 2), self.flip.expand(n))

    def index(self, idx: Tensor | slice | Sequence[int]) -> CropFlipParams:
        if isinstance(idx, slice):
            return CropFlipParams(self.shift[idx], self.flip[idx])
        i = torch.as_tensor(idx).to(self.shift.device)
        return CropFlipParams(self.shift[i], self.flip[i])

    def state_dict(self) -> dict[str, Any]:
        return {"shift": self.shift.contiguous().clone(), "flip": self.flip.contiguous().clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CropFlipParams:
        return cls(state["shift"], state["flip"])


def sample_crop_flip(n: int, generator: torch.Generator, padding: int = 4, prob_flip: float = 0.5) -> CropFlipParams:
    """Draw crop offsets (uniform integers in ``[-padding, padding]`` per axis) and flips for ``n`` samples.

    Uses only ``generator``; the tensors live on the generator's device.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    dev = generator.device
    dy = torch.randint(-padding, padding + 1, (n,), generator=generator, dtype=torch.int64, device=dev)
    dx = torch.randint(-padding, padding + 1, (n,), generator=generator, dtype=torch.int64, device=dev)
    flip = torch.rand(n, generator=generator, dtype=torch.float64, device=dev) < prob_flip
    return CropFlipParams(torch.stack([dy, dx], dim=1), flip)


def apply_crop_flip(x: Tensor, params: CropFlipParams) -> Tensor:
    """Apply crop (zero-filled translation) then horizontal flip to ``x`` (N, C, H, W); differentiable."""
    if x.dim() != 4 or params.n != x.shape[0]:
        raise ValueError(f"crop/flip parameters cover {params.n} samples, x has shape {tuple(x.shape)}")
    p = params if params.shift.device == x.device else params.to(x.device)
    return _flip(_translate(x, p.shift), p.flip)


@overload
def crop_flip(
    x: Tensor,
    generator: torch.Generator,
    padding: int = ...,
    prob_flip: float = ...,
    return_params: Literal[False] = ...,
) -> Tensor: ...


@overload
def crop_flip(
    x: Tensor, generator: torch.Generator, padding: int = ..., prob_flip: float = ..., *, return_params: Literal[True]
) -> tuple[Tensor, CropFlipParams]: ...


def crop_flip(
    x: Tensor, generator: torch.Generator, padding: int = 4, prob_flip: float = 0.5, return_params: bool = False
) -> Tensor | tuple[Tensor, CropFlipParams]:
    """Random crop with zero padding ``padding`` (pixels) + horizontal flip, per sample, on (N, C, H, W)."""
    params = sample_crop_flip(x.shape[0], generator, padding, prob_flip)
    out = apply_crop_flip(x, params)
    return (out, params) if return_params else out


@dataclass(eq=False)
class CombinedParams:
    """Parameters of one :func:`combined_augment` call over ``n`` samples.

    Both parameter sets cover all ``n`` rows (so the generator's consumption does not depend on the
    mask); ``distilled`` (n,) bool picks which one each row uses.
    """

    dsa: DSAParams
    crop_flip: CropFlipParams
    distilled: Tensor

    @property
    def n(self) -> int:
        return self.distilled.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CombinedParams:
        return CombinedParams(
            self.dsa.to(device, non_blocking),
            self.crop_flip.to(device, non_blocking),
            self.distilled.to(device, non_blocking=non_blocking),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "dsa": self.dsa.state_dict(),
            "crop_flip": self.crop_flip.state_dict(),
            "distilled": self.distilled.contiguous().clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CombinedParams:
        return cls(
            DSAParams.from_state_dict(state["dsa"]),
            CropFlipParams.from_state_dict(state["crop_flip"]),
            state["distilled"],
        )


def sample_combined(
    distilled_mask: Tensor,
    im_size: int | Sequence[int],
    generator: torch.Generator,
    config: DSAConfig | None = None,
    padding: int = 4,
) -> CombinedParams:
    """Draw per-sample-family DSA parameters and crop/flip parameters for every row of the mask."""
    mask = torch.as_tensor(distilled_mask)
    if mask.dim() != 1:
        raise ValueError(f"distilled_mask must be 1-D (N,), got shape {tuple(mask.shape)}")
    n = mask.shape[0]
    cfg = config or DSAConfig()
    dsa = sample_dsa(n, im_size, cfg, generator, per_sample_family=True)
    # real images are flipped only when the strategy flips (no flips for digits, as DSA there)
    cf = sample_crop_flip(n, generator, padding=padding, prob_flip=cfg.prob_flip if "flip" in cfg.families else 0.0)
    return CombinedParams(dsa, cf, mask.to(device=generator.device, dtype=torch.bool))


def apply_combined(x: Tensor, params: CombinedParams) -> Tensor:
    """Replay combined augmentation: distilled rows get DSA, the others crop + flip. Differentiable."""
    if x.dim() != 4 or params.n != x.shape[0]:
        raise ValueError(f"combined parameters cover {params.n} samples, x has shape {tuple(x.shape)}")
    sel = params.distilled.to(x.device)
    if x.device.type == "cpu":  # each row runs its own augmentation only
        return apply_by_rows(
            x,
            [
                (sel.nonzero().flatten(), lambda xr, rows: apply_dsa(xr, params.dsa.index(rows))),
                ((~sel).nonzero().flatten(), lambda xr, rows: apply_crop_flip(xr, params.crop_flip.index(rows))),
            ],
        )
    return torch.where(sel.view(-1, 1, 1, 1), apply_dsa(x, params.dsa), apply_crop_flip(x, params.crop_flip))


@overload
def combined_augment(
    x: Tensor,
    distilled_mask: Tensor,
    generator: torch.Generator,
    config: DSAConfig | None = ...,
    padding: int = ...,
    return_params: Literal[False] = ...,
) -> Tensor: ...


@overload
def combined_augment(
    x: Tensor,
    distilled_mask: Tensor,
    generator: torch.Generator,
    config: DSAConfig | None = ...,
    padding: int = ...,
    *,
    return_params: Literal[True],
) -> tuple[Tensor, CombinedParams]: ...


def combined_augment(
    x: Tensor,
    distilled_mask: Tensor,
    generator: torch.Generator,
    config: DSAConfig | None = None,
    padding: int = 4,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, CombinedParams]:
    """SelMatch's evaluation augmentation on a batch ``x`` (N, C, H, W).

    ``distilled_mask`` (N,) bool: True rows get DSA with a family drawn per sample (``config``'s
    strategy), False rows get random crop (zero padding ``padding`` pixels) + horizontal flip.
    """
    if distilled_mask.shape != x.shape[:1]:
        raise ValueError(f"distilled_mask must have shape ({x.shape[0]},), got {tuple(distilled_mask.shape)}")
    params = sample_combined(distilled_mask, x.shape[-2:], generator, config, padding)
    out = apply_combined(x, params)
    return (out, params) if return_params else out
