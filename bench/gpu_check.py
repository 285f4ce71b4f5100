"""GPU check of fastdd's op layer and engine: one command, under 5 minutes on one H100/H200.

    python bench/gpu_check.py --out gpu_check.json

1. correctness: every Triton kernel against float64 torch on CUDA (forward, backward, double backward);
2. time per call, Triton vs torch backend, for each kernel at CIFAR shapes (batch 100-1000, width 128, 32×32);
3. one whole MTT meta-gradient (CIFAR-10 shape, IPC 10 and 50, 20-80 unrolled steps, DSA on) in ``bptt`` and
   ``adjoint``, torch vs Triton backend, beside the reference-style baseline (bench/reference_mtt.py): seconds
   per iteration and ``torch.cuda.max_memory_allocated``.

Prints one table and writes JSON. Uses random CIFAR-shaped tensors only (no data set, no FAISS). On a machine
without CUDA it says so and exits 0. ``--smoke`` runs every part at tiny shapes on whatever device there is
(on a CPU only under ``TRITON_INTERPRET=1``), to check the script itself before spending GPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

import fastdd
from fastdd import kernels
from fastdd.augment import FAMILIES, DSAConfig, StepAugment, sample_dsa
from fastdd.engine import trajectory_matching_grad

ROWS: list[dict] = []


def row(section: str, name: str, **values) -> None:
    ROWS.append({"section": section, "name": name, **values})
    vals = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(f"[{section}] {name:48s} {vals}", flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------------- 1. correctness
def _grads3(fn, inputs: list[torch.Tensor], gen: torch.Generator):
    """Forward, first-order grads of <out, gy>, and grads of <first grads, h> w.r.t. inputs and gy."""
    out = fn(*inputs)
    gy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out).requires_grad_(True)
    first = torch.autograd.grad(out, inputs, gy, create_graph=True)
    hs = [torch.randn(f.shape, generator=gen, dtype=torch.float64).to(f) for f in first]
    s = sum((f * h).sum() for f, h in zip(first, hs))
    second = torch.autograd.grad(s, inputs + [gy], allow_unused=True)
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, inputs + [gy])]
    return out, first, second


def check_op(name: str, make_inputs, run, dev: torch.device, dtype: torch.dtype) -> None:
    """Compare the Triton path (``dtype`` on ``dev``) with the torch path in float64 on the same inputs."""
    ref_in = make_inputs(torch.float64, dev)
    tri_in = [t.detach().to(dtype).requires_grad_(True) for t in ref_in]
    with kernels.use_backend("torch"):
        r = _grads3(run, ref_in, torch.Generator().manual_seed(1))
    with kernels.use_backend("triton"):
        t = _grads3(run, tri_in, torch.Generator().manual_seed(1))
    errs = {
        "fwd": rel_err(t[0], r[0]),
        "bwd": max(rel_err(a, b) for a, b in zip(t[1], r[1])),
        "dbl": max(rel_err(a, b) for a, b in zip(t[2], r[2])),
    }
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    row("correct", f"{name} {str(dtype).replace('torch.', '')}", **errs, ok=all(e <= tol for e in errs.values()))


def correctness(dev: torch.device, smoke: bool) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 7, 9)] if smoke else [(3, 5, 17, 19), (4, 16, 32, 32), (2, 8, 64, 64)]
    for dtype in (torch.float32, torch.float64):
        for s in shapes:

            def make(dt, d, s=s):
                return [
                    torch.randn(s, generator=g, dtype=dt).to(d).requires_grad_(True),
                    (1 + 0.3 * torch.randn(s[1], generator=g, dtype=dt)).to(d).requires_grad_(True),
                    (0.2 * torch.randn(s[1], generator=g, dtype=dt)).to(d).requires_grad_(True),
                ]

            check_op(f"norm_act_pool {s}", make, lambda x, w, b: kernels.norm_act_pool(x, w, b), dev, dtype)
        size = (2, 3, 7, 9) if smoke else (5, 3, 32, 32)
        for fam in (*FAMILIES, "per_sample"):
            p = (
                sample_dsa(size[0], size[2:], DSAConfig(), torch.Generator().manual_seed(3), per_sample_family=True)
                if fam == "per_sample"
                else sample_dsa(size[0], size[2:], DSAConfig(), torch.Generator().manual_seed(3), family=fam)
            ).to(dev)
            check_op(
                f"apply_dsa {fam} {size}",
                lambda dt, d, size=size: [torch.randn(size, generator=g, dtype=dt).to(d).requires_grad_(True)],
                lambda x, p=p: kernels.apply_dsa(x, p),
                dev,
                dtype,
            )


# ------------------------------------------------------------------------------------- 2. kernel timings
def timeit(fn, dev: torch.device, min_time: float = 0.2, max_reps: int = 200) -> float:
    """Median seconds per call (CUDA events on a GPU)."""
    fn()
    sync(dev)
    t = time.perf_counter()
    fn()
    sync(dev)
    once = max(time.perf_counter() - t, 1e-6)
    reps = int(min(max_reps, max(3, min_time / once)))
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def _phases(op, inputs):
    """Callables for forward, forward+backward, and forward+backward(create_graph)+double backward."""

    def fwd():
        with torch.no_grad():
            op(*inputs)

    def fwd_bwd():
        out = op(*inputs)
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    def double():
        out = op(*inputs)
        first = torch.autograd.grad(out, inputs, torch.ones_like(out), create_graph=True)
        torch.autograd.grad(sum(f.sum() for f in first), inputs, allow_unused=True)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "fwd+bwd+dbl": double}


def _time_variants(name: str, fn, variants: dict, dev: torch.device) -> None:
    """Time ``fn`` once per variant (a backend name, or a callable that sets things up and returns a
    context) and add one row with every variant's ms and the speed-up of Triton over each other one."""
    ts = {}
    for label, ctx in variants.items():
        with ctx():
            ts[label] = timeit(fn, dev)
    row(
        "kernel",
        name,
        **{f"{k}_ms": v * 1e3 for k, v in ts.items()},
        **{f"triton_vs_{k}": v / ts["triton"] for k, v in ts.items() if k != "triton"},
    )


