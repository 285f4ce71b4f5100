"""torch.distributed (gloo, 2 spawned processes): the sharded run equals one process.

Each test spawns its ranks (tests/dist_helpers.py) and compares what they computed with the same
computation in this one process: plain autograd (bptt) for the meta-gradient, the single-process run for
distillation, experts and evaluation.
"""

from __future__ import annotations

import json

import pytest
import torch
from dist_helpers import run_ranks

import fastdd
from fastdd.augment import DSAConfig, StepAugment
from fastdd.distributed import Shard, split_rows
from fastdd.engine import StepReduce, matching_loss, unroll_grad


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
        aug = (
            StepAugment(DSAConfig(), torch.Generator().manual_seed(5))
            .prepare([len(b) for b in batches], 8, "cpu")
            .subset(pos)
        )
    lrs = torch.full((len(batches),), 0.3, dtype=dtype, requires_grad=True)
    res = unroll_grad(
        net,
        shard.rows(x).requires_grad_(),
        shard.rows(y),
        lrs,
        theta0,
        local,
        matching_loss(theta0, target),
        aug,
        mode,
        theta_storage=theta_storage,
        reduce=StepReduce(weights, lambda t: fastdd.distributed.all_reduce_(t, d)),
    )
    return {
        "images": res.images,
        "lrs": res.lrs,
        "loss": res.loss,
        "lo": shard.lo,
        "hi": shard.hi,
        "theta": res.theta_final,
    }


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("dsa", [True, False])
def test_sharded_adjoint_equals_single_process_autograd(dtype, tol, dsa):
    parts = run_ranks(_sharded_meta_grad, dtype, dsa, "adjoint", "checkpoint" if dsa else "all")
    assert [(p["lo"], p["hi"]) for p in parts] == [(0, 4), (4, 7)]  # uneven
    net, theta0, target, x, y, batches = _problem(getattr(torch, dtype))
    aug = (
        StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare([len(b) for b in batches], 8, "cpu")
        if dsa
        else None
    )
    lrs = torch.full((len(batches),), 0.3, dtype=x.dtype, requires_grad=True)
    ref = unroll_grad(
        net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target), aug, "bptt"
    )  # plain autograd through the whole unroll, one process
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
    ref = unroll_grad(
        net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target), aug, "tesla"
    )
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
        unroll_grad(
            net,
            x.requires_grad_(),
            y,
            torch.ones(len(batches), dtype=x.dtype),
            theta0,
            batches,
            matching_loss(theta0, target),
            None,
            "bptt",
            reduce=StepReduce([1.0] * len(batches), lambda t: t),
        )


# ---------------------------------------------------------------------------------------- distill
FAST = dict(
    syn_steps=3,
    expert_epochs=1,
    max_start_epoch=2,
    lr_img=10.0,
    lr_lr=1e-3,
    lr_init=0.01,
    batch_syn=5,
    mode="adjoint",
    show_progress=False,
)


