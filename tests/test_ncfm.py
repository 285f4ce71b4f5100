"""NCFM: the characteristic-function discrepancy against its complex closed form, its gradient, the sampler's
ascent step (not the reference code's cancelling min-max), the multi-formation decode, and the method on the
loop: registered, run from Python and the command line, resumed bitwise (also in the middle of an
iteration), split by class under torch.distributed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.distillation.loop import run_loop
from fastdd.distillation.ncfm import FrequencySampler, NCFMConfig, NCFMPolicy, decode, mosaic
from fastdd.distillation.registry import Setup, get_method, make_config
from fastdd.kernels import cf_discrepancy

# tiny settings: 16 real images per class, 16 frequencies, ψ on 4 distinct rows
TINY = dict(num_freqs=16, batch_real=16, sampler_tile=4)


pytestmark = pytest.mark.usefixtures("one_thread")  # one thread, as the ranks of the distributed test run


@pytest.fixture(scope="module")
def ds():
    return fastdd.load_dataset("digits")


@pytest.fixture(scope="module")
def experts(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("ncfm") / "experts"
    return fastdd.train_experts(
        ds, "convnet", num_experts=2, epochs=2, out=out, model_kwargs={"width": 8, "depth": 2}, show_progress=False
    )


def _complex_reference(zr, zs, t, alpha, beta):
    """mean_t √Chf(t) from complex numbers: amplitude term and 2|Φx||Φs|(1 − cos(arg Φx − arg Φs))."""
    phi_x, phi_s = (torch.exp(1j * (z @ t.T)).mean(0) for z in (zr, zs))
    ax, as_ = phi_x.abs(), phi_s.abs()
    chf = alpha * (ax - as_) ** 2 + beta * 2 * ax * as_ * (1 - torch.cos(phi_x.angle() - phi_s.angle()))
    return chf.sqrt().mean(), (phi_x - phi_s).abs().mean()


def test_cf_discrepancy_equals_the_complex_closed_form_in_float64():
    g = torch.Generator().manual_seed(0)
    zr, zs = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1), torch.randn(4, 5, generator=g)
    zs, t = zs.double(), torch.randn(9, 5, generator=g, dtype=torch.float64)
    ref, dist = _complex_reference(zr, zs, t, 0.3, 0.8)
    assert torch.allclose(cf_discrepancy(zr, zs, t, 0.3, 0.8), ref, rtol=1e-12, atol=0)
    # α = β = 1: Chf(t) = |Φx(t) − Φs(t)|²
    assert torch.allclose(cf_discrepancy(zr, zs, t, 1.0, 1.0), dist, rtol=1e-12, atol=0)
    # identical sets: 0 up to the square root of round-off without the clamp, √eps with it
    assert 0 <= cf_discrepancy(zr, zr.clone(), t, eps=0.0) < 1e-7
    assert cf_discrepancy(zr, zr.clone(), t) == pytest.approx(1e-6, rel=1e-6)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        cf_discrepancy(zr, zs[:, :4], t)


def test_cf_discrepancy_gradient_passes_gradcheck():
    g = torch.Generator().manual_seed(1)
    zr, zs, t = (
        torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((3, 2), (2, 2), (4, 2))
    )
    assert torch.autograd.gradcheck(lambda a, b, c: cf_discrepancy(a, b, c, 0.3, 0.7), (zr, zs, t))


def test_the_sampler_step_is_a_real_ascent_step():
    g = torch.Generator().manual_seed(2)
    zr = F.normalize(torch.randn(12, 6, generator=g, dtype=torch.float64), dim=1)
    zs = F.normalize(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=1)
    noise = torch.randn(4, 6, generator=g, dtype=torch.float64)
    lr = 1e-3
    sampler = FrequencySampler(6, True, lr, 0.5, g, dtype=torch.float64)
    psi = sampler.leaves()
    before = cf_discrepancy(zr, zs, sampler.frequencies(noise, psi))
    grads = torch.autograd.grad(before, psi)
    old = [p.detach().clone() for p in sampler.params.values()]
    sampler.ascend(grads)
    after = cf_discrepancy(zr, zs, sampler.frequencies(noise))
    assert after > before  # the features are fixed: ψ moved up the loss, by lr·‖∇ψ‖² to first order
    rise = lr * sum(float((gr**2).sum()) for gr in grads)
    assert 0.8 * rise < after - before < 1.2 * rise
    for p, p0, gr in zip(sampler.params.values(), old, grads):  # by +lr·∇ψ, not the code's cancelled ~0
        assert torch.allclose(p.detach() - p0, lr * gr, rtol=1e-10, atol=1e-15)
    assert any(gr.abs().max() > 0 for gr in grads)


def test_decode_cuts_the_mosaic_into_cells_and_upsamples_them():
    cells = torch.randn(8, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    stored = mosaic(cells, 2)
    assert stored.shape == (2, 3, 8, 10)
    assert torch.equal(stored[1, :, 4:, :5], cells[6])  # image 1, cell (1, 0)
    up = F.interpolate(cells, size=(8, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(decode(stored, 2), up, rtol=0, atol=1e-6)  # the same weights, as matrix products
    thirds = torch.randn(2, 1, 9, 6, dtype=torch.float64)
    up3 = F.interpolate(thirds[:, :, :3, :2], size=(9, 6), mode="bilinear", align_corners=False)
    assert torch.allclose(decode(thirds, 3)[0], up3[0], rtol=0, atol=1e-12)
    assert decode(stored, 1) is stored


def test_config_is_checked():
    for bad, match in (
        (dict(init="mosaic"), "init must be"),
        (dict(optimizer_img="adam"), "optimizer_img"),
        (dict(alpha=0.0, beta=0.0), "both 0"),
        (dict(sampling_net=True, num_freqs=16, sampler_tile=16), "at least 2 distinct rows"),
        (dict(iter_calib=-1), "iter_calib"),
    ):
        with pytest.raises(ValueError, match=match):
            NCFMConfig(**bad).validate()
    spec = get_method("ncfm")
    assert spec.needs_experts and spec.distributed == "classes" and "ncfm" in fastdd.methods()


def test_distill_runs_and_the_sampler_moves_in_the_policy(ds, experts):
    syn = fastdd.distill(ds, "ncfm", ipc=2, experts=experts, iterations=3, show_progress=False, **TINY)
    assert syn.images.shape == (20, 1, 8, 8) and syn.ipc == 2 and syn.meta["factor"] == 1
    # one matching step with ψ: its parameters move by +lr·∇ψ of the step's own loss (Step.grads[1:])
    cfg = make_config(get_method("ncfm"), dict(TINY, sampling_net=True, factor=2, init="mix"))
    policy = NCFMPolicy.from_setup(Setup(ds, 1, cfg, 0, "ncfm", 1, experts))
    step = policy.step(0)
    assert step.info["stage"] == "match" and len(step.grads) == 1 + len(policy.sampler.params)
    old = [p.detach().clone() for p in policy.sampler.params.values()]
    policy.apply(step)
    for p, p0, gr in zip(policy.sampler.params.values(), old, step.grads[1:]):
        assert torch.allclose(p.detach() - p0, cfg.lr_sampling_net * gr, rtol=1e-4, atol=1e-6)
    assert policy.step(1).info["stage"] == "calib"
    out = policy.result(1, 0, None)  # the decoded set: 4 cells per stored image
    assert out.images.shape == (40, 1, 8, 8) and out.ipc == 4
    assert (out.meta["ipc"], out.meta["factor"], out.meta["decoded_ipc"]) == (1, 2, 4)


def test_what_the_data_cannot_supply_is_refused_before_anything_runs(ds, experts, tmp_path):
    with pytest.raises(ValueError, match="factor 3 must divide the image size"):
        fastdd.distill(ds, "ncfm", 1, experts=experts, iterations=1, out=tmp_path / "x", factor=3)
    with pytest.raises(ValueError, match="init 'mix' takes ipc·factor² = 160 real images per class"):
        fastdd.distill(ds, "ncfm", 40, experts=experts, iterations=1, out=tmp_path / "x", factor=2, init="mix")
    with pytest.raises(ValueError, match="needs|experts"):
        fastdd.distill(ds, "ncfm", 1, iterations=1)
    assert not (tmp_path / "x").exists()


def _policy(ds, experts, **options):
    cfg = make_config(get_method("ncfm"), dict(TINY, **options))
    return NCFMPolicy.from_setup(Setup(ds, 1, cfg, 0, "ncfm", 3, experts))


def test_resume_is_bitwise_also_in_the_middle_of_an_iteration(ds, experts, tmp_path):
    opts = dict(TINY, sampling_net=True, factor=2, init="mix")
    whole = fastdd.distill(ds, "ncfm", ipc=1, experts=experts, iterations=3, show_progress=False, **opts)
    run = tmp_path / "run"
    fastdd.distill(ds, "ncfm", ipc=1, experts=experts, iterations=2, out=run, show_progress=False, **opts)
    resumed = fastdd.distill(
        ds, "ncfm", ipc=1, experts=experts, iterations=3, out=run, resume=True, show_progress=False, **opts
    )
    assert torch.equal(resumed.images, whole.images)
    assert not torch.equal(whole.images, _policy(ds, experts, **opts).result(0, 0, None).images)  # it learned
    # stop after loop step 3 (iteration 1's matching step), resume to iteration 3's end (6 loop steps)
    mid = tmp_path / "mid"
    run_loop(_policy(ds, experts, **opts), 3, out=mid, checkpoint_every=3, show_progress=False)
    policy = _policy(ds, experts, **opts)
    run_loop(policy, 6, out=mid, resume=True, checkpoint_every=3, show_progress=False)
    assert torch.equal(policy.result(3, 0, None).images, whole.images)
    stages = [r.split(",")[2] for r in (mid / "log.csv").read_text().splitlines()[1:]]
    assert stages == ["match", "calib"] * 3


def test_the_command_line_runs_ncfm(ds, experts, tmp_path):
    from fastdd.cli import main

    opts = json.dumps(dict(TINY, factor=2, init="mix"))
    out = tmp_path / "cli"
    args = ["distill", "--dataset", "digits", "--method", "ncfm", "--ipc", "1", "--experts", str(experts.path)]
    assert main([*args, "--iterations", "1", "--options", opts, "--out", str(out)]) == 0
    syn = fastdd.SyntheticSet.load(out / "synthetic")
    assert syn.images.shape == (40, 1, 8, 8) and syn.meta["method"] == "ncfm" and syn.meta["factor"] == 2


def _ncfm_on_ranks(experts: str, out: str) -> dict:
    """On each rank (digits' 10 classes split 5 / 5): 2 iterations with ψ and multi-formation, then a resume to 3."""
    ds = fastdd.load_dataset("digits")
    opts = dict(TINY, sampling_net=True, factor=2, init="mix", seed=0, show_progress=False, checkpoint_every=1)
    fastdd.distill(ds, "ncfm", 1, experts=experts, iterations=2, out=out, **opts)
    syn = fastdd.distill(ds, "ncfm", 1, experts=experts, iterations=3, out=out, resume=True, **opts)
    return {"images": syn.images, "labels": syn.labels}


def test_split_by_class_under_torch_distributed_equals_one_process(ds, experts, tmp_path):
    from dist_helpers import run_ranks

    parts = run_ranks(_ncfm_on_ranks, str(experts.path), str(tmp_path / "run"), world=2)
    opts = dict(TINY, sampling_net=True, factor=2, init="mix")  # one thread here too (one_thread): ψ's gradient is
    one = fastdd.distill(ds, "ncfm", 1, experts=experts, iterations=3, show_progress=False, **opts)  # ill-conditioned
    for p in parts:  # the loss and ψ's gradient are all-reduced: the same run but for the order of ψ's sums
        assert torch.equal(p["labels"], one.labels)
        assert ((p["images"] - one.images).norm() / one.images.norm()).item() < 1e-5
