"""The ConvNet block's torch path on the CPU: the composite ``avg_pool2d(relu(group_norm(x)))`` (eager
autograd) against the closed form of ``kernels/convnet_block_torch.py`` (one autograd node per order).

    python bench/block_torch_speed.py [--rounds 7] [--batch 100] [--width 128] [--skip-step]

Per variant, at the default ConvNet's three block shapes (x of (B, W, 32, 32), (B, W, 16, 16),
(B, W, 8, 8), float32), summed over the three blocks:

(a) forward;  (b) forward + ``autograd.grad(create_graph=True)`` w.r.t. x, weight, bias;
(c) (b) + the double backward (grads of ``<hx, gx> + <hw, gw> + <hb, gb>`` w.r.t. x, weight, bias, gy);

and (d) one inner step of the default ConvNet (CIFAR-shaped batch): forward, ``grad(create_graph=True)``
w.r.t. theta, double backward of ``<g, v>`` w.r.t. theta and the images, with the block swapped
(``fastdd.kernels.norm_act_pool_torch`` monkeypatched). Variants alternate round by round in one
process, so load from other processes hits both alike; it prints medians, min-max spreads and the
ratio, plus the bytes the autograd graph holds per block after (b) (saved tensors, unique storages).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import fastdd
from fastdd import kernels
from fastdd.bench import inner_step as step
from fastdd.kernels.convnet_block_torch import norm_act_pool_closed

VARIANTS = {"composite": kernels.norm_act_pool_reference, "closed form": norm_act_pool_closed}


def block_inputs(batch: int, width: int, g: torch.Generator):
    out = []
    for s in (32, 16, 8):
        out.append(
            {
                "x": torch.randn(batch, width, s, s, generator=g),
                "w": torch.rand(width, generator=g) + 0.5,
                "b": torch.randn(width, generator=g) * 0.1,
                "gy": torch.randn(batch, width, s // 2, s // 2, generator=g),
                "hx": torch.randn(batch, width, s, s, generator=g),
                "hw": torch.randn(width, generator=g),
                "hb": torch.randn(width, generator=g),
            }
        )
    return out


def run_block(fn, t, phase: str) -> None:
    x, w, b, gy = (t[k].detach().requires_grad_() for k in ("x", "w", "b", "gy"))
    y = fn(x, w, b)
    if phase == "a":
        return
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
    if phase == "b":
        return
    torch.autograd.grad((gx, gw, gb), (x, w, b, gy), (t["hx"], t["hw"], t["hb"]))


def graph_bytes(fn, t) -> int:
    """Bytes of the distinct storages the autograd graph saves during forward + create_graph backward."""
    seen = {}

    def pack(v):
        if v.device.type == "cpu":
            seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        return v

    x, w, b, gy = (t[k].detach().requires_grad_() for k in ("x", "w", "b", "gy"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda v: v):
        y = fn(x, w, b)
        torch.autograd.grad(y, (x, w, b), gy, create_graph=True)
    seen.pop(x.untyped_storage().data_ptr(), None)  # x is the caller's (the conv output): not counted
    seen.pop(gy.untyped_storage().data_ptr(), None)
    return sum(seen.values())


def timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--skip-step", action="store_true", help="leave out (d), the whole inner step")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    blocks = block_inputs(args.batch, args.width, g)
    rows = {"(a) forward": "a", "(b) forward + create_graph backward": "b", "(c) (b) + double backward": "c"}
    times = {(r, v): [] for r in rows for v in VARIANTS}
    for phase in rows.values():  # warm-up
        for fn in VARIANTS.values():
            for t in blocks:
                run_block(fn, t, phase)
    for _ in range(args.rounds):
        for r, phase in rows.items():
            for v, fn in VARIANTS.items():
                times[r, v].append(sum(timed(lambda fn=fn, t=t, phase=phase: run_block(fn, t, phase)) for t in blocks))

    if not args.skip_step:
        net = fastdd.build_model("convnet", in_channels=3, num_classes=10, im_size=(32, 32), width=args.width)
        theta = net.init(g)
        x = torch.randn(args.batch, 3, 32, 32, generator=g)
        y = torch.arange(args.batch) % 10
        v = torch.randn(net.num_params, generator=g)
        r = "(d) ConvNet inner step"
        rows[r] = "d"
        for name in VARIANTS:
            times[r, name] = []
        original = kernels.norm_act_pool_torch
        try:
            for rnd in range(args.rounds + 1):  # round 0: warm-up
                for name, fn in VARIANTS.items():
                    kernels.norm_act_pool_torch = fn
                    dt = timed(lambda: step(net, theta, x, y, v))
                    if rnd:
                        times[r, name].append(dt)
        finally:
            kernels.norm_act_pool_torch = original

    mem = {name: [graph_bytes(fn, t) for t in blocks] for name, fn in VARIANTS.items()}

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, float32 CPU; "
        f"batch {args.batch}, width {args.width}; blocks at 32², 16², 8² (a-c summed over the three); "
        f"median of {args.rounds} alternating rounds, [min-max]"
    )
    print()
    print("| phase | composite ms | closed form ms | speed-up |")
    print("|---|---:|---:|---:|")
    for r in rows:
        c, o = times[r, "composite"], times[r, "closed form"]
        mc, mo = statistics.median(c), statistics.median(o)
        print(
            f"| {r} | {mc * 1e3:.1f} [{min(c) * 1e3:.0f}-{max(c) * 1e3:.0f}] | "
            f"{mo * 1e3:.1f} [{min(o) * 1e3:.0f}-{max(o) * 1e3:.0f}] | {mc / mo:.2f}x |"
        )
    db_c = statistics.median(times["(c) (b) + double backward", "composite"]) - statistics.median(
        times["(b) forward + create_graph backward", "composite"]
    )
    db_o = statistics.median(times["(c) (b) + double backward", "closed form"]) - statistics.median(
        times["(b) forward + create_graph backward", "closed form"]
    )
    print(f"| double backward alone, (c) - (b) | {db_c * 1e3:.1f} | {db_o * 1e3:.1f} | {db_c / db_o:.2f}x |")
    print()
    print(
        "graph memory after (b), saved tensors other than x and gy, per block (MB): "
        + "; ".join(f"{name}: " + ", ".join(f"{b / 2**20:.1f}" for b in mem[name]) for name in VARIANTS)
    )


if __name__ == "__main__":
    main()