def kernel_timings(dev: torch.device, smoke: bool) -> None:
    """Per call: the block as eager's composite (what the research code runs), fastdd's torch path (closed-form
    backward) and Triton; DSA with the torch and the Triton backend."""
    batches = [4] if smoke else [100, 500, 1000]
    width, size = (8, 8) if smoke else (128, 32)
    g = torch.Generator().manual_seed(0)
    block = {
        "eager": lambda: _patched(kernels, "norm_act_pool_torch", kernels.norm_act_pool_reference, "torch"),
        "torch": lambda: kernels.use_backend("torch"),
        "triton": lambda: kernels.use_backend("triton"),
    }
    dsa = {"torch": lambda: kernels.use_backend("torch"), "triton": lambda: kernels.use_backend("triton")}
    for b in batches:
        x = torch.randn(b, width, size, size, generator=g).to(dev).requires_grad_(True)
        w = (1 + 0.1 * torch.randn(width, generator=g)).to(dev).requires_grad_(True)
        bias = (0.1 * torch.randn(width, generator=g)).to(dev).requires_grad_(True)
        for phase, fn in _phases(lambda *a: kernels.norm_act_pool(*a), [x, w, bias]).items():
            _time_variants(f"norm_act_pool B={b} C={width} {size}x{size} {phase}", fn, block, dev)
        xi = torch.randn(b, 3, size, size, generator=g).to(dev).requires_grad_(True)
        for fam in (*FAMILIES, "per_sample"):
            p = (
                sample_dsa(b, (size, size), DSAConfig(), torch.Generator().manual_seed(1), per_sample_family=True)
                if fam == "per_sample"
                else sample_dsa(b, (size, size), DSAConfig(), torch.Generator().manual_seed(1), family=fam)
            ).to(dev)
            for phase, fn in list(_phases(lambda x, p=p: kernels.apply_dsa(x, p), [xi]).items())[:2]:
                _time_variants(f"apply_dsa {fam} B={b} 3x{size}x{size} {phase}", fn, dsa, dev)


@contextlib.contextmanager
def _patched(obj, name: str, value, backend: str):
    """``obj.name = value`` and ``use_backend(backend)`` inside the block."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        with kernels.use_backend(backend):
            yield
    finally:
        setattr(obj, name, old)


# ------------------------------------------------------------------------------------- 3. MTT iteration
def mtt_iteration(ipc: int, steps: int, mode: str, backend: str, dev: torch.device, smoke: bool) -> dict:
    width, size, k = (8, 8, 3) if smoke else (128, 32, 10)
    g = torch.Generator().manual_seed(0)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=k, im_size=(size, size), width=width)
    theta0 = net.init(g).to(dev)
    target = theta0 + 0.01 * torch.randn(net.num_params, generator=g).to(dev)
    x = torch.randn(k * ipc, 3, size, size, generator=g).to(dev)
    y = torch.arange(k, device=dev).repeat_interleave(ipc)
    batches = [torch.arange(k * ipc, device=dev)] * steps
    lr = torch.tensor(0.01, device=dev)

    grad_fn = _reference_meta_grad() if mode == "reference" else trajectory_matching_grad

    def one():
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(2))
        return grad_fn(net, x, y, lr, theta0, target, batches, aug, mode=mode)

    with kernels.use_backend(backend):
        one()  # warm-up: Triton compiles, cuDNN picks algorithms
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        times = []
        for _ in range(1 if smoke else 2):
            sync(dev)
            t = time.perf_counter()
            loss, gx, glr = one()
            sync(dev)
            times.append(time.perf_counter() - t)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else float("nan")
    return {
        "seconds": min(times),
        "peak_mib": peak,
        "loss": float(loss),
        "grad_norm": float(gx.norm()),
        "lr_grad": float(glr),
    }


def _reference_meta_grad():
    """The research-code-style baseline (bench/reference_mtt.py: nn.Module over a flat parameter vector,
    eager group norm, create_graph through every step)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from reference_mtt import meta_grad
    finally:
        sys.path.pop(0)
    return meta_grad


