"""PAD: the depth mask of the matching loss, its meta-gradient, the experts' difficulty curriculum, the method.

References are independent of the code under test: the masked loss is summed by hand over the kept suffix in
float64, the meta-gradient is plain autograd through a hand-written SGD unroll (float64), the curriculum's
per-class windows are a table worked out by hand.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.distillation.loop import run_loop
from fastdd.distillation.mtt import DATM_DEFAULTS, MTTPolicy
from fastdd.distillation.pad import PADConfig, PADPolicy, depth_mask, layer_ends, mask_start, masked_matching_loss
from fastdd.engine import matching_loss, unroll_grad
from fastdd.experts import Curriculum, ExpertConfig, curriculum_order, train_experts
from fastdd.models import build_model
from fastdd.scores import Scores, as_scores
from fastdd.train import SGD, fit

SMALL = {"width": 4, "depth": 2}
FAST = dict(syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, lr_lr=1e-3, batch_syn=5, mode="adjoint")


def _net():
    return build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), **SMALL)


def _experts(ds, out, **kw):
    args = dict(model="convnet", num_experts=2, epochs=3, out=out, seed=0, model_kwargs=SMALL, show_progress=False)
    return train_experts(ds, **{**args, **kw})


@pytest.fixture
def buf(tiny_ds, tmp_path):
    return _experts(tiny_ds, tmp_path / "experts")


# ---------------------------------------------------------------- the mask
def test_flat_order_is_shallow_to_deep_for_convnet():
    net = _net()
    mod = net.module()
    theta = net.init(torch.Generator().manual_seed(0))
    net.load_into_module(mod, theta)
    assert torch.equal(torch.cat([p.detach().flatten() for p in mod.parameters()]), theta)  # flat = parameters()
    names = [p.name for p in net.params]
    assert names == [n for n, _ in mod.named_parameters()]
    depth = [int(n.split(".")[1]) if n.startswith("features.") else 99 for n in names]
    assert depth == sorted(depth) and names[-2:] == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.6])
def test_mask_drops_exactly_the_shallow_part_of_the_loss(ratio):
    """Numerator and denominator over the suffix [⌊α·L⌋:], by hand in float64; the dropped entries neither change
    the loss (bit for bit) nor get a gradient."""
    net = _net()
    g = torch.Generator().manual_seed(1)
    theta0, target, theta = (torch.randn(net.num_params, generator=g, dtype=torch.float64) for _ in range(3))
    k = int(ratio * net.num_params)
    assert mask_start(net, ratio) == k and 0 < k < net.num_params
    w = depth_mask(net, ratio, dtype=torch.float64)
    assert torch.equal(w, torch.cat([torch.zeros(k), torch.ones(net.num_params - k)]).double())
    loss = masked_matching_loss(theta0, target, w)
    want = ((theta[k:] - target[k:]) ** 2).sum() / ((theta0[k:] - target[k:]) ** 2).sum()
    torch.testing.assert_close(loss(theta), want, rtol=1e-13, atol=0)
    assert not torch.isclose(loss(theta), matching_loss(theta0, target)(theta))  # the mask matters
    moved = theta.clone()
    moved[:k] += torch.randn(k, generator=g, dtype=torch.float64)
    moved0 = theta0.clone()
    moved0[:k] += 1.0
    assert torch.equal(loss(moved), loss(theta))
    assert torch.equal(masked_matching_loss(moved0, target, w)(theta), loss(theta))  # the denominator too
    grad = torch.autograd.grad(loss(theta.requires_grad_(True)), theta)[0]
    assert torch.equal(grad[:k], torch.zeros(k, dtype=torch.float64)) and bool((grad[k:] != 0).all())


def test_layer_mask_cuts_at_a_layer_boundary():
    """fastdd's pad_mask='layers': the first ⌊α·n⌋ of the n layers (conv, norm, ..., classifier)."""
    net = _net()
    sizes = [p.numel for p in net.params]  # conv0 w, b, norm0 w, b, conv1 w, b, norm1 w, b, fc w, b
    ends = [sum(sizes[:2]), sum(sizes[:4]), sum(sizes[:6]), sum(sizes[:8]), sum(sizes)]
    assert layer_ends(net) == ends
    assert [mask_start(net, a, "layers") for a in (0.0, 0.19, 0.2, 0.5, 0.99)] == [0, 0, ends[0], ends[1], ends[3]]
    assert mask_start(net, 0.0) == 0
    for bad in (dict(pad_depth_ratio=1.0), dict(pad_depth_ratio=-0.1), dict(pad_mask="loss")):
        with pytest.raises(ValueError, match="pad_"):
            PADConfig(**bad).validate()


