"""Fused instance norm (affine) + ReLU + 2x2 average pool: the default ConvNet block after its conv.

``norm_act_pool(x, weight, bias, eps)`` equals
``F.avg_pool2d(F.relu(F.group_norm(x, C, weight, bias, eps)), 2, 2)``: x (N, C, H, W) float32 or
float64, weight and bias (C,), output (N, C, H // 2, W // 2). The statistics (mean, biased variance)
cover the whole H x W plane; the pool floors odd H / W, so a last odd row / column enters the
statistics but not the output.

The torch path is :func:`fastdd.kernels.norm_act_pool_torch`; the reference
:func:`fastdd.kernels.norm_act_pool_reference`. The Triton path has three kernels, one program per (n, c) plane (grid
``(N * C,)``), each looping
over the plane in tiles of ``BLOCK`` elements, computing in the input dtype:

* forward: plane mean and variance (two passes), then the pooled output from the four taps of each
  2x2 cell; the per-plane ``mean`` and ``rstd = 1 / sqrt(var + eps)`` are kept for the backward;
* backward (``NormActPoolBackward.forward``): ``gx`` and per-plane partial sums of ``gw``, ``gb``;
* double backward (``NormActPoolBackward.backward``): grads of ``<hx, gx> + <hw, gw> + <hb, gb>``
  with respect to x, weight and gy (bias gets none: the ReLU mask is piecewise constant).

Per-plane partial sums of weight / bias grads are reduced over N with torch (deterministic, no
atomics). Notation used below, per plane of M = H * W pixels: ``xh = (x - mean) * rstd``,
``z = w * xh + b``, ``g = dL/dz = (z > 0) * unpool(gy) / 4`` (zero on a dropped odd row / column),
``P(v) = v - mean(v) - xh * mean(v * xh)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import norm_act_pool_reference
from ._common import KernelSpec, block_and_warps, on_device_of, triton_dtype

__all__ = ["norm_act_pool_triton", "NormActPoolFunction", "NormActPoolBackward", "compile_specs"]


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _plane_grad_z(gy_base, idx, live, z, W, HO, WO):
    """g = dL/dz at flat pixels ``idx`` of a plane: gy of the pooled cell / 4 where z > 0, else 0
    (also 0 on a dropped odd row / column and on dead lanes)."""
    row = idx // W
    col = idx % W
    on = live & (row < 2 * HO) & (col < 2 * WO) & (z > 0)
    gyv = tl.load(gy_base + (row // 2) * WO + col // 2, mask=on, other=0.0)
    return gyv * 0.25


@triton.jit
def _nap_fwd_kernel(X, WT, BS, Y, MEAN, RSTD, C, H, W, eps, BLOCK: tl.constexpr):
    """Y[n, c] = avgpool2x2(relu(w[c] * (X[n, c] - mean) * rstd + b[c])); stores MEAN, RSTD (N*C,)."""
    pid = tl.program_id(0)
    c = pid % C
    M = H * W
    HO = H // 2
    WO = W // 2
    NP = HO * WO
    x_base = X + pid.to(tl.int64) * M
    y_base = Y + pid.to(tl.int64) * NP
    dt = X.dtype.element_ty
    offs = tl.arange(0, BLOCK)

    acc = tl.zeros([BLOCK], dtype=dt)
    for start in range(0, M, BLOCK):
        idx = start + offs
        acc += tl.load(x_base + idx, mask=idx < M, other=0.0)
    mean = tl.sum(acc, axis=0) / M
    acc = tl.zeros([BLOCK], dtype=dt)
    for start in range(0, M, BLOCK):
        idx = start + offs
        live = idx < M
        d = tl.where(live, tl.load(x_base + idx, mask=live, other=0.0) - mean, 0.0)
        acc += d * d
    var = tl.sum(acc, axis=0) / M
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)

    wc = tl.load(WT + c)
    bc = tl.load(BS + c)
    # Pooled cells per tile: BLOCK // 4, so the four tap loads cover BLOCK pixels.
    poffs = tl.arange(0, BLOCK // 4)
    for start in range(0, NP, BLOCK // 4):
        o = start + poffs
        live = o < NP
        p = (o // WO) * (2 * W) + (o % WO) * 2
        a = tl.load(x_base + p, mask=live, other=0.0)
        s = tl.maximum(wc * ((a - mean) * rstd) + bc, 0.0)
        a = tl.load(x_base + p + 1, mask=live, other=0.0)
        s += tl.maximum(wc * ((a - mean) * rstd) + bc, 0.0)
        a = tl.load(x_base + p + W, mask=live, other=0.0)
        s += tl.maximum(wc * ((a - mean) * rstd) + bc, 0.0)
        a = tl.load(x_base + p + W + 1, mask=live, other=0.0)
        s += tl.maximum(wc * ((a - mean) * rstd) + bc, 0.0)
        tl.store(y_base + o, s * 0.25, mask=live)


@triton.jit
def _nap_bwd_kernel(X, WT, BS, MEAN, RSTD, GY, GX, GWP, GBP, C, H, W, BLOCK: tl.constexpr):
    """GX[n, c] = rstd * w * P(g); GWP[n*C+c] = sum(g * xh), GBP[n*C+c] = sum(g) over the plane."""
    pid = tl.program_id(0)
    c = pid % C
    M = H * W
    HO = H // 2
    WO = W // 2
    x_base = X + pid.to(tl.int64) * M
    gx_base = GX + pid.to(tl.int64) * M
    gy_base = GY + pid.to(tl.int64) * (HO * WO)
    dt = X.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    wc = tl.load(WT + c)
    bc = tl.load(BS + c)

    acc_g = tl.zeros([BLOCK], dtype=dt)
    acc_gxh = tl.zeros([BLOCK], dtype=dt)
    for start in range(0, M, BLOCK):
        idx = start + offs
        live = idx < M
        xh = (tl.load(x_base + idx, mask=live, other=0.0) - mean) * rstd
        g = _plane_grad_z(gy_base, idx, live, wc * xh + bc, W, HO, WO)
        acc_g += g
        acc_gxh += tl.where(live, g * xh, 0.0)
    sum_g = tl.sum(acc_g, axis=0)
    sum_gxh = tl.sum(acc_gxh, axis=0)
    tl.store(GBP + pid, sum_g)
    tl.store(GWP + pid, sum_gxh)

    mean_g = sum_g / M
    mean_gxh = sum_gxh / M
    scale = rstd * wc
    for start in range(0, M, BLOCK):
        idx = start + offs
        live = idx < M
        xh = (tl.load(x_base + idx, mask=live, other=0.0) - mean) * rstd
        g = _plane_grad_z(gy_base, idx, live, wc * xh + bc, W, HO, WO)
        tl.store(gx_base + idx, scale * (g - mean_g - xh * mean_gxh), mask=live)


@triton.jit
def _tap_grad_g(x_base, u_base, p, live, mean, rstd, wc, bc, hwc, hbc, mean_u, mean_uxh):
    """m * dS/dg at pixels ``p`` (one tap of each pooled cell): (z > 0) * (w r P(u) + hw xh + hb)."""
    xh = (tl.load(x_base + p, mask=live, other=0.0) - mean) * rstd
    u = tl.load(u_base + p, mask=live, other=0.0)
    t = wc * rstd * (u - mean_u - xh * mean_uxh) + hwc * xh + hbc
    return tl.where(live & (wc * xh + bc > 0), t, 0.0)


@triton.jit
def _nap_bwd2_kernel(X, WT, BS, MEAN, RSTD, GY, HX, HW, HB, DX, DGY, DWP, C, H, W, BLOCK: tl.constexpr):
    """Grads of S = <HX, gx> + <HW, gw> + <HB, gb> (the backward's outputs) w.r.t. x (DX), gy (DGY)
    and per-plane partials of w (DWP, N*C), with the mean / rstd / mask of the forward."""
    pid = tl.program_id(0)
    c = pid % C
    M = H * W
    HO = H // 2
    WO = W // 2
    NP = HO * WO
    x_base = X + pid.to(tl.int64) * M
    u_base = HX + pid.to(tl.int64) * M
    dx_base = DX + pid.to(tl.int64) * M
    gy_base = GY + pid.to(tl.int64) * NP
    dgy_base = DGY + pid.to(tl.int64) * NP
    dt = X.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    wc = tl.load(WT + c)
    bc = tl.load(BS + c)
    hwc = tl.load(HW + c)
    hbc = tl.load(HB + c)

    # Pass 1: plane sums of u, u*xh, g, g*xh, u*g (u = HX).
    acc_u = tl.zeros([BLOCK], dtype=dt)
    acc_uxh = tl.zeros([BLOCK], dtype=dt)
    acc_g = tl.zeros([BLOCK], dtype=dt)
    acc_gxh = tl.zeros([BLOCK], dtype=dt)
    acc_ug = tl.zeros([BLOCK], dtype=dt)
    for start in range(0, M, BLOCK):
        idx = start + offs
        live = idx < M
        xh = tl.where(live, (tl.load(x_base + idx, mask=live, other=0.0) - mean) * rstd, 0.0)
        u = tl.load(u_base + idx, mask=live, other=0.0)
        g = _plane_grad_z(gy_base, idx, live, wc * xh + bc, W, HO, WO)
        acc_u += u
        acc_uxh += u * xh
        acc_g += g
        acc_gxh += g * xh
        acc_ug += u * g
    sum_u = tl.sum(acc_u, axis=0)
    sum_uxh = tl.sum(acc_uxh, axis=0)
    sum_g = tl.sum(acc_g, axis=0)
    sum_gxh = tl.sum(acc_gxh, axis=0)
    sum_ug = tl.sum(acc_ug, axis=0)
    mean_u = sum_u / M
    mean_uxh = sum_uxh / M
    mean_g = sum_g / M
    mean_gxh = sum_gxh / M
    # dS/dw partial: r * <u, P(g)>.
    tl.store(DWP + pid, rstd * (sum_ug - mean_u * sum_g - mean_uxh * sum_gxh))

    # Pass 2: dS/dx = r^2 xh (q p - Cc) / M - r^2 (p w P(g) / M + q P(u)) + hw r P(g),
    # Cc = w (sum(u g) - sum(g) sum(u) / M), q = w sum(g xh) / M, p = sum(u xh).
    cc = wc * (sum_ug - sum_g * mean_u)
    q = wc * mean_gxh
    r2 = rstd * rstd
    coef_xh = r2 * (q * sum_uxh - cc) / M
    coef_pg = hwc * rstd - r2 * sum_uxh * wc / M
    coef_pu = r2 * q
    for start in range(0, M, BLOCK):
        idx = start + offs
        live = idx < M
        xh = (tl.load(x_base + idx, mask=live, other=0.0) - mean) * rstd
        u = tl.load(u_base + idx, mask=live, other=0.0)
        g = _plane_grad_z(gy_base, idx, live, wc * xh + bc, W, HO, WO)
        pg = g - mean_g - xh * mean_gxh
        pu = u - mean_u - xh * mean_uxh
        tl.store(dx_base + idx, coef_xh * xh + coef_pg * pg - coef_pu * pu, mask=live)

    # Pass 3: dS/dgy = (1/4) sum over the 4 taps of (z > 0) * (w r P(u) + hw xh + hb).
    poffs = tl.arange(0, BLOCK // 4)
    for start in range(0, NP, BLOCK // 4):
        o = start + poffs
        live = o < NP
        p = (o // WO) * (2 * W) + (o % WO) * 2
        s = _tap_grad_g(x_base, u_base, p, live, mean, rstd, wc, bc, hwc, hbc, mean_u, mean_uxh)
        s += _tap_grad_g(x_base, u_base, p + 1, live, mean, rstd, wc, bc, hwc, hbc, mean_u, mean_uxh)
        s += _tap_grad_g(x_base, u_base, p + W, live, mean, rstd, wc, bc, hwc, hbc, mean_u, mean_uxh)
        s += _tap_grad_g(x_base, u_base, p + W + 1, live, mean, rstd, wc, bc, hwc, hbc, mean_u, mean_uxh)
        tl.store(dgy_base + o, s * 0.25, mask=live)


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------

_DTYPES = (torch.float32, torch.float64)


def _launch_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the forward kernel: x (N, C, H, W) contiguous -> y (N, C, H//2, W//2), mean, rstd (N*C,)."""
    n, c, h, w = x.shape
    y = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, device=x.device)
    mean = torch.empty(n * c, dtype=x.dtype, device=x.device)
    rstd = torch.empty(n * c, dtype=x.dtype, device=x.device)
    block, warps = block_and_warps(h * w)
    with on_device_of(x):
        _nap_fwd_kernel[(n * c,)](x, weight, bias, y, mean, rstd, c, h, w, float(eps), BLOCK=block, num_warps=warps)
    return y, mean, rstd


