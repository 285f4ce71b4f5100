"""The torch twin of the DSA op (:func:`fastdd.kernels.apply_dsa`): the six families as pure functions of
``(x, parameter tensors on x's device)``, vectorised over the batch, differentiable (twice) w.r.t. the pixels.

The op takes the *sampled* parameters: any object with ``n`` (samples), ``family`` (one of :data:`FAMILIES`,
or :data:`PER_SAMPLE` with ``families`` and a ``family_index`` tensor) and ``tensors`` (name → tensor with
leading dimension ``n``), such as :class:`fastdd.augment.DSAParams`. Sampling them stays in
:mod:`fastdd.augment`; this module imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: The DSA families, in the reference strategy order.
FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
#: ``params.family`` when every sample carries its own family (``tensors["family_index"]``).
PER_SAMPLE = "per_sample"


def _color(x: Tensor, b: Tensor, s: Tensor, c: Tensor) -> Tensor:
    # brightness, saturation, contrast in one affine map (saturation keeps each pixel's channel mean, so
    # contrast's sample mean is x's plus b): c·s·x + c(1−s)·mean_C(x) + (1−c)·mean(x) + b
    dt = x.dtype
    b, s, c = (v.to(dt).view(-1, 1, 1, 1) for v in (b, s, c))
    xc = x.mean(dim=1, keepdim=True)
    xm = xc.mean(dim=(2, 3), keepdim=True)
    return torch.addcmul(torch.addcmul((1 - c) * xm + b, c * (1 - s), xc), c * s, x)


def _translate(x: Tensor, shift: Tensor) -> Tensor:
    """``out[n, :, h, w] = x[n, :, h + dy_n, w + dx_n]`` where inside, else 0; ``shift`` (N, 2) int64."""
    n, ch, h, w = x.shape
    rows = torch.arange(h, device=x.device).unsqueeze(0) + shift[:, 0:1]  # (N, H)
    cols = torch.arange(w, device=x.device).unsqueeze(0) + shift[:, 1:2]  # (N, W)
    row_ok = (rows >= 0) & (rows < h)
    col_ok = (cols >= 0) & (cols < w)
    rows = rows.clamp(0, h - 1)
    cols = cols.clamp(0, w - 1)
    out = x.gather(2, rows.view(n, 1, h, 1).expand(n, ch, h, w))
    out = out.gather(3, cols.view(n, 1, 1, w).expand(n, ch, h, w))
    keep = (row_ok.view(n, 1, h, 1) & col_ok.view(n, 1, 1, w)).to(x.dtype)
    return out * keep


def _cutout(x: Tensor, centre: Tensor, size: Tensor) -> Tensor:
    """Zero the box ``[c - k//2, c - k//2 + k)`` per axis (clipped to the image); int64 (N, 2) inputs."""
    n, _, h, w = x.shape
    start = centre - torch.div(size, 2, rounding_mode="floor")  # (N, 2)
    stop = start + size
    ar_h = torch.arange(h, device=x.device).unsqueeze(0)
    ar_w = torch.arange(w, device=x.device).unsqueeze(0)
    in_r = (ar_h >= start[:, 0:1]) & (ar_h < stop[:, 0:1])  # (N, H)
    in_c = (ar_w >= start[:, 1:2]) & (ar_w < stop[:, 1:2])  # (N, W)
    mask = ~(in_r.view(n, 1, h, 1) & in_c.view(n, 1, 1, w))
    return x * mask.to(x.dtype)


def _flip(x: Tensor, flip: Tensor) -> Tensor:
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def _scale_theta(scale: Tensor, dtype: torch.dtype) -> Tensor:
    n = scale.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=torch.float64, device=scale.device)
    theta[:, 0, 0] = scale[:, 0]
    theta[:, 1, 1] = scale[:, 1]
    return theta.to(dtype)


