"""DC / DSA (gradient matching) and DM (distribution matching): distances against hand-computed values,
siamese augmentation, and the methods end to end on the shared distillation loop."""

import importlib
import math

import pytest
import torch

import fastdd
from fastdd.augment import DSAConfig, apply_dsa, siamese_dsa
from fastdd.distillation.matching import (
    DCConfig,
    DistributionMatchingPolicy,
    DMConfig,
    GradientMatchingPolicy,
    match_distance,
    mean_embedding_distance,
)
from fastdd.models import build_model
from fastdd.rng import generator

SMALL = {"width": 4, "depth": 2}


class _TwoTensors:
    """A stand-in net whose flat vector is a conv weight (2, 1, 1, 2) then a bias (2,)."""

    def unflatten(self, v):
        return [v[:4].view(2, 1, 1, 2), v[4:]]


def test_dc_distance_equals_hand_computed_value():
    # conv rows: (1, 0)·(1, 1) -> cos 1/sqrt2; (0, 1)·(0, 2) -> cos 1. The bias (1-D) counts 0.
    g_real = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, -3.0], dtype=torch.float64)
    g_syn = torch.tensor([1.0, 1.0, 0.0, 2.0, -7.0, 1.0], dtype=torch.float64)
    net = _TwoTensors()
    want = (1 - 1 / (math.sqrt(2) + 1e-6)) + (1 - 2 / (2 + 1e-6))
    assert float(match_distance(g_real, g_syn, net)) == pytest.approx(want, abs=1e-12)
    assert float(match_distance(g_real, g_syn, net, "mse")) == pytest.approx(0 + 1 + 0 + 1 + 144 + 16)
    dot, nr, ns = 1 + 2 - 35 - 3, math.sqrt(1 + 1 + 25 + 9), math.sqrt(1 + 1 + 4 + 49 + 1)
    assert float(match_distance(g_real, g_syn, net, "cos")) == pytest.approx(1 - dot / (nr * ns + 1e-6), abs=1e-12)
    with pytest.raises(ValueError, match="distance"):
        match_distance(g_real, g_syn, net, "l1")


def test_dc_distance_on_a_convnet_skips_exactly_the_1d_tensors():
    """On a real ConvNet: the distance is the sum over its conv/linear tensors of per-row terms, and a
    change to a bias or norm gradient does not move it."""
    net = build_model("convnet", in_channels=1, num_classes=3, im_size=(8, 8), **SMALL)
    g = torch.Generator().manual_seed(0)
    gr, gs = (
        torch.randn(net.num_params, generator=g, dtype=torch.float64),
        torch.randn(net.num_params, generator=g, dtype=torch.float64),
    )
    want, off = 0.0, 0
    for spec in net.params:
        n = spec.numel
        if len(spec.shape) > 1:
            a, b = gr[off : off + n].reshape(spec.shape[0], -1), gs[off : off + n].reshape(spec.shape[0], -1)
            for i in range(a.shape[0]):
                want += 1 - float(a[i] @ b[i]) / (float(a[i].norm()) * float(b[i].norm()) + 1e-6)
        off += n
    assert float(match_distance(gr, gs, net)) == pytest.approx(want, rel=1e-12)
    bumped, off = gs.clone(), 0
    for spec in net.params:
        if len(spec.shape) == 1:
            bumped[off : off + spec.numel] += 3.0
        off += spec.numel
    assert float(match_distance(gr, bumped, net)) == pytest.approx(want, rel=1e-12)


def test_dm_loss_equals_the_closed_form():
    e_real = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    e_syn = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert float(mean_embedding_distance(e_real, e_syn)) == 13.0  # (2-0)^2 + (3-0)^2


