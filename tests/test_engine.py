"""The engine's gradient modes: adjoint (exact, recomputing) must equal plain BPTT through autograd."""

import pytest
import torch

import fastdd
from fastdd.augment import DSAConfig, StepAugment
from fastdd.engine import dd_grad, matching_loss, trajectory_matching_grad, unroll_grad

F64 = dict(dtype=torch.float64)


def _setup(norm="instancenorm", m=7, soft=False, dtype=torch.float64, seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=k, im_size=(8, 8), width=4, depth=2, norm=norm)
    theta0 = net.init(g, dtype=dtype)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, dtype=dtype)
    x = torch.randn(m, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.softmax(torch.randn(m, k, generator=g, dtype=dtype), 1) if soft else torch.arange(m) % k
    perm = torch.randperm(m, generator=g)
    batches = list(perm.split(3)) + list(torch.randperm(m, generator=g).split(3))  # 2 epochs, last batch short
    return net, theta0, target, x, y, batches


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
@pytest.mark.parametrize("dsa", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_adjoint_equals_bptt_trajectory_matching_float64(norm, dsa, soft):
    net, theta0, target, x, y, batches = _setup(norm, soft=soft)
    assert [len(b) for b in batches] == [3, 3, 1, 3, 3, 1]
    lr = torch.tensor(0.3, **F64)
    y = y.requires_grad_(soft)
    res = {}
    for mode in ("bptt", "adjoint"):
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)) if dsa else None
        lrs = lr.expand(len(batches)).clone().requires_grad_()
        res[mode] = unroll_grad(
            net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target), aug, mode
        )
    b, a = res["bptt"], res["adjoint"]
    assert a.mode == "adjoint" and b.mode == "bptt"
    assert abs(a.loss.item() - b.loss.item()) <= 1e-12 * abs(b.loss.item())
    assert _rel(a.images, b.images) < 1e-10
    assert _rel(a.lrs, b.lrs) < 1e-10
    if soft:
        assert _rel(a.labels, b.labels) < 1e-10
    assert b.images.abs().sum() > 0 and (a.images[0] != 0).any()


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_adjoint_equals_bptt_float32(norm):
    net, theta0, target, x, y, batches = _setup(norm)
    theta0, target, x = theta0.float(), target.float(), x.float()
    out = {}
    for mode in ("bptt", "adjoint"):
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5))
        out[mode] = trajectory_matching_grad(
            net, x, y, torch.tensor(0.3, dtype=torch.float32), theta0, target, batches, aug, mode=mode
        )
    (lb, gb, glb), (la, ga, gla) = out["bptt"], out["adjoint"]
    assert ga.dtype == torch.float32
    assert _rel(ga, gb) < 1e-5 and abs((gla - glb) / glb).item() < 1e-5 and abs((la - lb) / lb).item() < 1e-6


@pytest.mark.parametrize("soft", [False, True])
def test_adjoint_equals_bptt_dd_objective(soft):
    """Wang et al.'s objective: per-step images and learning rates, outer cross-entropy on real data."""
    g = torch.Generator().manual_seed(1)
    net = fastdd.build_model("lenet", in_channels=1, num_classes=4, im_size=(28, 28))
    theta0 = net.init(g, dtype=torch.float64)
    s, n, epochs = 2, 4, 3
    x = torch.randn(s, n, 1, 28, 28, generator=g, **F64)
    y = torch.softmax(torch.randn(s, n, 4, generator=g, **F64), -1) if soft else torch.arange(n).repeat(s, 1) % 4
    lrs = torch.full((s * epochs,), 0.05, **F64)
    xr, yr = torch.randn(10, 1, 28, 28, generator=g, **F64), torch.randint(0, 4, (10,), generator=g)
    b = dd_grad(net, x.clone().requires_grad_(), y, lrs.clone().requires_grad_(), theta0, xr, yr, epochs, mode="bptt")
    a = dd_grad(
        net, x.clone().requires_grad_(), y, lrs.clone().requires_grad_(), theta0, xr, yr, epochs, mode="adjoint"
    )
    assert a.images.shape == x.shape
    assert _rel(a.images, b.images) < 1e-10 and _rel(a.lrs, b.lrs) < 1e-10
    assert abs(a.loss - b.loss) < 1e-12


