"""Gradient modes timed side by side: the modes alternate round by round in one process, so load changes
on a shared machine hit every mode alike (the pytest-benchmark suite runs each case in turn).

    python bench/modes_interleaved.py --modes reference bptt adjoint tesla --steps 10 --rounds 3

One MTT meta-gradient per call at CIFAR shape (default ConvNet, IPC 10 = 100 images, every step all of
them, DSA on), the inputs of ``fastdd.bench.build_problem``; prints the median seconds per mode and its
ratio to the first mode.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from fastdd.bench import Problem, build_problem, call_problem, load_impl, parse_mode

REFERENCE = f"{Path(__file__).resolve().with_name('reference_mtt.py')}:meta_grad"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=["reference", "bptt", "adjoint", "tesla"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    prob = build_problem(Problem(args.steps, 10 * args.ipc, 10 * args.ipc, dsa=True), "cpu")
    fns = {
        m: load_impl(REFERENCE if parse_mode(m, allow_reference=True)[0] == "reference" else None) for m in args.modes
    }
    times: dict[str, list[float]] = {m: [] for m in args.modes}
    for m in args.modes:  # warm-up
        call_problem(fns[m], prob, m)
    for _ in range(args.rounds):
        for m in args.modes:
            t = time.perf_counter()
            call_problem(fns[m], prob, m)
            times[m].append(time.perf_counter() - t)
    first = statistics.median(times[args.modes[0]])
    print(f"IPC {args.ipc}, {args.steps} steps, DSA; median of {args.rounds} alternating rounds")
    print("| mode | median s | all rounds (s) | time / " + args.modes[0] + " |")
    print("|---|---:|---|---:|")
    for m, ts in times.items():
        med = statistics.median(ts)
        print(f"| {m} | {med:.2f} | {', '.join(f'{t:.2f}' for t in ts)} | {med / first:.2f} |")


if __name__ == "__main__":
    main()