def _hand_unroll_grads(net, x, y, lrs, theta0, batches, loss):
    """Plain autograd through N SGD steps written out here (mean cross-entropy, float64)."""
    x, lrs = x.detach().requires_grad_(True), lrs.detach().requires_grad_(True)
    theta = theta0.detach().requires_grad_(True)
    for i, b in enumerate(batches):
        g = torch.autograd.grad(F.cross_entropy(net(x[b], theta), y[b]), theta, create_graph=True)[0]
        theta = theta - lrs[i] * g
    value = loss(theta)
    gx, glr = torch.autograd.grad(value, (x, lrs))
    return value.detach(), gx, glr


@pytest.mark.parametrize("mode", ["adjoint", "bptt"])
def test_pad_meta_gradient_equals_plain_autograd(tiny_ds, buf, mode):
    """The policy's outer loss (its mask) in the engine, float64, against autograd through a hand unroll."""
    policy = PADPolicy(tiny_ds, 2, buf, PADConfig(**FAST, **DATM_DEFAULTS, pad_depth_ratio=0.5), 0, "pad")
    net = policy.net
    k = policy.mask_start
    assert k == net.num_params // 2
    snaps = buf.snapshots(buf.ids[0], [0, 1]).double()
    loss = policy.outer_loss(snaps[0], snaps[1])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lrs = torch.tensor([0.05, 0.04, 0.03], dtype=torch.float64)
    batches = [torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), torch.tensor([5, 0, 1])]
    want = _hand_unroll_grads(net, x, y, lrs, snaps[0], batches, loss)
    res = unroll_grad(
        net, x.requires_grad_(True), y, lrs.clone().requires_grad_(True), snaps[0], batches, loss, None, mode
    )
    torch.testing.assert_close(res.loss, want[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(res.images, want[1], rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(res.lrs, want[2], rtol=1e-9, atol=1e-14)
    hand = ((snaps[0][k:] - snaps[1][k:]) ** 2).sum()  # the denominator of the kept suffix
    torch.testing.assert_close(loss(snaps[0]), ((snaps[0][k:] - snaps[1][k:]) ** 2).sum() / hand)
    plain = _hand_unroll_grads(net, x, y, lrs, snaps[0], batches, matching_loss(snaps[0], snaps[1]))
    assert (plain[1] - want[1]).abs().max() > 1e-6  # the mask changes the meta-gradient


def test_ratio_zero_is_datm_bit_for_bit(tiny_ds, buf):
    cfg = PADConfig(**FAST, **DATM_DEFAULTS, pad_depth_ratio=0.0)
    runs = {}
    for name, cls in (("datm", MTTPolicy), ("pad", PADPolicy), ("pad-half", PADPolicy)):
        c = cfg if name != "pad-half" else PADConfig(**FAST, **DATM_DEFAULTS, pad_depth_ratio=0.5)
        policy = cls(tiny_ds, 2, buf, c, 0, "same-streams")
        run_loop(policy, 2, show_progress=False)
        runs[name] = (policy.images.detach(), policy.logits.detach())
    assert torch.equal(runs["datm"][0], runs["pad"][0]) and torch.equal(runs["datm"][1], runs["pad"][1])
    assert not torch.equal(runs["datm"][0], runs["pad-half"][0])


# ---------------------------------------------------------------- the curriculum
# class 0: 7 examples, class 1: 5, class 2: 4 (16 in all, interleaved); EL2N-like scores, high = hard
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 0])
VALUES = torch.tensor([0.9, 0.2, 0.5, 0.1, 0.8, 0.3, 0.5, 0.4, 0.7, 0.3, 0.6, 0.1, 0.7, 0.1, 0.2, 0.4])
EASY_TO_HARD = [[3, 14, 9, 15, 6, 12, 0], [13, 1, 7, 10, 4], [11, 5, 2, 8]]
CUR = Curriculum(init_ratio=0.5, add_end_epoch=4, remove_epochs=(6, 8), remove_ratios=(0.25, 0.5))
# (start, stop) of each class's easy → hard ranks per epoch, worked out by hand:
# e ≤ 4: p = 0.5 + 0.5·e/4, keep ⌈p·n⌉; 5, 6: all; 7, 8: drop ⌊0.25·n⌋ = 1, 1, 1; ≥ 9: drop ⌊0.5·n⌋ = 3, 2, 2
WINDOWS = {
    0: [(0, 4), (0, 3), (0, 2)],  # 3.5, 2.5, 2
    1: [(0, 5), (0, 4), (0, 3)],  # 4.375, 3.125, 2.5
    2: [(0, 6), (0, 4), (0, 3)],  # 5.25, 3.75, 3
    3: [(0, 7), (0, 5), (0, 4)],  # 6.125, 4.375, 3.5
    4: [(0, 7), (0, 5), (0, 4)],
    5: [(0, 7), (0, 5), (0, 4)],
    6: [(0, 7), (0, 5), (0, 4)],
    7: [(1, 7), (1, 5), (1, 4)],
    8: [(1, 7), (1, 5), (1, 4)],
    9: [(3, 7), (2, 5), (2, 4)],
    10: [(3, 7), (2, 5), (2, 4)],
}


def _want(epoch, order=EASY_TO_HARD):
    return sorted(i for o, (a, b) in zip(order, WINDOWS[epoch]) for i in o[a:b])


def test_curriculum_subsets_equal_the_hand_computation():
    order = curriculum_order(Scores(VALUES, hardest="high"), LABELS, 3)
    assert [o.tolist() for o in order] == EASY_TO_HARD
    low = curriculum_order(as_scores(-VALUES, hardest="low"), LABELS, 3)  # the same difficulty, other convention
    assert [o.tolist() for o in low] == EASY_TO_HARD
    for epoch in WINDOWS:
        assert [CUR.window(len(o), epoch) for o in order] == WINDOWS[epoch], epoch
        assert CUR.subset(order, epoch).tolist() == _want(epoch), epoch
    ties = curriculum_order(Scores(torch.zeros(16), hardest="low"), LABELS, 3)  # ties keep index order
    assert ties[0].tolist() == [0, 3, 6, 9, 12, 14, 15]
    once = Curriculum(0.75, 0, (), ())  # no add phase, never removes
    assert [once.window(7, e) for e in (0, 1, 50)] == [(0, 7)] * 3
    at_once = Curriculum(0.5, 2, (2,), (0.5,))  # removal right after the add phase
    assert [at_once.window(8, e) for e in range(4)] == [(0, 4), (0, 6), (0, 8), (4, 8)]


def test_fit_trains_each_epoch_on_the_curriculum_subset():
    """fit(epoch_subset=): every index of the epoch's subset once, nothing else (seen by on_batch)."""
    net = build_model("convnet", in_channels=1, num_classes=3, im_size=(8, 8), width=2, depth=1)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    order = [torch.tensor(o) for o in EASY_TO_HARD]
    seen: list[list[int]] = [[] for _ in WINDOWS]
    epoch = [0]

    def on_batch(idx, logits):
        seen[epoch[0]].extend(idx.tolist())

    def on_epoch(ep, loss, theta):
        epoch[0] = ep + 1

    theta0 = net.init(torch.Generator().manual_seed(0))
    fit(net, theta0, x, LABELS, len(WINDOWS), SGD(0.01), torch.Generator().manual_seed(1), batch_size=8,
        on_batch=on_batch, on_epoch=on_epoch, epoch_subset=lambda ep: CUR.subset(order, ep))  # fmt: skip
    assert [sorted(s) for s in seen] == [_want(e) for e in WINDOWS]


def test_curriculum_settings_are_checked_and_canonical():
    cfg = ExpertConfig(curriculum=CUR)
    assert cfg.curriculum == {
        "init_ratio": 0.5,
        "add_end_epoch": 4,
        "remove_epochs": [6, 8],
        "remove_ratios": [0.25, 0.5],
    }
    assert ExpertConfig(curriculum={"add_end_epoch": 40, "remove_epochs": [], "remove_ratios": []}).curriculum == {
        "init_ratio": 0.75,
        "add_end_epoch": 40,
        "remove_epochs": [],
        "remove_ratios": [],
    }
    for bad in (
        dict(init_ratio=0.0),
        dict(remove_epochs=(40,)),
        dict(remove_epochs=(60, 40)),
        dict(remove_epochs=(10, 60)),
        dict(remove_epochs=(40, 40)),
        dict(remove_ratios=(0.1, 1.0)),
        dict(add_end_epoch=-1),
    ):
        with pytest.raises(ValueError, match="Curriculum"):
            Curriculum(**bad)
    with pytest.raises(TypeError, match="init_rate"):
        ExpertConfig(curriculum={"init_rate": 0.5})
    with pytest.raises(TypeError, match="curriculum"):
        ExpertConfig(curriculum="pad").validate()


def test_curriculum_experts_and_their_manifest(tiny_ds, tmp_path):
    n = len(tiny_ds.train)
    scores = Scores(torch.rand(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64), "high", "el2n")
    one = dict(num_experts=1, batch_size=24)
    plain = _experts(tiny_ds, tmp_path / "plain", **one).load_all()
    full = Curriculum(1.0, 0, (), ())  # every example every epoch: the same batches as no curriculum
    same = _experts(tiny_ds, tmp_path / "same", **one, curriculum=full, scores=scores)
    assert torch.equal(same.load_all(), plain)
    cur = Curriculum(0.5, 1, (1,), (0.5,))  # epoch 0: half, 1: all, 2: the harder half
    pad = _experts(tiny_ds, tmp_path / "pad", **one, curriculum=cur, scores=scores)
    traj = pad.load_all()
    assert traj.shape == plain.shape and torch.equal(traj[:, 0], plain[:, 0]) and not torch.equal(traj, plain)
    m = json.loads((tmp_path / "pad" / "manifest.json").read_text())
    assert m["train"]["curriculum"] == cur.as_dict()
    rec = m["difficulty"]
    assert (rec["kind"], rec["hardest"], rec["n"], rec["source"], len(rec["sha256"])) == ("el2n", "high", n, None, 64)
    other = Scores(scores.values.flip(0), "high", "el2n")
    with pytest.raises(ValueError, match=r"difficulty differ"):  # other scores: no silent mix on resume
        _experts(tiny_ds, tmp_path / "pad", num_experts=2, batch_size=24, curriculum=cur, scores=other)
    with pytest.raises(ValueError, match="needs difficulty scores"):
        _experts(tiny_ds, tmp_path / "x", curriculum=cur)
    with pytest.raises(ValueError, match="curriculum only"):
        _experts(tiny_ds, tmp_path / "x", scores=scores)
    with pytest.raises(TypeError, match="as_scores"):
        _experts(tiny_ds, tmp_path / "x", curriculum=cur, scores=scores.values)
    assert "difficulty" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())


