"""Exact k-NN for coverage: FAISS ``IndexFlatL2`` vs brute-force torch, on one self-search.

    python bench/bench_knn.py                 # 50,000 x 2,048 float32, k = 2 (self + nearest other)
    python bench/bench_knn.py --repeat 2      # two round-robin rounds; the table shows the best of each
    python bench/bench_knn.py --n 5000 --d 256 --methods faiss torch-mm

Data: clustered synthetic features (100 centres ~ N(0, 1), each point = centre + 0.5 N(0, 1)),
seeded. Every method searches the set against itself with k = 2; the first hit is the point itself
and the second its nearest other point (what the coverage radius needs). Agreement is measured
against FAISS: the fraction of queries with the same second-neighbour index, and the largest
relative difference of the second-neighbour distance. Prints a Markdown table.

Methods:
  faiss       faiss.IndexFlatL2: add, then search(X, 2) (FAISS's own blocking and threads)
  torch-mm    chunks of queries: addmm(|x|^2, q, X^T, alpha=-2) + |q|^2, then topk(2, largest=False)
  torch-cdist chunks of queries: torch.cdist(q, X), then topk(2, largest=False)
  fastdd      fastdd.knn_coverage.nearest_distances(X, X, exclude_self=True): FAISS candidates (k = 9)
              with float64 re-computed distances, as coverage() runs it
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

METHODS = ("faiss", "torch-mm", "torch-cdist", "fastdd")


def clustered(n: int, d: int, centres: int = 100, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    assign = torch.randint(0, centres, (n,), generator=g)
    return (c[assign] + 0.5 * torch.randn(n, d, generator=g)).contiguous()


def knn_faiss(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    a = np.ascontiguousarray(x.numpy())
    index = faiss.IndexFlatL2(a.shape[1])
    index.add(a)
    d2, i = index.search(a, k)
    return torch.from_numpy(d2).clamp_min(0).sqrt(), torch.from_numpy(i)


def knn_torch_mm(x: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    sq = x.pow(2).sum(1)
    ds, ids = [], []
    for s in range(0, len(x), chunk):
        q = x[s : s + chunk]
        d2 = torch.addmm(sq[None, :], q, x.T, alpha=-2).add_(sq[s : s + chunk, None])
        v, i = d2.topk(k, dim=1, largest=False)
        ds.append(v.clamp_min(0).sqrt())
        ids.append(i)
    return torch.cat(ds), torch.cat(ids)


def knn_torch_cdist(x: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    ds, ids = [], []
    for s in range(0, len(x), chunk):
        v, i = torch.cdist(x[s : s + chunk], x).topk(k, dim=1, largest=False)
        ds.append(v)
        ids.append(i)
    return torch.cat(ds), torch.cat(ids)


def knn_fastdd(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fastdd.knn_coverage import nearest_distances

    d, i = nearest_distances(x, x, exclude_self=True)
    n = len(x)
    # same layout as the others: column 0 = self (distance 0), column 1 = nearest other
    return (torch.stack([torch.zeros(n, dtype=torch.float64), d], 1), torch.stack([torch.arange(n), i], 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds; each round runs every method once, in turn "
        "(round-robin, so a burst of load on a shared machine hits all methods alike)",
    )
    args = ap.parse_args()

    import faiss

    x = clustered(args.n, args.d, seed=args.seed)
    print(
        f"{args.n:,} x {args.d:,} float32 (clustered, seed {args.seed}); k = 2; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    fns = {"faiss": knn_faiss, "torch-mm": knn_torch_mm, "torch-cdist": knn_torch_cdist, "fastdd": knn_fastdd}
    results, times = {}, {m: [] for m in args.methods}
    for rnd in range(args.repeat):
        for m in args.methods:
            t = time.perf_counter()
            d, i = fns[m](x, 2)
            times[m].append(time.perf_counter() - t)
            results[m] = (min(times[m]), d.double(), i.long())
            print(f"  round {rnd + 1}, {m}: {times[m][-1]:.1f} s", flush=True)

    ref = results.get("faiss") or next(iter(results.values()))
    ref_name = "faiss" if "faiss" in results else args.methods[0]
    print(
        f"\n| method | best time (s) | all rounds (s) | best / {ref_name} | self is 1st hit "
        f"| 2nd-NN index = {ref_name} | max rel. diff of 2nd-NN distance |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for m, (sec, d, i) in results.items():
        self_first = (i[:, 0] == torch.arange(len(i))).double().mean().item()
        agree = (i[:, 1] == ref[2][:, 1]).double().mean().item()
        rel = ((d[:, 1] - ref[1][:, 1]).abs() / ref[1][:, 1].clamp_min(1e-12)).max().item()
        rounds = ", ".join(f"{t:.1f}" for t in times[m])
        print(
            f"| {m} | {sec:.1f} | {rounds} | {sec / ref[0]:.2f} | {100 * self_first:.2f} % | {100 * agree:.3f} % "
            f"| {rel:.2e} |"
        )
    # where a method's 2nd neighbour differs from the reference, which is truly nearer (float64)?
    notes = []
    x64 = x.double()
    for m, (_, _, i) in results.items():
        q = torch.nonzero(i[:, 1] != ref[2][:, 1]).flatten()
        if len(q) == 0:
            continue
        dm = (x64[q] - x64[i[q, 1]]).norm(dim=1)
        dr = (x64[q] - x64[ref[2][q, 1]]).norm(dim=1)
        notes.append(
            f"{m}: {len(q)} queries differ from {ref_name}; exact float64 distance of {m}'s neighbour "
            f"<= {ref_name}'s in {int((dm <= dr).sum())} of them, max relative gap {((dm - dr).abs() / dr).max():.1e}"
        )
    for line in notes:
        print(f"\n{line}")


if __name__ == "__main__":
    main()