def _launch_backward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, gy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the backward kernel: gy (N, C, H//2, W//2) contiguous -> gx (like x), gw, gb (C,)."""
    n, c, h, w = x.shape
    gx = torch.empty_like(x)
    gwp = torch.empty(n * c, dtype=x.dtype, device=x.device)
    gbp = torch.empty(n * c, dtype=x.dtype, device=x.device)
    block, warps = block_and_warps(h * w)
    with on_device_of(x):
        _nap_bwd_kernel[(n * c,)](x, weight, bias, mean, rstd, gy, gx, gwp, gbp, c, h, w, BLOCK=block, num_warps=warps)
    return gx, gwp.view(n, c).sum(0), gbp.view(n, c).sum(0)


def _launch_double_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    gy: torch.Tensor,
    hx: torch.Tensor,
    hw: torch.Tensor,
    hb: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the double-backward kernel: upstream hx (like x), hw, hb (C,), all contiguous ->
    grads w.r.t. x (like x), weight (C,) and gy (like gy)."""
    n, c, h, w = x.shape
    dx = torch.empty_like(x)
    dgy = torch.empty_like(gy)
    dwp = torch.empty(n * c, dtype=x.dtype, device=x.device)
    block, warps = block_and_warps(h * w)
    with on_device_of(x):
        _nap_bwd2_kernel[(n * c,)](
            x, weight, bias, mean, rstd, gy, hx, hw, hb, dx, dgy, dwp, c, h, w, BLOCK=block, num_warps=warps
        )
    return dx, dwp.view(n, c).sum(0), dgy


# --------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------


class NormActPoolBackward(torch.autograd.Function):
    """The backward of :class:`NormActPoolFunction` as a differentiable op (so ``create_graph=True``
    works): (x, weight, bias, mean, rstd, gy, eps) -> (gx, gw, gb). Its own backward (the double
    backward) is a Triton kernel; it is not differentiable again."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, rstd, gy, eps):
        gy = gy.contiguous()
        gx, gw, gb = _launch_backward(x, weight, bias, mean, rstd, gy)
        ctx.save_for_backward(x, weight, bias, mean, rstd, gy)
        return gx, gw, gb

    @staticmethod
    @once_differentiable
    def backward(ctx, hx, hw, hb):
        x, weight, bias, mean, rstd, gy = ctx.saved_tensors
        hx = torch.zeros_like(x) if hx is None else hx.contiguous()
        hw = torch.zeros_like(weight) if hw is None else hw.contiguous()
        hb = torch.zeros_like(bias) if hb is None else hb.contiguous()
        dx, dw, dgy = _launch_double_backward(x, weight, bias, mean, rstd, gy, hx, hw, hb)
        # bias: the ReLU mask is piecewise constant in it, so its second-order grad is zero.
        return dx, dw, torch.zeros_like(bias), None, None, dgy, None


class NormActPoolFunction(torch.autograd.Function):
    """Triton instance norm + ReLU + 2x2 average pool: (x, weight, bias, eps) -> y. Inputs must be
    contiguous and of one dtype (float32 or float64); :func:`norm_act_pool` arranges that."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = _launch_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        gx, gw, gb = NormActPoolBackward.apply(x, weight, bias, mean, rstd, gy, ctx.eps)
        return gx, gw, gb, None


def norm_act_pool_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The Triton path of :func:`fastdd.kernels.norm_act_pool` (which picks it by backend): instance norm
    with affine weight / bias (C,), ReLU, 2x2 average pool (floor): x (N, C, H, W) -> (N, C, H // 2, W // 2)."""
    if x.dim() != 4 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(
            f"norm_act_pool expects x (N, C, H, W) and weight, bias (C,); got x "
            f"{tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        )
    if x.dtype not in _DTYPES:
        raise TypeError(f"norm_act_pool's Triton kernels take float32 or float64 input, not {x.dtype}")
    if x.numel() == 0:
        return norm_act_pool_reference(x, weight, bias, eps)
    # Made contiguous / cast here, outside the autograd.Function, so those steps stay differentiable
    # (the double backward reaches the caller's tensors through them).
    x = x.contiguous()
    weight = weight.to(x.dtype).contiguous()
    bias = bias.to(x.dtype).contiguous()
    return NormActPoolFunction.apply(x, weight, bias, float(eps))


# --------------------------------------------------------------------------------------------------
# Compile specs
# --------------------------------------------------------------------------------------------------

# Argument kinds per kernel, in order: "ptr" (tensor of the data dtype), "i32", "eps", "constexpr".
_KERNEL_ARGS = {
    "norm_act_pool_fwd": (_nap_fwd_kernel, ["ptr"] * 6 + ["i32"] * 3 + ["eps", "constexpr"]),
    "norm_act_pool_bwd": (_nap_bwd_kernel, ["ptr"] * 9 + ["i32"] * 3 + ["constexpr"]),
    "norm_act_pool_bwd2": (_nap_bwd2_kernel, ["ptr"] * 12 + ["i32"] * 3 + ["constexpr"]),
}


def _launch_configs(min_plane: int = 2 * 2, max_plane: int = 64 * 64) -> list[tuple[int, int]]:
    """The distinct (BLOCK, num_warps) pairs the launchers pick for planes of min..max pixels."""
    configs: list[tuple[int, int]] = []
    for m in range(min_plane, max_plane + 1):
        cfg = block_and_warps(m)
        if cfg not in configs:
            configs.append(cfg)
    return configs


def compile_specs() -> list[KernelSpec]:
    """Every kernel configuration the launchers can pick for planes from 2x2 to 64x64: each kernel
    x float32 / float64 x each (BLOCK, num_warps) pair, with full Triton signatures."""
    specs = []
    for name, (fn, kinds) in _KERNEL_ARGS.items():
        arg_names = fn.arg_names
        assert len(arg_names) == len(kinds), name
        for dtype in _DTYPES:
            ptr = "*" + triton_dtype(dtype)
            types = {"ptr": ptr, "i32": "i32", "eps": "fp32", "constexpr": "constexpr"}
            sig = {a: types[k] for a, k in zip(arg_names, kinds)}
            for block, warps in _launch_configs():
                specs.append(
                    KernelSpec(
                        name=f"{name}_{triton_dtype(dtype)}_b{block}_w{warps}",
                        fn=fn,
                        signature=sig,
                        constexprs={"BLOCK": block},
                        num_warps=warps,
                    )
                )
    return specs
