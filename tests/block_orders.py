"""Shared by the ConvNet-block tests (torch closed form and Triton): random inputs and every order of
derivative of ``norm_act_pool`` (forward, backward, double backward), compared against a reference."""

from __future__ import annotations

import torch


def block_inputs(shape, dtype, device="cpu", seed=0, scale=2.0, offset=0.5) -> dict[str, torch.Tensor]:
    """x (N, C, H, W), weight, bias (C,), gy like the output, and the coefficients hx, hw, hb of the linear
    functional whose gradient is the double backward; drawn in float64, then cast to ``dtype`` on ``device``."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    t = {
        "x": torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset,
        "w": torch.randn(c, generator=g, dtype=torch.float64),
        "b": torch.randn(c, generator=g, dtype=torch.float64) * 0.5,
        "gy": torch.randn(n, c, h // 2, w // 2, generator=g, dtype=torch.float64),
        "hx": torch.randn(shape, generator=g, dtype=torch.float64),
        "hw": torch.randn(c, generator=g, dtype=torch.float64),
        "hb": torch.randn(c, generator=g, dtype=torch.float64),
    }
    return {k: v.to(device, dtype) for k, v in t.items()}


def all_orders(fn, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """y, (gx, gw, gb) and the grads of <hx, gx> + <hw, gw> + <hb, gb> w.r.t. x, w, b, gy under fn."""
    x, w, b, gy = (t[k].detach().clone().requires_grad_() for k in ("x", "w", "b", "gy"))
    y = fn(x, w, b)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
    s = (gx * t["hx"]).sum() + (gw * t["hw"]).sum() + (gb * t["hb"]).sum()
    hh = torch.autograd.grad(s, (x, w, b, gy))
    names = ["y", "gx", "gw", "gb", "ddx", "ddw", "ddb", "ddgy"]
    return dict(zip(names, [v.detach() for v in (y, gx, gw, gb, *hh)]))


def max_rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference over the reference's largest magnitude (in float64)."""
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()