def _tiny():
    """4 classes, 12 train / 4 test images each, 1x8x8, separable (as tests/conftest.py's tiny_ds)."""
    from fastdd.data import from_pixels

    g = torch.Generator().manual_seed(0)
    k, n_tr, n_te = 4, 12, 4
    tx, vx = torch.rand(k * n_tr, 1, 8, 8, generator=g), torch.rand(k * n_te, 1, 8, 8, generator=g)
    ty, vy = torch.arange(k).repeat_interleave(n_tr), torch.arange(k).repeat_interleave(n_te)
    for x, y in ((tx, ty), (vx, vy)):
        for c in range(k):
            x[y == c, :, (c // 2) * 4 : (c // 2) * 4 + 4, (c % 2) * 4 : (c % 2) * 4 + 4] += 1.0
    return from_pixels("tiny", tx, ty, vx, vy, k)


def _experts(folder, seed=0, num=2, shard_size=10):
    from fastdd.experts import train_experts

    return train_experts(
        _tiny(),
        "convnet",
        num_experts=num,
        epochs=3,
        out=folder,
        seed=seed,
        shard_size=shard_size,
        model_kwargs={"width": 4, "depth": 2},
        show_progress=False,
    )


def _scores():
    return torch.rand(48, generator=torch.Generator().manual_seed(3))


def _distill(
    kind: str, experts: str, out: str | None, iterations: int, resume: bool = False, checkpoint_every: int = 1, **extra
):
    kw = dict(FAST)
    if kind == "selmatch-datm":  # frozen rows, learnable label logits, the loss gate
        kw.update(init="window", alpha=0.5, soft_labels="datm", threshold=50.0, lr_y=5.0)
        method, ipc, scores = "datm", 3, _scores()
    else:
        method, ipc, scores = "mtt", 3, None
    syn = fastdd.distill(
        _tiny(),
        method,
        ipc,
        experts=experts,
        iterations=iterations,
        seed=0,
        scores=scores,
        out=out,
        resume=resume,
        checkpoint_every=checkpoint_every,
        **{**kw, **extra},
    )
    return {
        "images": syn.images,
        "labels": syn.labels,
        "lr": syn.lr,
        "frozen": syn.frozen if syn.frozen is not None else torch.zeros(0),
    }


def _distill_then_resume(kind: str, experts: str, out: str) -> dict:
    """2 iterations, then a resume to 3 (as a second torchrun launch would)."""
    _distill(kind, experts, out, 2)
    return _distill(kind, experts, out, 3, resume=True)


@pytest.mark.parametrize("kind", ["mtt", "selmatch-datm"])
def test_sharded_distill_equals_single_process(kind, tmp_path):
    _experts(tmp_path / "experts")
    parts = run_ranks(_distill_then_resume, kind, str(tmp_path / "experts"), str(tmp_path / "run"))
    single = _distill(kind, str(tmp_path / "experts"), None, 3)
    for p in parts:  # every rank returns the whole set
        assert p["images"].shape == single["images"].shape == (12, 1, 8, 8)
        assert _rel(p["images"], single["images"]) < 1e-5
        assert abs(float(p["lr"]) - float(single["lr"])) <= 1e-5 * abs(float(single["lr"]))
        assert _rel(p["labels"].float(), single["labels"].float()) < 1e-5
        assert torch.equal(p["frozen"], single["frozen"])
    start = _distill(kind, str(tmp_path / "experts"), None, 1)
    assert _rel(single["images"], start["images"]) > 1e-4  # the set moved: the comparison means something
    # rank 0 wrote one run folder whose checkpoint holds the whole set
    import json

    from safetensors.torch import load_file

    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    saved = load_file(str(tmp_path / "run" / meta["file"]))
    assert meta["iteration"] == 3 and torch.equal(saved["t.images"], parts[0]["images"])
    assert saved["o.img.0.momentum_buffer"].shape == (12, 1, 8, 8)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]


def _refusals(experts: str) -> dict:
    out = {}
    for name, call in (
        ("bptt", lambda: fastdd.distill(_tiny(), "mtt", 3, experts=experts, iterations=1, **{**FAST, "mode": "bptt"})),
        ("dc", lambda: fastdd.distill(_tiny(), "dc", 1, iterations=1, show_progress=False)),
        ("dd", lambda: fastdd.distill(_tiny(), "dd", iterations=1, show_progress=False)),
    ):
        try:
            call()
            out[name] = ""
        except ValueError as e:
            out[name] = str(e)
    return out


def test_bptt_and_single_process_methods_refused_under_distributed(tmp_path):
    _experts(tmp_path / "experts")
    for p in run_ranks(_refusals, str(tmp_path / "experts")):
        assert "bptt" in p["bptt"] and "adjoint" in p["bptt"]
        assert "dc runs on one process" in p["dc"] and "dd runs on one process" in p["dd"]


# ---------------------------------------------------------------------------------------- experts, evaluate
def _experts_and_evaluate(folder: str) -> dict:
    buf = _experts(folder, seed=4, num=5, shard_size=2)
    ds = _tiny()
    from fastdd.selection import random_indices, real_subset

    syn = real_subset(ds, random_indices(ds, 2, seed=0))
    res = fastdd.evaluate(
        syn,
        ds,
        "mtt",
        num_eval=3,
        seed=1,
        epochs=2,
        model_kwargs={"width": 4, "depth": 2},
        random_baseline=True,
        show_progress=False,
    )
    return {"accs": torch.tensor(res.accuracies), "random": torch.tensor(res.random.accuracies), "n": len(buf.ids)}


def test_distributed_experts_and_evaluation_equal_single_process(tmp_path):
    parts = run_ranks(_experts_and_evaluate, str(tmp_path / "dist"))
    from fastdd.experts import ExpertBuffer
    from fastdd.selection import random_indices, real_subset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run: CPU kernels' float sums depend on the thread count
    try:
        single = _experts(tmp_path / "single", seed=4, num=5, shard_size=2)
        ds = _tiny()
        syn = real_subset(ds, random_indices(ds, 2, seed=0))
        res = fastdd.evaluate(
            syn,
            ds,
            "mtt",
            num_eval=3,
            seed=1,
            epochs=2,
            model_kwargs={"width": 4, "depth": 2},
            random_baseline=True,
            show_progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    dist = ExpertBuffer(tmp_path / "dist")
    import json

    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "dist", tmp_path / "single"))
    assert ma == mb  # same files, same checksums, same accuracies
    assert [s["experts"] for s in ma["shards"]] == [[0, 1], [2, 3], [4]]
    for e in single.ids:
        assert torch.equal(dist[e], single[e])
    for p in parts:
        assert p["accs"].tolist() == res.accuracies and p["random"].tolist() == res.random.accuracies


