"""EL2N and GraNd (Paul et al. 2021): against hand computations and per-example autograd loops, the
mean over runs, seeding, the saved file and the selection on them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.cli import main
from fastdd.errors import CorruptFileError
from fastdd.models import model_for
from fastdd.rng import generator
from fastdd.scores import Scores, el2n, grand, load_cscores, load_scores, save_scores
from fastdd.selection import select
from fastdd.synthetic import SyntheticSet
from fastdd.train import SGD, fit


def _theta64(net, seed=0):
    return net.init(torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------ one network
def test_el2n_equals_a_hand_computation(tiny_ds):
    # a 2-hidden-layer MLP written out by hand from theta's slices, the EL2N formula term by term
    net = model_for(tiny_ds, "mlp", width=5)
    theta = _theta64(net)
    x, y = tiny_ds.train.images.double(), tiny_ds.train.labels
    w1, b1, w2, b2, w3, b3 = net.unflatten(theta)
    z = torch.relu(torch.relu(x.flatten(1) @ w1.T + b1) @ w2.T + b2) @ w3.T + b3
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    rows = [[float(p[i, k]) - float(k == int(y[i])) for k in range(4)] for i in range(len(y))]
    want = torch.tensor([math.sqrt(sum(d * d for d in row)) for row in rows], dtype=torch.float64)
    got = el2n(net, theta, x, y, batch_size=7)
    assert got.dtype == torch.float64 and got.shape == (len(y),)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    assert float(want.std()) > 1e-3  # the examples differ: a wrong label or index would show


def _grand_loop(net, theta, x, y, buffers=None, last=None):
    """Per example, its own backward: torch.autograd.grad of the cross-entropy on that one example."""
    out = []
    for i in range(len(y)):
        th = theta.clone().requires_grad_(True)
        loss = F.cross_entropy(net(x[i : i + 1], th, buffers, train=False), y[i : i + 1])
        g = torch.autograd.grad(loss, th)[0]
        out.append((g if last is None else g[-last:]).norm())
    return torch.stack(out)


@pytest.mark.parametrize("model", ["convnet", "convnetbn"])
def test_grand_equals_a_per_example_autograd_loop(tiny_ds, model):
    net = model_for(tiny_ds, model, width=4, depth=2)
    theta = _theta64(net, seed=1)
    x, y = tiny_ds.train.images[:10].double(), tiny_ds.train.labels[:10]
    buffers = None
    if net.has_batchnorm:  # running statistics other than the fresh ones: the buffers must reach the module
        g = torch.Generator().manual_seed(2)
        parts = [
            0.5 + torch.rand(b.numel, generator=g, dtype=torch.float64)  # variances
            if b.init == "ones"
            else 0.2 * torch.rand(b.numel, generator=g, dtype=torch.float64) - 0.1  # means
            for b in net.buffers
        ]
        buffers = torch.cat(parts)
    want = _grand_loop(net, theta, x, y, buffers)
    got = grand(net, theta, x, y, buffers, batch_size=4)
    assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=1e-10, atol=0)
    # the last linear layer only: weight (4, D) and bias (4,) are the last 4·D + 4 entries of theta
    last = 4 * net.feature_dim + 4
    want_last = _grand_loop(net, theta, x, y, buffers, last=last)
    assert torch.allclose(grand(net, theta, x, y, buffers, batch_size=3, last_layer=True), want_last, rtol=1e-10)
    assert bool((want_last < want).all())  # the other layers contribute: the two definitions differ


def test_grand_needs_batchnorm_statistics(tiny_ds):
    net = model_for(tiny_ds, "convnetbn", width=4, depth=1)
    with pytest.raises(ValueError, match="running statistics"):
        grand(net, net.init(), tiny_ds.train.images[:2], tiny_ds.train.labels[:2])


# ------------------------------------------------------------------------------ over runs
KW = dict(model_kwargs=dict(width=4, depth=2), batch_size=16, show_progress=False)


def test_el2n_scores_are_the_mean_of_independently_seeded_runs(tiny_ds):
    s = fastdd.el2n_scores(tiny_ds, epochs=2, num_runs=3, seed=5, **KW)
    assert s.kind == "el2n" and s.hardest == "high" and s.values.dtype == torch.float64
    net = model_for(tiny_ds, "convnet", width=4, depth=2)
    images, labels = tiny_ds.train.images, tiny_ds.train.labels
    runs = []
    for r in range(3):  # the documented streams: (seed, "el2n", r, "init" | "batches")
        theta0 = net.init(generator(5, "el2n", r, "init"))
        theta = fit(
            net, theta0, images, labels, 2, SGD(0.01, 0.9, 5e-4), generator(5, "el2n", r, "batches"), batch_size=16
        )
        runs.append(el2n(net, theta, images, labels))
    runs = torch.stack(runs)
    assert torch.allclose(s.values, runs.mean(0), rtol=1e-12, atol=0)
    assert float((runs[0] - runs[1]).abs().max()) > 1e-3  # the runs differ, so averaging is visible
    assert s.meta["epochs"] == 2 and s.meta["num_runs"] == 3 and s.meta["seed"] == 5 and s.meta["model"] == "convnet"


def test_grand_scores_at_init_are_the_mean_over_runs(tiny_ds):
    for last_layer in (False, True):
        s = fastdd.grand_scores(tiny_ds, num_runs=3, seed=2, last_layer=last_layer, **KW)
        net = model_for(tiny_ds, "convnet", width=4, depth=2)
        thetas = [net.init(generator(2, "grand", r, "init")) for r in range(3)]
        runs = torch.stack(
            [grand(net, t, tiny_ds.train.images, tiny_ds.train.labels, last_layer=last_layer) for t in thetas]
        )
        assert torch.allclose(s.values, runs.mean(0), rtol=1e-12, atol=0)
        assert s.kind == "grand" and s.meta["epochs"] == 0
        assert s.meta["definition"] == ("grand-last-layer" if last_layer else "grand-all-parameters")


def test_same_seed_same_scores(tiny_ds):
    a = fastdd.el2n_scores(tiny_ds, epochs=1, num_runs=2, seed=0, **KW)
    assert torch.equal(a.values, fastdd.el2n_scores(tiny_ds, epochs=1, num_runs=2, seed=0, **KW).values)
    assert not torch.equal(a.values, fastdd.el2n_scores(tiny_ds, epochs=1, num_runs=2, seed=1, **KW).values)
    g = fastdd.grand_scores(tiny_ds, epochs=1, num_runs=1, seed=0, **KW)
    assert torch.equal(g.values, fastdd.grand_scores(tiny_ds, epochs=1, num_runs=1, seed=0, **KW).values)
    with pytest.raises(ValueError, match="num_runs must be >= 1"):
        fastdd.el2n_scores(tiny_ds, num_runs=0, **KW)


# ------------------------------------------------------------------------------ files
def test_save_and_load_round_trip(tmp_path, tiny_ds):
    n = len(tiny_ds.train)
    meta = {"definition": "grand-all-parameters", "epochs": 0, "num_runs": 3, "seed": 4, "model": "convnet"}
    s = Scores(torch.rand(n, dtype=torch.float64), hardest="high", kind="grand", meta=meta)
    path = save_scores(s, tmp_path / "grand.npz", labels=tiny_ds.train.labels)
    back = load_scores(path, tiny_ds)
    assert (back.kind, back.hardest, back.meta, back.source) == ("grand", "high", meta, str(path))
    assert back.values.dtype == torch.float64 and torch.equal(back.values, s.values)
    with np.load(path, allow_pickle=False) as z:  # plain arrays: readable without unpickling
        assert sorted(z.files) == ["hardest", "kind", "labels", "meta", "scores"]
    wrong = tiny_ds.train.labels.clone()
    wrong[5] = (wrong[5] + 1) % 4
    with pytest.raises(ValueError, match=r"grand\.npz.*first at index 5"):
        load_scores(save_scores(s, tmp_path / "grand.npz", labels=wrong), tiny_ds)
    with pytest.raises(ValueError, match="not C-scores"):
        load_cscores(path)
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        save_scores(s, tmp_path / "grand.npy")
    np.savez(
        tmp_path / "bad.npz", scores=np.ones(n), kind=np.array("el2n"), hardest=np.array("low"), meta=np.array("{}")
    )
    with pytest.raises(CorruptFileError, match=r"bad\.npz: hardest='low' is wrong for el2n"):
        load_scores(tmp_path / "bad.npz")
    nolabels = load_scores(save_scores(Scores(s.values, "high", "el2n"), tmp_path / "e.npz"), tiny_ds)
    assert nolabels.kind == "el2n" and nolabels.meta == {}


# ------------------------------------------------------------------------------ selection
def _hand_window(labels, values, ipc, start, hardest_first=True):
    out = []
    for c in range(max(labels) + 1):
        members = [i for i in range(len(labels)) if labels[i] == c]
        ranked = sorted(members, key=lambda i: (-values[i] if hardest_first else values[i], i))
        out += ranked[start : start + ipc]
    return out


def test_select_el2n_and_grand_against_a_hand_ranking(tiny_ds):
    labels = tiny_ds.train.labels.tolist()
    values = torch.randint(0, 6, (len(labels),), generator=torch.Generator().manual_seed(3)).double()  # ties
    for kind in ("el2n", "grand"):
        s = Scores(values, hardest="high", kind=kind)
        assert select(tiny_ds, kind, 3, scores=s).tolist() == _hand_window(labels, values.tolist(), 3, 0)
        assert select(tiny_ds, kind, 3, scores=s, beta=1.0).tolist() == _hand_window(labels, values.tolist(), 3, 3)
        easy = select(tiny_ds, kind, 3, scores=s, easiest=True).tolist()
        assert easy == _hand_window(labels, values.tolist(), 3, 0, hardest_first=False)
        plain = select(tiny_ds, kind, 3, scores=values.numpy(), hardest="low").tolist()  # a plain array: low = hard
        assert plain == easy
    with pytest.raises(ValueError, match="got forgetting scores; use method='forgetting'"):
        select(tiny_ds, "el2n", 3, scores=Scores(values, "high", "forgetting"))
    with pytest.raises(ValueError, match=r"needs scores= \(fastdd.grand_scores"):
        select(tiny_ds, "grand", 3)
    with pytest.raises(TypeError, match="does not use easiest"):
        select(tiny_ds, "window", 3, scores=values, beta=0.0, easiest=True)


def test_cli_select_reads_an_el2n_file(tmp_path):
    ds = fastdd.load_dataset("digits")
    values = torch.rand(len(ds.train), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    path = save_scores(Scores(values, "high", "el2n", meta={"epochs": 1}), tmp_path / "el2n.npz", ds.train.labels)
    args = ["select", "--dataset", "digits", "--method", "el2n", "--ipc", "2", "--scores", str(path)]
    assert main([*args, "--easiest", "--out", str(tmp_path / "sel")]) == 0
    want = select(ds, "el2n", 2, scores=load_scores(path, ds), easiest=True)
    assert SyntheticSet.load(tmp_path / "sel").meta["indices"] == want.tolist()


def test_cli_sweep_window_computes_and_saves_el2n(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "window", "--dataset", "digits", "--ipc", "2", "--scores", "el2n", "--score-epochs", "0"]
    assert (
        main([*args, "--score-runs", "1", "--betas", "0", "--epochs", "1", "--num-eval", "1", "--out", str(out)]) == 0
    )
    assert f"el2n scores (0 epochs x 1 runs) -> {out / 'el2n.npz'}" in capsys.readouterr().out
    s = load_scores(out / "el2n.npz", fastdd.load_dataset("digits"))
    assert s.kind == "el2n" and s.meta["epochs"] == 0 and s.meta["num_runs"] == 1 and s.meta["seed"] == 0
