"""``fastdd env``: the text report has its key lines, ``--json`` parses and has every field, both exit 0 on a machine
without CUDA; missing FAISS, a forced backend that cannot run and a GPU's self-check lines are reported."""

from __future__ import annotations

import json

import pytest
import torch

import fastdd
from fastdd import environment, kernels
from fastdd.cli import main
from fastdd.kernels import _backend

FIELDS = {
    "fastdd",
    "python",
    "platform",
    "torch",
    "triton",
    "cuda",
    "cudnn",
    "cuda_available",
    "gpus",
    "backend",
    "ops",
    "faiss",
    "threads",
    "env",
    "self_check",
}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")


@no_cuda
def test_text_report_has_the_key_lines(capsys, monkeypatch):
    monkeypatch.setenv("FASTDD_KERNEL_CHECK", "0")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(":", 1) for line in out.splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    assert lines["fastdd"] == fastdd.__version__
    assert lines["torch"] == torch.__version__
    assert lines["cuda"] == (f"{torch.version.cuda} (torch's build)" if torch.version.cuda else "none")
    for key in ("python", "platform", "triton", "cudnn", "faiss", "threads", "TRITON_INTERPRET", "FASTDD_BACKEND"):
        assert lines[key], key
    assert lines["gpus"] == "none (torch sees no CUDA device)"
    assert lines["backend"].startswith("auto")
    assert lines["ops on cpu"] == "norm_act_pool -> torch, apply_dsa -> torch"
    assert lines["FASTDD_KERNEL_CHECK"] == "0"
    assert lines["kernel self-check"] == "no CUDA device: the Triton kernels are not used here; skipped"
    assert f"intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}" in lines["threads"]


@no_cuda
def test_json_report_parses_and_has_the_fields(capsys):
    assert main(["env", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == FIELDS
    assert r["gpus"] == [] and r["cuda_available"] is False
    assert r["ops"] == {"cpu": {"norm_act_pool": "torch", "apply_dsa": "torch"}}
    assert r["self_check"] == environment.NO_CUDA
    assert set(r["env"]) == {"FASTDD_BACKEND", "FASTDD_KERNEL_CHECK", "TRITON_INTERPRET"} | {
        "FASTDD_DATA",
        "FASTDD_DEBUG",
        "FASTDD_DIST_TIMEOUT",
        "CUDA_VISIBLE_DEVICES",
    }
    assert r["threads"]["intra_op"] == torch.get_num_threads()
    assert r["faiss"]["build"] in ("cpu", "gpu", "none")
    assert r["torch"] == torch.__version__


def test_missing_faiss_is_none_not_an_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    r = environment.report(self_check=False)
    assert r["faiss"] == {"build": "none", "version": None}
    lines = environment.format_report(r).splitlines()
    assert [line.split(":", 1)[1].strip() for line in lines if line.startswith("faiss:")] == ["none"]


def test_a_backend_that_cannot_run_is_reported_not_raised(monkeypatch, capsys):
    monkeypatch.setattr(_backend, "interpreting", lambda: False)
    with kernels.use_backend("triton"):
        assert main(["env", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "triton"
    assert r["ops"]["cpu"]["norm_act_pool"].startswith("error: RuntimeError: backend 'triton' was selected")


def test_gpu_lines_and_self_check_lines_in_the_text():
    r = environment.report(self_check=False)
    r["gpus"] = [{"device": "cuda:0", "name": "NVIDIA H200", "memory_gib": 139.8, "compute_capability": "9.0"}]
    entry = {"device": "cuda:0", "dtype": "float32", "backend": "triton", "check": "passed"}
    failed = {"device": "cuda:0", "dtype": "float64", "backend": "torch", "check": "failed: RuntimeError: x"}
    r["self_check"] = {
        "cuda:0": {
            "norm_act_pool": [{**entry, "max_error": 2e-7, "tolerance": 1e-5}],
            "apply_dsa": [{**failed, "max_error": None, "tolerance": 1e-10}],
        }
    }
    text = environment.format_report(r)
    assert "gpu cuda:0:           NVIDIA H200, 139.8 GiB, compute capability 9.0" in text
    assert "norm_act_pool float32: passed (max error 2e-07, tolerance 1e-05) -> triton" in text
    assert "apply_dsa float64: failed: RuntimeError: x -> torch" in text