def _rotate_theta(angle: Tensor, dtype: torch.dtype) -> Tensor:
    n = angle.shape[0]
    cos, sin = torch.cos(angle.to(torch.float64)), torch.sin(angle.to(torch.float64))
    theta = torch.zeros(n, 2, 3, dtype=torch.float64, device=angle.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = cos
    return theta.to(dtype)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Bilinear resampling of ``x`` on ``affine_grid(theta)`` (zeros padding, ``align_corners=True``)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _apply_one(x: Tensor, fam: str, t: dict[str, Tensor]) -> Tensor:
    if fam == "color":
        return _color(x, t["brightness"], t["saturation"], t["contrast"])
    if fam == "crop":
        return _translate(x, t["shift"])
    if fam == "cutout":
        return _cutout(x, t["cutout_centre"], t["cutout_size"])
    if fam == "flip":
        return _flip(x, t["flip"])
    if fam == "scale":
        return _affine(x, _scale_theta(t["scale"], x.dtype))
    if fam == "rotate":
        return _affine(x, _rotate_theta(t["angle"], x.dtype))
    raise ValueError(f"unknown DSA family {fam!r}; known families: {', '.join(FAMILIES)}")


def apply_by_rows(x: Tensor, groups: Sequence[tuple[Tensor, Any]]) -> Tensor:
    """``out[rows] = fn(x[rows], rows)`` for each ``(rows, fn)`` in ``groups`` (int64 row indices, disjoint);
    rows in no group are copied. Each function sees only its rows, and the pieces are put back in one
    gather, so the work is that of a per-sample loop without its Python cost. Differentiable."""
    pieces, order = [], []
    covered = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for rows, fn in groups:
        if rows.numel():
            pieces.append(fn(x.index_select(0, rows), rows))
            order.append(rows)
            covered[rows] = True
    rest = (~covered).nonzero().flatten()
    if rest.numel():
        pieces.append(x.index_select(0, rest))
        order.append(rest)
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat(pieces).index_select(0, torch.cat(order).argsort())


def _apply_per_sample(x: Tensor, fams: tuple[str, ...], t: dict[str, Tensor]) -> Tensor:
    """Each sample gets ``fams[family_index]``. On the CPU each family runs on its own rows only
    (:func:`apply_by_rows`); elsewhere (no host sync) every family present is computed on the whole batch
    and selected with ``torch.where``, scale and rotate sharing one ``grid_sample`` with a per-sample matrix."""
    fidx = t["family_index"]
    if x.device.type == "cpu":

        def run(fam):
            return lambda xr, rows: _apply_one(xr, fam, {k: v.index_select(0, rows) for k, v in t.items()})

        return apply_by_rows(x, [((fidx == k).nonzero().flatten(), run(fam)) for k, fam in enumerate(fams)])
    out = x
    affine_sel: Tensor | None = None
    theta: Tensor | None = None
    for k, fam in enumerate(fams):
        sel = fidx == k
        if fam in ("scale", "rotate"):
            th = _scale_theta(t["scale"], x.dtype) if fam == "scale" else _rotate_theta(t["angle"], x.dtype)
            if theta is None:
                theta, affine_sel = th, sel
            else:
                assert affine_sel is not None
                theta = torch.where(sel.view(-1, 1, 1), th, theta)
                affine_sel = affine_sel | sel
            continue
        out = torch.where(sel.view(-1, 1, 1, 1), _apply_one(x, fam, t), out)
    if theta is not None:
        assert affine_sel is not None
        out = torch.where(affine_sel.view(-1, 1, 1, 1), _affine(x, theta), out)
    return out


def apply_dsa_torch(x: Tensor, params: Any) -> Tensor:
    """:func:`fastdd.kernels.apply_dsa` in plain torch ops (the torch half of the op; what CPU tensors run)."""
    if x.dim() != 4:
        raise ValueError(f"apply_dsa expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if params.n != x.shape[0]:
        raise ValueError(
            f"DSA parameters cover {params.n} samples but x has {x.shape[0]}; "
            "use params.expand(n) to share one transform across a batch"
        )
    t = {k: (v if v.device == x.device else v.to(x.device)) for k, v in params.tensors.items()}
    if params.family == PER_SAMPLE:
        return _apply_per_sample(x, params.families, t)
    return _apply_one(x, params.family, t)


__all__ = ["FAMILIES", "PER_SAMPLE", "apply_dsa_torch", "apply_by_rows"]
