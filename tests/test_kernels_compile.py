"""Compile-only check: every kernel configuration the dispatcher can pick builds for sm_80 and sm_90.

``triton.compile(..., target=GPUTarget("cuda", cc, 32))`` runs the GPU compiler (down to a cubin, with the
ptxas in the Triton wheel) on this CPU-only machine. It catches what the interpreter accepts and the GPU
compiler rejects, and each kernel's shared memory is checked against the device's per-block limit.
Runs in a subprocess because the interpreter (``TRITON_INTERPRET=1``, set by conftest) replaces
``@triton.jit`` functions at import time.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_every_kernel_config_compiles_for_sm80_and_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = []
    for cc in ("80", "90"):  # one process per target: the two compile side by side on 2 cores
        cache = tmp_path / cc
        cache.mkdir()
        env_cc = {**env, "TRITON_CACHE_DIR": str(cache)}  # a fresh cache: every configuration is really compiled
        cmd = [sys.executable, "-m", "fastdd.kernels._compile", cc]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_cc))
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        results += json.loads(stdout.strip().splitlines()[-1])
    names = {r["name"] for r in results}
    assert any(n.startswith("norm_act_pool") for n in names) and any(n.startswith("dsa") for n in names), names
    assert {r["cc"] for r in results} == {80, 90}
    bad = [r for r in results if not r["ok"]]
    assert not bad, "\n".join(f"{r['name']} sm_{r['cc']}: {r['error']}" for r in bad)
    assert all(r["shared"] is not None and r["shared"] >= 0 for r in results)
