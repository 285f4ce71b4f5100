"""What the op layer's dispatch costs CPU runs: the default ConvNet's inner step through
``fastdd.kernels`` (resolve the backend, then the torch ops) against the same torch ops called directly.

    python bench/dispatch_overhead.py [--rounds 7] [--batch 100]

One inner step = forward + ``autograd.grad(create_graph=True)`` + the double backward of ``<g, v>`` (what
the engine's adjoint runs per unrolled step), default ConvNet (width 128, depth 3), CIFAR-shaped batch.
The two variants alternate round by round in one process, so load changes hit both alike; it prints
the median of each, their ratio, and the cost of one ``resolve`` call measured on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

import fastdd
from fastdd import kernels
from fastdd.bench import inner_step as step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--width", type=int, default=128)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=10, im_size=(32, 32), width=args.width)
    theta = net.init(g)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    y = torch.arange(args.batch) % 10
    v = torch.randn(net.num_params, generator=g)
    dispatched = kernels.norm_act_pool
    times = {"op layer": [], "direct torch": []}
    step(net, theta, x, y, v)  # warm-up
    for _ in range(args.rounds):
        for name in times:
            kernels.norm_act_pool = dispatched if name == "op layer" else kernels.norm_act_pool_torch
            t = time.perf_counter()
            step(net, theta, x, y, v)
            times[name].append(time.perf_counter() - t)
    kernels.norm_act_pool = dispatched
    med = {k: statistics.median(t) for k, t in times.items()}
    n = 200_000
    per_resolve = timeit.timeit(lambda: kernels.resolve(x), number=n) / n
    calls_per_step = 4  # 3 blocks + 1 DSA call; only forwards dispatch (the backward is the torch graph)
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"inner step, batch {args.batch}, width {args.width}: median of {args.rounds} alternating rounds")
    for k, m in med.items():
        print(f"  {k:13s} {m * 1e3:9.1f} ms   (all: {', '.join(f'{t * 1e3:.0f}' for t in times[k])})")
    print(f"  ratio op layer / direct: {med['op layer'] / med['direct torch']:.3f}")
    print(
        f"one resolve() call: {per_resolve * 1e6:.2f} µs; at most {calls_per_step} per step = "
        f"{calls_per_step * per_resolve / med['direct torch']:.1e} of the step"
    )


if __name__ == "__main__":
    main()