class _AdjointLoss(torch.autograd.Function):
    """Loss as a function of (images, lr) whose backward returns the adjoint gradients."""

    @staticmethod
    def forward(ctx, images, lr, net, theta0, target, y, batches, aug):
        loss, gx, glr = trajectory_matching_grad(net, images, y, lr, theta0, target, batches, aug, mode="adjoint")
        ctx.save_for_backward(gx, glr)
        return loss

    @staticmethod
    def backward(ctx, grad):
        gx, glr = ctx.saved_tensors
        return grad * gx, grad * glr, None, None, None, None, None, None


def test_gradcheck_whole_function():
    net = fastdd.build_model("convnet", in_channels=1, num_classes=2, im_size=(4, 4), width=2, depth=1)
    g = torch.Generator().manual_seed(0)
    theta0 = net.init(g, dtype=torch.float64)
    target = theta0 + 0.1 * torch.randn(net.num_params, generator=g, **F64)
    x = torch.randn(3, 1, 4, 4, generator=g, requires_grad=True, **F64)
    lr = torch.tensor(0.5, requires_grad=True, **F64)
    batches = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([1, 2])]
    y = torch.tensor([0, 1, 1])
    aug = StepAugment(DSAConfig(strategy="color_crop_cutout_flip"), torch.Generator().manual_seed(2))
    f = lambda xx, ll: _AdjointLoss.apply(xx, ll, net, theta0, target, y, batches, aug)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, lr), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_tesla_is_exact_for_one_step_and_approximate_for_more():
    net, theta0, target, x, y, batches = _setup()
    lr = torch.tensor(0.3, **F64)
    one = [batches[0]]
    _, gb, lb = trajectory_matching_grad(net, x, y, lr, theta0, target, one, mode="bptt")
    _, gt, lt = trajectory_matching_grad(net, x, y, lr, theta0, target, one, mode="tesla")
    assert _rel(gt, gb) < 1e-12 and abs(lt - lb) < 1e-12
    errs = []
    for rate in (0.01, 0.3):  # the direct-term error grows with the inner learning rate
        small = torch.tensor(rate, **F64)
        _, gb, _ = trajectory_matching_grad(net, x, y, small, theta0, target, batches, mode="bptt")
        _, gt, _ = trajectory_matching_grad(net, x, y, small, theta0, target, batches, mode="tesla")
        errs.append(_rel(gt, gb))
    assert 1e-6 < errs[0] < 0.05 and errs[1] > errs[0], errs


def test_auto_mode_picks_by_budget_and_matches():
    net, theta0, target, x, y, batches = _setup()
    lrs = torch.full((len(batches),), 0.2, requires_grad=True, **F64)
    kw = dict(outer=matching_loss(theta0, target))
    big = unroll_grad(
        net, x.clone().requires_grad_(), y, lrs, theta0, batches, mode="auto", memory_budget=1 << 40, **kw
    )
    small = unroll_grad(net, x.clone().requires_grad_(), y, lrs, theta0, batches, mode="auto", memory_budget=1, **kw)
    assert big.mode == "bptt" and small.mode == "adjoint"
    assert _rel(small.images, big.images) < 1e-10


def test_engine_errors():
    net, theta0, target, x, y, batches = _setup()
    with pytest.raises(ValueError, match="gradient mode"):
        trajectory_matching_grad(net, x, y, torch.tensor(0.1, **F64), theta0, target, batches, mode="magic")
    with pytest.raises(ValueError, match="0-d"):
        trajectory_matching_grad(net, x, y, torch.tensor([0.1]), theta0, target, batches)
    with pytest.raises(ValueError, match="start parameters"):
        trajectory_matching_grad(net, x, y, torch.tensor(0.1, **F64), theta0[:-1], target, batches)
    with pytest.raises(ValueError, match="empty"):
        trajectory_matching_grad(net, x, y, torch.tensor(0.1, **F64), theta0, target, [])


