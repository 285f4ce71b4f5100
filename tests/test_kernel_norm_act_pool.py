"""The op fastdd.kernels.norm_act_pool: its Triton path (forward, backward, double backward) against
the torch composite in float64, gradcheck / gradgradcheck, the backend dispatch and the compile specs.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1);
shapes are tiny and odd (not block multiples, odd H / W that the pool drops)."""

from __future__ import annotations

import pytest
import torch
from block_orders import all_orders as _all_orders
from block_orders import block_inputs
from block_orders import max_rel as _max_rel

import fastdd.kernels._backend as backend
from fastdd.kernels import norm_act_pool, norm_act_pool_reference, norm_act_pool_torch, use_backend
from fastdd.kernels._common import MAX_BLOCK, block_and_warps
from fastdd.kernels.convnet_block import NormActPoolFunction, compile_specs

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or backend.interpreting()), reason="needs CUDA or TRITON_INTERPRET=1"
)

SHAPES = [(2, 3, 5, 7), (1, 2, 6, 6), (3, 1, 9, 4)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _dev() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# (1, 1, 67, 65): one plane over MAX_BLOCK pixels, so every loop in the kernels runs twice (float64 only).
CASES = [(s, d) for s in SHAPES for d in (torch.float64, torch.float32)] + [((1, 1, 67, 65), torch.float64)]


@pytest.mark.parametrize(
    "shape, dtype", CASES, ids=["x".join(map(str, s)) + "-" + str(d).split(".")[-1] for s, d in CASES]
)
def test_triton_matches_torch_all_orders(shape, dtype):
    assert (shape[2] * shape[3] > MAX_BLOCK) == (shape == CASES[-1][0])
    t = block_inputs(shape, dtype, device=_dev())
    ref = _all_orders(norm_act_pool_reference, {k: v.double() for k, v in t.items()})
    with use_backend("triton"):
        out = _all_orders(norm_act_pool, t)
    for k, r in ref.items():
        assert out[k].dtype == dtype and out[k].shape == r.shape, k
        if k == "ddb":  # the ReLU mask is piecewise constant in the bias: exactly zero both ways
            assert torch.all(out[k] == 0) and r.abs().max() < 1e-12
            continue
        assert _max_rel(out[k], r) < TOL[dtype], (k, _max_rel(out[k], r))


def test_triton_path_is_the_autograd_function():
    t = block_inputs((1, 2, 4, 4), torch.float64, device=_dev())
    with use_backend("triton"):
        y = norm_act_pool(t["x"], t["w"].requires_grad_(), t["b"])
    assert type(y.grad_fn).__name__ == NormActPoolFunction.__name__ + "Backward"


def test_noncontiguous_input_and_second_order_reach_caller_tensors():
    t = block_inputs((2, 2, 7, 5), torch.float64, device=_dev())
    xt = t["x"].transpose(2, 3).contiguous().requires_grad_()  # (2, 2, 5, 7), x = xt^T is strided
    w = t["w"].clone().requires_grad_()
    outs = []
    for fn, be in ((norm_act_pool, "triton"), (norm_act_pool_torch, "torch")):
        with use_backend(be):
            x = xt.transpose(2, 3)
            y = fn(x, w, t["b"])
            (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
            outs.append((y.detach(), *torch.autograd.grad((gx * t["hx"]).sum(), (xt, w))))
    for a, r in zip(*outs):
        assert _max_rel(a, r) < 1e-10


@pytest.mark.parametrize("shape, fast", [((1, 2, 4, 5), False), ((2, 2, 4, 5), True)])
def test_gradcheck_and_gradgradcheck_float64(shape, fast):
    # Full Jacobians on one sample; the batched shape (grads of weight / bias summed over N) in
    # fast mode (random projections), which keeps the interpreter's cost down.
    t = block_inputs(shape, torch.float64, seed=1, device=_dev())
    x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
    with use_backend("triton"):
        assert torch.autograd.gradcheck(norm_act_pool, (x, w, b), eps=1e-6, atol=1e-8, fast_mode=fast)
        assert torch.autograd.gradgradcheck(norm_act_pool, (x, w, b), eps=1e-6, atol=1e-7, fast_mode=fast)


def test_default_backend_on_cpu_is_exactly_the_torch_composite():
    t = block_inputs((2, 3, 5, 7), torch.float32, device=_dev())
    x, w, b = t["x"].cpu(), t["w"].cpu(), t["b"].cpu()
    expect = torch.nn.functional.avg_pool2d(torch.relu(torch.nn.functional.group_norm(x, 3, w, b, 1e-5)), 2, 2)
    for name in ("auto", "torch"):
        with use_backend(name):
            y = norm_act_pool(x, w, b)
        assert torch.equal(y, expect) and torch.equal(norm_act_pool_torch(x, w, b), expect)
        assert y.grad_fn is None


def test_triton_backend_without_interpreter_on_cpu_raises(monkeypatch):
    monkeypatch.setattr(backend, "interpreting", lambda: False)
    x = torch.zeros(1, 1, 2, 2)
    with use_backend("triton"), pytest.raises(RuntimeError, match="norm_act_pool.*TRITON_INTERPRET"):
        norm_act_pool(x, torch.ones(1), torch.zeros(1))


def test_triton_path_rejects_bad_input():
    with use_backend("triton"):
        with pytest.raises(TypeError, match="float32 or float64"):
            norm_act_pool(
                torch.zeros(1, 1, 2, 2, dtype=torch.float16, device=_dev()),
                torch.ones(1, dtype=torch.float16),
                torch.zeros(1, dtype=torch.float16),
            )
        with pytest.raises(ValueError, match="weight, bias"):
            norm_act_pool(torch.zeros(1, 2, 2, 2, device=_dev()), torch.ones(1), torch.zeros(1))


def test_compile_specs_cover_every_launch_config():
    specs = compile_specs()
    want = {block_and_warps(h * w) for h in range(2, 65) for w in range(2, 65)}
    for name in ("norm_act_pool_fwd", "norm_act_pool_bwd", "norm_act_pool_bwd2"):
        for dt in ("fp32", "fp64"):
            got = {(s.constexprs["BLOCK"], s.num_warps) for s in specs if s.name.startswith(f"{name}_{dt}_")}
            assert got == want, (name, dt)
    assert {b for b, _ in want} == {16 << i for i in range(9)}
    for s in specs:
        assert list(s.signature) == list(s.fn.arg_names)
        assert s.signature["BLOCK"] == "constexpr" and s.signature["C"] == "i32"
        assert {v for k, v in s.signature.items() if k not in ("C", "H", "W", "eps", "BLOCK")} in ({"*fp32"}, {"*fp64"})
        assert s.signature.get("eps", "fp32") == "fp32"
