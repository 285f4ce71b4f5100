"""pytest-benchmark suite: ``pytest bench --benchmark-only --benchmark-json=bench.json``.

Options (only when ``bench/`` is on the command line; the normal ``pytest`` run collects ``tests/`` only):

``--bench-size {tiny,full}``
    ``full`` (default): the sizes each module's docstring gives (CIFAR shape, default ConvNet).
    ``tiny``: toy sizes, every case a second or two: a smoke test of the suite
    (``pytest bench --bench-size tiny --benchmark-disable``).
``--bench-no-memory``
    skip the fresh-process peak-memory measurement of the ``iteration`` cases (about halves their time).
``--bench-max-gib G``
    skip BPTT-like cases (``bptt``, ``reference``) whose graph is estimated above G GiB (default 16).

Every case has a ``device`` parameter (``cpu``, ``cuda``); CUDA cases skip, saying so, without a GPU.
Cases record their numbers in ``benchmark.extra_info`` (peak MiB, images/s, FLOP/s, ratios to their
baseline); ratios need the baseline case to have run earlier in the same session (it is ordered first).
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import time

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/: kernels import in the interpreter on CPU-only machines


def pytest_addoption(parser):
    g = parser.getgroup("fastdd bench")
    g.addoption(
        "--bench-size",
        choices=("tiny", "full"),
        default="full",
        help="benchmark sizes: full (default; tens of minutes) or tiny (every case a second or two)",
    )
    g.addoption(
        "--bench-no-memory",
        action="store_true",
        help="skip the fresh-process peak-memory measurement of the iteration cases",
    )
    g.addoption(
        "--bench-max-gib",
        type=float,
        default=16.0,
        help="skip bptt / reference cases whose graph is estimated above this many GiB (default 16)",
    )


def pytest_configure(config):
    if config.getoption("--bench-size") == "tiny":
        # toy shapes: one thread (a second thread only waits on a shared machine); the numbers mean nothing
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture(scope="session")
def bench_store() -> dict:
    """Results shared between cases of one session (baseline times for ratios, reference outputs)."""
    return {}


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _trim() -> None:
    """Give freed heap memory back to the system (glibc), so one heavy case does not crowd the next."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> str:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA case: no CUDA device on this machine (torch.cuda.is_available() is False)")
    yield request.param
    _trim()


class Runner:
    """``run(fn, ...)``: ``benchmark.pedantic`` with our own per-call timer (synchronised on CUDA), so the
    time is known also under ``--benchmark-disable``; returns ``(result, median seconds)``."""

    def __init__(self, benchmark, device: str):
        self.benchmark, self.device = benchmark, device

    def __call__(self, fn, args=(), setup=None, rounds: int = 1, warmup: int = 0):
        times: list[float] = []

        def target(*a, **k):
            sync(self.device)
            t = time.perf_counter()
            out = fn(*a, **k)
            sync(self.device)
            times.append(time.perf_counter() - t)
            return out

        def make_args():
            _trim()
            return (setup() if setup is not None else tuple(args)), {}

        result = self.benchmark.pedantic(target, setup=make_args, rounds=rounds, warmup_rounds=warmup, iterations=1)
        timed = times[warmup:] or times
        sec = statistics.median(timed)
        self.benchmark.extra_info.update(device=self.device, seconds_median=sec, seconds_all=timed)
        return result, sec


@pytest.fixture
def run(benchmark, device) -> Runner:
    return Runner(benchmark, device)
