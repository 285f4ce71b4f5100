"""RDED: the selection against a teacher whose ordering is known by construction and against a brute-force
reference (every crop cut by slicing, resized with F.interpolate, padded or upsampled, scored with
F.cross_entropy), the stitch (cells equal their crops, slot order i, ipc + i, …), factor 1 and 2, the mipc cap,
the method on the loop (registered, ``iterations=`` refused, resumed bitwise) and what it refuses, and the split
by class under torch.distributed (a one-process checkpoint resumed on two ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.augment.crops import sample_resized_crops
from fastdd.data.core import from_pixels
from fastdd.distillation.loop import run_loop
from fastdd.distillation.rded import RDEDConfig, RDEDPolicy
from fastdd.distillation.registry import Setup, get_method, make_config
from fastdd.errors import RunFailedError
from fastdd.models import build_model
from fastdd.rng import generator
from fastdd.teacher import Teacher

TINY = dict(mipc=12, num_crop=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # one thread, as the ranks of the distributed test run


@pytest.fixture(scope="module")
def ds():
    return fastdd.load_dataset("digits")


@pytest.fixture(scope="module")
def teacher(ds):
    return fastdd.train_teacher(ds, "mlp", epochs=2, show_progress=False)


def _policy(ds, teacher, ipc=2, **options):
    cfg = make_config(get_method("rded"), dict(TINY, **options))
    return RDEDPolicy.from_setup(Setup(ds, ipc, cfg, 0, "rded", 1, teacher=teacher))


def test_config_is_checked():
    RDEDConfig().validate()
    for bad in (
        dict(factor=0),
        dict(num_crop=1.5),
        dict(mipc=True),
        dict(teacher_batch=0),
        dict(crop_scale=(0.5, 0.2)),
        dict(crop_scale=(0, 1)),
        dict(crop_scale=(0.1,)),
        dict(score_input="crop"),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RDEDConfig(**bad).validate()


# ------------------------------------------------------------------ a teacher whose ordering is known


def _constant_images():
    """Two classes of 12 constant 8×8 images each, at well separated grey levels (a shuffled ladder)."""
    g = torch.Generator().manual_seed(3)
    levels = torch.linspace(0.02, 0.98, 24)[torch.randperm(24, generator=g)]
    x = levels.view(24, 1, 1, 1).expand(24, 1, 8, 8).contiguous()
    y = torch.arange(2).repeat_interleave(12)
    return from_pixels("levels", x, y, x, y, 2, mean=(0.5,), std=(0.25,)), levels


def _brightness_teacher(ds):
    """An MLP with hand-set weights whose logits are ``(mean(x), −mean(x))``: class 0's cross-entropy falls as the
    mean pixel rises, class 1's rises, so class 0 prefers the brightest crops and class 1 the darkest."""
    net = build_model("mlp", in_channels=1, num_classes=2, im_size=(8, 8), width=2)
    mod = net.module()
    fc1, fc2, fc3 = (m for m in mod.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        for p in mod.parameters():
            p.zero_()
        fc1.weight[0] = 1 / 64  # the mean ...
        fc1.bias[0] = 50.0  # ... kept positive through the ReLUs
        fc2.weight[0, 0] = 1.0
        fc3.weight[:, 0] = torch.tensor([1.0, -1.0])
        fc3.bias.copy_(torch.tensor([-50.0, 50.0]))
    teacher = Teacher(net, net.flat_from_module(mod), None, {"dataset": ds.name, "class_names": ds.class_names})
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(teacher(x), torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1), atol=1e-5)
    return teacher


