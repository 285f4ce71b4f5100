"""torch.distributed (gloo, 2 spawned processes): the sharded run equals one process.

Each test spawns its ranks (tests/dist_helpers.py) and compares what they computed with the same
computation in this one process: plain autograd (bptt) for the meta-gradient, the single-process run for
distillation, experts and evaluation.
"""
from __future__ import annotations

import pytest
import torch

import fastdd
from fastdd.augment import DSAConfig, StepAugment
from fastdd.distributed import Shard, split_rows
from fastdd.engine import StepReduce, matching_loss, to_device_once, unroll_grad

from dist_helpers import run_ranks


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _problem(dtype, m=7, k=3):
    """A tiny MTT unroll: 7 images (split 4 / 3 over 2 ranks), batches of 5 (some all on one rank)."""
    g = torch.Generator().manual_seed(0)
    net = fastdd.build_model("convnet", in_channels=3, num_classes=k, im_size=(8, 8), width=4, depth=2)
    theta0 = net.init(g, dtype=dtype)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, dtype=dtype)
    x = torch.randn(m, 3, 8, 8, generator=g, dtype=dtype)
    y = torch.arange(m) % k
    batches = [torch.randperm(m, generator=g)[:5] for _ in range(4)] + [torch.tensor([0, 1, 2])]
    return net, theta0, target, x, y, batches


def _sharded_meta_grad(dtype_name: str, dsa: bool, mode: str, theta_storage: str) -> dict:
    """On each rank: its rows' ∂L/∂X, and ∂L/∂η, L (which must be the same on every rank)."""
    dtype = getattr(torch, dtype_name)
    net, theta0, target, x, y, batches = _problem(dtype)
    d = fastdd.distributed.current()
    shard = Shard(d, len(x), ("images",))
    local, pos, weights = shard.localize(batches)
    aug = None
    if dsa:  # drawn for the whole batches, as one process draws them, then this rank's part
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare(
            [len(b) for b in batches], 8, "cpu").subset(pos)
    lrs = torch.full((len(batches),), 0.3, dtype=dtype, requires_grad=True)
    res = unroll_grad(net, shard.rows(x).requires_grad_(), shard.rows(y), lrs, theta0, local,
                      matching_loss(theta0, target), aug, mode, theta_storage=theta_storage,
                      reduce=StepReduce(weights, lambda t: fastdd.distributed.all_reduce_(t, d)))
    return {"images": res.images, "lrs": res.lrs, "loss": res.loss, "lo": shard.lo, "hi": shard.hi,
            "theta": res.theta_final}


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("dsa", [True, False])
def test_sharded_adjoint_equals_single_process_autograd(dtype, tol, dsa):
    parts = run_ranks(_sharded_meta_grad, dtype, dsa, "adjoint", "checkpoint" if dsa else "all")
    assert [(p["lo"], p["hi"]) for p in parts] == [(0, 4), (4, 7)]  # uneven
    net, theta0, target, x, y, batches = _problem(getattr(torch, dtype))
    aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare(
        [len(b) for b in batches], 8, "cpu") if dsa else None
    lrs = torch.full((len(batches),), 0.3, dtype=x.dtype, requires_grad=True)
    ref = unroll_grad(net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target),
                      aug, "bptt")  # plain autograd through the whole unroll, one process
    images = torch.cat([p["images"] for p in parts])
    assert _rel(images, ref.images) < tol
    for p in parts:  # identical on every rank
        assert _rel(p["lrs"], ref.lrs) < tol
        assert abs(p["loss"].item() - ref.loss.item()) <= tol * abs(ref.loss.item())
        assert _rel(p["theta"], ref.theta_final) < tol
    assert torch.equal(parts[0]["lrs"], parts[1]["lrs"]) and torch.equal(parts[0]["theta"], parts[1]["theta"])
    assert (images[:4] != 0).any() and (images[4:] != 0).any()


def _sharded_tesla(dtype_name: str) -> dict:
    return _sharded_meta_grad(dtype_name, True, "tesla", "all")


def test_sharded_tesla_equals_single_process_tesla():
    parts = run_ranks(_sharded_tesla, "float64")
    net, theta0, target, x, y, batches = _problem(torch.float64)
    aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare([len(b) for b in batches], 8, "cpu")
    lrs = torch.full((len(batches),), 0.3, dtype=x.dtype, requires_grad=True)
    ref = unroll_grad(net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target),
                      aug, "tesla")
    assert _rel(torch.cat([p["images"] for p in parts]), ref.images) < 1e-10
    assert _rel(parts[1]["lrs"], ref.lrs) < 1e-10


def test_split_rows_and_localize():
    assert split_rows(7, 2) == [(0, 4), (4, 7)]
    assert split_rows(9, 4) == [(0, 3), (3, 5), (5, 7), (7, 9)]
    with pytest.raises(ValueError, match="at most 3 processes"):
        split_rows(3, 4)
    shard = Shard(fastdd.distributed.Dist(1, 2), 7, ("images",))
    local, pos, w = shard.localize([torch.tensor([6, 0, 4, 1, 5])])
    assert local[0].tolist() == [2, 0, 1] and pos[0].tolist() == [0, 2, 4] and w == [3 / 5]


def test_bptt_refused_with_reduce():
    net, theta0, target, x, y, batches = _problem(torch.float64)
    with pytest.raises(ValueError, match="bptt"):
        unroll_grad(net, x.requires_grad_(), y, torch.ones(len(batches), dtype=x.dtype), theta0, batches,
                    matching_loss(theta0, target), None, "bptt",
                    reduce=StepReduce([1.0] * len(batches), lambda t: t))