def test_dm_step_is_the_per_class_mean_embedding_distance(tiny_ds):
    """Without DSA and with every real image of a class in its batch, one DM step's loss and image
    gradient are those of Σ_c ‖mean embed(real_c) − mean embed(syn_c)‖² under the iteration's network."""
    cfg = DMConfig(model_kwargs=SMALL, batch_real=1000, dsa=False)
    pol = DistributionMatchingPolicy(tiny_ds, 2, cfg, seed=3, method="dm")
    step = pol.step(5)
    net = pol.net
    theta = net.init(generator(3, "dm", "net", 5))
    x = pol.images.detach().double().requires_grad_(True)
    loss = 0
    for c, ci in enumerate(tiny_ds.class_indices):
        er = net.embed(tiny_ds.train.images[ci].double(), theta.double()).mean(0)
        es = net.embed(x[2 * c : 2 * c + 2], theta.double()).mean(0)
        loss = loss + ((er - es) ** 2).sum()
    grad = torch.autograd.grad(loss, x)[0]
    assert float(step.loss) == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(step.payload.double(), grad, rtol=1e-4, atol=1e-7)


def test_dc_step_matches_the_gradients_it_names(tiny_ds):
    """One DC step's loss is Σ_c distance(∇θ CE(real_c), ∇θ CE(syn_c)) with the network of its index;
    its image gradient is that expression's (double backward), checked in float64 here."""
    cfg = DCConfig(model_kwargs=SMALL, batch_real=1000, outer_loop=2, inner_loop=1)
    pol = GradientMatchingPolicy(tiny_ds, 2, cfg, seed=1, method="dc")
    step = pol.step(2)  # network 1, outer step 0: a fresh init
    net = pol.net
    theta = net.init(generator(1, "dc", "net", 1)).double().requires_grad_(True)
    x = pol.images.detach().double().requires_grad_(True)
    loss = 0
    for c, ci in enumerate(tiny_ds.class_indices):
        yr, ys = torch.full((len(ci),), c), torch.full((2,), c)
        gr = torch.autograd.grad(
            torch.nn.functional.cross_entropy(net(tiny_ds.train.images[ci].double(), theta), yr), theta
        )[0]
        gs = torch.autograd.grad(
            torch.nn.functional.cross_entropy(net(x[2 * c : 2 * c + 2], theta), ys), theta, create_graph=True
        )[0]
        loss = loss + match_distance(gr, gs, net)
    grad = torch.autograd.grad(loss, x)[0]
    assert float(step.loss) == pytest.approx(float(loss.detach()), rel=1e-4)
    torch.testing.assert_close(step.payload.double(), grad, rtol=1e-3, atol=1e-6)


def test_siamese_dsa_applies_one_transform_to_both_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g)
    for fam in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        (a, b), p = siamese_dsa([x, x[:2].clone()], DSAConfig(), g, family=fam)
        torch.testing.assert_close(b, a[:2], rtol=0, atol=0)
        torch.testing.assert_close(a, apply_dsa(x, p.expand(6)), rtol=0, atol=0)


def test_matching_policies_draw_one_siamese_transform_per_class(tiny_ds, monkeypatch):
    matching = importlib.import_module("fastdd.distillation.matching")
    calls = []

    def spy(xs, cfg, g, family=None):
        out, p = siamese_dsa(xs, cfg, g, family)
        calls.append((tuple(len(x) for x in xs), p.n))
        return out, p

    monkeypatch.setattr(matching, "siamese_dsa", spy)
    pol = DistributionMatchingPolicy(tiny_ds, 2, DMConfig(model_kwargs=SMALL, batch_real=5), seed=0, method="dm")
    pol.step(0)
    assert calls == [((5, 2), 1)] * tiny_ds.num_classes  # (real batch, synthetic images), one parameter set


@pytest.mark.parametrize("method", ["dc", "dsa", "dm"])
def test_methods_run_learn_and_resume_bitwise(tiny_ds, tmp_path, method):
    kw = dict(ipc=2, seed=0, show_progress=False, model_kwargs=SMALL, batch_real=8)
    if method != "dm":
        kw.update(outer_loop=2, inner_loop=1)
    full = fastdd.distill(tiny_ds, method, iterations=4, **kw)
    assert full.meta["method"] == method and full.images.shape == (8, 1, 8, 8) and full.lr is None
    assert full.meta["config"]["dsa"] == (method != "dc")
    assert full.meta["config"]["init"] == ("noise" if method == "dc" else "real")
    init = fastdd.distill(tiny_ds, method, iterations=1, **{**kw, "lr_img": 1e-12})
    assert not torch.allclose(full.images, init.images)
    fastdd.distill(tiny_ds, method, iterations=2, out=tmp_path, checkpoint_every=1, **kw)
    resumed = fastdd.distill(tiny_ds, method, iterations=4, out=tmp_path, resume=True, checkpoint_every=1, **kw)
    assert torch.equal(resumed.images, full.images)
    rows = (tmp_path / "log.csv").read_text().splitlines()
    per = 2 if method != "dm" else 1
    assert len(rows) == 1 + 4 * per and rows[0].startswith("iteration,loss")


