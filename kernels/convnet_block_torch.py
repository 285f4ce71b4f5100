"""Closed-form torch backward and double backward of the ConvNet block (instance norm + ReLU + 2x2 pool).

``norm_act_pool_closed(x, weight, bias, eps)`` is the function of the composite
:func:`fastdd.kernels.norm_act_pool_reference`, ``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2, 2)``,
with the same forward ops (bitwise the same output) but its own autograd:

* :class:`NormActPoolTorch`: forward = ``native_group_norm`` → ``relu_`` → ``avg_pool2d`` (what the
  composite runs), keeping x, the per-plane ``mean`` / ``rstd`` and the ReLU mask (the ReLU output
  buffer turned into 0 / 1 in place, so the forward allocates nothing extra);
* its backward is :class:`NormActPoolTorchBackward`, one autograd node whose forward is the first-order
  backward (gx, gw, gb) and whose backward is the closed-form double backward
  (``once_differentiable``: third derivatives are not provided).

So ``autograd.grad(..., create_graph=True)`` records one node per block instead of the composite's
dozens of ATen ops (30 in its first backward, 87 in its double backward per block), and both backward
orders are a few passes over the full-size tensors, written into buffers that are reused in place: on
the CPU a fresh full-size allocation costs about as much as a pass (its pages are faulted in).

The math is that of :mod:`fastdd.kernels.convnet_block` (the Triton kernels), per ``(n, c)`` plane of
``M = H * W`` pixels, with ``r = rstd``, ``xh = (x - mean) * r``, ``z = w * xh + b``,
``g = (z > 0) * unpool(gy) / 4`` (zero on an odd last row / column the pool drops) and
``P(v) = v - mean(v) - xh * mean(v * xh)``:

* backward: ``gx = r * w * P(g)``, ``gw = sum_n sum(g * xh)``, ``gb = sum_n sum(g)``;
* double backward of ``S = <hx, gx> + <hw, gw> + <hb, gb>``: ``dS/dg = w r P(hx) + hw xh + hb``,
  ``dS/dgy`` = the mean over each cell's four taps of ``(z > 0) * dS/dg``,
  ``dS/dw = sum_n r <P(hx), g>``, ``dS/db = 0`` and
  ``dS/dx = r^2 xh (q p - Cc) / M - r^2 (p w P(g) / M + q P(hx)) + hw r P(g)`` with
  ``Cc = w (sum(hx g) - sum(g) sum(hx) / M)``, ``q = w sum(g xh) / M``, ``p = sum(hx xh)``.

Every full-size expression is expanded into ``a * x + b * g + c * hx + d`` with per-plane scalars
``a..d`` (shape ``(N, C, 1, 1)``) and evaluated with ``addcmul`` chains; xh is never materialised
(``sum(v * xh) = r * (sum(v * x) - mean * sum(v))``, the form ATen's own group-norm backward uses).
Plane reductions are ``.sum((2, 3))`` and per-plane dot products one ``bmm`` each (a single pass
over both operands, no product temporary). The per-plane ``sum(g)`` and ``sum(g * xh)`` of the
backward are kept for the double backward, which then reads ``g`` only once more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["norm_act_pool_closed", "NormActPoolTorch", "NormActPoolTorchBackward"]


def _plane(v: torch.Tensor) -> torch.Tensor:
    """A per-plane quantity ``(N, C)`` as ``(N, C, 1, 1)``, to broadcast over the planes."""
    return v.view(v.shape[0], v.shape[1], 1, 1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-plane dot products of two contiguous ``(N, C, H, W)`` tensors: ``(N, C)``, in one pass.

    One ``bmm`` over chunks of ``k`` whole rows (``k * W <= 32``, ``k`` dividing ``H``), then a sum of
    the chunks: a dot over a whole 32x32 plane accumulated in one float32 sum loses about 10x the
    precision of ``(a * b).sum()`` (cascade summation); chunked, it matches it, without the product
    temporary, and is faster than one long dot per plane."""
    n, c, h, w = a.shape
    k = max([d for d in range(1, h + 1) if h % d == 0 and d * w <= 32] or [1])
    length = k * w
    return torch.bmm(a.view(-1, 1, length), b.view(-1, length, 1)).view(n, c, h // k).sum(-1)


def _fill_grad_z(out: torch.Tensor, mask: torch.Tensor, gq: torch.Tensor) -> torch.Tensor:
    """``out = mask * unpool(gq)`` in place (``out``, ``mask``: (N, C, H, W); ``gq``: (N, C, H//2, W//2)),
    zero on an odd last row / column; returns ``out``.

    The pooled values are first doubled along W into a half-size buffer, then broadcast over the two
    rows of each cell with W innermost (contiguous, vectorised), which is faster on the CPU than one
    broadcast with a stride-0 innermost dimension."""
    n, c, h, w = out.shape
    ho, wo = gq.shape[2], gq.shape[3]
    half = gq.unsqueeze(-1).expand(n, c, ho, wo, 2).reshape(n, c, ho, 2 * wo)
    crop = out[:, :, : 2 * ho, : 2 * wo].unflatten(2, (ho, 2))
    torch.mul(mask[:, :, : 2 * ho, : 2 * wo].unflatten(2, (ho, 2)), half.unsqueeze(3), out=crop)
    if h != 2 * ho:
        out[:, :, 2 * ho :].zero_()
    if w != 2 * wo:
        out[:, :, :, 2 * wo :].zero_()
    return out


def _pool_sum(t: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """The sum of the four taps of each 2x2 cell of ``t`` (N, C, H, W), floor: (N, C, ho, wo)."""
    rows = t[:, :, : 2 * ho, : 2 * wo].unflatten(2, (ho, 2))
    half = torch.add(rows[:, :, :, 0], rows[:, :, :, 1])
    cols = half.unflatten(3, (wo, 2))
    return torch.add(cols[..., 0], cols[..., 1])


class NormActPoolTorchBackward(torch.autograd.Function):
    """The backward of :class:`NormActPoolTorch` as one differentiable node:
    (x, weight, bias, mean, rstd, mask, gy) -> (gx, gw, gb). Its backward is the closed-form double
    backward; it is not differentiable again."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, rstd, mask, gy):
        n, c, h, w = x.shape
        m = h * w
        gy = gy.contiguous()
        gq = gy * 0.25  # exactly avg_pool2d's backward gy / 4 (a power of two)
        g = _fill_grad_z(torch.empty_like(x), mask, gq)  # dL/dz, bitwise the composite's
        s_g = g.sum((2, 3))
        mu, r = _plane(mean), _plane(rstd)
        s_gxh = rstd * (_dot(g, x) - mean * s_g)  # sum(g * xh) per plane
        rw = r * weight.view(1, c, 1, 1)
        # gx = r w (g - sum(g)/M - xh sum(g xh)/M) = rw g + a x + c0, written over g.
        a = rw * r * _plane(s_gxh) * (-1.0 / m)
        c0 = rw * _plane(s_g) * (-1.0 / m) - a * mu
        gx = torch.addcmul(c0, rw, g, out=g).addcmul_(a, x)
        ctx.save_for_backward(x, weight, mean, rstd, mask, gy, s_g, s_gxh)
        ctx.set_materialize_grads(False)
        return gx, s_gxh.sum(0), s_g.sum(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, hx, hw, hb):
        x, weight, mean, rstd, mask, gy, s_g, s_gxh = ctx.saved_tensors
        gq = gy * 0.25
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_gy = ctx.needs_input_grad[6]
        n, c, h, w = x.shape
        ho, wo = gq.shape[2], gq.shape[3]
        m = h * w
        zc = x.new_zeros(c)
        hw = zc if hw is None else hw
        hb = zc if hb is None else hb
        u = None if hx is None else hx.contiguous()
        mu, r = _plane(mean), _plane(rstd)
        wt = weight.view(1, c, 1, 1)
        wr = wt * r
        if u is not None:
            s_u = u.sum((2, 3))
            p = rstd * (_dot(u, x) - mean * s_u)  # sum(u * xh) per plane
        else:
            s_u = p = torch.zeros_like(s_g)
        mean_u, mean_uxh = _plane(s_u) / m, _plane(p) / m
        mean_g, mean_gxh = _plane(s_g) / m, _plane(s_gxh) / m

        buf = None
        dgy = None
        if need_gy:
            # dS/dg = w r P(u) + hw xh + hb = wr u + (L r) x + k, L = hw - wr mean(u xh); masked, pooled.
            lr = (hw.view(1, c, 1, 1) - wr * mean_uxh) * r
            k = hb.view(1, c, 1, 1) - wr * mean_u - lr * mu
            buf = torch.addcmul(k, lr, x)
            if u is not None:
                buf.addcmul_(wr, u)
            buf.mul_(mask)
            dgy = _pool_sum(buf, ho, wo).mul_(0.25)

        if not (need_x or need_w):
            return None, None, None, None, None, None, dgy
        g = _fill_grad_z(torch.empty_like(x) if buf is None else buf, mask, gq)
        s_ug = _dot(u, g) if u is not None else torch.zeros_like(s_g)
        dw = None
        if need_w:
            dw = (rstd * (s_ug - s_u / m * s_g - p / m * s_gxh)).sum(0)
        dx = None
        if need_x:
            hwr = hw.view(1, c, 1, 1) * r
            cc = wt * (_plane(s_ug) - _plane(s_g) * mean_u)
            q = wt * mean_gxh
            r2 = r * r
            pp = _plane(p)
            coef_xh = r2 * (q * pp - cc) / m
            coef_pg = hwr - r2 * pp * wt / m
            coef_pu = r2 * q
            kx = (coef_xh - coef_pg * mean_gxh + coef_pu * mean_uxh) * r
            k0 = coef_pu * mean_u - coef_pg * mean_g - kx * mu
            # dx = coef_pg g + kx x - coef_pu u + k0, written over g.
            dx = torch.addcmul(k0, coef_pg, g, out=g).addcmul_(kx, x)
            if u is not None:
                dx.addcmul_(coef_pu, u, value=-1.0)
        db = torch.zeros_like(weight) if need_b else None  # the ReLU mask is piecewise constant in b
        return dx, dw, db, None, None, None, dgy


class NormActPoolTorch(torch.autograd.Function):
    """Instance norm + ReLU + 2x2 average pool, (x, weight, bias, eps) -> y, with the forward ops of the
    composite and a closed-form backward (:class:`NormActPoolTorchBackward`). Inputs contiguous and
    of one floating dtype; :func:`norm_act_pool_closed` arranges that."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        n, c, h, w = x.shape
        z, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, h * w, c, eps)
        z.relu_()
        y = F.avg_pool2d(z, 2, 2)
        mask = z.sign_()  # relu(z) >= 0 -> 1 where z > 0, else 0: the ReLU derivative
        ctx.save_for_backward(x, weight, bias, mean, rstd, mask)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, rstd, mask = ctx.saved_tensors
        gx, gw, gb = NormActPoolTorchBackward.apply(x, weight, bias, mean, rstd, mask, gy)
        return gx, gw, gb, None


def norm_act_pool_closed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2, 2)`` (bitwise the composite's forward)
    with a closed-form backward and double backward: x (N, C, H, W) -> (N, C, H // 2, W // 2)."""
    if x.dim() != 4 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(
            f"norm_act_pool expects x (N, C, H, W) and weight, bias (C,); got x "
            f"{tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    if x.numel() == 0 or not x.is_floating_point():
        return F.avg_pool2d(F.relu(F.group_norm(x, x.shape[1], weight, bias, eps=eps)), 2, 2)
    # Made contiguous / cast outside the autograd.Function, so these steps stay differentiable.
    x = x.contiguous()
    weight = weight.to(x.dtype).contiguous()
    bias = bias.to(x.dtype).contiguous()
    return NormActPoolTorch.apply(x, weight, bias, float(eps))
