"""FTD: sharpness-aware (SAM / ASAM / GSAM) expert training, the EMA of the synthetic images, the ftd-* presets.

References are computed independently: the SAM step with torch.nn modules and per-tensor parameter lists in
float64 (or in closed form on a quadratic), the EMA from its recurrence over the images after each iteration.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.distillation import MTTConfig
from fastdd.distillation.loop import run_loop
from fastdd.distillation.mtt import MTTPolicy
from fastdd.distillation.presets import PRESETS, Preset, check_preset, check_preset_experts, get_preset
from fastdd.errors import ExpertWarning
from fastdd.experts import train_experts
from fastdd.models import build_model
from fastdd.train import SAM, SGD, fit, sam_direction

SMALL = {"width": 4, "depth": 2}
FAST = dict(syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, lr_lr=1e-3, batch_syn=5, mode="adjoint")


# ---------------------------------------------------------------- SAM / ASAM / GSAM
def _hand_step(net, theta0, x, y, lr, wd, rho, alpha, adaptive):
    """One GSAM step by its definition, on an nn.Module's parameter list in float64: g = ∇L(w); e = ρ g/‖g‖
    (ASAM: ρ w² g / ‖|w| g‖); g_p = ∇L(w + e) at a second copy of the module; g_⊥ = g − cos‖g‖ g_p/‖g_p‖;
    w ← w − lr (g_p − α g_⊥ + wd w)."""
    mod, pert = net.module().double(), net.module().double()
    net.load_into_module(mod, theta0)
    w = list(mod.parameters())
    g = torch.autograd.grad(F.cross_entropy(mod(x), y), w)
    if adaptive:
        scale = rho / math.sqrt(sum(float(((wi.detach().abs() * gi) ** 2).sum()) for wi, gi in zip(w, g)))
        e = [scale * wi.detach() ** 2 * gi for wi, gi in zip(w, g)]
    else:
        scale = rho / math.sqrt(sum(float((gi**2).sum()) for gi in g))
        e = [scale * gi for gi in g]
    with torch.no_grad():
        for p, wi, ei in zip(pert.parameters(), w, e):
            p.copy_(wi + ei)
    gp = torch.autograd.grad(F.cross_entropy(pert(x), y), list(pert.parameters()))
    ng = math.sqrt(sum(float((t**2).sum()) for t in g))
    ngp = math.sqrt(sum(float((t**2).sum()) for t in gp))
    cos = sum(float((a * b).sum()) for a, b in zip(g, gp)) / (ng * ngp)
    with torch.no_grad():
        for p, gi, gpi in zip(mod.parameters(), g, gp):
            d = gpi - alpha * (gi - cos * ng * gpi / ngp)
            p.sub_(lr * (d + wd * p))
    return net.flat_from_module(mod)


@pytest.mark.parametrize(
    "rho, alpha, adaptive, wd",
    [(0.05, 0.0, False, 0.0), (0.05, 0.0, True, 0.0), (0.05, 0.4, False, 0.0), (0.5, 0.7, True, 1e-3)],
    ids=["sam", "asam", "gsam", "gsam-asam-wd"],
)
def test_one_sam_step_of_fit_equals_its_definition(tiny_ds, rho, alpha, adaptive, wd):
    """fit(sam=...) on a flat θ, one full-batch step (float64), against the two passes done by hand; the
    augmentation is drawn once per batch and used by both passes."""
    net = build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), width=4, depth=2)
    theta0 = net.init(torch.Generator().manual_seed(1)).double()
    x, y = tiny_ds.train.images.double(), tiny_ds.train.labels
    g_aug, drawn = torch.Generator().manual_seed(5), []

    def augment(xb, idx):
        out = xb + 0.3 * torch.randn(xb.shape, generator=g_aug, dtype=xb.dtype)
        drawn.append((idx.clone(), out.clone()))
        return out

    sgd = SGD(0.1, weight_decay=wd)
    got = fit(
        net, theta0, x, y, 1, sgd, torch.Generator(), batch_size=len(x), augment=augment, sam=SAM(rho, alpha, adaptive)
    )
    assert len(drawn) == 1  # one draw for the two passes
    x_aug = x.clone()
    x_aug[drawn[0][0]] = drawn[0][1]
    want = _hand_step(net, theta0, x_aug, y, 0.1, wd, rho, alpha, adaptive)
    plain = fit(net, theta0, x_aug, y, 1, sgd, torch.Generator(), batch_size=len(x))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (got - plain).abs().max() > 1e-6  # the perturbation matters at this ρ


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_sam_direction_on_a_quadratic_is_the_closed_form(alpha, adaptive):
    """L(w) = ½ (w − c)ᵀ A (w − c): ∇L = A (w − c), so every quantity has a closed form (no autograd)."""
    g0 = torch.Generator().manual_seed(0)
    b = torch.randn(6, 6, generator=g0, dtype=torch.float64)
    a, c = b @ b.T + torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g0, dtype=torch.float64)
    w = torch.randn(6, generator=g0, dtype=torch.float64)
    g = a @ (w - c)
    e = 0.1 * (w * w * g / torch.linalg.vector_norm(w.abs() * g) if adaptive else g / torch.linalg.vector_norm(g))
    gp = a @ (w + e - c)
    proj = torch.dot(g, gp) / torch.dot(gp, gp) * gp  # = cos(g, g_p) ‖g‖ g_p / ‖g_p‖
    want = gp - alpha * (g - proj)
    got = sam_direction(lambda v: a @ (v - c), w, g, SAM(0.1, alpha, adaptive))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    zero = sam_direction(lambda v: a @ (v - c), c, torch.zeros(6, dtype=torch.float64), SAM(0.1, alpha, adaptive))
    assert torch.equal(zero, torch.zeros(6, dtype=torch.float64))  # a zero gradient: e = 0, d = ∇L(c) = 0


def test_sam_keeps_batchnorm_statistics_of_the_first_pass(tiny_ds):
    net = build_model("convnet", in_channels=1, num_classes=4, im_size=(8, 8), width=4, depth=1, norm="batchnorm")
    theta0 = net.init(torch.Generator().manual_seed(1))
    x, y = tiny_ds.train.images, tiny_ds.train.labels
    bufs = {k: net.init_buffers() for k in ("plain", "sam")}
    fit(net, theta0, x, y, 1, SGD(0.1), torch.Generator(), batch_size=len(x), buffers=bufs["plain"])
    fit(net, theta0, x, y, 1, SGD(0.1), torch.Generator(), batch_size=len(x), buffers=bufs["sam"], sam=SAM(0.5))
    assert torch.equal(bufs["plain"], bufs["sam"]) and not torch.equal(bufs["plain"], net.init_buffers())


def test_sam_settings_are_checked():
    for bad in (dict(rho=-0.1), dict(rho=math.inf), dict(rho=0.1, alpha=-1.0), dict(rho=0.1, adaptive=1)):
        with pytest.raises(ValueError, match="SAM"):
            SAM(**bad)
    with pytest.raises(ValueError, match="sam_rho"):
        fastdd.ExpertConfig(sam_rho=-0.01).validate()
    with pytest.raises(TypeError, match="'sam_adaptive' must be true or false"):
        fastdd.ExpertConfig(sam_adaptive="yes").validate()


# ---------------------------------------------------------------- flat experts
def _experts(ds, out, **kw):
    args = dict(model="convnet", num_experts=2, epochs=2, out=out, seed=0, model_kwargs=SMALL, show_progress=False)
    return train_experts(ds, **{**args, **kw})


def test_sam_experts_equal_the_hand_step_and_rho_zero_is_plain(tiny_ds, tmp_path):
    n = len(tiny_ds.train)
    sam = dict(sam_rho=0.2, sam_alpha=0.4, sam_adaptive=True)
    buf = _experts(tiny_ds, tmp_path / "sam", num_experts=1, epochs=1, batch_size=n, lr=0.05, **sam)
    x, y = tiny_ds.train.images.double(), tiny_ds.train.labels
    want = _hand_step(buf.model(), buf[0][0].double(), x, y, 0.05, 0.0, 0.2, 0.4, True)
    torch.testing.assert_close(buf[0][1].double(), want, rtol=1e-5, atol=1e-6)
    assert buf.manifest["train"] | sam == buf.manifest["train"]  # recorded in the manifest

    plain = _experts(tiny_ds, tmp_path / "plain", augment="dsa", batch_size=16).load_all()
    off = _experts(tiny_ds, tmp_path / "off", augment="dsa", batch_size=16, sam_rho=0.0, sam_alpha=0.4).load_all()
    on = _experts(tiny_ds, tmp_path / "on", augment="dsa", batch_size=16, sam_rho=0.05).load_all()
    assert torch.equal(plain, off) and not torch.equal(plain[:, 1:], on[:, 1:])
    assert torch.equal(plain[:, 0], on[:, 0])  # the same inits


def test_a_folder_from_before_the_sam_fields_resumes(tiny_ds, tmp_path):
    """A manifest whose train dict lacks sam_* counts as their defaults: plain experts resume, SAM ones refuse."""
    full = _experts(tiny_ds, tmp_path / "full", num_experts=2, shard_size=1).load_all()
    _experts(tiny_ds, tmp_path / "old", num_experts=1, shard_size=1)
    mpath = tmp_path / "old" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["train"] = {k: v for k, v in m["train"].items() if not k.startswith("sam_")}
    mpath.write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"other settings \(train differ\)"):
        _experts(tiny_ds, tmp_path / "old", num_experts=2, shard_size=1, sam_rho=0.01)
    resumed = _experts(tiny_ds, tmp_path / "old", num_experts=2, shard_size=1)
    assert torch.equal(resumed.load_all(), full) and resumed.manifest["train"]["sam_rho"] == 0.0


# ---------------------------------------------------------------- EMA of the images
class _Recording(MTTPolicy):
    """MTT that records its images after every iteration and makes iteration ``skip`` non-finite."""

    skip = 1

    def step(self, it):
        s = super().step(it)
        if it == self.skip:
            s.loss = torch.tensor(math.nan)
        return s

    def end_iteration(self, it):
        self.seen.append(self.images.detach().double().clone())


@pytest.fixture
def buf(tiny_ds, tmp_path):
    return _experts(tiny_ds, tmp_path / "experts", epochs=3)


def test_ema_is_its_recurrence_over_the_applied_iterations(tiny_ds, buf):
    d = 0.6
    policy = _Recording(tiny_ds, 2, buf, MTTConfig(**FAST, ema_decay=d), seed=0, method="mtt")
    policy.seen = []
    start = policy.images.detach().double().clone()
    assert torch.equal(policy.tensors["ema"], policy.images.detach())
    done = run_loop(policy, 5, show_progress=False)
    assert done.skipped == 1
    want = start
    for it, x in enumerate(policy.seen):
        if it != _Recording.skip:  # a skipped iteration leaves the EMA as it was
            want = d * want + (1 - d) * x
    torch.testing.assert_close(policy.ema.double(), want, rtol=1e-6, atol=1e-6)
    assert (policy.ema - policy.images.detach()).abs().max() > 1e-3  # it lags the images
    syn = policy.result(5, 1, None)
    assert torch.equal(syn.images, policy.ema) and syn.meta["config"]["ema_decay"] == d


def test_checkpointed_ema_resumes_bitwise(tiny_ds, buf, tmp_path):
    kw = dict(method="mtt", ipc=2, experts=buf, seed=0, show_progress=False, **FAST)
    full = fastdd.distill(tiny_ds, iterations=4, ema_decay=0.5, out=tmp_path / "full", checkpoint_every=2, **kw)
    fastdd.distill(tiny_ds, iterations=2, ema_decay=0.5, out=tmp_path / "part", checkpoint_every=2, **kw)
    resumed = fastdd.distill(
        tiny_ds, iterations=4, ema_decay=0.5, out=tmp_path / "part", checkpoint_every=2, resume=True, **kw
    )
    assert torch.equal(full.images, resumed.images) and torch.equal(full.lr, resumed.lr)
    from safetensors.torch import load_file

    (ckpt,) = (tmp_path / "full").glob("checkpoint_*.safetensors")
    saved = load_file(ckpt)
    assert torch.equal(saved["t.ema"], full.images) and not torch.equal(saved["t.images"], full.images)
    with pytest.raises(ValueError, match="ema_decay"):
        fastdd.distill(tiny_ds, iterations=2, ema_decay=1.0, **kw)


# ---------------------------------------------------------------- presets
def test_ftd_presets(tiny_ds, buf, tmp_path):
    names = sorted(n for n in PRESETS if n.startswith("ftd-"))
    want = [f"ftd-{ds}-ipc{i}" for ds, ipcs in (("cifar10", (1, 10, 50)), ("cifar100", (1, 10, 50))) for i in ipcs]
    assert names == sorted(want + ["ftd-tinyimagenet-ipc1", "ftd-tinyimagenet-ipc10"])
    p = get_preset("ftd-cifar100-ipc50")
    assert (p.method, p.dataset, p.ipc, p.zca, p.iterations) == ("mtt", "cifar100", 50, True, 5000)
    assert p.options["ema_decay"] == 0.999 and p.options["batch_syn"] == 1000 and p.options["syn_steps"] == 80
    assert p.experts["sam_rho"] == 0.01 and get_preset("ftd-cifar10-ipc1").experts["sam_alpha"] == 0.3
    with pytest.raises(ValueError, match="is for cifar10, not tiny"):
        fastdd.distill(tiny_ds, preset="ftd-cifar10-ipc10", experts=buf)
    with pytest.raises(TypeError, match="sam_rhoo"):
        check_preset(Preset("x", "mtt", "cifar10", 1, True, 1, experts={"sam_rhoo": 1}))
    with pytest.warns(ExpertWarning, match="sam_rho 0.0 \\(wanted 0.01\\)"):
        assert len(check_preset_experts(p, buf)) == 5  # plain experts of 3 epochs: every setting differs
    mine = Preset("mine", "mtt", "tiny", 2, False, 1, experts=dict(epochs=1, sam_rho=0.05, sam_adaptive=True))
    flat = _experts(tiny_ds, tmp_path / "flat", num_experts=1, epochs=1, sam_rho=0.05, sam_adaptive=True)
    assert check_preset_experts(mine, flat) == []


def test_experts_command_takes_the_sam_options(tmp_path):
    from fastdd.cli import main

    args = ["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "1", "--out", str(tmp_path / "e")]
    args += ["--model-kwargs", '{"width": 4, "depth": 1}', "--sam-rho", "0.02", "--sam-alpha", "0.4", "--sam-adaptive"]
    assert main(args) == 0
    train = json.loads((tmp_path / "e" / "manifest.json").read_text())["train"]
    assert (train["sam_rho"], train["sam_alpha"], train["sam_adaptive"]) == (0.02, 0.4, True)
    with pytest.raises(SystemExit):  # argparse: a negative radius is refused before anything runs
        main([*args[:-5], "--sam-rho", "-1"])