# ---------------------------------------------------------------------------------------- torchrun
def _torchrun(*args: str, cwd):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "fastdd", *args]
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "FASTDD_DIST_TIMEOUT": "60"},
    )


def test_torchrun_experts_then_distill_then_resume(tmp_path):
    """The launch users type: experts and a distillation under torchrun, then a resumed launch."""
    small = '{"width": 4, "depth": 2}'
    r = _torchrun(
        "experts",
        "--dataset",
        "digits",
        "--model-kwargs",
        small,
        "--num-experts",
        "3",
        "--epochs",
        "2",
        "--out",
        str(tmp_path / "experts"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("final test accuracy per expert") == 1  # rank 0 alone prints
    man = json.loads((tmp_path / "experts" / "manifest.json").read_text())
    assert man["complete"] and [s["experts"] for s in man["shards"]] == [[0, 1, 2]]
    opts = '{"syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 1, "batch_syn": 7, "lr_img": 10}'
    common = [
        "distill",
        "--dataset",
        "digits",
        "--method",
        "mtt",
        "--ipc",
        "1",
        "--experts",
        str(tmp_path / "experts"),
        "--options",
        opts,
        "--out",
        str(tmp_path / "run"),
        "--checkpoint-every",
        "1",
    ]
    r = _torchrun(*common, "--iterations", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("distilled 10 images") == 1
    r = _torchrun(*common, "--iterations", "3", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    syn = fastdd.SyntheticSet.load(tmp_path / "run" / "synthetic")
    assert syn.meta["iterations"] == 3 and syn.meta["gradient_mode"] == "adjoint"
    single = fastdd.distill(
        fastdd.load_dataset("digits"),
        "mtt",
        1,
        experts=tmp_path / "experts",
        iterations=3,
        seed=0,
        show_progress=False,
        syn_steps=3,
        expert_epochs=1,
        max_start_epoch=1,
        batch_syn=7,
        lr_img=10,
        mode="adjoint",
    )
    assert _rel(syn.images, single.images) < 1e-5
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]


# ---------------------------------------------------------------------------------------- DM
def _dm(out: str | None, iterations: int, resume: bool = False) -> dict:
    syn = fastdd.distill(
        _tiny(),
        "dm",
        2,
        iterations=iterations,
        seed=0,
        out=out,
        resume=resume,
        checkpoint_every=1,
        show_progress=False,
        init="real",
        dsa=True,
        batch_real=5,
        lr_img=1.0,
        model_kwargs={"width": 4, "depth": 2},
    )
    return {"images": syn.images, "labels": syn.labels}


def _dm_then_resume(out: str) -> dict:
    _dm(out, 2)
    return _dm(out, 3, resume=True)


def test_dm_split_by_class_equals_single_process(tmp_path):
    parts = run_ranks(_dm_then_resume, str(tmp_path / "run"), world=3)  # 4 classes over 3 ranks: 2 / 1 / 1
    single = _dm(None, 3)
    start = _dm(None, 1)
    assert _rel(single["images"], start["images"]) > 1e-4
    for p in parts:
        assert torch.equal(p["labels"], single["labels"])
        assert _rel(p["images"], single["images"]) < 1e-5
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    one = fastdd.distill(
        _tiny(),
        "dm",
        2,
        iterations=3,
        seed=0,
        out=tmp_path / "one",
        show_progress=False,
        init="real",
        dsa=True,
        batch_real=5,
        lr_img=1.0,
        model_kwargs={"width": 4, "depth": 2},
    )
    ref = [float(r.split(",")[1]) for r in (tmp_path / "one" / "log.csv").read_text().splitlines()[1:]]
    assert one.images.shape == (8, 1, 8, 8) and len(losses) == 3
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(losses, ref))  # the all-reduced loss is the whole loss


def _nan_on_rank1(experts: str) -> dict:
    """Rank 1's image gradient is NaN at iteration 1: every rank must skip that iteration."""
    import importlib

    mtt = importlib.import_module("fastdd.distillation.mtt")
    step = mtt.MTTPolicy.step

    def poisoned(self, it):
        s = step(self, it)
        if it == 1 and self.shard.dist.rank == 1:
            s.grads[0].fill_(float("nan"))
        return s

    mtt.MTTPolicy.step = poisoned
    syn = fastdd.distill(_tiny(), "mtt", 3, experts=experts, iterations=3, seed=0, **FAST)
    return {"images": syn.images, "skipped": syn.meta["skipped_iterations"], "lr": syn.lr}


def test_a_nan_on_one_rank_skips_the_iteration_on_every_rank(tmp_path):
    _experts(tmp_path / "experts")
    r0, r1 = run_ranks(_nan_on_rank1, str(tmp_path / "experts"))
    assert r0["skipped"] == r1["skipped"] == 1
    assert torch.equal(r0["images"], r1["images"]) and torch.equal(r0["lr"], r1["lr"]) and r0["images"].isfinite().all()


def _keep_best(experts: str) -> dict:
    ds = _tiny().with_validation(0.25, seed=0)
    syn = fastdd.distill(
        ds,
        "mtt",
        3,
        experts=experts,
        iterations=3,
        seed=0,
        select_every=1,
        select_options={"epochs": 2, "model_kwargs": {"width": 4, "depth": 2}},
        **FAST,
    )
    sel = syn.meta["selection"]
    return {"images": syn.images, "kept": sel["kept_iteration"], "score": sel["val_score"]}


def test_keep_best_on_validation_under_distributed(tmp_path):
    _experts(tmp_path / "experts")
    r0, r1 = run_ranks(_keep_best, str(tmp_path / "experts"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the validation trainings must match the ranks' bit for bit to pick the same set
    try:
        single = _keep_best(str(tmp_path / "experts"))
    finally:
        torch.set_num_threads(threads)
    assert r0["kept"] == r1["kept"] == single["kept"] and r0["score"] == r1["score"] == single["score"]
    assert torch.equal(r0["images"], r1["images"]) and _rel(r0["images"], single["images"]) < 1e-5
