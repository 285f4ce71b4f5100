"""The kernels' self-check (fastdd.kernels._selfcheck): the real kernels pass; a wrong forward, a wrong gradient,
a wrong double backward and a failing launch are caught (the op falls back to its torch twin with exactly one
warning, and the report and a run's metadata say so); FASTDD_KERNEL_CHECK=0 lets a wrong kernel through; with
backend triton forced a failed check is an error; the torch path never runs the check.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1). Backend
``auto`` picks Triton only for CUDA tensors, so the fallback tests make ``auto`` treat CPU tensors as it treats
CUDA ones (``_backend._auto_uses_triton``), the way the dispatch tests patch ``interpreting``."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import fastdd
from fastdd import kernels
from fastdd.kernels import _backend, _selfcheck, convnet_block, dsa
from fastdd.kernels._selfcheck import KernelCheckError, KernelCheckWarning

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or not _backend.interpreting(), reason="runs the kernels in the Triton interpreter"
)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("FASTDD_KERNEL_CHECK", raising=False)
    kernels.reset_kernel_checks()
    with kernels.use_backend("auto"):
        yield
    kernels.reset_kernel_checks()


@pytest.fixture
def auto_picks_triton(monkeypatch):
    """Backend auto treats CPU tensors as CUDA ones: Triton (in the interpreter), behind the self-check."""
    monkeypatch.setattr(_backend, "_auto_uses_triton", lambda x: True)


def _block_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=dtype)
    return x, torch.randn(3, generator=g, dtype=dtype), torch.randn(3, generator=g, dtype=dtype)


def _dsa_inputs(dtype=torch.float32):
    from fastdd.augment import sample_dsa

    p = sample_dsa(3, (5, 4), generator=torch.Generator().manual_seed(1), per_sample_family=True)
    return torch.randn(3, 2, 5, 4, generator=torch.Generator().manual_seed(2), dtype=dtype), p


def _entries(op: str) -> list[dict]:
    return kernels.kernel_report()["ops"][op]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by 1.01 (a kernel with a wrong gradient)."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


class _WrongSecondOrder(torch.autograd.Function):
    """Identity forward and backward, but the backward's own gradient is 1.01 times too large."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return _ScaleGrad.apply(g)


# ------------------------------------------------------------------------------------------- (a) real kernels


def test_real_kernels_pass_the_check():
    with kernels.use_backend("triton"):
        res = kernels.check_kernels("cpu")
    for op in ("norm_act_pool", "apply_dsa"):
        assert [e["dtype"] for e in res[op]] == ["float32", "float64"]
        for e in res[op]:
            assert e["check"] == "passed" and e["backend"] == "triton", (op, e)
            assert 0 <= e["max_error"] <= e["tolerance"] == _selfcheck.TOLERANCES[op][getattr(torch, e["dtype"])]
    assert kernels.kernel_report()["ops"] == res


def test_first_triton_call_runs_the_check_once_per_dtype(auto_picks_triton, monkeypatch):
    calls = []
    real = _selfcheck._check
    monkeypatch.setattr(_selfcheck, "_check", lambda *a, **k: calls.append(a[:3]) or real(*a, **k))
    x, w, b = _block_inputs()
    w.requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelCheckWarning)
        for _ in range(3):
            y = kernels.norm_act_pool(x, w, b)
    assert calls == [("norm_act_pool", torch.device("cpu"), torch.float32)]
    assert type(y.grad_fn).__name__ == "NormActPoolFunctionBackward"  # Triton ran after the check passed
    (entry,) = _entries("norm_act_pool")
    assert entry["device"] == "cpu" and entry["dtype"] == "float32"
    assert entry["backend"] == "triton" and entry["check"] == "passed"
    assert _entries("apply_dsa")[0]["check"] == "not run"


def test_the_check_keeps_the_callers_grad_mode_and_rng(auto_picks_triton):
    x, w, b = _block_inputs()
    torch.manual_seed(3)
    state = torch.get_rng_state()
    with torch.no_grad():
        y = kernels.norm_act_pool(x, w, b)
        assert not torch.is_grad_enabled()
    assert y.grad_fn is None and torch.equal(torch.get_rng_state(), state)
    assert _entries("norm_act_pool")[0]["check"] == "passed"


