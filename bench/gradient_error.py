"""How far TESLA's and truncated meta-gradients are from the exact one, with each mode's time and memory.

    python bench/gradient_error.py                        # the defaults below (a few minutes on 2 CPU cores)
    python bench/gradient_error.py --steps 50 --windows 1 5 25 50 --dtype float64 --json out.json

One MTT meta-gradient on a fixed problem (``--seed``): a ConvNet (``--width``, depth 3, instance norm) on
``--dataset``; the synthetic set is ``--ipc`` real images per class (real-image init); θ0 is a fresh
init (MTT's start epoch 0) and θ* is θ0 after ``--expert-steps`` SGD steps on the real train split
(batch 128, lr 0.01); the student takes N = ``--steps`` steps of ``--batch`` images (a seeded
permutation per pass over the set) at the rate α = ``--lr``, with DSA (the data set's strategy, drawn
once and replayed in every mode; ``--no-dsa``: none). The gradients are taken per step
(``fastdd.engine.unroll_grad``: ∂L/∂X and ∂L/∂η_i; MTT's one rate gets ∂L/∂α = Σ_i ∂L/∂η_i).

The exact gradient is ``adjoint``'s (``bptt`` is the same up to round-off: its row says how large that is).
The errors: cosine and relative L2 error ‖g − g_exact‖ / ‖g_exact‖ of ∂L/∂X and of the per-step ∂L/∂η, and the
relative error of ∂L/∂α. Every mode runs in fresh processes (the same problem, loaded from one file), the
modes in turn for ``--rounds`` rounds so that load changes on a shared machine hit them alike. Time: the
median over the rounds of the first call's wall and CPU seconds (``--repeats`` R: of R further calls per
process instead); the ratio is of CPU time, which another process's load on a shared machine disturbs
less than wall time (``--threads 1``, the default, so that OpenMP's spinning while it waits for a core
is not counted as work). Memory: the median over the
rounds of how far the process's peak resident set rose above its resident set during the first call (the
peak reset through ``/proc/self/clear_refs`` on Linux): what the mode allocated, autograd's graph for
``bptt``, one step's graph and the stored θ_i for the others, less memory the allocator reused; not
autograd's saved bytes. Prints a Markdown table and the command; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

WINDOWS_HELP = "truncation windows (default: 1 2 5 10 N/2 N, those <= N)"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--dataset", default="mnist5k", help="an embedded data set (fastdd.load_dataset)")
    ap.add_argument("--ipc", type=int, default=10, help="real images per class in the synthetic set")
    ap.add_argument("--width", type=int, default=16, help="ConvNet width (depth 3)")
    ap.add_argument("--steps", type=int, default=50, help="N, the unrolled student steps")
    ap.add_argument("--batch", type=int, default=25, help="images per student step")
    ap.add_argument("--lr", type=float, default=0.01, help="the student's rate α (every step)")
    ap.add_argument("--expert-steps", type=int, default=30, help="real-data SGD steps from θ0 to θ*")
    ap.add_argument("--windows", type=int, nargs="+", default=None, help=WINDOWS_HELP)
    ap.add_argument("--modes", nargs="+", default=["adjoint", "bptt", "tesla", "truncated"], help="adjoint always runs")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="of the data and the student")
    ap.add_argument("--no-dsa", action="store_true", help="no augmentation")
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per mode, modes in turn")
    ap.add_argument(
        "--repeats", type=int, default=0, help="timed calls per process after the first (0: time the first)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads per point (1: CPU time counts work, not waiting)"
    )
    ap.add_argument("--seed", type=int, default=0, help="the problem (data order, θ0, DSA draws)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--point", nargs=4, metavar=("PROBLEM", "MODE", "WINDOW", "OUT"), help=argparse.SUPPRESS)
    return ap


def _problem(args: argparse.Namespace) -> dict[str, Any]:
    """The fixed problem's tensors and settings (what every point loads)."""
    import fastdd
    from fastdd.augment import strategy_for
    from fastdd.engine import student_loss

    dtype = getattr(torch, args.dtype)
    ds = fastdd.load_dataset(args.dataset)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.cat([torch.nonzero(ds.train.labels == c).view(-1)[: args.ipc] for c in range(ds.num_classes)])
    x, y = ds.train.images[idx].to(dtype), ds.train.labels[idx]
    net_kw = dict(in_channels=ds.channels, num_classes=ds.num_classes, im_size=tuple(ds.im_size), width=args.width)
    net = fastdd.build_model("convnet", **net_kw)
    theta0 = net.init(g, dtype=dtype)
    theta = theta0.clone()
    for _ in range(args.expert_steps):  # θ*: plain SGD on the real train split
        b = torch.randint(len(ds.train), (128,), generator=g)
        th = theta.requires_grad_(True)
        loss = student_loss(net(ds.train.images[b].to(dtype), th), ds.train.labels[b])
        theta = (theta - 0.01 * torch.autograd.grad(loss, th)[0]).detach()
    per_pass = -(-len(x) // args.batch)
    perms = [torch.randperm(len(x), generator=g).split(args.batch) for _ in range(-(-args.steps // per_pass))]
    batches = [b for p in perms for b in p][: args.steps]
    return dict(
        x=x,
        y=y,
        theta0=theta0,
        target=theta,
        batches=batches,
        net=net_kw,
        lr=args.lr,
        dsa=not args.no_dsa,
        strategy=strategy_for(args.dataset),
        seed=args.seed,
    )


def _status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` (the peak) of this process in bytes, from ``/proc/self/status`` (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _peak_growth(call):
    """``call()`` and how far the process's peak resident set rose above its resident set before the call:
    the peak is reset first (``/proc/self/clear_refs``, Linux); elsewhere ``ru_maxrss`` growth, which misses
    memory below an earlier peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status("VmRSS")
        res = call()
        return res, _status("VmHWM") - before
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux and BSD: KiB
        res = call()
        return res, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def _point(problem: str, mode: str, window: int, repeats: int, threads: int, out: str) -> None:
    """One mode in this (fresh) process: the first call's peak-RSS growth, then ``repeats`` timed calls (0: the
    first call is timed); times are ``(wall, CPU)`` seconds, CPU time summed over the process's threads."""
    import fastdd
    from fastdd.augment import DSAConfig, StepAugment
    from fastdd.engine import matching_loss, unroll_grad

    torch.set_num_threads(threads)
    p = torch.load(problem, weights_only=True)
    net = fastdd.build_model("convnet", **p["net"])
    x, y, theta0, batches = p["x"], p["y"], p["theta0"], p["batches"]
    aug = None
    if p["dsa"]:
        sizes, size = [len(b) for b in batches], tuple(x.shape[2:])
        aug = StepAugment(DSAConfig(strategy=p["strategy"]), torch.Generator().manual_seed(p["seed"] + 1))
        aug = aug.prepare(sizes, size, "cpu")
    outer = matching_loss(theta0, p["target"])

    def call():
        lrs = torch.full((len(batches),), p["lr"], dtype=x.dtype, requires_grad=True)
        kw = {"window": window} if mode == "truncated" else {}
        return unroll_grad(net, x.clone().requires_grad_(), y, lrs, theta0, batches, outer, aug, mode, **kw)

    wall, cpu = time.perf_counter(), time.process_time()
    res, growth = _peak_growth(call)
    times = [(time.perf_counter() - wall, time.process_time() - cpu)] if repeats == 0 else []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    torch.save(
        dict(images=res.images, lrs=res.lrs, loss=res.loss, storage=res.theta_storage, growth=growth, times=times), out
    )


def _metrics(got: dict, ref: dict) -> dict[str, float]:
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).double().norm() / b.double().norm())

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), 0))

    gx, rx, gl, rl = got["images"], ref["images"], got["lrs"], ref["lrs"]
    return dict(
        cos_x=cos(gx, rx),
        rel_x=rel(gx, rx),
        cos_eta=cos(gl, rl),
        rel_eta=rel(gl, rl),
        rel_alpha=rel(gl.sum(), rl.sum()),
    )


def _points(args: argparse.Namespace) -> list[tuple[str, int]]:
    n = args.steps
    windows = args.windows or sorted({w for w in (1, 2, 5, 10, n // 2, n) if 1 <= w <= n})
    out = [("adjoint", 0)] + [(m, 0) for m in args.modes if m not in ("adjoint", "truncated")]
    return out + ([("truncated", w) for w in windows] if "truncated" in args.modes else [])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--rounds`` rounds, each running every point in a fresh process in turn (a load change on a shared
    machine hits every mode alike); the rows: errors against ``adjoint`` (round 1: the gradients are the
    same every round), the median time of all rounds' calls, the median peak growth, and their ratios."""
    res: dict[tuple[str, int], list[dict]] = {pt: [] for pt in _points(args)}
    with tempfile.TemporaryDirectory(prefix="fastdd-graderr-") as tmp:
        problem = str(Path(tmp, "problem.pt"))
        torch.save(_problem(args), problem)
        for _ in range(args.rounds):
            for mode, w in res:
                out = str(Path(tmp, f"{mode}{w}.pt"))
                cmd = [sys.executable, __file__, "--point", problem, mode, str(w), out, "--repeats", str(args.repeats)]
                cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{mode} (window {w}) failed:\n{done.stderr}")
                res[mode, w].append(torch.load(out, weights_only=True))
    ref = res["adjoint", 0]
    c_ref = statistics.median(c for r in ref for _, c in r["times"])
    m_ref = statistics.median(r["growth"] for r in ref)
    rows = []
    for (mode, w), rs in res.items():
        wall, cpu = (statistics.median(t[j] for r in rs for t in r["times"]) for j in (0, 1))
        m = statistics.median(r["growth"] for r in rs)
        rows.append(
            dict(
                mode=mode,
                window=w or None,
                **_metrics(rs[0], ref[0]),
                seconds=wall,
                cpu_seconds=cpu,
                time_ratio=cpu / c_ref,
                all_seconds=[t[0] for r in rs for t in r["times"]],
                rss_mib=m / 2**20,
                rss_ratio=m / m_ref if m_ref > 0 else None,
                theta_storage=rs[0]["storage"],
            )
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| mode | W | cos ∂L/∂X | rel. err ∂L/∂X | cos ∂L/∂η | rel. err ∂L/∂η | rel. err ∂L/∂α | wall s (all calls) "
        "| CPU s | CPU time / adjoint | peak RSS growth (MiB) | RSS / adjoint |\n|---|---:|" + "---:|" * 10
    )
    lines = [head]
    for r in rows:
        ratio = "—" if r["rss_ratio"] is None else f"{r['rss_ratio']:.2f}"
        calls = ", ".join(f"{t:.1f}" for t in r["all_seconds"])
        lines.append(
            f"| {r['mode']} | {r['window'] or '—'} | {r['cos_x']:.5f} | {r['rel_x']:.2e} | {r['cos_eta']:.5f} | "
            f"{r['rel_eta']:.2e} | {r['rel_alpha']:.2e} | {r['seconds']:.2f} ({calls}) | "
            f"{r['cpu_seconds']:.2f} | {r['time_ratio']:.2f} | "
            f"{r['rss_mib']:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.point:
        problem, mode, window, out = args.point
        _point(problem, mode, int(window), args.repeats, args.threads, out)
        return
    import fastdd

    rows = run(args)
    print(
        f"{args.dataset}, ConvNet width {args.width}, IPC {args.ipc} real images, N = {args.steps} steps of "
        f"{args.batch}, α = {args.lr}, {args.dtype}, DSA {'off' if args.no_dsa else 'on'}; θ* = θ0 after "
        f"{args.expert_steps} real SGD steps; errors against adjoint; {args.threads} torch thread(s) per point\n"
    )
    print(table(rows))
    print(
        f"\n{Path(sys.executable).name} {' '.join(sys.argv)}  (fastdd {fastdd.__version__}, torch {torch.__version__})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
