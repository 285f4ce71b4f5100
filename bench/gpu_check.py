"""GPU check of fastdd's op layer and engine: one command, under 5 minutes on one H100/H200.

    python bench/gpu_check.py --out gpu_check.json

0. the kernels' self-check (``fastdd.kernels.check_kernels``: each op against its torch twin, forward,
   backward, double backward, float32 and float64) on the GPU, its report, and its cost (cold: with
   Triton's compile; warm);
1. correctness: every Triton kernel against float64 torch on CUDA (forward, backward, double backward);
2. whole distillation iterations (``Policy.step`` + ``apply`` + ``end_iteration``, as the loop runs them) for
   each method family at CIFAR-10 shapes (3×32×32, ConvNet width 128 depth 3, IPC 10, random images and one
   expert trained here): MTT with mode ``adjoint`` and ``bptt`` (30 unrolled steps, DSA), DM, DC (one outer
   step: a pixel update and 50 inner epochs); 3 warm-up and 10 timed iterations each, backend torch against
   Triton: ms per iteration and ``torch.cuda.max_memory_allocated``;
3. time per call, Triton vs torch backend, for each kernel at CIFAR shapes (batch 100-1000, width 128, 32×32);
4. one whole MTT meta-gradient (CIFAR-10 shape, IPC 10 and 50, 20-80 unrolled steps, DSA on) in ``bptt`` and
   ``adjoint``, torch vs Triton backend, beside the reference-style baseline (bench/reference_mtt.py): seconds
   per iteration and ``torch.cuda.max_memory_allocated``.

After part 0 the script sets ``FASTDD_KERNEL_CHECK=0``, so parts 1-4 measure the kernels themselves (part 1 in
more detail than the self-check). A part that raises is recorded as a failed row and the script goes on.
Sections not started within ``--budget`` seconds are skipped (and say so).

Prints tables (part 2 as one: method, mode, torch ms/it, triton ms/it, ratio, peak memory) and writes JSON
(``--out``: the environment as ``fastdd env --json`` reports it, every row, the kernel report). Uses random
CIFAR-shaped tensors only (no data set, no FAISS). On a machine without CUDA it says so and exits 0.
``--smoke`` runs every part at tiny shapes on whatever device there is (on a CPU only under
``TRITON_INTERPRET=1``); ``--quick`` is the CPU dry run: the same code at tiny shapes with backend torch only
(no GPU, no Triton), to check the script itself before spending GPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import fastdd
from fastdd import kernels
from fastdd.augment import FAMILIES, DSAConfig, StepAugment, sample_dsa
from fastdd.data import from_pixels
from fastdd.distillation.registry import Setup, engine_from_keywords, get_method, make_config
from fastdd.engine import trajectory_matching_grad

ROWS: list[dict] = []
#: The backends compared (``--quick``: torch only).
BACKENDS: tuple[str, ...] = ("torch", "triton")
#: Seconds each timed kernel variant runs for (smaller at tiny shapes).
MIN_TIME = 0.2
#: When the run started and how long it may take (``--budget``): sections not started in time are skipped.
CLOCK = {"start": time.perf_counter(), "budget": float("inf")}


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
def timeit(fn, dev: torch.device, min_time: float | None = None, max_reps: int = 200) -> float:
    """Median seconds per call (CUDA events on a GPU)."""
    min_time = MIN_TIME if min_time is None else min_time
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
        if label == "triton" and "triton" not in BACKENDS:
            continue
        with ctx():
            ts[label] = timeit(fn, dev)
    row(
        "kernel",
        name,
        **{f"{k}_ms": v * 1e3 for k, v in ts.items()},
        **({f"triton_vs_{k}": v / ts["triton"] for k, v in ts.items() if k != "triton"} if "triton" in ts else {}),
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
            ("bptt", BACKENDS),
            ("adjoint", BACKENDS),
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
            elif "triton" in res:
                a, b = res["torch"], res["triton"]
                row(
                    "mtt",
                    f"ipc={ipc} steps={steps} {mode} triton vs torch",
                    speedup=a["seconds"] / b["seconds"],
                    loss_rel=abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-30),
                    grad_norm_rel=abs(a["grad_norm"] - b["grad_norm"]) / max(a["grad_norm"], 1e-30),
                )


# ------------------------------------------------------------------------------------- 0. self-check
def selfcheck(dev: torch.device) -> dict:
    """The kernels' self-check on ``dev`` (what the first Triton call of each op runs), twice: cold (Triton
    compiles) and warm (its cost in a process whose kernels are built). Returns the report entries."""
    if dev.type != "cuda" and not kernels.interpreting():
        row("selfcheck", "all ops", check="skipped: no CUDA device (the Triton kernels are not used here)")
        return {}
    times = []
    for _ in range(2):
        kernels.reset_kernel_checks()
        sync(dev)
        t = time.perf_counter()
        res = kernels.check_kernels(dev)
        sync(dev)
        times.append(time.perf_counter() - t)
    for op, entries in res.items():
        for e in entries:
            row(
                "selfcheck",
                f"{op} {e['dtype']} on {e['device']}",
                check=e["check"],
                max_error=e["max_error"],
                tolerance=e["tolerance"],
                backend=e["backend"],
                ok=e["check"] == "passed",
            )
    row("selfcheck", "cost of the whole check", cold_s=times[0], warm_ms=times[1] * 1e3)
    return res


# ------------------------------------------------------------------------------------- 2. distillation iterations
#: (method, gradient mode or None, unit of one timed iteration)
DISTILL = (
    ("mtt", "adjoint", "iteration"),
    ("mtt", "bptt", "iteration"),
    ("dm", None, "iteration"),
    ("dc", None, "outer step"),
)


def distill_problem(dev: torch.device, tiny: bool, folder: Path) -> dict:
    """Random CIFAR-10-shaped data (10 classes, 300 train images each: DM and DC draw 256 real images per class),
    one ConvNet expert trained on it for 3 epochs (MTT's trajectories), and each method's settings: the
    cifar10-ipc10 presets' (MTT: 30 unrolled steps, DSA; DM; DC: outer_loop 10, inner_loop 50), the expert
    epochs shortened to what the expert has. ``tiny``: 3 classes, 3×8×8, width 8, a few steps."""
    k, size, per, width, ipc = (3, 8, 12, 8, 2) if tiny else (10, 32, 300, 128, 10)
    g = torch.Generator().manual_seed(0)
    tx, vx = torch.rand(k * per, 3, size, size, generator=g), torch.rand(k * 4, 3, size, size, generator=g)
    ty, vy = torch.arange(k).repeat_interleave(per), torch.arange(k).repeat_interleave(4)
    ds = from_pixels("gpu-check-random", tx, ty, vx, vy, k, device=dev)
    t = time.perf_counter()
    experts = fastdd.train_experts(
        ds, "convnet", num_experts=1, epochs=3, out=folder, seed=0, model_kwargs={"width": width}, show_progress=False
    )
    sync(dev)
    row("distill", "setup: one expert, 3 epochs", seconds=time.perf_counter() - t, images=k * per, width=width)
    small = {"model_kwargs": {"width": width}} if tiny else {}
    real = 8 if tiny else 256
    options = {
        "mtt": dict(
            syn_steps=3 if tiny else 30,
            expert_epochs=2,
            max_start_epoch=1,
            lr_img=100.0,
            lr_lr=1e-5,
            lr_init=0.001,
            init="real",
        ),
        "dm": dict(lr_img=1.0, batch_real=real, init="real", dsa=True, **small),
        "dc": dict(
            lr_img=0.1,
            lr_net=0.01,
            batch_real=real,
            batch_train=256,
            init="noise",
            **({"outer_loop": 2, "inner_loop": 1} if tiny else {}),
            **small,
        ),
    }
    return {
        "ds": ds,
        "experts": experts,
        "ipc": ipc,
        "options": options,
        "warmup": 1 if tiny else 3,
        "timed": 2 if tiny else 10,
    }


def distill_policy(method: str, mode: str | None, problem: dict):
    """The method's policy, built as ``fastdd.distill`` builds it (registry, config, ``Setup``), seed 0."""
    spec = get_method(method)
    opts = dict(problem["options"][method], **({"mode": mode} if mode else {}))
    engine, explicit = engine_from_keywords(opts, None)
    cfg = make_config(spec, opts, engine, explicit)
    experts = problem["experts"] if spec.needs_experts else None
    policy = spec.policy.from_setup(Setup(problem["ds"], problem["ipc"], cfg, 0, method, 1000, experts))
    policy.begin()
    return policy


def distill_iterations(method: str, mode: str | None, backend: str, problem: dict, dev: torch.device) -> dict:
    """Warm-up, then timed iterations of the loop's work: ``step``, the loss read back, ``apply``,
    ``end_iteration``. Median ms per iteration and the peak memory above what the policy holds before."""
    with kernels.use_backend(backend):
        policy = distill_policy(method, mode, problem)
        it, loss = 0, float("nan")

        def one() -> float:
            nonlocal it
            step = policy.step(it)
            value = float(step.loss)  # the loop's read-back
            policy.apply(step)
            policy.end_iteration(it)
            it += 1
            return value

        for _ in range(problem["warmup"]):
            one()
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        times = []
        for _ in range(problem["timed"]):
            sync(dev)
            t = time.perf_counter()
            loss = one()
            sync(dev)
            times.append(time.perf_counter() - t)
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else float("nan")
    times.sort()
    return {
        "ms": times[len(times) // 2] * 1e3,
        "peak_mib": peak,
        "loss": loss,
    }


def distill_timings(dev: torch.device, tiny: bool) -> list[dict]:
    """Part 2: one table row per (method, mode): torch and Triton ms per iteration, their ratio, peak memory."""
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        problem = distill_problem(dev, tiny, Path(tmp) / "experts")
        for method, mode, unit in DISTILL:
            res = {}
            for backend in BACKENDS:
                if over_budget():
                    row("distill", f"{method} {mode or '-'} {backend}", note="skipped: out of --budget time")
                    continue
                try:
                    res[backend] = distill_iterations(method, mode, backend, problem, dev)
                except Exception as e:
                    traceback.print_exc()
                    row("distill", f"{method} {mode or '-'} {backend}", error=f"{type(e).__name__}: {e}", ok=False)
            t, k = res.get("torch"), res.get("triton")
            entry = {
                "method": method,
                "mode": mode or "-",
                "unit": unit,
                "torch_ms": t["ms"] if t else None,
                "triton_ms": k["ms"] if k else None,
                "ratio": t["ms"] / k["ms"] if t and k else None,
                "torch_peak_mib": t["peak_mib"] if t else None,
                "triton_peak_mib": k["peak_mib"] if k else None,
                "torch_loss": t["loss"] if t else None,
                "triton_loss": k["loss"] if k else None,
            }
            table.append(entry)
            row("distill", f"{method} {mode or '-'}", **{k: v for k, v in entry.items() if k not in ("method", "mode")})
    return table


def print_distill_table(table: list[dict], dev: torch.device) -> None:
    def ms(v):
        return "n/a" if v is None else f"{v:,.1f}"

    def mib(v):
        return "n/a" if v is None or v != v else f"{v:,.0f}"

    setup = next((r for r in ROWS if r["section"] == "distill" and r["name"].startswith("setup")), None)
    print(
        f"\nWhole distillation iterations on {dev} (median ms per unit; ratio = torch / triton; "
        + (f"expert trained in {setup['seconds']:.1f} s)" if setup else "no expert)")
    )
    print("| method | mode | unit | torch ms/it | triton ms/it | ratio | peak MiB torch | peak MiB triton |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in table:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(
            f"| {r['method']} | {r['mode']} | {r['unit']} | {ms(r['torch_ms'])} | {ms(r['triton_ms'])} | {ratio} | "
            f"{mib(r['torch_peak_mib'])} | {mib(r['triton_peak_mib'])} |"
        )


def over_budget() -> bool:
    return time.perf_counter() - CLOCK["start"] > CLOCK["budget"]


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
    global BACKENDS, MIN_TIME
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_check.json", help="JSON file for every row")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device (CPU: TRITON_INTERPRET=1)")
    ap.add_argument("--quick", action="store_true", help="CPU dry run: tiny shapes, backend torch only, no Triton")
    ap.add_argument("--skip", nargs="*", default=[], choices=["selfcheck", "correct", "distill", "kernel", "mtt"])
    ap.add_argument("--max-bptt-gib", type=float, default=60.0, help="skip BPTT points predicted above this")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds; sections (and part 2's runs) not started by then are skipped (default: 285 on a GPU, "
        "none with --smoke / --quick)",
    )
    args = ap.parse_args(argv)
    tiny = args.smoke or args.quick
    budget = args.budget if args.budget is not None else float("inf") if tiny else 285.0
    CLOCK["start"], CLOCK["budget"] = time.perf_counter(), budget
    if args.quick:
        dev, name = torch.device("cpu"), "cpu (--quick: tiny shapes, backend torch only)"
        BACKENDS = ("torch",)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
    elif args.smoke and kernels.interpreting():
        dev, name = torch.device("cpu"), "cpu (Triton interpreter)"
    else:
        print(
            "gpu_check: no CUDA device here; nothing to check (use --quick for a CPU dry run of the script, or "
            "--smoke with TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)"
        )
        return 0
    if tiny:
        MIN_TIME = 0.01
    from fastdd.environment import report

    env = {"device": name, **report(self_check=False)}
    print(json.dumps({k: env[k] for k in ("device", "fastdd", "python", "torch", "triton", "cuda", "cudnn")}))
    sections = [
        ("selfcheck", lambda: selfcheck(dev)),
        ("correct", lambda: correctness(dev, tiny)),
        ("distill", lambda: distill_timings(dev, tiny)),
        ("kernel", lambda: kernel_timings(dev, tiny)),
        ("mtt", lambda: mtt_timings(dev, tiny, args.max_bptt_gib)),
    ]
    results: dict = {}
    for section, run in sections:
        if section in args.skip:
            continue
        if section == "correct" and "triton" not in BACKENDS:
            row(section, "all kernels", note="skipped: --quick runs no Triton")
            continue
        if over_budget():
            row(section, "all", note=f"skipped: over the --budget of {budget:.0f} s")
            continue
        try:
            results[section] = run()
        except Exception as e:  # one failing part must not hide the others' numbers
            traceback.print_exc()
            row(section, "section failed", error=f"{type(e).__name__}: {e}", ok=False)
        if section == "selfcheck":  # from here on the kernels themselves are measured (a failed op too)
            os.environ["FASTDD_KERNEL_CHECK"] = "0"
            kernels.reset_kernel_checks()
    env["seconds"] = time.perf_counter() - CLOCK["start"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = {
        "env": env,
        "rows": ROWS,
        "distill": results.get("distill", []),
        "selfcheck": results.get("selfcheck", {}),
        "kernels": kernels.kernel_report(),
    }
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print_table([r for r in ROWS if r["section"] != "distill" or "error" in r or "note" in r])
    if results.get("distill"):
        print_distill_table(results["distill"], dev)
    print(f"\n{len(ROWS)} rows in {env['seconds']:.0f} s -> {args.out}")
    bad = [r for r in ROWS if r.get("ok") is False]
    for r in bad:
        print("MISMATCH:" if "error" not in r else "FAILED:", r)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
