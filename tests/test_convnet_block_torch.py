"""The closed-form torch ConvNet block (kernels/convnet_block_torch.py) against the composite
``avg_pool2d(relu(group_norm(x)))``: forward bitwise, backward and double backward to 1e-10 (float64) /
1e-5 (float32), gradcheck / gradgradcheck, and a whole tiny ConvNet's inner step with either block."""

from __future__ import annotations

import pytest
import torch
from block_orders import all_orders as _all_orders
from block_orders import block_inputs
from block_orders import max_rel as _max_rel

import fastdd
from fastdd import kernels
from fastdd.kernels import norm_act_pool_reference
from fastdd.kernels.convnet_block_torch import NormActPoolTorch, NormActPoolTorchBackward, norm_act_pool_closed

SHAPES = [(2, 3, 5, 7), (1, 2, 6, 6), (3, 1, 9, 4), (2, 4, 8, 8), (1, 2, 3, 2)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


CASES = [(s, d) for s in SHAPES for d in (torch.float64, torch.float32)]
IDS = ["x".join(map(str, s)) + "-" + str(d).split(".")[-1] for s, d in CASES]


@pytest.mark.parametrize("shape, dtype", CASES, ids=IDS)
def test_forward_is_bitwise_the_composite(shape, dtype):
    t = block_inputs(shape, dtype)
    x, w, b = t["x"], t["w"], t["b"]
    assert torch.equal(norm_act_pool_closed(x, w, b), norm_act_pool_reference(x, w, b))
    with torch.no_grad():
        assert torch.equal(norm_act_pool_closed(x, w, b), norm_act_pool_reference(x, w, b))


@pytest.mark.parametrize("shape, dtype", CASES, ids=IDS)
def test_backward_and_double_backward_match_the_composite(shape, dtype):
    t = block_inputs(shape, dtype)
    ref = _all_orders(norm_act_pool_reference, t)
    out = _all_orders(norm_act_pool_closed, t)
    for k, r in ref.items():
        assert out[k].dtype == dtype and out[k].shape == r.shape, k
        if k == "ddb":  # the ReLU mask is piecewise constant in the bias: zero both ways
            assert torch.all(out[k] == 0) and r.abs().max() < 1e-12
            continue
        assert _max_rel(out[k], r) < TOL[dtype], (k, _max_rel(out[k], r))


def test_float32_error_against_float64_is_the_composites():
    # Both float32 paths against the float64 composite: the closed form is no less accurate (within 2x).
    t = block_inputs((4, 8, 16, 16), torch.float32, seed=3)
    ref = _all_orders(norm_act_pool_reference, {k: v.double() for k, v in t.items()})
    comp = _all_orders(norm_act_pool_reference, t)
    out = _all_orders(norm_act_pool_closed, t)
    for k in ref:
        if k == "ddb":
            continue
        assert _max_rel(out[k], ref[k]) < max(2 * _max_rel(comp[k], ref[k]), 5e-7), k


def test_one_node_per_order_and_no_graph_for_the_double_backward():
    t = block_inputs((2, 3, 4, 4), torch.float64)
    x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
    y = norm_act_pool_closed(x, w, b)
    assert type(y.grad_fn).__name__ == NormActPoolTorch.__name__ + "Backward"
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), t["gy"], create_graph=True)
    assert type(gx.grad_fn).__name__ == NormActPoolTorchBackward.__name__ + "Backward"
    assert gx.grad_fn is gw.grad_fn is gb.grad_fn


def test_missing_upstream_grads_and_partial_inputs():
    # Only gx used (hw = hb = None inside), only gw used (hx = None), and gy not requiring grad.
    t = block_inputs((2, 3, 5, 6), torch.float64)
    for fn_out in (
        lambda gx, gw, gb: (gx * t["hx"]).sum(),
        lambda gx, gw, gb: (gw * t["hw"]).sum(),
        lambda gx, gw, gb: (gb * t["hb"]).sum() + (gw * t["hw"]).sum(),
    ):
        res = []
        for fn in (norm_act_pool_reference, norm_act_pool_closed):
            x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
            gy = t["gy"].clone().requires_grad_()
            g = torch.autograd.grad(fn(x, w, b), (x, w, b), gy, create_graph=True)
            res.append(torch.autograd.grad(fn_out(*g), (x, w, gy), allow_unused=True, materialize_grads=True))
        for a, r in zip(*res):
            assert _max_rel(a, r) < 1e-10
        x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
        g = torch.autograd.grad(norm_act_pool_closed(x, w, b), (x, w, b), t["gy"], create_graph=True)
        (dx,) = torch.autograd.grad(fn_out(*g), x, allow_unused=True, materialize_grads=True)
        assert _max_rel(dx, res[1][0]) < 1e-12