def test_dc_trains_the_network_between_outer_steps(tiny_ds, monkeypatch):
    """Between two outer steps of one network, the network trains inner_loop epochs on the set; after the
    last outer step it does not (the next step draws a new network)."""
    matching = importlib.import_module("fastdd.distillation.matching")
    epochs = []
    real_fit = matching.fit
    monkeypatch.setattr(matching, "fit", lambda *a, **k: (epochs.append(a[4]), real_fit(*a, **k))[1])
    pol = GradientMatchingPolicy(
        tiny_ds, 1, DCConfig(model_kwargs=SMALL, outer_loop=3, inner_loop=2, batch_real=4), seed=0, method="dc"
    )
    before = pol.theta.clone()
    for it in range(3):
        pol.step(it)
        pol.end_iteration(it)
    assert epochs == [2, 2]
    assert not torch.equal(before, pol.theta)


def test_matching_errors(tiny_ds):
    with pytest.raises(ValueError, match="ipc"):
        fastdd.distill(tiny_ds, "dc", ipc=3, iterations=1, model_kwargs=SMALL, show_progress=False)
    with pytest.raises(ValueError, match="batch norm"):
        fastdd.distill(tiny_ds, "dm", ipc=1, iterations=1, model="convnetbn", model_kwargs=SMALL, show_progress=False)
    with pytest.raises(TypeError, match="no option"):
        fastdd.distill(tiny_ds, "dm", ipc=1, iterations=1, syn_steps=3, show_progress=False)
    with pytest.raises(TypeError, match="theta_storage"):
        fastdd.distill(tiny_ds, "dm", ipc=1, iterations=1, theta_storage="all", show_progress=False)
    with pytest.raises(ValueError, match="init"):
        fastdd.distill(tiny_ds, "dm", ipc=1, iterations=1, init="window", show_progress=False)


def test_presets_carry_the_papers_defaults():
    from fastdd.distillation import PRESETS

    assert PRESETS["dc-cifar10-ipc10"].options["init"] == "noise" and PRESETS["dc-cifar10-ipc10"].iterations == 1000
    assert PRESETS["dsa-cifar10-ipc10"].options["dsa"] and PRESETS["dsa-cifar10-ipc10"].options["init"] == "real"
    assert PRESETS["dm-cifar10-ipc10"].options["lr_img"] == 1.0 and PRESETS["dm-cifar10-ipc10"].iterations == 20000
    assert PRESETS["dm-cifar10-ipc100"].options["lr_img"] == 10.0


def test_cli_distills_with_dm_and_evaluates_across_architectures(tmp_path, capsys):
    import json

    from fastdd.cli import main

    opts = json.dumps({"model_kwargs": {"width": 4, "depth": 1}, "batch_real": 4})
    assert (
        main(
            [
                "distill",
                "--dataset",
                "digits",
                "--method",
                "dm",
                "--ipc",
                "1",
                "--iterations",
                "2",
                "--options",
                opts,
                "--out",
                str(tmp_path / "dm"),
            ]
        )
        == 0
    )
    assert (tmp_path / "dm" / "loss.png").exists() and not (tmp_path / "dm" / "lr.png").exists()
    assert (
        main(
            [
                "evaluate",
                "--dataset",
                "digits",
                "--syn",
                str(tmp_path / "dm" / "synthetic"),
                "--epochs",
                "1",
                "--num-eval",
                "1",
                "--models",
                "convnet",
                "mlp",
                "--random-baseline",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| convnet |" in out and "| mlp |" in out
    result = json.loads((tmp_path / "ev" / "result.json").read_text())
    assert set(result) == {"convnet", "mlp"} and "ior" in result["mlp"]
