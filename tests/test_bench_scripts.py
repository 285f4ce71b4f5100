"""The GPU check, the bytes-moved model and the gradient-error script run (tiny settings); the CPU-only answer of
the GPU check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=BENCH.parent,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    out = _run(str(BENCH / "gpu_check.py"), "--out", str(tmp_path / "g.json"), env={"TRITON_INTERPRET": "0"})
    assert out.returncode == 0, out.stderr
    assert "no CUDA device here" in out.stdout
    assert not (tmp_path / "g.json").exists()


def test_gpu_check_quick_dry_run_on_the_cpu(tmp_path):
    """--quick: every part's code at tiny shapes on the CPU, backend torch only: the self-check says it is skipped,
    the whole-iteration table has MTT (adjoint, bptt), DM and DC, and the JSON holds it all."""
    out = _run(str(BENCH / "gpu_check.py"), "--quick", "--out", str(tmp_path / "g.json"), env={"TRITON_INTERPRET": "0"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (
        "| method | mode | unit | torch ms/it | triton ms/it | ratio | peak MiB torch | peak MiB triton |" in out.stdout
    )
    res = json.loads((tmp_path / "g.json").read_text())
    assert [(r["method"], r["mode"]) for r in res["distill"]] == [
        ("mtt", "adjoint"),
        ("mtt", "bptt"),
        ("dm", "-"),
        ("dc", "-"),
    ]
    for r in res["distill"]:
        assert r["torch_ms"] > 0 and r["triton_ms"] is None and r["ratio"] is None, r
        assert r["torch_loss"] == r["torch_loss"], r  # finite: the iterations ran
    sections = {r["section"] for r in res["rows"]}
    assert sections == {"selfcheck", "correct", "distill", "kernel", "mtt"}
    (check,) = [r for r in res["rows"] if r["section"] == "selfcheck"]
    assert check["check"].startswith("skipped: no CUDA device")
    assert res["env"]["torch"] == torch.__version__ and res["env"]["self_check"].startswith("no CUDA device")
    assert set(res["kernels"]["ops"]) == {"norm_act_pool", "apply_dsa"}
    assert not [r for r in res["rows"] if r.get("ok") is False]


def test_bytes_model_fused_moves_fewer_bytes():
    sys.path.insert(0, str(BENCH))
    try:
        import bytes_model
    finally:
        sys.path.remove(str(BENCH))
    res = bytes_model.model([1])[1]
    for op, (unfused, fused) in res.items():
        for phase in ("forward", "backward", "double backward"):
            assert unfused[phase].ops > fused[phase].ops > 0.99, (op, phase)  # DSA: means over families
            assert unfused[phase].total > fused[phase].total > 0, (op, phase)
    # the counter sees the composite's operators: group norm's double backward is dozens of them
    assert res["norm_act_pool (3 blocks)"][0]["double backward"].ops > 100


def test_gradient_error_tiny_run_writes_the_table_and_json(tmp_path):
    """Two points (the adjoint reference and truncation at W = N), each in its own process."""
    out = _run(
        str(BENCH / "gradient_error.py"),
        *("--dataset", "digits", "--ipc", "1", "--width", "4", "--steps", "3", "--batch", "5"),
        *("--expert-steps", "2", "--rounds", "1", "--modes", "truncated", "--windows", "3"),
        *("--json", str(tmp_path / "e.json")),
    )
    assert out.returncode == 0, out.stderr
    assert "| truncated | 3 |" in out.stdout and "gradient_error.py --dataset digits" in out.stdout
    rows = {(r["mode"], r["window"]): r for r in json.loads((tmp_path / "e.json").read_text())["rows"]}
    assert set(rows) == {("adjoint", None), ("truncated", 3)}
    assert rows["truncated", 3]["rel_x"] == 0.0 and rows["truncated", 3]["rel_eta"] == 0.0  # W = N: the adjoint


def test_decoupled_scaling_tiny_run_writes_the_table(tmp_path):
    """bench/decoupled_scaling.py at tiny settings: one row per method and IPC, from fresh processes, with seconds
    per iteration (SRe2L) or the whole run (RDED) and a peak memory reading."""
    out = _run(
        str(BENCH / "decoupled_scaling.py"),
        *("--ipc", "1", "--methods", "rded", "sre2l", "--per-class", "20", "--width", "8"),
        *("--sre2l-iterations", "2", "--out", str(tmp_path)),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["method"], r["ipc"]) for r in rows] == [("rded", 1), ("sre2l", 1)]
    assert all("error" not in r and r["peak_mib"] >= 0 for r in rows)
    assert rows[0]["iterations"] is None and rows[0]["loop_iterations"] == 10  # rded: one loop iteration per class
    assert rows[1]["iterations"] == rows[1]["loop_iterations"] == 2 and rows[1]["per_iteration"] > 0
    assert "| sre2l | 1 |" in (tmp_path / "table.md").read_text()