@pytest.mark.parametrize("storage", ["checkpoint", "all", "host"])
@pytest.mark.parametrize("n_steps", [1, 5, 10])
def test_theta_storage_modes_are_exact(storage, n_steps):
    net, theta0, target, x, y, _ = _setup()
    g = torch.Generator().manual_seed(4)
    batches = [torch.randperm(7, generator=g)[:3] for _ in range(n_steps)]
    lrs = torch.full((n_steps,), 0.3, requires_grad=True, **F64)
    kw = dict(outer=matching_loss(theta0, target))
    b = unroll_grad(net, x.clone().requires_grad_(), y, lrs, theta0, batches, mode="bptt", **kw)
    a = unroll_grad(
        net, x.clone().requires_grad_(), y, lrs, theta0, batches, mode="adjoint", theta_storage=storage, **kw
    )
    assert _rel(a.images, b.images) < 1e-10 and _rel(a.lrs, b.lrs) < 1e-10
    assert torch.equal(a.theta_final, b.theta_final) or _rel(a.theta_final, b.theta_final) < 1e-14


def test_auto_theta_storage_rule_and_bitwise_equal_storages():
    from fastdd.engine import AUTO_THETA_FRACTION, auto_theta_storage

    assert AUTO_THETA_FRACTION == 0.25
    # the default ConvNet at batch 100: 216 MiB of activations per step, 1.22 MiB per θ
    assert auto_theta_storage(44, 1_280_040, 216 << 20) == "all"
    assert auto_theta_storage(45, 1_280_040, 216 << 20) == "checkpoint"
    net, theta0, target, x, y, batches = _setup()
    lr = torch.tensor(0.3, **F64)
    out = {}
    for storage in ("auto", "checkpoint", "all"):
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5))
        lrs = lr.expand(len(batches)).clone().requires_grad_()
        out[storage] = unroll_grad(
            net,
            x.clone().requires_grad_(),
            y,
            lrs,
            theta0,
            batches,
            matching_loss(theta0, target),
            aug,
            "adjoint",
            theta_storage=storage,
        )
    # this tiny net's θ is large against its activations: auto checkpoints
    assert out["auto"].theta_storage == "checkpoint" and out["all"].theta_storage == "all"
    for s in ("auto", "all"):
        assert torch.equal(out[s].images, out["checkpoint"].images) and torch.equal(out[s].lrs, out["checkpoint"].lrs)


def test_auto_theta_storage_keeps_all_when_activations_dominate():
    net, theta0, target, x, y, batches = _setup()
    x = torch.randn(40, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(40) % 3
    batches = [torch.arange(40)] * 2
    res = trajectory_matching_grad(net, x, y, torch.tensor(0.1, **F64), theta0, target, batches, mode="adjoint")
    ref = trajectory_matching_grad(
        net, x, y, torch.tensor(0.1, **F64), theta0, target, batches, mode="adjoint", theta_storage="checkpoint"
    )
    assert all(torch.equal(a, b) for a, b in zip(res, ref))
    r = unroll_grad(
        net,
        x.requires_grad_(),
        y,
        torch.full((2,), 0.1, **F64),
        theta0,
        batches,
        matching_loss(theta0, target),
        None,
        "adjoint",
    )
    assert r.theta_storage == "all"


def test_tesla_asks_autograd_for_no_hessian_vector_product(monkeypatch):
    # autograd.grad calls that differentiate w.r.t. a (P,) parameter vector: the outer loss, each step's
    # gradient in the forward walk and in the recomputation, and (adjoint only) the HVP of each step
    net, theta0, target, x, y, batches = _setup()
    real_grad = torch.autograd.grad
    counts = {"n": 0}

    def spy(outputs, inputs, *a, **k):
        ins = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        counts["n"] += any(t.shape == (net.num_params,) for t in ins)
        return real_grad(outputs, inputs, *a, **k)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    n = len(batches)
    for mode, expect in (("adjoint", 1 + 3 * n), ("tesla", 1 + 2 * n)):
        counts["n"] = 0
        trajectory_matching_grad(
            net, x, y, torch.tensor(0.3, **F64), theta0, target, batches, mode=mode, theta_storage="all"
        )
        assert counts["n"] == expect, (mode, counts["n"])