@pytest.mark.parametrize("factor", [1, 2])
def test_the_most_confident_images_are_chosen_when_the_ordering_is_known(factor):
    lv, levels = _constant_images()
    ipc, n = 2, 2 * factor * factor
    syn = fastdd.distill(lv, "rded", ipc=ipc, teacher=_brightness_teacher(lv), factor=factor, show_progress=False)
    for c in range(2):
        members = lv.class_indices[c]
        ranked = members[torch.sort(levels[members], descending=c == 0).indices][:n].tolist()
        expect = [[ranked[s * ipc + i] for s in range(factor * factor)] for i in range(ipc)]
        assert syn.meta["patch_source"][c * ipc : (c + 1) * ipc] == expect
    # every cell is its image's grey level (a constant resized stays constant), in the data's normalised space
    cells = syn.images.unfold(2, 8 // factor, 8 // factor).unfold(3, 8 // factor, 8 // factor)
    value = (levels[torch.tensor(syn.meta["patch_source"])] - 0.5) / 0.25
    assert torch.allclose(cells.flatten(-2).mean(-1)[:, 0].flatten(1), value, atol=1e-5)
    assert syn.meta["mipc_used"] == [12, 12] and syn.meta["factor"] == factor


# ------------------------------------------------------------------ against a brute-force reference


def _reference(ds, teacher, c, ipc, factor, mipc, num_crop, how, seed=0):
    """Class ``c``'s expected (source, box, ce) per image and cell, crop by crop: the documented draws, each crop
    sliced out and resized with F.interpolate, padded (centred zeros) or upsampled, scored alone."""
    g = generator(seed, "rded", "class", c)
    members = ds.class_indices[c]
    m = min(mipc, len(members))
    images = members[torch.randperm(len(members), generator=g)[:m]]
    boxes = sample_resized_crops(m * num_crop, (8, 8), g, (0.08, 1.0), (1.0, 1.0), prob_flip=0.0)
    cell = 8 // factor
    kept = []
    for a in range(m):
        best = None
        for j in range(a * num_crop, (a + 1) * num_crop):
            t, left, h, w = (int(v[j]) for v in (boxes.top, boxes.left, boxes.height, boxes.width))
            assert h == w  # square crops
            crop = ds.train.images[images[a], :, t : t + h, left : left + w][None]
            patch = F.interpolate(crop, size=(cell, cell), mode="bilinear", align_corners=False)
            if how == "pad":
                lo = (8 - cell) // 2
                x = F.pad(patch, (lo, 8 - cell - lo, lo, 8 - cell - lo))
            else:
                x = F.interpolate(patch, size=(8, 8), mode="bilinear", align_corners=False)
            ce = float(F.cross_entropy(teacher(x), torch.tensor([c])))
            if best is None or ce < best[2]:
                best = (int(images[a]), [t, left, h, w], ce)
        kept.append(best)
    kept = sorted(kept, key=lambda r: r[2])[: ipc * factor * factor]  # a stable sort: the first of equal ones
    return [[kept[s * ipc + i] for s in range(factor * factor)] for i in range(ipc)]


@pytest.mark.parametrize("factor,how", [(2, "pad"), (2, "resize"), (1, "pad")])
def test_selection_and_stitch_match_a_brute_force_reference(ds, teacher, factor, how):
    ipc = 2
    opts = dict(TINY, factor=factor, score_input=how, teacher_batch=7)  # batches cut across images
    syn = fastdd.distill(ds, "rded", ipc=ipc, teacher=teacher, show_progress=False, **opts)
    assert syn.images.shape == (10 * ipc, 1, 8, 8) and syn.labels.tolist() == [c for c in range(10) for _ in "ab"]
    cell = 8 // factor
    for c in range(10):
        ref = _reference(ds, teacher, c, ipc, factor, TINY["mipc"], TINY["num_crop"], how)
        rows = range(c * ipc, (c + 1) * ipc)
        assert [syn.meta["patch_source"][r] for r in rows] == [[s for s, _, _ in img] for img in ref]
        assert [syn.meta["patch_boxes"][r] for r in rows] == [[b for _, b, _ in img] for img in ref]
        got_ce = torch.tensor([syn.meta["patch_ce"][r] for r in rows])
        want_ce = torch.tensor([[e for _, _, e in img] for img in ref])
        assert torch.allclose(got_ce, want_ce, atol=1e-5)
        assert syn.meta["class_ce"][c] == pytest.approx(float(want_ce.double().mean()), abs=1e-5)
        for i, r in enumerate(rows):  # the stitch: cell s (row-major) of image i is patch s·ipc + i
            for s, (src, (t, left, h, w), _) in enumerate(ref[i]):
                crop = ds.train.images[src, :, t : t + h, left : left + w][None]
                want = F.interpolate(crop, size=(cell, cell), mode="bilinear", align_corners=False)[0]
                y, x = divmod(s, factor)
                got = syn.images[r, :, y * cell : (y + 1) * cell, x * cell : (x + 1) * cell]
                assert torch.allclose(got, want, atol=1e-5)
    # slot (0, 0) of every image holds the class's ipc most confident patches
    if factor > 1:
        ce = torch.tensor(syn.meta["patch_ce"]).view(10, ipc, -1)
        assert (ce[:, :, 0].max(1).values <= ce[:, :, 1:].flatten(1).min(1).values).all()


def test_mipc_is_capped_at_the_class_size_and_recorded(ds, teacher):
    syn = fastdd.distill(ds, "rded", ipc=1, teacher=teacher, num_crop=1, show_progress=False)
    assert syn.meta["mipc"] == 300 and syn.meta["mipc_used"] == ds.class_counts()
    assert syn.meta["num_crop"] == 1 and syn.meta["iterations"] == 10 and syn.meta["method"] == "rded"
    labels = ds.train.labels[torch.tensor(syn.meta["patch_source"]).flatten()]
    assert labels.tolist() == list(range(10))  # each patch from its own class
    assert syn.meta["teacher"]["model"] == "mlp" and syn.meta["teacher"]["accuracy"] == teacher.meta["accuracy"]
    # with every image of the class scored, the patch is the most confident crop of the whole class
    for c in range(10):
        ref = _reference(ds, teacher, c, 1, 1, 300, 1, "pad")
        assert syn.meta["patch_source"][c] == [ref[0][0][0]]


# ------------------------------------------------------------------ on the loop


def test_resume_is_bitwise_and_iterations_are_the_classes(ds, teacher, tmp_path):
    opts = dict(TINY, factor=2)
    whole = fastdd.distill(ds, "rded", ipc=2, teacher=teacher, show_progress=False, **opts)
    run = tmp_path / "run"
    run_loop(_policy(ds, teacher, **opts), 4, out=run, checkpoint_every=2, show_progress=False)  # 4 classes done
    part = _policy(ds, teacher, **opts)
    run_loop(part, 4, out=run, resume=True, show_progress=False)
    half = part.result(4, 0, None)
    assert half.meta["class_ce"][4:] == [None] * 6 and (half.images[8:] == 0).all()  # not done yet: zeros
    resumed = fastdd.distill(ds, "rded", ipc=2, teacher=teacher, out=run, resume=True, show_progress=False, **opts)
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)
    for key in ("patch_source", "patch_boxes", "patch_ce", "class_ce"):
        assert resumed.meta[key] == whole.meta[key]
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,loss,class,") and [r.split(",")[2] for r in rows[1:]] == [
        str(c) for c in range(10)
    ]
    assert float(rows[1].split(",")[1]) == pytest.approx(whole.meta["class_ce"][0], rel=1e-5)