def test_a_folder_from_before_the_curriculum_resumes(tiny_ds, tmp_path):
    full = _experts(tiny_ds, tmp_path / "full", epochs=1, shard_size=1).load_all()
    _experts(tiny_ds, tmp_path / "old", epochs=1, num_experts=1, shard_size=1)
    mpath = tmp_path / "old" / "manifest.json"
    m = json.loads(mpath.read_text())
    del m["train"]["curriculum"]
    mpath.write_text(json.dumps(m))
    resumed = _experts(tiny_ds, tmp_path / "old", epochs=1, shard_size=1)
    assert torch.equal(resumed.load_all(), full) and resumed.manifest["train"]["curriculum"] is None


# ---------------------------------------------------------------- the method on digits
@pytest.fixture(scope="module")
def digits_pad(tmp_path_factory):
    """digits, EL2N scores (one short run) and curriculum experts of a tiny ConvNet."""
    ds = fastdd.load_dataset("digits")
    kw = {"width": 4, "depth": 1}
    scores = fastdd.el2n_scores(ds, epochs=1, num_runs=1, model_kwargs=kw, show_progress=False)
    out = tmp_path_factory.mktemp("pad") / "experts"
    cur = Curriculum(0.75, 1, (1,), (0.1,))  # epoch 0: 75 %, 1: all, 2: the easiest 10 % out
    buf = train_experts(
        ds, num_experts=1, epochs=3, out=out, model_kwargs=kw, curriculum=cur, scores=scores, show_progress=False
    )
    assert buf.manifest["difficulty"]["kind"] == "el2n"
    return ds, buf


