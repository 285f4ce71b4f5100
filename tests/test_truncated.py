"""Truncated unrolls (``mode="truncated"``, ``window=W``) and DD's RaT-BPTT option.

The references are written out by hand in float64: θ_{N−W} by a plain no-grad loop, then autograd through
the last W steps only; ``window >= N`` is the whole unroll (BPTT's gradients, the adjoint's numbers)."""

from __future__ import annotations

import csv

import pytest
import torch
from dist_helpers import run_ranks

import fastdd
from fastdd.augment import DSAConfig, StepAugment
from fastdd.distillation import DDConfig
from fastdd.engine import EngineConfig, dd_grad, matching_loss, student_loss, trajectory_matching_grad, unroll_grad

F64 = torch.float64


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _problem(dtype=F64, soft=False, k=3, m=7):
    """A 6-step MTT unroll: 7 images in batches of 3, 3, 1 twice (image 6 is used by steps 2 and 5 only)."""
    g = torch.Generator().manual_seed(0)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=k, im_size=(8, 8), width=4, depth=2)
    theta0 = net.init(g, dtype=dtype)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, dtype=dtype)
    x = torch.randn(m, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.softmax(torch.randn(m, k, generator=g, dtype=dtype), 1) if soft else torch.arange(m) % k
    batches = [torch.tensor(b) for b in ([0, 1, 2], [3, 4, 5], [6], [1, 3, 5], [0, 2, 4], [6])]
    return net, theta0, target, x, y, batches


def _aug(dsa):
    return StepAugment(DSAConfig(), torch.Generator().manual_seed(5)) if dsa else None


def _engine(net, x, y, theta0, batches, outer, aug, mode, lr=0.3, **kw):
    lrs = torch.full((len(batches),), lr, dtype=x.dtype, requires_grad=True)
    return unroll_grad(net, x.clone().requires_grad_(), y, lrs, theta0, batches, outer, aug, mode, **kw)


def _by_hand(net, x, y, theta0, batches, outer, aug, window, lr=0.3):
    """θ_{N−W} by a plain loop without a graph, then autograd through the last W steps."""
    n = len(batches)
    start = max(n - window, 0)
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_(y.is_floating_point())
    lrs = torch.full((n,), lr, dtype=x.dtype, requires_grad=True)
    theta = theta0.clone()
    for i, b in enumerate(batches):
        xb = aug(xs[b], i) if aug is not None else xs[b]
        if i < start:
            with torch.enable_grad():
                th = theta.detach().requires_grad_()
                g = torch.autograd.grad(student_loss(net(xb.detach(), th), ys[b].detach()), th)[0]
            theta = (theta - lrs[i].detach() * g).detach()
            continue
        theta = theta.requires_grad_() if i == start else theta
        g = torch.autograd.grad(student_loss(net(xb, theta), ys[b]), theta, create_graph=True)[0]
        theta = theta - lrs[i] * g
    loss = outer(theta)
    wrt = [xs, lrs] + ([ys] if ys.requires_grad else [])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return loss.detach(), [torch.zeros_like(t) if gr is None else gr for t, gr in zip(wrt, grads)], theta.detach()


@pytest.mark.parametrize("dsa", [False, True])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("window", [1, 2, 4])
def test_truncated_equals_autograd_through_the_last_steps_float64(window, soft, dsa):
    net, theta0, target, x, y, batches = _problem(soft=soft)
    outer = matching_loss(theta0, target)
    y_in = y.clone().requires_grad_(soft)
    res = _engine(net, x, y_in, theta0, batches, outer, _aug(dsa), "truncated", window=window)
    loss, (gx, glr, *gy), theta = _by_hand(net, x, y, theta0, batches, outer, _aug(dsa), window)
    assert res.mode == "truncated"
    assert abs(res.loss - loss) <= 1e-12 * loss and _rel(res.theta_final, theta) < 1e-12
    assert _rel(res.images, gx) < 1e-10 and _rel(res.lrs, glr) < 1e-10
    assert torch.equal(res.lrs[: 6 - window], torch.zeros(6 - window, dtype=F64))  # prefix rates: zero
    assert (res.lrs[6 - window :] != 0).all()
    if window < 4:  # images 0..5 are used only in steps 0, 1, 3, 4 (or, window 2: step 4): zero gradient
        used = {6} | ({0, 2, 4} if window == 2 else set())
        for r in range(7):
            assert (res.images[r] != 0).any() == (r in used), r
    if soft:
        assert _rel(res.labels, gy[0]) < 1e-10


@pytest.mark.parametrize("window", [6, 9])
@pytest.mark.parametrize("dsa", [False, True])
def test_window_at_least_n_is_bptt_and_bitwise_the_adjoint(window, dsa):
    net, theta0, target, x, y, batches = _problem(soft=True)
    outer, y = matching_loss(theta0, target), y.requires_grad_()
    t = _engine(net, x, y, theta0, batches, outer, _aug(dsa), "truncated", window=window)
    a = _engine(net, x, y, theta0, batches, outer, _aug(dsa), "adjoint")
    b = _engine(net, x, y, theta0, batches, outer, _aug(dsa), "bptt")
    for got, want in ((t.images, b.images), (t.lrs, b.lrs), (t.labels, b.labels)):
        assert _rel(got, want) < 1e-10
    assert all(torch.equal(u, v) for u, v in ((t.images, a.images), (t.lrs, a.lrs), (t.labels, a.labels)))
    assert torch.equal(t.loss, a.loss) and torch.equal(t.theta_final, a.theta_final)


def test_window_at_least_n_equals_bptt_float32():
    net, theta0, target, x, y, batches = _problem(F64)
    theta0, target, x = theta0.float(), target.float(), x.float()
    lr = torch.tensor(0.3)
    _, tx, tl = trajectory_matching_grad(net, x, y, lr, theta0, target, batches, _aug(True), "truncated", window=6)
    _, bx, bl = trajectory_matching_grad(net, x, y, lr, theta0, target, batches, _aug(True), "bptt")
    assert tx.dtype == torch.float32 and _rel(tx, bx) < 1e-5 and abs((tl - bl) / bl).item() < 1e-5


def test_trajectory_matching_grad_truncated_float32_near_the_float64_reference():
    net, theta0, target, x, y, batches = _problem(F64)
    lr = torch.tensor(0.3)
    args = (net, x.float(), y, lr, theta0.float(), target.float(), batches, _aug(True))
    _, gx, glr = trajectory_matching_grad(*args, "truncated", window=3)
    _, (rx, rlr), _ = _by_hand(net, x, y, theta0, batches, matching_loss(theta0, target), _aug(True), 3)
    assert _rel(gx.double(), rx) < 1e-5 and abs(glr.double() - rlr.sum()) / rlr.sum().abs() < 1e-5


@pytest.mark.parametrize("storage", ["checkpoint", "all", "host"])
def test_theta_storages_give_bitwise_the_same_truncated_gradients(storage):
    net, theta0, target, x, y, batches = _problem()
    batches = batches * 2  # 12 steps, window 7: a tail of 7 in segments of 3
    outer = matching_loss(theta0, target)
    ref = _engine(net, x, y, theta0, batches, outer, _aug(True), "truncated", window=7, theta_storage="all")
    got = _engine(net, x, y, theta0, batches, outer, _aug(True), "truncated", window=7, theta_storage=storage)
    assert got.theta_storage == storage
    assert torch.equal(got.images, ref.images) and torch.equal(got.lrs, ref.lrs)


@pytest.mark.parametrize("window,length", [(2, 5), (5, 5), (3, 6)])
def test_dd_grad_truncated_and_length(window, length):
    g = torch.Generator().manual_seed(1)
    net = fastdd.build_model("convnet", in_channels=1, num_classes=3, im_size=(8, 8), width=4, depth=1)
    theta0 = net.init(g, dtype=F64)
    s, n, epochs = 2, 3, 3
    x = torch.randn(s, n, 1, 8, 8, generator=g, dtype=F64)
    y = torch.arange(n).repeat(s, 1)
    xr, yr = torch.randn(9, 1, 8, 8, generator=g, dtype=F64), torch.arange(9) % 3
    lrs = torch.full((s * epochs,), 0.1, dtype=F64)
    res = dd_grad(
        net,
        x.clone().requires_grad_(),
        y,
        lrs.requires_grad_(),
        theta0,
        xr,
        yr,
        epochs,
        "truncated",
        window=window,
        length=length,
    )
    batches = [torch.arange(t % s * n, t % s * n + n) for t in range(length)]
    outer = fastdd.engine.real_data_loss(net, xr, yr)
    loss, (gx, glr), _ = _by_hand(net, x.view(s * n, 1, 8, 8), y.view(-1), theta0, batches, outer, None, window, 0.1)
    assert res.images.shape == x.shape and res.lrs.shape == (s * epochs,)
    assert abs(res.loss - loss) <= 1e-12 * loss
    assert _rel(res.images.view(s * n, 1, 8, 8), gx) < 1e-10 and _rel(res.lrs[:length], glr) < 1e-10
    assert torch.equal(res.lrs[length:], torch.zeros(s * epochs - length, dtype=F64))  # steps not applied


def _sharded(window: int) -> dict:
    net, theta0, target, x, y, batches = _problem()
    shard = fastdd.distributed.Shard(fastdd.distributed.current(), len(x), ("images",))
    local, pos, weights = shard.localize(batches)
    aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare([len(b) for b in batches], 8, "cpu")
    d = fastdd.distributed.current()
    reduce = fastdd.engine.StepReduce(weights, lambda t: fastdd.distributed.all_reduce_(t, d))
    outer = matching_loss(theta0, target)
    res = _engine(
        net,
        shard.rows(x),
        shard.rows(y),
        theta0,
        local,
        outer,
        aug.subset(pos),
        "truncated",
        window=window,
        reduce=reduce,
    )
    return {"images": res.images, "lrs": res.lrs}


def test_truncated_under_torch_distributed_equals_one_process():
    parts = run_ranks(_sharded, 3)
    net, theta0, target, x, y, batches = _problem()
    aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare([len(b) for b in batches], 8, "cpu")
    ref = _engine(net, x, y, theta0, batches, matching_loss(theta0, target), aug, "truncated", window=3)
    assert _rel(torch.cat([p["images"] for p in parts]), ref.images) < 1e-10
    assert all(_rel(p["lrs"], ref.lrs) < 1e-10 for p in parts)


def test_window_is_validated_and_named():
    net, theta0, target, x, y, batches = _problem()
    outer = matching_loss(theta0, target)
    for mode, window in (
        ("truncated", None),
        ("truncated", 0),
        ("truncated", True),
        ("truncated", 2.0),
        ("adjoint", 2),
    ):
        with pytest.raises(ValueError, match="window"):
            _engine(net, x, y, theta0, batches, outer, None, mode, window=window)
        with pytest.raises(ValueError, match="window"):
            EngineConfig(mode=mode, window=window).validate_engine()
    EngineConfig(mode="truncated", window=1).validate_engine()
    for kw in (dict(rat_bptt=True), dict(rat_bptt=True, mode="truncated", window=7), dict(min_prefix=1)):
        with pytest.raises(ValueError, match="window|min_prefix"):
            DDConfig(steps=2, epochs=3, **kw).validate(10)
    with pytest.raises(ValueError, match="min_prefix"):
        DDConfig(steps=2, epochs=3, rat_bptt=True, mode="truncated", window=4, min_prefix=3).validate(10)
    with pytest.raises(ValueError, match="length"):
        dd_grad(net, x[:6].view(2, 3, 3, 8, 8), y[:6].view(2, 3), torch.ones(2), theta0, x, y, 1, length=3)


def test_auto_never_picks_truncated():
    net, theta0, target, x, y, batches = _problem()
    for budget in (0, 1 << 40):
        got = EngineConfig(mode="auto", memory_budget=budget).resolve_mode(net, x, y, theta0, batches)
        assert got in ("bptt", "adjoint")


def test_dd_rat_bptt_draws_lengths_and_resumes_bitwise(tiny_ds, tmp_path):
    kw = dict(show_progress=False, model="mlp", steps=2, epochs=3, real_batch=16, checkpoint_every=2)
    kw.update(mode="truncated", window=2, rat_bptt=True, min_prefix=1)
    full = fastdd.distill(tiny_ds, "dd", iterations=6, out=tmp_path / "a", **kw)
    fastdd.distill(tiny_ds, "dd", iterations=2, out=tmp_path / "b", **kw)
    resumed = fastdd.distill(tiny_ds, "dd", iterations=6, out=tmp_path / "b", resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.lr, resumed.lr)
    assert full.meta["gradient_mode"] == "truncated" and full.meta["config"]["window"] == 2
    lengths = [[int(r["unroll"]) for r in csv.DictReader((tmp_path / run / "log.csv").open())] for run in "ab"]
    assert lengths[0] == lengths[1] and len(lengths[0]) == 6, lengths  # the resumed run drew the same N0
    assert all(3 <= n <= 6 for n in lengths[0]) and len(set(lengths[0])) > 1  # N0 + 2, N0 ~ U[1, 4]
    plain = fastdd.distill(tiny_ds, "dd", iterations=2, **{**kw, "rat_bptt": False, "min_prefix": 0})
    assert not torch.equal(plain.images, full.images)
