"""The engine on the Triton backend (kernels in the interpreter on CPU tensors): the fused ConvNet block
and DSA carry the unrolled student's forward, backward and double backward, so adjoint must still equal
BPTT, and one MTT meta-gradient must equal the torch backend's. Tiny shapes: the interpreter is slow."""

import pytest
import torch

import fastdd
from fastdd import kernels
from fastdd.augment import DSAConfig, StepAugment
from fastdd.engine import matching_loss, trajectory_matching_grad, unroll_grad

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or kernels.interpreting()),
    reason="needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)",
)


def _setup(dtype, seed=0, m=5, k=3):
    g = torch.Generator().manual_seed(seed)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=k, im_size=(8, 8), width=3, depth=2)
    theta0 = net.init(g, dtype=dtype)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, dtype=dtype)
    x = torch.randn(m, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.arange(m) % k
    batches = list(torch.randperm(m, generator=g).split(3))  # [3, 2]: uneven
    return net, theta0, target, x, y, batches


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_triton_path_is_what_runs(monkeypatch):
    from fastdd.kernels import convnet_block, dsa

    calls = []
    for mod, name in ((convnet_block, "NormActPoolFunction"), (dsa, "DSAFunction")):
        fn = getattr(mod, name)
        monkeypatch.setattr(fn, "apply", (lambda f, n: lambda *a: (calls.append(n), f(*a))[1])(fn.apply, name))
    net, theta0, target, x, y, batches = _setup(torch.float32)
    with kernels.use_backend("triton"):
        trajectory_matching_grad(
            net,
            x,
            y,
            torch.tensor(0.1),
            theta0,
            target,
            batches[:1],
            StepAugment(DSAConfig(), torch.Generator().manual_seed(1)),
            mode="adjoint",
        )
    assert calls.count("NormActPoolFunction") >= 2 * 2 and calls.count("DSAFunction") >= 2


def test_adjoint_equals_bptt_on_triton_backend_float64():
    net, theta0, target, x, y, batches = _setup(torch.float64)
    res = {}
    with kernels.use_backend("triton"):
        for mode in ("bptt", "adjoint"):
            aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(4))
            lrs = torch.full((len(batches),), 0.3, dtype=torch.float64, requires_grad=True)
            res[mode] = unroll_grad(
                net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target), aug, mode
            )
    a, b = res["adjoint"], res["bptt"]
    assert abs(float(a.loss) - float(b.loss)) <= 1e-12 * abs(float(b.loss))
    assert _rel(a.images, b.images) < 1e-10 and _rel(a.lrs, b.lrs) < 1e-10
    assert b.images.abs().sum() > 0


@pytest.mark.parametrize("mode", ["adjoint", "bptt"])
def test_mtt_meta_gradient_same_on_both_backends_float32(mode):
    net, theta0, target, x, y, batches = _setup(torch.float32, seed=1)
    out = {}
    for backend in ("torch", "triton"):
        with kernels.use_backend(backend):
            aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(2))
            out[backend] = trajectory_matching_grad(
                net, x, y, torch.tensor(0.2), theta0, target, batches, aug, mode=mode
            )
    (lt, gt, rt), (l3, g3, r3) = out["torch"], out["triton"]
    assert abs(float(l3) - float(lt)) <= 1e-4 * abs(float(lt))
    assert _rel(g3, gt) < 1e-4
    assert abs(float(r3) - float(rt)) <= 1e-4 * abs(float(rt)) + 1e-8