PAD_FAST = dict(syn_steps=2, expert_epochs=1, max_start_epoch=2, lr_img=10.0, batch_syn=10, pad_depth_ratio=0.5)


def test_pad_distills_digits_and_resumes_bitwise(digits_pad, tmp_path):
    ds, buf = digits_pad
    assert "pad" in fastdd.methods()
    kw = dict(ipc=2, experts=buf, seed=0, show_progress=False, checkpoint_every=2, **PAD_FAST)
    syn = fastdd.distill(ds, "pad", iterations=3, out=tmp_path / "run", **kw)
    assert syn.images.shape == (20, 1, 8, 8) and syn.labels.shape == (20, 10)  # DATM's soft labels
    assert syn.meta["method"] == "pad" and syn.meta["pad_mask_start"] == math.floor(0.5 * buf.num_params)
    assert syn.meta["config"]["init"] == "correct" and syn.meta["config"]["threshold"] == 1.0
    full = fastdd.distill(ds, "pad", iterations=4, out=tmp_path / "full", **kw)
    fastdd.distill(ds, "pad", iterations=2, out=tmp_path / "part", **kw)  # "interrupted" after 2
    resumed = fastdd.distill(ds, "pad", iterations=4, out=tmp_path / "part", resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.labels, resumed.labels)
    assert torch.equal(full.lr, resumed.lr)
    with pytest.raises(ValueError, match="other settings"):
        fastdd.distill(ds, "pad", iterations=4, out=tmp_path / "part", resume=True, **{**kw, "pad_depth_ratio": 0.25})