def test_noncontiguous_and_cast_inputs_reach_caller_tensors():
    t = block_inputs((2, 2, 7, 5), torch.float64)
    xt = t["x"].transpose(2, 3).contiguous().requires_grad_()  # x = xt^T (2, 2, 5, 7) is strided
    w = t["w"].clone().requires_grad_()
    outs = []
    for fn in (norm_act_pool_closed, norm_act_pool_reference):
        x = xt.transpose(2, 3)
        y = fn(x, w, t["b"])
        (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        outs.append((y.detach(), *torch.autograd.grad((gx * t["hx"]).sum(), (xt, w))))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, r in zip(*outs):
        assert _max_rel(a, r) < 1e-10
    # channels_last x: made contiguous here, while the composite runs ATen's channels-last group norm
    # (another summation order), so the forward agrees to rounding, not bitwise; gradients as before.
    xc = t["x"].contiguous(memory_format=torch.channels_last)
    assert _max_rel(norm_act_pool_closed(xc, t["w"], t["b"]), norm_act_pool_reference(xc, t["w"], t["b"])) < 1e-14
    # float32 x with float64 weight / bias: cast to x's dtype, like the Triton path.
    x32 = t["x"].float()
    y = norm_act_pool_closed(x32, t["w"], t["b"])
    assert y.dtype == torch.float32
    assert torch.equal(y, norm_act_pool_reference(x32, t["w"].float(), t["b"].float()))


@pytest.mark.parametrize("shape, fast", [((1, 2, 4, 5), False), ((2, 2, 5, 4), False), ((3, 2, 6, 6), True)])
def test_gradcheck_and_gradgradcheck_float64(shape, fast):
    t = block_inputs(shape, torch.float64, seed=1)
    x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
    assert torch.autograd.gradcheck(norm_act_pool_closed, (x, w, b), eps=1e-6, atol=1e-8, fast_mode=fast)
    assert torch.autograd.gradgradcheck(norm_act_pool_closed, (x, w, b), eps=1e-6, atol=1e-7, fast_mode=fast)


def _inner_step(net, theta, x, y, v):
    th = theta.detach().requires_grad_(True)
    xx = x.detach().requires_grad_(True)
    out = net(xx, th)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), th, create_graph=True)
    return (out.detach(), g.detach(), *torch.autograd.grad((g * v).sum(), [th, xx]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_whole_convnet_inner_step_with_either_block(monkeypatch, dtype):
    net = fastdd.build_model("convnet", in_channels=3, num_classes=3, im_size=(8, 8), width=4, depth=2)
    assert net.fused_block
    g = torch.Generator().manual_seed(0)
    theta = net.init(g).to(dtype)
    x = torch.randn(5, 3, 8, 8, generator=g).to(dtype)
    y = torch.arange(5) % 3
    v = torch.randn(net.num_params, generator=g).to(dtype)
    assert kernels.norm_act_pool_torch is norm_act_pool_closed  # the default torch path
    with kernels.use_backend("torch"):
        out = _inner_step(net, theta, x, y, v)
        monkeypatch.setattr(kernels, "norm_act_pool_torch", kernels.norm_act_pool_reference)
        ref = _inner_step(net, theta, x, y, v)  # eager's composite
    assert torch.equal(out[0], ref[0])  # the forward: bitwise
    for a, r in zip(out[1:], ref[1:]):
        assert _max_rel(a, r) < TOL[dtype]


def test_rejects_bad_shapes_and_handles_empty():
    with pytest.raises(ValueError, match="weight, bias"):
        norm_act_pool_closed(torch.zeros(1, 2, 2, 2), torch.ones(1), torch.zeros(1))
    y = norm_act_pool_closed(torch.zeros(0, 2, 4, 4), torch.ones(2), torch.zeros(2))
    assert y.shape == (0, 2, 2, 2)