# ------------------------------------------------------------------------------------------- (b) wrong kernels


def _count(record, category=KernelCheckWarning):
    return [w for w in record if issubclass(w.category, category)]


@pytest.mark.parametrize("wrong", ["forward", "backward"])
def test_a_wrong_block_kernel_falls_back_to_torch_with_one_warning(auto_picks_triton, monkeypatch, wrong):
    real = convnet_block.norm_act_pool_triton

    def bad(*a, **k):
        y = real(*a, **k)
        return y * 1.01 if wrong == "forward" else _ScaleGrad.apply(y)

    monkeypatch.setattr(convnet_block, "norm_act_pool_triton", bad)
    x, w, b = _block_inputs()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        outs = [kernels.norm_act_pool(x, w, b) for _ in range(3)]
    (warn,) = _count(rec)
    text = str(warn.message)
    for part in ("norm_act_pool", "on cpu", "float32", f"Triton {_selfcheck.triton_version()}", "max error"):
        assert part in text, (part, text)
    assert f"failed its self-check on cpu (float32, Triton {_selfcheck.triton_version()}): {wrong}:" in text
    assert warn.filename == __file__  # points at the caller of the op
    for y in outs:
        assert torch.equal(y, kernels.norm_act_pool_torch(x, w, b))
    (entry,) = _entries("norm_act_pool")
    assert entry["backend"] == "torch" and entry["check"].startswith(f"failed: {wrong}: max error")
    assert entry["max_error"] > entry["tolerance"] == 1e-5
    # another dtype is checked (and passes) on its own
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelCheckWarning)
        monkeypatch.setattr(convnet_block, "norm_act_pool_triton", real)
        kernels.norm_act_pool(*_block_inputs(torch.float64))
    assert [e["check"][:6] for e in _entries("norm_act_pool")] == ["failed", "passed"]


def test_a_wrong_dsa_double_backward_is_caught(auto_picks_triton, monkeypatch):
    real = dsa.apply_dsa_triton
    monkeypatch.setattr(dsa, "apply_dsa_triton", lambda x, p: _WrongSecondOrder.apply(real(x, p)))
    x, p = _dsa_inputs()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        outs = [kernels.apply_dsa(x, p) for _ in range(2)]
    (warn,) = _count(rec)
    assert "apply_dsa" in str(warn.message) and "double backward: max error" in str(warn.message)
    for y in outs:
        assert torch.equal(y, kernels.apply_dsa_torch(x, p))
    (entry,) = _entries("apply_dsa")
    assert entry["backend"] == "torch" and entry["check"].startswith("failed: double backward")


def test_the_run_meta_records_the_kernel_report(auto_picks_triton, monkeypatch, tiny_ds):
    real = convnet_block.norm_act_pool_triton
    monkeypatch.setattr(convnet_block, "norm_act_pool_triton", lambda *a, **k: real(*a, **k) * 1.01)
    with pytest.warns(KernelCheckWarning):
        kernels.norm_act_pool(*_block_inputs())
    # the distillation itself runs on the torch path (backend torch: fast, no further check)
    with kernels.use_backend("torch"):
        syn = fastdd.distill(tiny_ds, "dm", ipc=1, iterations=1, show_progress=False, model_kwargs={"width": 4})
    meta = syn.meta["kernels"]
    assert json.loads(json.dumps(meta)) == meta
    assert meta["backend"] == "torch" and meta["self_check"] == "on"
    (entry,) = meta["ops"]["norm_act_pool"]
    assert entry["backend"] == "torch" and entry["check"].startswith("failed: forward")
    assert meta["ops"]["apply_dsa"][0]["check"] == "not run"


# ------------------------------------------------------------------------------------------- (c) failing launch