def test_pad_from_the_command_line(digits_pad, tmp_path):
    from fastdd.cli import main

    _, buf = digits_pad
    opts = json.dumps(PAD_FAST)
    args = ["distill", "--dataset", "digits", "--method", "pad", "--ipc", "1", "--experts", str(buf.path)]
    assert main([*args, "--iterations", "2", "--options", opts, "--out", str(tmp_path / "cli")]) == 0
    syn = fastdd.SyntheticSet.load(tmp_path / "cli" / "synthetic")
    assert syn.meta["method"] == "pad" and syn.meta["config"]["pad_depth_ratio"] == 0.5


def test_pad_presets():
    from fastdd.distillation.presets import get_preset

    p = get_preset("pad-cifar10-ipc10")
    assert (p.method, p.ipc, p.zca, p.iterations) == ("pad", 10, True, 10000)
    assert p.options["pad_depth_ratio"] == 0.25 and p.options["expansion_end"] == 1000
    assert p.experts["curriculum"] == Curriculum(0.75, 20, (40, 60), (0.1, 0.2)).as_dict()
    assert get_preset("pad-cifar100-ipc1").options["pad_depth_ratio"] == 0.0
    assert get_preset("pad-tinyimagenet-ipc50").options["pad_depth_ratio"] == 0.5


def test_experts_command_takes_the_curriculum(tmp_path):
    from fastdd.cli import main

    out = tmp_path / "e"
    args = ["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "2", "--out", str(out)]
    cur = '{"add_end_epoch": 1, "remove_epochs": [], "remove_ratios": []}'
    args += ["--model-kwargs", '{"width": 4, "depth": 1}', "--curriculum", cur]
    assert main([*args, "--scores", "el2n", "--score-epochs", "1", "--score-runs", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["train"]["curriculum"] == Curriculum(0.75, 1, (), ()).as_dict() and m["difficulty"]["kind"] == "el2n"
    assert m["difficulty"]["source"] == str(out / "el2n.npz")
    assert main(args) == 2  # a curriculum without scores
