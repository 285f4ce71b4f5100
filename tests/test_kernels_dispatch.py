"""The op layer's backend switch: FASTDD_BACKEND, use_backend, and which implementation runs where."""

import os
import subprocess
import sys

import pytest
import torch

import fastdd
from fastdd import kernels
from fastdd.kernels import _backend


def _run(code: str, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k not in ("FASTDD_BACKEND", "TRITON_INTERPRET")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_unknown_fastdd_backend_is_an_error_at_first_use_not_at_import():
    out = _run("import fastdd\nprint('imported')\nfastdd.kernels.current_backend()", FASTDD_BACKEND="cuda")
    assert out.stdout.strip() == "imported"  # import fastdd works: the command that uses the backend fails
    assert out.returncode != 0
    assert "ValueError: FASTDD_BACKEND='cuda' is not a fastdd backend" in out.stderr


def test_unknown_fastdd_backend_is_a_named_cli_error_for_every_command():
    for argv in (["--version"], ["datasets"]):
        out = _run(f"import sys; from fastdd.cli import main; sys.exit(main({argv!r}))", FASTDD_BACKEND="bogus")
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        assert out.stderr.strip() == (
            "fastdd: error: FASTDD_BACKEND='bogus' is not a fastdd backend; choose one of: auto, torch, triton"
        )


def test_fastdd_backend_is_read_at_import():
    out = _run("import fastdd.kernels as k; print(k.current_backend())", FASTDD_BACKEND="Torch")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch"


def test_use_backend_as_call_and_as_context():
    assert kernels.current_backend() == "auto"
    with fastdd.use_backend("torch"):
        assert kernels.current_backend() == "torch"
        with fastdd.use_backend("triton"):
            assert kernels.current_backend() == "triton"
        assert kernels.current_backend() == "torch"
    assert kernels.current_backend() == "auto"
    with pytest.raises(ValueError, match="backend='cuda' is not a fastdd backend"):
        fastdd.use_backend("cuda")
    assert kernels.current_backend() == "auto"
    try:
        fastdd.use_backend("torch")  # a plain call sets it for the process
        assert kernels.current_backend() == "torch"
    finally:
        fastdd.use_backend("auto")


def test_auto_runs_torch_on_cpu_tensors_even_under_the_interpreter():
    x = torch.zeros(1)
    assert kernels.resolve(x) == "torch"
    with kernels.use_backend("torch"):
        assert kernels.resolve(x) == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    x = torch.zeros(1)
    with kernels.use_backend("triton"):
        monkeypatch.setattr(_backend, "interpreting", lambda: True)
        assert kernels.resolve(x) == "triton"
        monkeypatch.setattr(_backend, "interpreting", lambda: False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            kernels.resolve(x, "norm_act_pool")
        monkeypatch.setattr(_backend, "triton_available", lambda: False)
        with pytest.raises(RuntimeError, match="Triton is not installed"):
            kernels.resolve(x)


def test_default_convnet_block_and_dsa_go_through_the_op_layer(monkeypatch):
    calls = []
    real = kernels.norm_act_pool

    def spy(*a, **k):
        calls.append("norm_act_pool")
        return real(*a, **k)

    monkeypatch.setattr(kernels, "norm_act_pool", spy)
    net = fastdd.build_model("convnet", in_channels=1, num_classes=3, im_size=(8, 8), width=4, depth=2)
    x = torch.randn(2, 1, 8, 8)
    theta = net.init()
    out = net(x, theta)
    assert calls == ["norm_act_pool"] * 2
    # the torch path is the composite the ConvNet always ran: bitwise the same as the nn.Module
    m = net.load_into_module(net.module(), theta)
    assert torch.equal(out, m(x))
    other = fastdd.build_model(
        "convnet", in_channels=1, num_classes=3, im_size=(8, 8), width=4, depth=2, norm="batchnorm"
    )
    calls.clear()
    other(x, other.init())
    assert calls == []  # other blocks keep their torch ops
