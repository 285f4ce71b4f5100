"""SRe2L's recover (and CDA's crop curriculum) against independent references: the batch-norm statistics loss
from forward hooks on the equivalent ``torch.nn`` module in float64, the whole loss and one step's gradient from
plain autograd on the class-major set (crops by ``apply_resized_crops``, the roll by ``torch.roll``), the Adam
step and cosine learning rate from ``torch.optim.Adam``, the clamp, CDA's schedules; and the method on the loop:
independent of the pass size and of the number of processes, resumed bitwise, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastdd
from fastdd.augment.crops import apply_resized_crops
from fastdd.distillation.loop import run_loop
from fastdd.distillation.registry import Setup, get_method, make_config
from fastdd.distillation.sre2l import SRe2LConfig, SRe2LPolicy, cosine_lr, crop_scale_min
from fastdd.models import model_for
from fastdd.teacher import Teacher

pytestmark = pytest.mark.usefixtures("one_thread")  # one thread, as the ranks of the distributed test run


@pytest.fixture(scope="module")
def ds():
    return fastdd.load_dataset("digits")


def random_teacher(ds, seed: int = 0, dtype=torch.float32, norm: str = "batchnorm") -> Teacher:
    """A small ConvNet with random weights and, for batch norm, random running statistics far from (0, 1)."""
    net = model_for(ds, "convnetbn" if norm == "batchnorm" else "convnet", width=8, depth=2)
    g = torch.Generator().manual_seed(seed)
    theta = net.init(g, dtype=torch.float64)
    buffers = None
    if net.has_batchnorm:
        stats = net.bn_running_stats(net.init_buffers(dtype=torch.float64))
        parts = [
            torch.cat([torch.randn(m.numel(), generator=g) * 0.5, torch.rand(v.numel(), generator=g) + 0.5])
            for m, v in stats
        ]
        buffers = torch.cat(parts).to(dtype)
    return Teacher(net, theta.to(dtype), buffers, {"dataset": ds.name, "accuracy": 0.5})


@pytest.fixture(scope="module")
def teacher(ds):
    return random_teacher(ds)


def policy(ds, teacher, ipc=2, iterations=5, seed=0, **options) -> SRe2LPolicy:
    cfg = make_config(get_method("sre2l"), options)
    return SRe2LPolicy.from_setup(Setup(ds, ipc, cfg, seed, "sre2l", iterations, teacher=teacher))


def torch_module(teacher: Teacher, dtype=torch.float64):
    """The teacher as a ``torch.nn`` module in evaluation mode, and the inputs of its batch-norm layers recorded by
    forward hooks (cleared by the caller)."""
    module = teacher.net.module().to(dtype)
    teacher.net.load_into_module(module, teacher.theta.to(dtype), teacher.buffers.to(dtype))
    module.eval()
    inputs: list[torch.Tensor] = []
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
    return module, bns, inputs


def reference_group_loss(module, bns, inputs, v, y, r_bn, first=10.0, tv=0.0, l2=0.0):
    """CE + r_bn Σ_l w_l (‖mean − running mean‖₂ + ‖biased var − running var‖₂) + tv·TV + l2·mean ‖v_i‖, by hand."""
    inputs.clear()
    logits = module(v)
    bn = v.new_zeros(())
    for i, (m, a) in enumerate(zip(bns, inputs)):
        flat = a.transpose(0, 1).reshape(a.shape[1], -1)  # (C, B·H·W)
        mean = flat.sum(1) / flat.shape[1]
        var = ((flat - mean[:, None]) ** 2).sum(1) / flat.shape[1]
        w = first if i == 0 else 1.0
        bn = bn + w * (
            torch.sqrt(((mean - m.running_mean) ** 2).sum()) + torch.sqrt(((var - m.running_var) ** 2).sum())
        )
    ce = -torch.log_softmax(logits, 1)[torch.arange(len(y)), y].mean()
    total = ce + r_bn * bn
    if tv:
        pairs = [
            (v[:, :, :, :-1], v[:, :, :, 1:]),
            (v[:, :, :-1, :], v[:, :, 1:, :]),
            (v[:, :, 1:, :-1], v[:, :, :-1, 1:]),
            (v[:, :, :-1, :-1], v[:, :, 1:, 1:]),
        ]
        total = total + tv * sum(torch.sqrt(((a - b) ** 2).sum()) for a, b in pairs)
    if l2:
        total = total + l2 * torch.stack([torch.sqrt((im**2).sum()) for im in v]).mean()
    return total, ce, bn


# ------------------------------------------------------------------ config and schedules
def test_config_is_checked():
    for bad in (
        dict(lr=0),
        dict(r_bn=-1.0),
        dict(jitter=-1),
        dict(jitter=1.5),
        dict(crop_min=0.0),
        dict(crop_min=1.5),
        dict(milestone=0),
        dict(crop_schedule="exp"),
        dict(init="mix"),
        dict(class_batch=0),
        dict(chunk_images=0),
        dict(multicrop=1),
    ):
        with pytest.raises(ValueError):
            SRe2LConfig(**bad).validate()
    SRe2LConfig(class_batch=3, crop_schedule="cosine", milestone=0.5).validate()


def test_cda_schedules_give_the_crop_scale_formula():
    n, lo = 100, 0.08
    assert crop_scale_min("fixed", lo, 1.0, 0, n) == lo
    assert crop_scale_min("cosine", lo, 1.0, 0, n) == 1.0
    assert crop_scale_min("cosine", lo, 1.0, 50, n) == pytest.approx(lo + (1 - lo) / 2)
    assert crop_scale_min("cosine", lo, 1.0, 25, n) == pytest.approx(lo + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert crop_scale_min("cosine", lo, 0.5, 25, n) == pytest.approx(lo + (1 - lo) / 2)  # milestone 50
    assert crop_scale_min("cosine", lo, 0.5, 50, n) == lo == crop_scale_min("cosine", lo, 0.5, 99, n)
    assert crop_scale_min("linear", lo, 1.0, 25, n) == pytest.approx(1 - 0.92 / 4)
    assert crop_scale_min("linear", 0.2, 0.5, 40, n) == pytest.approx(1 - 0.8 * 40 / 50)
    assert crop_scale_min("step", lo, 0.3, 29, n) == 1.0 and crop_scale_min("step", lo, 0.3, 30, n) == lo
    assert cosine_lr(0.25, 0, 10) == 0.25 and cosine_lr(0.25, 5, 10) == pytest.approx(0.125)


def test_the_views_draw_crops_at_the_scheduled_scale(ds, teacher):
    p = policy(ds, teacher, ipc=3, iterations=10, crop_schedule="step", milestone=0.5, crop_min=0.3)
    early, late = p.views(2), p.views(7)
    assert early.s_min == 1.0 and late.s_min == 0.3
    assert bool((early.crops.height * early.crops.width == 64).all())  # scale (1, 1): the whole image
    assert not bool(early.crops.flip.any())  # digits: DSA does not flip them, nor does sre2l
    area = late.crops.height * late.crops.width
    assert bool((area >= 0.3 * 64 - 8).all()) and early.shifts is not None and int(early.shifts.max()) <= 4
    same = policy(ds, teacher, ipc=3, iterations=10, crop_schedule="step", milestone=0.5, crop_min=0.3).views(7)
    assert torch.equal(same.crops.as_tensor(), late.crops.as_tensor()) and torch.equal(same.shifts, late.shifts)
    # without multi-crop the view is the roll alone (SRe2L's CIFAR setting): exactly torch.roll
    roll = policy(ds, teacher, ipc=3, multicrop=False, jitter=3).views(1)
    assert roll.crops is None and roll.shifts is not None
    rows, cols = roll.matrices([0, 1, 2], (8, 8))
    x = torch.randn(3, 5, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in range(3):
        want = torch.roll(x[k], shifts=tuple(roll.shifts[k].tolist()), dims=(2, 3))
        assert torch.equal(rows[k] @ x[k] @ cols[k].T, want)
    assert policy(ds, teacher, multicrop=False, jitter=0).views(0).matrices([0], (8, 8)) is None


# ------------------------------------------------------------------ the loss against hooks, in float64
def test_bn_statistics_loss_equals_a_hand_computation_with_hooks(ds):
    teacher = random_teacher(ds, seed=1, dtype=torch.float64)
    p = policy(ds, teacher, ipc=2, r_bn=1.0, first_bn_multiplier=3.0, tv_l2=0.2, l2=0.1)
    module, bns, inputs = torch_module(teacher)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(2, 10, 1, 8, 8, generator=g, dtype=torch.float64)  # two groups of the one class batch
    loss, ce, bn = p.group_losses(v, 0)
    y = torch.arange(10)
    for k in range(2):
        ref, ref_ce, ref_bn = reference_group_loss(module, bns, inputs, v[k], y, 1.0, 3.0, 0.2, 0.1)
        assert torch.allclose(bn[k], ref_bn, rtol=1e-12, atol=0)
        assert torch.allclose(ce[k], ref_ce, rtol=1e-12, atol=0)
        assert torch.allclose(loss[k], ref, rtol=1e-12, atol=0)
    assert [int(m.num_features) for m in bns] == [8, 8] and len(p.running) == 2


# ------------------------------------------------------------------ one step against plain autograd and Adam
def test_one_step_equals_autograd_adam_and_the_clamp(ds, teacher):
    opts = dict(class_batch=4, jitter=2, tv_l2=0.05, l2=0.02, r_bn=0.5, init="real", crop_schedule="cosine")
    n_it, ipc = 6, 2
    p = policy(ds, teacher, ipc=ipc, iterations=n_it, **opts)
    x = p.result(0, 0, None).images.clone()  # class-major start
    module, bns, inputs = torch_module(teacher, torch.float32)
    low = torch.tensor([(0 - m) / s for m, s in zip(ds.mean, ds.std)]).view(1, -1, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(ds.mean, ds.std)]).view(1, -1, 1, 1)
    ref_x = x.clone().requires_grad_(True)
    adam = torch.optim.Adam([ref_x], lr=0.25, betas=(0.5, 0.9))
    batches = [list(range(0, 4)), list(range(4, 8)), list(range(8, 10))]  # class_batch 4 of 10 classes
    for it in range(2):
        views = p.views(it)
        xr = ref_x.detach().requires_grad_(True)
        total, count = xr.new_zeros(()), 0
        for q, classes in enumerate(batches):
            for j in range(ipc):
                gi = q * ipc + j  # the policy's group order: class batch, then image index
                rows = [c * ipc + j for c in classes]
                crops = views.crops.index([gi] * len(rows))
                v = apply_resized_crops(xr[rows], crops, (8, 8))
                v = torch.roll(v, shifts=tuple(views.shifts[gi].tolist()), dims=(2, 3))
                loss, _, _ = reference_group_loss(
                    module, bns, inputs, v, torch.tensor(classes), 0.5, 10.0, opts["tv_l2"], opts["l2"]
                )
                total, count = total + loss, count + 1
        ref_grad = torch.autograd.grad(total, xr)[0]
        step = p.step(it)
        grad = torch.empty_like(step.grads[0])
        grad[p.order] = step.grads[0]  # group-major -> class-major
        assert torch.allclose(step.loss, total.detach() / count, rtol=1e-5)
        assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
        assert step.info["lr"] == pytest.approx(0.25 * (1 + math.cos(math.pi * it / n_it)) / 2)
        # the update: torch's Adam (betas 0.5, 0.9) at the hand cosine rate, then the per-channel clamp
        for group in adam.param_groups:
            group["lr"] = 0.25 * (1 + math.cos(math.pi * it / n_it)) / 2
        ref_x.grad = grad
        adam.step()
        with torch.no_grad():
            ref_x.copy_(torch.where(ref_x < low, low, torch.where(ref_x > high, high, ref_x)))
        p.apply(step)
        assert torch.equal(p.result(0, 0, None).images, ref_x.detach())


def test_the_clamp_keeps_pixels_in_the_valid_range(ds, teacher):
    low, high = (0 - ds.mean[0]) / ds.std[0], (1 - ds.mean[0]) / ds.std[0]
    p = policy(ds, teacher, ipc=2, lr=1.0)  # N(0, 1) noise: many pixels start below pixel 0
    assert float(p.images.detach().min()) < low
    p.apply(p.step(0))
    x = p.images.detach()
    assert float(x.min()) >= low - 1e-6 and float(x.max()) <= high + 1e-6 and bool((x == torch.tensor(low)).any())
    q = policy(ds, teacher, ipc=2, lr=1.0, clamp=False)
    q.apply(q.step(0))
    assert float(q.images.detach().min()) < low


# ------------------------------------------------------------------ invariances, resume, the method
def test_the_pass_size_does_not_change_the_result(ds, teacher):
    opts = dict(ipc=3, teacher=teacher, iterations=3, show_progress=False, jitter=2, class_batch=4)
    whole = fastdd.distill(ds, "sre2l", **opts)
    for chunk in (1, 9):  # one group per pass; groups of 4 classes two at a time
        other = fastdd.distill(ds, "sre2l", chunk_images=chunk, **opts)
        assert torch.allclose(other.images, whole.images, rtol=0, atol=1e-5)


def test_resume_is_bitwise(ds, teacher, tmp_path):
    opts = dict(jitter=2, crop_schedule="linear")
    whole = fastdd.distill(ds, "sre2l", ipc=2, teacher=teacher, iterations=4, show_progress=False, **opts)
    run = tmp_path / "run"
    run_loop(policy(ds, teacher, iterations=4, **opts), 2, out=run, checkpoint_every=2, show_progress=False)  # stopped
    resumed = policy(ds, teacher, iterations=4, **opts)
    run_loop(resumed, 4, out=run, resume=True, checkpoint_every=2, show_progress=False)
    assert torch.equal(resumed.result(4, 0, None).images, whole.images)
    assert not torch.equal(whole.images, policy(ds, teacher, **opts).result(0, 0, None).images)  # it learned
    with pytest.warns(RuntimeWarning, match="span the new count"):  # another length: another schedule
        run_loop(policy(ds, teacher, iterations=6, **opts), 6, out=run, resume=True, show_progress=False)


def test_distill_runs_and_records_the_teacher(ds, teacher, tmp_path):
    syn = fastdd.distill(ds, "sre2l", ipc=2, teacher=teacher, iterations=12, out=tmp_path / "r", show_progress=False)
    assert syn.images.shape == (20, 1, 8, 8) and torch.equal(syn.labels, torch.arange(10).repeat_interleave(2))
    m = syn.meta
    assert m["method"] == "sre2l" and m["teacher"]["model"] == "convnet" and m["teacher"]["accuracy"] == 0.5
    assert m["config"]["lr"] == 0.25 and m["config"]["r_bn"] == 0.01 and m["class_batch"] == 10
    rows = [r.split(",") for r in (tmp_path / "r" / "log.csv").read_text().splitlines()]
    assert rows[0][:6] == ["iteration", "loss", "ce", "bn", "lr", "crop_min"] and len(rows) == 13
    assert float(rows[-1][3]) < float(rows[1][3])  # the statistics move toward the teacher's
    spec = get_method("sre2l")
    assert spec.needs_teacher and not spec.selection and spec.distributed is not None


def test_refusals(ds, teacher, tmp_path):
    with pytest.raises(ValueError, match="teacher="):
        fastdd.distill(ds, "sre2l", ipc=1, iterations=1, show_progress=False)
    with pytest.raises(ValueError, match="teacher="):
        policy(ds, None)
    with pytest.raises(ValueError, match="no batch norm"):
        fastdd.distill(ds, "sre2l", ipc=1, teacher=random_teacher(ds, norm="instancenorm"), iterations=1)
    zca = fastdd.load_dataset("digits", zca=True)
    with pytest.raises(ValueError, match="ZCA"):
        fastdd.distill(zca, "sre2l", ipc=1, teacher=teacher, iterations=1, show_progress=False)
    syn = fastdd.distill(zca, "sre2l", ipc=1, teacher=teacher, iterations=1, show_progress=False, clamp=False)
    assert syn.meta["zca"]
    with pytest.raises(ValueError, match="select_every"):
        fastdd.distill(ds.with_validation(0.1), "sre2l", ipc=1, teacher=teacher, iterations=1, select_every=1)
    with pytest.raises(ValueError, match="larger than the smallest class"):
        fastdd.distill(ds, "sre2l", ipc=500, teacher=teacher, iterations=1, init="real")


def _sre2l_on_ranks(teacher_dir: str, out: str) -> dict:
    """On each rank: 3 groups (ipc 3, all classes in one batch) split 2 / 1, 3 iterations with checkpoints."""
    ds = fastdd.load_dataset("digits")
    opts = dict(jitter=2, seed=0, show_progress=False, checkpoint_every=1, chunk_images=20)
    return {"images": fastdd.distill(ds, "sre2l", 3, teacher=teacher_dir, iterations=3, out=out, **opts).images}


def test_split_over_processes_equals_one_process(ds, teacher, tmp_path):
    from dist_helpers import run_ranks

    folder = teacher.save(tmp_path / "teacher")
    parts = run_ranks(_sre2l_on_ranks, str(folder), str(tmp_path / "run"), world=2)
    one = fastdd.distill(ds, "sre2l", 3, teacher=teacher, iterations=3, show_progress=False, jitter=2)
    for part in parts:
        assert torch.allclose(part["images"], one.images, rtol=0, atol=1e-5)
