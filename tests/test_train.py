"""The one training loop (fastdd.train.fit) against a plain torch.nn + torch.optim loop, in float64."""

import pytest
import torch
import torch.nn.functional as F

from fastdd.models import build_model
from fastdd.train import SGD, FitState, fit


def _reference(net, theta0, x, y, epochs, sgd: SGD, seed, batch_size):
    """The textbook loop: nn.Module, torch.optim.SGD, the same permutations (one per epoch)."""
    mod = net.module().double()
    net.load_into_module(mod, theta0)
    make = lambda lr: torch.optim.SGD(
        mod.parameters(),
        lr=lr,
        momentum=sgd.momentum,  # noqa: E731
        weight_decay=sgd.weight_decay,
    )
    opt = make(sgd.lr)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, sgd.cosine_epochs, sgd.eta_min)
        if sgd.schedule == "cosine"
        else None
    )
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        if sgd.schedule == "step" and ep == sgd.decay_epoch:
            opt = make(sgd.lr * sgd.decay_factor)
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(mod(x[idx]), y[idx]).backward()
            opt.step()
        if sched is not None:
            sched.step()
    return net.flat_from_module(mod)


@pytest.mark.parametrize(
    "sgd",
    [
        SGD(0.05),
        SGD(0.05, momentum=0.9, weight_decay=5e-4, schedule="step", decay_epoch=2),
        SGD(0.1, momentum=0.5, schedule="cosine", cosine_epochs=3, eta_min=0.001),
    ],
    ids=["constant", "step-momentum-wd", "cosine"],
)
def test_fit_equals_plain_torch_loop(tiny_ds, sgd):
    net = build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), width=4, depth=2)
    theta0 = net.init(torch.Generator().manual_seed(1)).double()
    x, y = tiny_ds.train.images.double(), tiny_ds.train.labels
    got = fit(net, theta0, x, y, 4, sgd, torch.Generator().manual_seed(7), batch_size=10)
    want = _reference(net, theta0, x, y, 4, sgd, seed=7, batch_size=10)
    assert not torch.equal(got, theta0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "sgd",
    [
        SGD(0.05, momentum=0.9, weight_decay=5e-4, schedule="step", decay_epoch=2),
        SGD(0.1, momentum=0.5, schedule="cosine", cosine_epochs=4, eta_min=0.001),
    ],
    ids=["step-momentum-wd", "cosine"],
)
@pytest.mark.parametrize("stop", [1, 2, 3, 4])
def test_fit_continued_from_its_state_is_bitwise_the_uninterrupted_run(tiny_ds, sgd, stop):
    """The state handed to on_state after ``stop`` epochs, copied as a checkpoint would be, continues to the
    uninterrupted run's parameters exactly (the momentum, the decayed or annealed lr and the generator carry on;
    stop 2 is the step decay's epoch, 4 the end)."""
    net = build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), width=4, depth=2)
    theta0 = net.init(torch.Generator().manual_seed(1))
    x, y = tiny_ds.train.images, tiny_ds.train.labels
    want = fit(net, theta0, x, y, 4, sgd, torch.Generator().manual_seed(7), batch_size=10)
    saved = {}

    def keep(state: FitState) -> None:
        if state.epoch == stop:
            opt = {"state": {k: {n: v.clone() for n, v in e.items()} for k, e in state.optimizer["state"].items()},
                   "param_groups": [dict(g) for g in state.optimizer["param_groups"]]}  # fmt: skip
            saved["state"] = FitState(stop, state.theta.clone(), opt, dict(state.scheduler or {}) or None)

    g = torch.Generator().manual_seed(7)
    fit(net, theta0, x, y, stop, sgd, g, batch_size=10, on_state=keep)
    got = fit(net, theta0, x, y, 4, sgd, g, batch_size=10, start=saved["state"])
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="start.epoch"):
        fit(net, theta0, x, y, stop - 1, sgd, g, batch_size=10, start=saved["state"])


def test_fit_soft_labels_callbacks_and_augment(tiny_ds):
    """Soft labels = cross-entropy against probabilities; on_batch sees every image once per epoch
    before the step; on_epoch gets the current parameters; augment gets the batch's indices."""
    net = build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), width=4, depth=1)
    theta0 = net.init(torch.Generator().manual_seed(0)).double()
    x = tiny_ds.train.images.double()
    hard = tiny_ds.train.labels
    seen, epochs, aug_idx = [], [], []
    soft = F.one_hot(hard, 4).double()

    def on_batch(idx, logits):
        seen.append(idx.clone())
        assert logits.shape == (len(idx), 4)

    got = fit(
        net,
        theta0,
        x,
        soft,
        2,
        SGD(0.1),
        torch.Generator().manual_seed(3),
        batch_size=16,
        on_batch=on_batch,
        on_epoch=lambda ep, loss, th: epochs.append((ep, float(loss), th.clone())),
        augment=lambda xb, idx: (aug_idx.append(idx), xb)[1],
    )
    hard_run = fit(net, theta0, x, hard, 2, SGD(0.1), torch.Generator().manual_seed(3), batch_size=16)
    torch.testing.assert_close(got, hard_run, rtol=1e-12, atol=1e-12)  # one-hot soft labels = hard labels
    assert sorted(torch.cat(seen[:3]).tolist()) == list(range(len(x)))
    assert [e for e, _, _ in epochs] == [0, 1] and torch.equal(epochs[-1][2], got)
    assert all(torch.equal(a, b) for a, b in zip(aug_idx, seen))


def test_sgd_rejects_bad_settings():
    with pytest.raises(ValueError, match="schedule"):
        SGD(0.1, schedule="linear")
    with pytest.raises(ValueError, match="decay_epoch"):
        SGD(0.1, schedule="step")
    with pytest.raises(ValueError, match="lr"):
        SGD(-1.0)