def test_a_failing_launch_falls_back_the_same_way(auto_picks_triton, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("out of resources: shared memory (simulated)")

    monkeypatch.setattr(dsa, "_launch", boom)
    x, p = _dsa_inputs()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        outs = [kernels.apply_dsa(x, p) for _ in range(3)]
    (warn,) = _count(rec)
    assert "apply_dsa" in str(warn.message) and "on cpu" in str(warn.message)
    assert "RuntimeError: out of resources: shared memory (simulated)" in str(warn.message)
    for y in outs:
        assert torch.equal(y, kernels.apply_dsa_torch(x, p))
    (entry,) = _entries("apply_dsa")
    assert entry == {
        "device": "cpu",
        "dtype": "float32",
        "backend": "torch",
        "check": "failed: RuntimeError: out of resources: shared memory (simulated)",
        "max_error": None,
        "tolerance": 1e-5,
    }


# ------------------------------------------------------------------------------------------- (d) check off


def test_without_the_check_a_wrong_kernel_goes_through(auto_picks_triton, monkeypatch):
    monkeypatch.setenv("FASTDD_KERNEL_CHECK", "0")
    real = convnet_block.norm_act_pool_triton
    monkeypatch.setattr(convnet_block, "norm_act_pool_triton", lambda *a, **k: real(*a, **k) * 1.01)
    x, w, b = _block_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelCheckWarning)
        y = kernels.norm_act_pool(x, w, b)
    ref = kernels.norm_act_pool_torch(x, w, b)
    assert not torch.equal(y, ref) and torch.allclose(y, ref * 1.01, rtol=1e-5, atol=1e-6)
    (entry,) = _entries("norm_act_pool")
    assert entry["backend"] == "triton" and entry["check"] == "skipped: FASTDD_KERNEL_CHECK=0"
    assert kernels.kernel_report()["self_check"] == "off (FASTDD_KERNEL_CHECK=0)"


# ------------------------------------------------------------------------------------------- (e) forced triton


def test_with_backend_triton_forced_a_failed_check_is_an_error(monkeypatch):
    real = convnet_block.norm_act_pool_triton
    monkeypatch.setattr(convnet_block, "norm_act_pool_triton", lambda *a, **k: real(*a, **k) * 1.01)
    x, w, b = _block_inputs()
    with warnings.catch_warnings(), kernels.use_backend("triton"):
        warnings.simplefilter("error", KernelCheckWarning)
        for _ in range(2):  # every call, not only the first
            with pytest.raises(KernelCheckError, match=r"norm_act_pool failed its self-check on cpu .*forward: max"):
                kernels.norm_act_pool(x, w, b)
    assert _entries("norm_act_pool")[0]["check"].startswith("failed: forward")


def test_forced_backend_error_for_a_failing_launch(monkeypatch):
    monkeypatch.setattr(dsa, "_launch", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad launch")))
    x, p = _dsa_inputs(torch.float64)
    with kernels.use_backend("triton"), pytest.raises(KernelCheckError, match="ValueError: bad launch"):
        kernels.apply_dsa(x, p)


# ------------------------------------------------------------------------------------------- the torch path


def test_the_torch_path_never_runs_the_check(monkeypatch):
    def no(*a, **k):
        raise AssertionError("the self-check ran on the torch path")

    monkeypatch.setattr(_selfcheck, "_check", no)
    x, w, b = _block_inputs()
    xd, p = _dsa_inputs()
    for name in ("auto", "torch"):
        with kernels.use_backend(name):
            assert torch.equal(kernels.norm_act_pool(x, w, b), kernels.norm_act_pool_torch(x, w, b))
            assert torch.equal(kernels.apply_dsa(xd, p), kernels.apply_dsa_torch(xd, p))
    assert all(e[0]["check"] == "not run" for e in kernels.kernel_report()["ops"].values())


def test_dtypes_without_kernels_and_unknown_ops_pass_through_unchecked(monkeypatch):
    monkeypatch.setattr(_selfcheck, "_check", lambda *a, **k: pytest.fail("checked"))
    with kernels.use_backend("triton"):
        assert kernels.resolve(torch.zeros(1), "some_op") == "triton"
        assert kernels.resolve(torch.zeros(1, dtype=torch.float16), "norm_act_pool") == "triton"
    assert _entries("norm_act_pool")[0]["check"] == "not run"


def test_reset_forgets_results(auto_picks_triton, monkeypatch):
    monkeypatch.setattr(dsa, "_launch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    x, p = _dsa_inputs(torch.float64)
    with pytest.warns(KernelCheckWarning):
        kernels.apply_dsa(x, p)
    assert _entries("apply_dsa")[0]["backend"] == "torch"
    kernels.reset_kernel_checks()
    assert _entries("apply_dsa")[0]["check"] == "not run"