def test_what_rded_refuses(ds, teacher, tmp_path):
    spec = get_method("rded")
    assert spec.needs_teacher and not spec.takes_iterations and spec.distributed == "classes" and not spec.selection
    with pytest.raises(ValueError, match="sets its own number of iterations"):
        fastdd.distill(ds, "rded", ipc=1, teacher=teacher, iterations=5, show_progress=False)
    with pytest.raises(ValueError, match="teacher="):
        fastdd.distill(ds, "rded", ipc=1, show_progress=False)
    with pytest.raises(ValueError, match="teacher="):
        RDEDPolicy(ds, 1, RDEDConfig(), 0, "rded", None)  # type: ignore[arg-type]
    shuffled = Teacher(teacher.net, teacher.theta, None, {**teacher.meta, "class_names": ds.class_names[::-1]})
    with pytest.raises(ValueError, match="class order"):
        fastdd.distill(ds, "rded", ipc=1, teacher=shuffled, show_progress=False)
    with pytest.raises(ValueError, match="class order"):
        _policy(ds, shuffled)
    with pytest.raises(ValueError, match="more than mipc = 7"):
        fastdd.distill(ds, "rded", ipc=2, teacher=teacher, factor=2, mipc=7, show_progress=False)
    with pytest.raises(ValueError, match="class 8 '8' of digits's train split has 139 images"):
        fastdd.distill(ds, "rded", ipc=35, teacher=teacher, factor=2, show_progress=False)
    with pytest.raises(ValueError, match="factor 3 must divide"):
        fastdd.distill(ds, "rded", ipc=1, teacher=teacher, factor=3, show_progress=False)
    with pytest.raises(TypeError):
        fastdd.distill(ds, "rded", ipc=1, teacher=teacher, crop_scale="big", show_progress=False)
    out = tmp_path / "x"
    with pytest.raises(ValueError):
        fastdd.distill(ds, "rded", ipc=1, teacher=teacher, out=out, factor=0, show_progress=False)
    assert not out.exists()  # checked before anything is written


def test_a_non_finite_teacher_stops_the_run(ds, teacher):
    broken = Teacher(teacher.net, teacher.theta * float("nan"), None, teacher.meta)
    with pytest.raises(RunFailedError, match="not finite"):
        fastdd.distill(ds, "rded", ipc=1, teacher=broken, show_progress=False, **TINY)


# ------------------------------------------------------------------ torch.distributed


def _rded_on_ranks(teacher: str, out: str) -> dict:
    """On each rank (10 classes split 5 / 5): resume the one-process checkpoint of 3 classes, to the end."""
    ds = fastdd.load_dataset("digits")  # this module's imports registered rded in the spawned process
    syn = fastdd.distill(
        ds, "rded", 2, teacher=teacher, out=out, resume=True, show_progress=False, checkpoint_every=1, factor=2, **TINY
    )
    return {"images": syn.images, "labels": syn.labels, "source": torch.tensor(syn.meta["patch_source"])}


def test_split_by_class_under_torch_distributed_resumes_a_one_process_run(ds, teacher, tmp_path):
    from dist_helpers import run_ranks

    teacher.save(tmp_path / "teacher")
    run = tmp_path / "run"
    run_loop(_policy(ds, teacher, factor=2), 3, out=run, show_progress=False)
    parts = run_ranks(_rded_on_ranks, str(tmp_path / "teacher"), str(run), world=2)
    one = fastdd.distill(ds, "rded", 2, teacher=teacher, factor=2, show_progress=False, **TINY)
    for p in parts:
        assert torch.equal(p["labels"], one.labels) and torch.equal(p["images"], one.images)
        assert p["source"].tolist() == one.meta["patch_source"]