def mtt_timings(dev: torch.device, smoke: bool, max_bptt_gib: float) -> None:
    """Per grid point: the reference-style baseline, then bptt and adjoint with the torch and Triton backends."""
    grid = [(2, 3)] if smoke else [(10, 20), (10, 80), (50, 20), (50, 80)]
    for ipc, steps in grid:
        # BPTT and the baseline keep every step's graph: ~285 MiB per step per 100 images at width 128 (fp32)
        predicted = 0.285 * steps * ipc / 10
        ref = None
        for mode, backends in (
            ("reference", ("torch",)),
            ("bptt", ("torch", "triton")),
            ("adjoint", ("torch", "triton")),
        ):
            if not smoke and mode != "adjoint" and predicted > max_bptt_gib:
                row("mtt", f"ipc={ipc} steps={steps} {mode}", note=f"skipped: its graph needs ~{predicted:.0f} GiB")
                continue
            res = {}
            for backend in backends:
                r = res[backend] = mtt_iteration(ipc, steps, mode, backend, dev, smoke)
                vs_ref = (
                    {}
                    if ref is None
                    else {
                        "speedup_vs_reference": ref["seconds"] / r["seconds"],
                        "grad_norm_rel_vs_reference": abs(r["grad_norm"] - ref["grad_norm"])
                        / max(ref["grad_norm"], 1e-30),
                    }
                )
                row(
                    "mtt",
                    f"ipc={ipc} steps={steps} {mode} {backend}",
                    s_per_iter=r["seconds"],
                    peak_mib=r["peak_mib"],
                    loss=r["loss"],
                    **vs_ref,
                )
            if mode == "reference":
                ref = res["torch"]
            else:
                a, b = res["torch"], res["triton"]
                row(
                    "mtt",
                    f"ipc={ipc} steps={steps} {mode} triton vs torch",
                    speedup=a["seconds"] / b["seconds"],
                    loss_rel=abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-30),
                    grad_norm_rel=abs(a["grad_norm"] - b["grad_norm"]) / max(a["grad_norm"], 1e-30),
                )


def print_table(rows: list[dict]) -> None:
    """One markdown table per section (the form docs/benchmarks.md takes)."""
    for section in dict.fromkeys(r["section"] for r in rows):
        sub = [r for r in rows if r["section"] == section]
        cols = list(dict.fromkeys(k for r in sub for k in r if k not in ("section", "name")))
        print(f"\n| {section} | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for r in sub:
            cells = [f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
            print(f"| {r['name']} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="JSON file for every row")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device (CPU: TRITON_INTERPRET=1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["correct", "kernel", "mtt"])
    ap.add_argument("--max-bptt-gib", type=float, default=60.0, help="skip BPTT points predicted above this")
    args = ap.parse_args(argv)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
    elif args.smoke and kernels.interpreting():
        dev, name = torch.device("cpu"), "cpu (Triton interpreter)"
    else:
        print(
            "gpu_check: no CUDA device here; nothing to check (use --smoke with TRITON_INTERPRET=1 to test the "
            "script on a CPU)"
        )
        return 0
    import triton

    env = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "fastdd": fastdd.__version__,
    }
    print(json.dumps(env), flush=True)
    t0 = time.perf_counter()
    if "correct" not in args.skip:
        correctness(dev, args.smoke)
    if "kernel" not in args.skip:
        kernel_timings(dev, args.smoke)
    if "mtt" not in args.skip:
        mtt_timings(dev, args.smoke, args.max_bptt_gib)
    env["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"env": env, "rows": ROWS}, indent=1, default=str))
    print_table(ROWS)
    print(f"\n{len(ROWS)} rows in {env['seconds']:.0f} s -> {args.out}")
    bad = [r for r in ROWS if r.get("ok") is False]
    for r in bad:
        print("MISMATCH:", r)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
