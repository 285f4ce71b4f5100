"""Group ``knn``: coverage's exact k-NN, :func:`fastdd.knn_coverage.nearest_distances` (``exclude_self=True``,
as the coverage radius needs), with FAISS against the torch brute force.

20,000 clustered features × 512 dimensions (100 centres ~ N(0, 1), each point a centre + 0.5·N(0, 1)),
searched against themselves. The ``torch`` case replaces ``fastdd.knn_coverage._faiss`` by ``lambda: None``
(what an install without FAISS runs: chunked ``addmm`` + ``topk``); the ``faiss`` case uses the installed
FAISS (skipped without it; on CUDA only with a GPU FAISS). ``extra_info``: ``backend``
(``search_backend``), ``queries_per_s``, and on the FAISS case ``speedup_vs_torch`` and
``index_agreement`` (fraction of queries with the same neighbour as the torch case; both refine their
candidates in float64, so only exact ties may differ). About a minute (``full``); ``tiny``: 2,000 × 32.
"""

from __future__ import annotations

import pytest
import torch

SIZES = {"full": dict(n=20_000, d=512, rounds=2), "tiny": dict(n=2_000, d=32, rounds=1)}


def clustered(n: int, d: int, centres: int = 100, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    return (c[torch.randint(0, centres, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)).contiguous()


@pytest.mark.benchmark(group="knn")
@pytest.mark.parametrize("backend", ["torch", "faiss"])  # torch first: the FAISS case reads its time
def test_knn(backend, device, run, bench_size, bench_store, monkeypatch):
    import fastdd.knn_coverage as cov

    if backend == "torch":
        monkeypatch.setattr(cov, "_faiss", lambda: None)
    elif cov._faiss() is None:
        pytest.skip("FAISS is not installed (pip install 'fastdd[cpu]')")
    elif device == "cuda" and not cov.faiss_gpu_available():
        pytest.skip("CUDA case: the installed FAISS has no GPU support (pip install 'fastdd[gpu]')")
    s = SIZES[bench_size]
    x = clustered(s["n"], s["d"]).to(device)
    (dist, idx), sec = run(lambda a: cov.nearest_distances(a, a, exclude_self=True), args=(x,), rounds=s["rounds"])
    info = run.benchmark.extra_info
    info.update(backend=cov.search_backend(x), n=s["n"], d=s["d"], queries_per_s=s["n"] / sec)
    key = ("knn", device)
    if backend == "torch":
        bench_store[key] = (sec, idx, dist)
    elif key in bench_store:
        t_sec, t_idx, t_dist = bench_store[key]
        info["speedup_vs_torch"] = t_sec / sec
        info["index_agreement"] = float((idx == t_idx).double().mean())
        info["max_distance_diff"] = float((dist - t_dist).abs().max())
