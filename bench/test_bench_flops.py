"""Group ``flops``: achieved FLOP/s of the inner step against this machine's float32 matmul FLOP/s.

- ``test_matmul``: ``torch.mm`` of two 2048×2048 float32 matrices (2·2048³ FLOPs), measured in the same
  run: the machine's practical peak.
- ``test_step``: the default ConvNet (width 128, depth 3) on a batch of 100 CIFAR-shaped images, in three
  phases: ``forward`` (no grad), ``forward_backward`` (``autograd.grad`` of the loss: a training step's
  work) and ``inner_step`` (forward, ``autograd.grad(create_graph=True)`` and the double backward of
  ``⟨g, v⟩`` w.r.t. θ and the images: one unrolled step's share of a meta-gradient, what the adjoint runs
  per step on its way back). FLOPs (conv + linear: what ``torch.utils.flop_counter.FlopCounterMode``
  counts) are counted once, outside the timing. ``extra_info``: ``flops``, ``flop_per_s``,
  ``matmul_flop_per_s``, ``pct_of_matmul``.

Under a minute (``full``); ``tiny``: 256³ matmul, width 16, batch 8, 16×16.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.bench import inner_step

SIZES = {
    "full": dict(mm=2048, width=128, im=32, batch=100, rounds=5),
    "tiny": dict(mm=256, width=16, im=16, batch=8, rounds=2),
}


def _matmul_flop_per_s(n: int, device: str, rounds: int = 3) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(rounds):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


@pytest.mark.benchmark(group="flops")
def test_matmul(device, run, bench_size, bench_store):
    n = SIZES[bench_size]["mm"]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(device), torch.randn(n, n, generator=g).to(device)
    _, sec = run(torch.mm, args=(a, b), rounds=SIZES[bench_size]["rounds"], warmup=1)
    bench_store[("matmul", device)] = 2 * n**3 / sec
    run.benchmark.extra_info.update(n=n, flops=2 * n**3, flop_per_s=2 * n**3 / sec)


def _phase_fn(phase, net, theta, x, y, v):
    if phase == "forward":

        def fn():
            with torch.no_grad():
                return net(x, theta)
    elif phase == "forward_backward":

        def fn():
            th = theta.detach().requires_grad_(True)
            return torch.autograd.grad(F.cross_entropy(net(x, th), y), th)[0]
    else:

        def fn():
            return inner_step(net, theta, x, y, v)

    return fn


@pytest.mark.benchmark(group="flops")
@pytest.mark.parametrize("phase", ["forward", "forward_backward", "inner_step"])
def test_step(phase, device, run, bench_size, bench_store):
    from torch.utils.flop_counter import FlopCounterMode

    s = SIZES[bench_size]
    g = torch.Generator().manual_seed(0)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=10, im_size=(s["im"], s["im"]), width=s["width"])
    theta = net.init(g).to(device)
    x = torch.randn(s["batch"], 3, s["im"], s["im"], generator=g).to(device)
    y = (torch.arange(s["batch"]) % 10).to(device)
    v = torch.randn(net.num_params, generator=g).to(device)
    fn = _phase_fn(phase, net, theta, x, y, v)
    with FlopCounterMode(display=False) as fc:
        fn()
    flops = fc.get_total_flops()
    _, sec = run(fn, rounds=s["rounds"], warmup=1)
    peak = bench_store.get(("matmul", device)) or _matmul_flop_per_s(s["mm"], device)
    run.benchmark.extra_info.update(
        phase=phase,
        batch=s["batch"],
        width=s["width"],
        flops=flops,
        flop_per_s=flops / sec,
        matmul_flop_per_s=peak,
        pct_of_matmul=100.0 * flops / sec / peak,
    )
