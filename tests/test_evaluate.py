"""Evaluation protocols: the training loop against torch.nn, schedules, determinism, baselines."""

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.evaluation import PROTOCOLS, _loss, resolve_protocol, selmatch_epochs, train_on
from fastdd.rng import generator
from fastdd.selection import random_indices, real_subset

TINY = {"model": "convnet", "model_kwargs": {"width": 8, "depth": 2}}


def test_one_epoch_without_tricks_is_one_sgd_step(tiny_ds):
    """Plain protocol (no aug, no momentum, no wd, constant lr), epochs=0 → E+1 = 1 epoch of one full batch:
    the network is θ0 − lr·∇L(θ0); its test accuracy must equal the torch.nn module's after the same step."""
    p = resolve_protocol(
        "mtt", augment="none", momentum=0.0, weight_decay=0.0, schedule="constant", epochs=0, batch_size=1000, **TINY
    )
    images, labels = tiny_ds.train.images, tiny_ds.train.labels
    acc = train_on(images, labels, tiny_ds, p, lr=0.5, seed=3)
    net = fastdd.build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), width=8, depth=2)
    mod = net.module().double()
    net.load_into_module(mod, net.init(generator(3, "eval.init"), dtype=torch.float64))
    F.cross_entropy(mod(images.double()), labels).backward()
    with torch.no_grad():
        for q in mod.parameters():
            q -= 0.5 * q.grad
        want = (mod(tiny_ds.test.images.double()).argmax(1) == tiny_ds.test.labels).double().mean().item()
    assert acc == pytest.approx(want)


def test_step_schedule_drops_lr_once_and_resets_momentum(tiny_ds, monkeypatch):
    made = []
    real_sgd = torch.optim.SGD

    def spy(params, lr, **kw):
        made.append((lr, kw["momentum"], kw["weight_decay"]))
        return real_sgd(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    p = resolve_protocol("mtt", epochs=4, augment="none", **TINY)
    train_on(tiny_ds.train.images, tiny_ds.train.labels, tiny_ds, p, lr=0.02, seed=0)
    assert made == [(0.02, 0.9, 5e-4), (pytest.approx(0.002), 0.9, 5e-4)]


def test_cosine_schedule_reaches_eta_min(tiny_ds, monkeypatch):
    lrs = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    p = resolve_protocol("selmatch", model="convnet", model_kwargs={"width": 8, "depth": 2}, epochs=4, batch_size=1000)
    train_on(tiny_ds.train.images, tiny_ds.train.labels, tiny_ds, p, lr=0.1, seed=0)
    import math

    want = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(5)]
    assert lrs == pytest.approx(want)


def test_selmatch_epoch_rule_matches_paper_table():
    # CIFAR-10 (5000 per class): IPC 250/500/1000/1500 -> 1000/500/250/167 epochs; below 5 % capped at 1000
    assert [selmatch_epochs(i, 5000) for i in (250, 500, 1000, 1500)] == [1000, 500, 250, 167]
    assert [selmatch_epochs(i, 500) for i in (25, 50, 100, 150)] == [1000, 500, 250, 167]
    assert selmatch_epochs(1, 400) == 1000


def test_soft_label_loss_equals_cross_entropy_on_one_hot():
    logits = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(_loss(logits, F.one_hot(y, 3).double()), F.cross_entropy(logits, y))


def test_evaluate_is_deterministic_and_reports_final_accuracy(tiny_ds):
    syn = real_subset(tiny_ds, random_indices(tiny_ds, 3, seed=0))
    kw = dict(protocol="mtt", num_eval=2, seed=7, epochs=3, show_progress=False, **TINY)
    a = fastdd.evaluate(syn, tiny_ds, random_baseline=True, **kw)
    b = fastdd.evaluate(syn, tiny_ds, random_baseline=True, **kw)
    assert a.accuracies == b.accuracies and a.random.accuracies == b.random.accuracies
    assert len(a.accuracies) == 2 and all(0 <= x <= 1 for x in a.accuracies)
    assert a.mean == pytest.approx(sum(a.accuracies) / 2)
    assert a.std == pytest.approx(abs(a.accuracies[0] - a.accuracies[1]) / 2)  # population std
    assert a.protocol["lr_used"] == 0.01 and a.protocol["ipc"] == 3
    syn.lr = torch.tensor(0.03)
    assert fastdd.evaluate(syn, tiny_ds, **kw).protocol["lr_used"] == pytest.approx(0.03)
    assert "random real subset" in str(a)


def test_evaluate_learns_separable_data(tiny_ds):
    syn = real_subset(tiny_ds, random_indices(tiny_ds, 5, seed=0))
    res = fastdd.evaluate(
        syn, tiny_ds, "mtt", num_eval=1, epochs=30, lr=0.05, augment="none", show_progress=False, **TINY
    )
    assert res.mean >= 0.9


def test_evaluate_errors(tiny_ds, mnist5k):
    syn = real_subset(tiny_ds, random_indices(tiny_ds, 1))
    with pytest.raises(ValueError, match="unknown protocol"):
        fastdd.evaluate(syn, tiny_ds, "kip")
    with pytest.raises(ValueError, match="does not belong"):
        fastdd.evaluate(syn, mnist5k, "mtt")
    with pytest.raises(TypeError, match="protocol 'mtt' has no option 'epoch'; its options: augment"):
        fastdd.evaluate(syn, tiny_ds, "mtt", epoch=3)
    with pytest.raises(ValueError, match="num_eval"):
        fastdd.evaluate(syn, tiny_ds, "mtt", num_eval=0)


def test_protocol_presets():
    mtt, sel = PROTOCOLS["mtt"], PROTOCOLS["selmatch"]
    assert (mtt.model, mtt.epochs, mtt.batch_size, mtt.momentum, mtt.weight_decay, mtt.schedule, mtt.augment) == (
        "convnet",
        1000,
        256,
        0.9,
        5e-4,
        "step",
        "dsa",
    )
    assert (sel.model, sel.lr, sel.batch_size, sel.schedule, sel.eta_min, sel.augment) == (
        "resnet18bn",
        0.1,
        128,
        "cosine",
        0.001,
        "combined",
    )


def test_set_from_other_data_or_zca_is_refused():
    digits, whitened = fastdd.load_dataset("digits"), fastdd.load_dataset("digits", zca=True)
    syn = real_subset(whitened, random_indices(whitened, 1))
    with pytest.raises(ValueError, match="zca=True"):
        fastdd.evaluate(syn, digits, "mtt", num_eval=1, epochs=1)


def test_batchnorm_net_survives_a_last_batch_of_one(tiny_ds):
    # 13 images, batch 12: the last chunk of 1 is merged (batch norm cannot normalise a single image)
    syn = real_subset(tiny_ds, torch.arange(13))
    p = resolve_protocol("mtt", model="resnet18bn", epochs=0, batch_size=12, augment="none")  # 1x1 maps in layer4
    acc = train_on(syn.images, syn.labels, tiny_ds, p, lr=0.01, seed=0)
    assert 0 <= acc <= 1
