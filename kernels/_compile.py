"""Compile-only check of every kernel configuration the dispatcher can pick, for NVIDIA targets,
without a GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs the whole
pipeline down to a cubin with the ptxas that ships in the Triton wheel. It catches what the
interpreter accepts but the GPU compiler rejects, and checks each kernel's shared memory against
the device's per-block limit.

Run it in a process where ``TRITON_INTERPRET`` is not set (under the interpreter ``@triton.jit``
returns interpreter functions, which cannot be compiled): ``python -m fastdd.kernels._compile``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass

from ._common import KernelSpec

#: Largest shared memory one block may use (bytes, with the opt-in carve-out): A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@dataclass
class CompileResult:
    name: str
    cc: int
    ok: bool
    shared: int | None  # bytes of shared memory per block
    seconds: float
    error: str = ""


def all_specs() -> list[KernelSpec]:
    """Every configuration of every Triton kernel in :mod:`fastdd.kernels`."""
    from . import convnet_block, dsa

    return [*convnet_block.compile_specs(), *dsa.compile_specs()]


def compile_spec(spec: KernelSpec, cc: int) -> CompileResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t = time.perf_counter()
    try:
        src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs)
        k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": spec.num_warps})
    except Exception as e:  # noqa: BLE001 - report every failure, keep going
        return CompileResult(spec.name, cc, False, None, time.perf_counter() - t, f"{type(e).__name__}: {e}"[:2000])
    shared = int(k.metadata.shared)
    limit = SHARED_LIMIT.get(cc)
    ok = limit is None or shared <= limit
    return CompileResult(
        spec.name,
        cc,
        ok,
        shared,
        time.perf_counter() - t,
        "" if ok else f"shared memory {shared} B exceeds the sm_{cc} limit {limit} B",
    )


def check(ccs: tuple[int, ...] = (80, 90)) -> list[CompileResult]:
    """Compile every configuration for every compute capability in ``ccs``."""
    from ._backend import interpreting

    if interpreting():
        raise RuntimeError("the compile-only check needs real @triton.jit kernels: unset TRITON_INTERPRET")
    return [compile_spec(s, cc) for s in all_specs() for cc in ccs]


if __name__ == "__main__":
    ccs = tuple(int(a) for a in sys.argv[1:]) or (80, 90)
    results = check(ccs)
    print(json.dumps([asdict(r) for r in results]))
