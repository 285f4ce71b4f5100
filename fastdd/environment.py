"""``fastdd env``: one report of the machine and the installation, for bug reports.

:func:`report` gathers fastdd's, Python's, the platform's, torch's, Triton's, CUDA's and cuDNN's versions, the
GPUs torch sees, the backend each op of :mod:`fastdd.kernels` would use on each device, the FAISS build, torch's
thread counts, the environment variables fastdd reads, and the kernels' self-check on each CUDA device
(:func:`fastdd.kernels.check_kernels`). :func:`format_report` turns it into plain text. Nothing here fails for a
missing optional piece (no CUDA, no Triton, no FAISS): it is reported as ``"none"``.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

from . import kernels
from .version import __version__

#: The environment variables fastdd reads (reported as set, or "unset"); OMP_NUM_THREADS is under "threads".
ENV_VARS = (
    "FASTDD_BACKEND",
    "FASTDD_KERNEL_CHECK",
    "TRITON_INTERPRET",
    "FASTDD_DATA",
    "FASTDD_DEBUG",
    "FASTDD_DIST_TIMEOUT",
    "CUDA_VISIBLE_DEVICES",
)
#: The self-check's line on a machine without a CUDA device.
NO_CUDA = "no CUDA device: the Triton kernels are not used here; skipped"
#: The ops reported per device.
OPS = ("norm_act_pool", "apply_dsa")


def _dist_version(name: str) -> str:
    """An installed distribution's version from its metadata (nothing is imported), or ``"none"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


def _gpus() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not torch.cuda.is_available():
        return out
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {
                "device": f"cuda:{i}",
                "name": p.name,
                "memory_gib": round(p.total_memory / 2**30, 1),
                "compute_capability": f"{p.major}.{p.minor}",
            }
        )
    return out


def _faiss() -> dict[str, Any]:
    """``{"build": "cpu" | "gpu" | "none", "version": ...}``; FAISS is imported here only, and a broken install
    is reported, not raised."""
    import importlib.util

    if importlib.util.find_spec("faiss") is None:
        return {"build": "none", "version": None}
    try:
        import faiss
    except Exception as e:  # installed but not importable (a missing shared library, ...)
        return {"build": "none", "version": None, "error": f"{type(e).__name__}: {e}"}
    gpu = hasattr(faiss, "StandardGpuResources")  # faiss-cpu lacks it (it has knn_gpu, which fails when called)
    info: dict[str, Any] = {"build": "gpu" if gpu else "cpu", "version": getattr(faiss, "__version__", None)}
    if gpu:
        try:
            info["gpus"] = int(faiss.get_num_gpus())
        except Exception:  # pragma: no cover - a GPU build without a driver
            info["gpus"] = 0
    return info


def _backend_on(device: torch.device, op: str) -> str:
    """The implementation ``op`` would take for a float32 tensor on ``device`` (after the self-check there)."""
    try:
        probe = torch.empty(0, device=device)
        return kernels.resolve(probe, op)
    except Exception as e:  # e.g. backend triton forced on a CPU without the interpreter
        return f"error: {type(e).__name__}: {e}"


def report(self_check: bool = True) -> dict[str, Any]:
    """The environment as one JSON-able dict (the fields of ``fastdd env --json``). ``self_check``: run the
    kernels' self-check on each CUDA device (a few milliseconds each, plus Triton's compile on the first run)."""
    try:
        backend = kernels.current_backend()
    except ValueError as e:
        backend = f"invalid: {e}"
    gpus = _gpus()
    devices = [torch.device("cpu")] + [torch.device(g["device"]) for g in gpus]
    checks: dict[str, Any] | str
    if not gpus:
        checks = NO_CUDA
    elif not self_check:
        checks = "not run (--no-check)"
    elif not kernels.triton_available():
        checks = "Triton is not installed: the ops run their torch path; skipped"
    else:
        checks = {}
        for dev in devices[1:]:
            try:
                checks[str(dev)] = kernels.check_kernels(dev)
            except Exception as e:  # pragma: no cover - the check catches the kernels' errors itself
                checks[str(dev)] = f"error: {type(e).__name__}: {e}"
    ops = {str(d): {op: _backend_on(d, op) for op in OPS} for d in devices}
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn:  # 9.x: major·10000 + minor·100 + patch; 8.x: major·1000 + minor·100 + patch
        base = 10000 if cudnn >= 10000 else 1000
        cudnn = f"{cudnn // base}.{cudnn % base // 100}.{cudnn % 100}"
    return {
        "fastdd": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _dist_version("triton"),
        "cuda": torch.version.cuda or "none",
        "cudnn": cudnn or "none",
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "backend": backend,
        "ops": ops,
        "faiss": _faiss(),
        "threads": {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        },
        "env": {k: os.environ.get(k, "unset") for k in ENV_VARS},
        "self_check": checks,
    }


def format_report(r: dict[str, Any]) -> str:
    """:func:`report` as aligned plain text, one fact a line."""
    lines: list[str] = []

    def add(key: str, value: Any) -> None:
        lines.append(f"{key + ':':22s}{value}")

    for key in ("fastdd", "python", "platform", "torch", "triton"):
        add(key, r[key])
    add("cuda", r["cuda"] if r["cuda"] == "none" else f"{r['cuda']} (torch's build)")
    add("cudnn", r["cudnn"])
    if r["gpus"]:
        for g in r["gpus"]:
            add(
                "gpu " + g["device"],
                f"{g['name']}, {g['memory_gib']} GiB, compute capability {g['compute_capability']}",
            )
    else:
        add("gpus", "none (torch sees no CUDA device)")
    add("backend", f"{r['backend']} (FASTDD_BACKEND / fastdd.use_backend)")
    for dev, ops in r["ops"].items():
        add(f"ops on {dev}", ", ".join(f"{op} -> {b}" for op, b in ops.items()))
    f = r["faiss"]
    faiss = f["build"] if f["build"] == "none" else f"{f['build']} (faiss {f['version']})"
    if "gpus" in f:
        faiss += f", {f['gpus']} GPU(s) visible"
    if "error" in f:
        faiss += f"; import failed: {f['error']}"
    add("faiss", faiss)
    t = r["threads"]
    add("threads", f"intra-op {t['intra_op']}, inter-op {t['inter_op']}, OMP_NUM_THREADS={t['OMP_NUM_THREADS']}")
    for k, v in r["env"].items():
        add(k, v)
    checks = r["self_check"]
    if isinstance(checks, str):
        add("kernel self-check", checks)
    else:
        for dev, res in checks.items():
            if isinstance(res, str):
                add(f"self-check {dev}", res)
                continue
            for op, entries in res.items():
                for e in entries:
                    err = (
                        ""
                        if e["max_error"] is None
                        else f" (max error {e['max_error']:.2g}, tolerance {e['tolerance']:g})"
                    )
                    add(f"self-check {dev}", f"{op} {e['dtype']}: {e['check']}{err} -> {e['backend']}")
    return "\n".join(lines)


__all__ = ["report", "format_report", "ENV_VARS", "NO_CUDA"]
