"""Memory per rank of a sharded MTT distillation against IPC, for K processes (gloo, CPU).

    python bench/distributed_memory.py --ipc 10 50 100 200 --ranks 1 2 --width 32 --steps 10

Every point runs in fresh processes: K ranks (K = 1: one plain process, no group) each run one
``fastdd.distill(method="mtt")`` iteration on a generated CIFAR-shaped data set (3×32×32, 10 classes;
the whole set is every step's batch, DSA on, ``mode="adjoint"``) from the default code path, and report
the growth of their peak resident memory over the run (``ru_maxrss`` after the run minus before it:
the data set, the experts and the interpreter are not counted). Also prints the bytes all-reduced
per iteration (``syn_steps · (2P + 1)`` floats) and a model of the split: the set's rows, their
gradient and momentum divide by K, the activations of each rank's part of the batch divide by K,
the N stored parameter vectors do not; ``--model-only`` prints that model for CIFAR-10 at full width.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _data(per_class: int):
    from fastdd.data import from_pixels

    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(per_class)
    x = torch.rand(len(y), 3, 32, 32, generator=g)
    return from_pixels("generated", x, y, x[:100], y[:100], 10)


def _point(rank: int, world: int, port: int, args: dict, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
        )
        import fastdd.distributed as fd

        fd.init("cpu", timeout_s=1800)
    import fastdd

    ds = _data(args["ipc"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    fastdd.distill(
        ds,
        "mtt",
        args["ipc"],
        experts=args["experts"],
        iterations=1,
        seed=0,
        show_progress=False,
        syn_steps=args["steps"],
        expert_epochs=1,
        max_start_epoch=1,
        batch_syn=None,
        mode="adjoint",
        init="noise",
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out, f"rank{rank}.json").write_text(json.dumps({"growth": peak - before, "seconds": seconds}))
    if world > 1:
        fd.shutdown(synchronize=True)


def model_table(steps: int = 30, width: int = 128, ks=(1, 2, 4, 8), ipcs=(10, 50, 100, 500, 1000)) -> str:
    """The modelled memory per GPU of CIFAR-10 MTT (ConvNet-32, every step the whole set, adjoint with
    every θ_i stored), in MiB: rows (image, gradient, momentum: 3 · 4 B · 3·32·32 per image) / K, plus
    the activations autograd saves for one recomputed step with its double backward (measured here with
    ``saved_bytes`` on the torch path, per image) for the rank's part of the batch / K, plus the
    replicated N stored parameter vectors. Under NCCL each rank is one GPU; CUDA's context and cuDNN
    workspaces come on top."""
    import fastdd
    from fastdd.engine import saved_bytes, student_loss

    net = fastdd.build_model("convnet", in_channels=3, num_classes=10, im_size=(32, 32), width=width)
    th = net.init(torch.Generator().manual_seed(0)).requires_grad_(True)
    b = 20
    x = torch.randn(b, 3, 32, 32, requires_grad=True)
    with saved_bytes() as saved:
        g = torch.autograd.grad(student_loss(net(x, th), torch.arange(b) % 10), th, create_graph=True)[0]
        torch.autograd.grad((g * torch.ones_like(g)).sum(), [th, x])
    act = saved[0] / b
    rows = 3 * 4 * 3 * 32 * 32
    thetas = steps * net.num_params * 4
    lines = [
        f"ConvNet-32 width {width} (P = {net.num_params:,}), {steps} steps, every step the whole set; "
        f"one step saves {act / 2**20:.2f} MiB per image; the {steps} θ_i take {thetas / 2**20:.1f} MiB\n",
        "| IPC | images | " + " | ".join(f"K = {k}" for k in ks) + " |",
        "|---:|---:|" + "---:|" * len(ks),
    ]
    for ipc in ipcs:
        m = 10 * ipc
        per = [(m / k) * (rows + act) + thetas for k in ks]
        lines.append(f"| {ipc} | {m} | " + " | ".join(f"{v / 2**20:,.0f}" for v in per) + " |")
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ipc", type=int, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model-only", action="store_true", help="print only the modelled table (no runs)")
    args = ap.parse_args()
    if args.model_only:
        print(model_table())
        return
    import fastdd
    from fastdd.experts import train_experts

    work = tempfile.mkdtemp(prefix="fastdd-distmem-")
    experts = train_experts(
        _data(10),
        "convnet",
        num_experts=1,
        epochs=1,
        out=Path(work, "experts"),
        seed=0,
        model_kwargs={"width": args.width},
        show_progress=False,
    )
    p = experts.num_params
    per_iter = args.steps * (2 * p + 1) * 4
    print(
        f"ConvNet-32 width {args.width}: P = {p:,} parameters; all-reduced per iteration: {args.steps} steps x "
        f"(2P + 1) float32 = {per_iter / 2**20:.1f} MiB (one P-vector per step forward, P + 1 per step backward)"
    )
    print("\n| IPC | images | K | peak growth per rank (MiB) | max over ranks / K=1 | seconds |")
    print("|---:|---:|---:|---|---:|---:|")
    base: dict[int, float] = {}
    for ipc in args.ipc:
        for k in args.ranks:
            with tempfile.TemporaryDirectory() as out:
                mp.spawn(
                    _point,
                    args=(k, _free_port(), {"ipc": ipc, "steps": args.steps, "experts": str(experts.path)}, out),
                    nprocs=k,
                    join=True,
                )
                res = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(k)]
            growth = [r["growth"] / 2**20 for r in res]
            if k == 1:
                base[ipc] = growth[0]
            ratio = f"{max(growth) / base[ipc]:.2f}" if ipc in base else "—"
            print(
                f"| {ipc} | {10 * ipc} | {k} | {' / '.join(f'{g:.0f}' for g in growth)} | {ratio} | "
                f"{max(r['seconds'] for r in res):.1f} |",
                flush=True,
            )
    print("\nModelled for NCCL (one rank per GPU):\n" + model_table())
    print(f"\n{sys.executable} {' '.join(sys.argv)}  (fastdd {fastdd.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
