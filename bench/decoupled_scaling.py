"""When to switch families: time and peak memory of RDED and SRe2L against IPC, beside MTT's meta-gradient
(adjoint and BPTT), each from ``fastdd.distill``'s default code path.

    python bench/decoupled_scaling.py --ipc 1 10 50 --out runs/bench/decoupled

Data: a generated CIFAR-shaped set (3×32×32, 10 classes, ``--per-class`` images each), so nothing is
downloaded. Teacher: a batch-norm ConvNet (``convnetbn``, width ``--width``) at its random initialisation
(the cost of RDED and SRe2L does not depend on how well the teacher was trained); experts for MTT: one
ConvNet expert of 2 epochs, the same width.

Every point runs in a fresh subprocess, twice: once for time (no allocator setting) and once for memory
(``MALLOC_MMAP_THRESHOLD_`` fixed so freed blocks return to the system; peak resident memory ``VmHWM``,
reset through ``/proc/self/clear_refs`` just before the call, minus the resident size then; on CUDA the
peak of ``max_memory_allocated`` above what was allocated before). What a point runs:

- ``rded``: the whole distillation (its fixed work: one loop iteration per class);
- ``sre2l``: ``--sre2l-iterations`` recovery iterations, projected to SRe2L's 1,000 (CIFAR's setting);
- ``mtt:adjoint`` / ``mtt:bptt``: ``--mtt-iterations`` MTT iterations with ``--syn-steps`` unrolled steps
  (batch_syn = the whole set, as at high IPC), projected to 5,000 (MTT's CIFAR setting).

Seconds per iteration are the median of the loop's own per-iteration times (``log.csv``), leaving out the first
(first-call costs); the "projected run" column is the set-up (the whole call less its iterations) + seconds per
iteration × the method's usual iteration count: a projection, marked as such. Timings are noisy on shared
machines: compare columns within one run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

METHODS = ("rded", "sre2l", "mtt:adjoint", "mtt:bptt")
USUAL_ITERATIONS = {"rded": None, "sre2l": 1000, "mtt:adjoint": 5000, "mtt:bptt": 5000}
MIB = float(1 << 20)


def _data(per_class: int):
    from fastdd.data import from_pixels

    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(per_class)
    x = torch.rand(len(y), 3, 32, 32, generator=g)
    return from_pixels("generated", x, y, x[:100], y[:100], 10)


def _child(spec: dict) -> dict:
    """One point, in this (fresh) process: set up, reset the peak, distil, report seconds and peak bytes."""
    import fastdd
    from fastdd.bench import PeakMemory
    from fastdd.models import model_for
    from fastdd.teacher import Teacher

    device = spec["device"]
    ds = _data(spec["per_class"]).to(device)
    method, ipc = spec["method"], spec["ipc"]
    kw: dict = dict(show_progress=False, seed=0)
    iterations = None
    if method in ("rded", "sre2l"):
        net = model_for(ds, "convnetbn", width=spec["width"])
        g = torch.Generator().manual_seed(0)
        kw["teacher"] = Teacher(net, net.init(g, device=device), net.init_buffers(device=device), {"dataset": ds.name})
        if method == "sre2l":
            iterations = spec["sre2l_iterations"]
    else:
        kw.update(experts=spec["experts"], mode=method.split(":")[1], syn_steps=spec["syn_steps"], batch_syn=ipc * 10)
        kw.update(expert_epochs=1, max_start_epoch=1)
        iterations = spec["mtt_iterations"]
    with tempfile.TemporaryDirectory() as out:
        with PeakMemory(device) as m:
            fastdd.distill(ds, method.split(":")[0], ipc, iterations=iterations, out=out, checkpoint_every=10**6, **kw)
        with open(Path(out) / "log.csv") as f:
            steps = [float(row["seconds"]) for row in csv.DictReader(f)]
    later = sorted(steps[1:] or steps)  # the loop's own per-iteration times; the first carries first-call costs
    per = later[len(later) // 2]
    return {
        "seconds": m.seconds,
        "peak": m.peak,
        "iterations": iterations,
        "per_iteration": per,
        "loop_iterations": len(steps),
    }


def _run_point(spec: dict, memory: bool, timeout: float) -> dict:
    env = dict(os.environ)
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    code = "import json, sys; sys.path.insert(0, sys.argv[2]); import decoupled_scaling as d; "
    code += "print(json.dumps(d._child(json.loads(sys.argv[1]))))"
    here = str(Path(__file__).resolve().parent)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec), here],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-300:] or f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _experts(width: int, per_class: int, folder: Path) -> str:
    import fastdd

    if not (folder / "manifest.json").exists():
        ds = _data(per_class)
        fastdd.train_experts(
            ds, "convnet", num_experts=1, epochs=2, out=folder, show_progress=False, model_kwargs={"width": width}
        )
    return str(folder)


def table(rows: list[dict]) -> str:
    lines = [
        "| method | IPC | measured | s / iteration | projected run (s) | peak memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['ipc']} | failed: {r['error'][:80]} | | | |")
            continue
        it = r["iterations"]
        usual = USUAL_ITERATIONS[r["method"]]
        per = r["per_iteration"]
        what = f"{it} iterations" if it else f"whole run ({r['loop_iterations']} classes)"
        setup = r["seconds"] - per * r["loop_iterations"]
        proj = f"{setup + per * usual:.0f} (×{usual})" if usual else f"{r['seconds']:.1f}"
        per_s = f"{per:.3f}" if it else f"{per:.3f} per class"
        lines.append(
            f"| {r['method']} | {r['ipc']} | {what}, {r['seconds']:.1f} s | {per_s} | {proj} | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument(
        "--per-class", type=int, default=500, help="real images per class of the generated set (default 500)"
    )
    ap.add_argument("--width", type=int, default=64, help="ConvNet width of teacher and experts (default 64)")
    ap.add_argument("--sre2l-iterations", type=int, default=6)
    ap.add_argument("--mtt-iterations", type=int, default=4)
    ap.add_argument("--syn-steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=None, help="folder for results.json and table.md (default: print only)")
    args = ap.parse_args(argv)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="decoupled-"))
    work.mkdir(parents=True, exist_ok=True)
    experts = None
    if any(m.startswith("mtt") for m in args.methods):
        experts = _experts(args.width, args.per_class, work / "experts")
    rows = []
    for ipc in args.ipc:
        for method in args.methods:
            spec = dict(
                method=method,
                ipc=ipc,
                device=args.device,
                per_class=args.per_class,
                width=args.width,
                experts=experts,
                sre2l_iterations=args.sre2l_iterations,
                mtt_iterations=args.mtt_iterations,
                syn_steps=args.syn_steps,
            )
            timed = _run_point(spec, memory=False, timeout=args.timeout)
            mem = _run_point(spec, memory=True, timeout=args.timeout) if "error" not in timed else timed
            row = {"method": method, "ipc": ipc, **timed}
            if "error" in mem:
                row["error"] = mem["error"]
            else:
                row["peak_mib"] = mem["peak"] / MIB
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out:
        (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        (work / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
