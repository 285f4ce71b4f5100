"""Teacher relabelling and the kd protocol (fastdd.relabel, fastdd.augment.mix) against independent references:
hand-written CutMix / Mixup / ShufflePatches, the KL divergence written out, torch.optim.AdamW with two parameter
groups, and the teacher's softmax on crops cut and resized by hand with F.interpolate."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import fastdd
from fastdd.augment import (
    apply_cutmix,
    apply_mixup,
    apply_shuffle_patches,
    sample_beta,
    sample_cutmix,
    sample_mixup,
    sample_shuffle_patches,
)
from fastdd.data import from_pixels
from fastdd.errors import CorruptFileError, UnsafePathError
from fastdd.models import build_model
from fastdd.relabel import (
    AdamW,
    KDAugment,
    KDProtocol,
    MaskedAdamW,
    OnlineLabels,
    RelabelStore,
    decay_mask,
    kd_batch_size,
    kd_loss,
    relabel,
    relabel_set,
    resolve_kd,
    soft_labels,
    train_kd,
)


@pytest.fixture(scope="module")
def digits():
    return fastdd.load_dataset("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    return fastdd.train_teacher(
        digits, "convnetbn", model_kwargs={"width": 16}, epochs=3, lr=0.05, batch_size=64, augment="none",
        show_progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def syn(digits):
    return fastdd.real_subset(digits, fastdd.select(digits, ipc=2, seed=0))


# ---------------------------------------------------------------------------------------------------- mixing
def test_cutmix_box_rule_and_paste_by_hand():
    x = torch.randn(5, 2, 7, 6, generator=torch.Generator().manual_seed(0))
    for seed in range(20):
        p = sample_cutmix(5, (7, 6), torch.Generator().manual_seed(seed))
        # the rule, redrawn by hand from the same stream: λ ~ U(0, 1) (Beta(1, 1)), perm, centre (cy, cx)
        g = torch.Generator().manual_seed(seed)
        lam = torch.rand((), generator=g, dtype=torch.float64).item()
        perm = torch.randperm(5, generator=g)
        cy, cx = torch.randint(7, (), generator=g).item(), torch.randint(6, (), generator=g).item()
        ch, cw = int(7 * math.sqrt(1 - lam)), int(6 * math.sqrt(1 - lam))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, 7)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, 6)
        assert torch.equal(p.perm, perm)
        assert p.box.tolist() == [y0, x0, y1 - y0, x1 - x0]
        assert float(p.lam) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 42, abs=1e-15)
        want = x.clone()
        for i in range(5):
            want[i, :, y0:y1, x0:x1] = x[perm[i], :, y0:y1, x0:x1]
        assert torch.equal(apply_cutmix(x, p), want)
        back = type(p).from_tensors(p.as_tensors())
        assert torch.equal(apply_cutmix(x, back), want)


def test_mixup_and_beta_by_hand():
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    p = sample_mixup(6, torch.Generator().manual_seed(2), alpha=0.8)
    lam = float(p.lam)
    want = torch.stack([lam * x[i] + (1 - lam) * x[p.perm[i]] for i in range(6)])
    torch.testing.assert_close(apply_mixup(x, p), want, rtol=0, atol=1e-6)
    assert sorted(p.perm.tolist()) == list(range(6))
    # Beta(a, b) moments: mean a/(a+b), variance ab/((a+b)^2 (a+b+1))
    for a, b in ((0.8, 0.8), (2.0, 5.0)):
        g = torch.Generator().manual_seed(3)
        d = torch.tensor([sample_beta(a, b, g) for _ in range(3000)], dtype=torch.float64)
        assert float(d.min()) > 0 and float(d.max()) < 1
        assert float(d.mean()) == pytest.approx(a / (a + b), abs=0.02)
        assert float(d.var()) == pytest.approx(a * b / ((a + b) ** 2 * (a + b + 1)), rel=0.1)


def test_shuffle_patches_by_hand():
    x = torch.randn(4, 2, 6, 9, generator=torch.Generator().manual_seed(0))
    p = sample_shuffle_patches(4, 3, torch.Generator().manual_seed(5))
    out = apply_shuffle_patches(x, p)
    for i in range(4):
        assert sorted(p.perm[i].tolist()) == list(range(9))
        for j in range(9):
            a, b = divmod(j, 3)
            c, d = divmod(int(p.perm[i, j]), 3)
            got = out[i, :, 2 * a : 2 * a + 2, 3 * b : 3 * b + 3]
            assert torch.equal(got, x[i, :, 2 * c : 2 * c + 2, 3 * d : 3 * d + 3])
    assert len({tuple(r) for r in p.perm.tolist()}) > 1  # a permutation per image
    one = sample_shuffle_patches(4, 1, torch.Generator().manual_seed(5))
    assert torch.equal(apply_shuffle_patches(x, one), x)
    with pytest.raises(ValueError, match="divisible"):
        apply_shuffle_patches(x, sample_shuffle_patches(4, 4, torch.Generator()))


# ---------------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("t_squared", [False, True])
def test_kd_loss_is_the_kl_divergence_written_out(t_squared):
    g = torch.Generator().manual_seed(0)
    s, t, T = torch.randn(7, 5, generator=g).double() * 3, torch.randn(7, 5, generator=g).double() * 3, 4.0
    p_t = torch.exp(t / T) / torch.exp(t / T).sum(1, keepdim=True)
    log_p_s = s / T - torch.log(torch.exp(s / T).sum(1, keepdim=True))
    want = (p_t * (torch.log(p_t) - log_p_s)).sum() / 7 * (T * T if t_squared else 1)
    torch.testing.assert_close(kd_loss(s, t, T, t_squared), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(soft_labels(t, T), p_t.float())


# ---------------------------------------------------------------------------------------------------- optimiser
def test_masked_adamw_equals_torch_adamw_with_two_groups():
    net = build_model("convnetbn", in_channels=1, num_classes=3, im_size=(8, 8), width=4, depth=2)
    mask = decay_mask(net)
    sizes = [p.numel for p in net.params]
    mod = net.module()
    layers = dict(mod.named_modules())
    kinds = set()
    for (name, _), part in zip(mod.named_parameters(), mask.split(sizes)):
        layer = layers[name.rsplit(".", 1)[0]]
        decays = isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and name.endswith("weight")
        kinds.add((type(layer).__name__, decays))
        assert bool(part.all()) == decays and bool(part.any()) == decays, name
    assert ("BatchNorm2d", False) in kinds and ("Conv2d", True) in kinds and ("Conv2d", False) in kinds
    theta0 = net.init(torch.Generator().manual_seed(0))
    flat = torch.nn.Parameter(theta0.clone())
    cfg = AdamW(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3)
    ours = MaskedAdamW(flat, mask, cfg)
    split = [torch.nn.Parameter(t.clone()) for t in theta0.split(sizes)]
    groups = [
        {"params": [t for t, s in zip(split, net.params) if s.init == "weight"], "weight_decay": 0.3},
        {"params": [t for t, s in zip(split, net.params) if s.init != "weight"], "weight_decay": 0.0},
    ]
    ref = torch.optim.AdamW(groups, lr=0.01, betas=(0.8, 0.99), eps=1e-7)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        lr = 0.01 if step < 3 else 0.004
        ours.set_lr(lr)
        for group in ref.param_groups:
            group["lr"] = lr
        grad = torch.randn(len(theta0), generator=g)
        flat.grad = grad.clone()
        for t, gr in zip(split, grad.split(sizes)):
            t.grad = gr.clone()
        ours.step()
        ref.step()
    assert not torch.equal(flat.detach(), theta0)
    assert torch.equal(flat.detach(), torch.cat([t.detach() for t in split]))


def test_schedules():
    assert AdamW(lr=1.0).lr_at(0, 10) == 1.0
    assert AdamW(lr=1.0).lr_at(5, 10) == pytest.approx(0.5)
    assert AdamW(lr=1.0, schedule="half_cosine").lr_at(10, 10) == pytest.approx(0.5)
    assert AdamW(lr=1.0, schedule="half_cosine").lr_at(5, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="schedule"):
        AdamW(schedule="step")


# ---------------------------------------------------------------------------------------------------- the store
def _by_hand(images, plan, im_hw):
    """The batch of ``plan``, built with slicing, F.interpolate of each crop, torch.flip and a pasted box."""
    h, w = im_hw
    rows = []
    for k, i in enumerate(plan.idx.tolist()):
        img = images[i]
        if plan.shuffle is not None:
            f = plan.shuffle.factor
            ph, pw = h // f, w // f
            cells = [img[:, a * ph : (a + 1) * ph, b * pw : (b + 1) * pw] for a in range(f) for b in range(f)]
            cells = [cells[int(c)] for c in plan.shuffle.perm[k]]
            img = torch.cat([torch.cat(cells[a * f : (a + 1) * f], 2) for a in range(f)], 1)
        top, left, bh, bw, flip = (int(v) for v in plan.crops.as_tensor()[k])
        box = img[None, :, top : top + bh, left : left + bw]
        crop = F.interpolate(box, size=(h, w), mode="bilinear", align_corners=False)[0]
        rows.append(crop.flip(-1) if flip else crop)
    x = torch.stack(rows)
    if plan.mix is not None and hasattr(plan.mix, "box"):
        y0, x0, bh, bw = plan.mix.box.tolist()
        out = x.clone()
        out[:, :, y0 : y0 + bh, x0 : x0 + bw] = x[plan.mix.perm][:, :, y0 : y0 + bh, x0 : x0 + bw]
        x = out
    elif plan.mix is not None:
        lam = float(plan.mix.lam)
        x = lam * x + (1 - lam) * x[plan.mix.perm]
    return x


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
def test_stored_labels_are_the_teachers_softmax_on_the_replayed_crops(tmp_path, digits, teacher, syn, mix):
    images = syn.images
    store = relabel(
        images, teacher, tmp_path / "store", epochs=2, batch_size=8, seed=3, scale=(0.25, 1.0), prob_flip=0.5,
        mix=mix, shuffle_factor=2,
    )  # fmt: skip
    assert store.label_bytes == 2 * 20 * 10 * 2 and store.image_bytes == images.numel() * 4
    files = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert files == ["epoch_00000.safetensors", "epoch_00001.safetensors", "relabel.json"]
    index = json.loads((tmp_path / "store" / "relabel.json").read_text())
    assert store.store_bytes == sum(f["bytes"] for f in index["files"]) > store.label_bytes
    assert index["teacher"]["model"] == teacher.net.name and len(index["files"][0]["sha256"]) == 64
    back = RelabelStore.load(tmp_path / "store")
    flips = 0
    for e in range(2):
        batches = back.epoch(e)
        order = torch.cat([p.idx for p, _ in batches])
        assert sorted(order.tolist()) == list(range(20))  # each image once per epoch
        for plan, logits in batches:
            assert logits.dtype == torch.float16
            flips += int(plan.crops.flip.sum())
            with torch.no_grad():
                want = teacher(_by_hand(images, plan, (8, 8)))
            torch.testing.assert_close(logits.float(), want, rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(soft_labels(logits, 20.0), F.softmax(want / 20.0, 1), rtol=0, atol=1e-4)
    assert flips > 0
    mem = relabel(
        images, teacher, epochs=2, batch_size=8, seed=3, scale=(0.25, 1.0), prob_flip=0.5, mix=mix, shuffle_factor=2
    )
    for e in range(2):
        a, b = mem.epoch_tensors(e), back.epoch_tensors(e)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_store_is_checked_on_read(tmp_path, teacher, syn):
    folder = tmp_path / "store"
    relabel(syn.images, teacher, folder, epochs=2, batch_size=10, seed=0)
    f = folder / "epoch_00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    store = RelabelStore.load(folder)  # sizes match: the SHA-256 is checked as the epoch is read
    store.epoch(0)
    with pytest.raises(CorruptFileError, match="epoch_00001"):
        store.epoch(1)
    f.write_bytes(bytes(data[:-10]))
    with pytest.raises(CorruptFileError, match="epoch_00001"):
        RelabelStore.load(folder)
    index = json.loads((folder / "relabel.json").read_text())
    index["files"][0]["file"] = "../x"
    (folder / "relabel.json").write_text(json.dumps(index))
    with pytest.raises(UnsafePathError, match="x"):
        RelabelStore.load(folder)
    with pytest.raises(FileExistsError):
        relabel(syn.images, teacher, folder, epochs=1)


def test_an_interrupted_relabelling_continues_to_the_same_files(tmp_path, teacher, syn, monkeypatch):
    """A relabelling that dies after two epochs leaves them (and relabel.partial.json); the same call continues
    after them, and the files equal an uninterrupted call's byte for byte. Other settings are refused there."""
    kw = dict(epochs=4, batch_size=10, seed=3)
    whole = relabel(syn.images, teacher, tmp_path / "whole", **kw)
    calls = {"n": 0}
    real_logits = type(teacher).logits

    def dies_in_epoch_3(self, x, batch=512):
        calls["n"] += 1
        if calls["n"] > 2 * 2:  # 20 images in batches of 10: two teacher calls per epoch
            raise KeyboardInterrupt
        return real_logits(self, x, batch)

    monkeypatch.setattr(type(teacher), "logits", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        relabel(syn.images, teacher, tmp_path / "cut", **kw)
    monkeypatch.setattr(type(teacher), "logits", real_logits)
    cut = tmp_path / "cut"
    assert sorted(f.name for f in cut.iterdir()) == [
        "epoch_00000.safetensors",
        "epoch_00001.safetensors",
        "relabel.partial.json",
    ]
    with pytest.raises(ValueError, match="other settings"):
        relabel(syn.images, teacher, cut, **{**kw, "seed": 4})
    calls["n"] = 0
    resumed = relabel(syn.images, teacher, cut, **kw)
    assert not (cut / "relabel.partial.json").exists()
    for e in range(4):  # (safetensors writes its metadata in no fixed order: the tensors are compared)
        name = f"epoch_{e:05d}.safetensors"
        a, b = load_file(str(cut / name)), load_file(str(tmp_path / "whole" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ia, ib = (json.loads((f / "relabel.json").read_text()) for f in (cut, tmp_path / "whole"))
    assert [f["file"] for f in ia.pop("files")] == [f["file"] for f in ib.pop("files")]
    assert ia == ib and resumed.label_bytes == whole.label_bytes


def test_stored_training_replays_online_training_bitwise(tmp_path, digits, teacher, syn):
    images = syn.images
    aug = KDAugment(scale=(0.5, 1.0), prob_flip=0.0, shuffle_factor=2, mix="cutmix")
    store = relabel(images, teacher, tmp_path / "s", epochs=3, batch_size=6, seed=11, scale=(0.5, 1.0), prob_flip=0.0,
                    shuffle_factor=2)  # fmt: skip
    net = fastdd.models.model_for(digits, "convnetbn", width=8)
    theta0 = net.init(torch.Generator().manual_seed(0))
    out = {}
    for name, labels in (("online", OnlineLabels(teacher, aug, 6, 11)), ("stored", store)):
        buffers = net.init_buffers()
        theta = train_kd(net, theta0, images, labels, 3, AdamW(lr=0.01), buffers=buffers, temperature=4.0)
        acc = fastdd.models.accuracy(net, theta, buffers, digits.test.images, digits.test.labels)
        out[name] = (theta, buffers, acc)
    assert not torch.equal(out["online"][0], theta0)
    assert torch.equal(out["online"][0], out["stored"][0]) and torch.equal(out["online"][1], out["stored"][1])
    assert out["online"][2] == out["stored"][2]
    seed12 = OnlineLabels(teacher, aug, 6, 12)
    other = train_kd(net, theta0, images, seed12, 3, AdamW(lr=0.01), buffers=net.init_buffers())
    assert not torch.equal(other, out["online"][0])  # the plan's seed matters


# ---------------------------------------------------------------------------------------------------- the protocol
def test_kd_rules(digits, teacher, syn, tiny_ds):
    assert [kd_batch_size(i, 10, 10_000) for i in (1, 5, 10, 20, 50, 100)] == [10, 10, 50, 50, 100, 100]
    assert kd_batch_size(10, 100, 10_000) == 100 and kd_batch_size(50, 10, 40) == 40
    q = resolve_kd(KDProtocol(), syn, digits, teacher)
    assert (q.model, q.model_kwargs["width"], q.batch_size) == ("convnet", 16, 10)
    assert (q.scale, q.shuffle_factor, q.flip, q.mix_alpha) == ((1.0, 1.0), 1, False, 1.0)  # digits: no flips
    four = fastdd.SyntheticSet(syn.images, syn.labels, meta={**syn.meta, "factor": 2})
    q = resolve_kd(KDProtocol(mix="mixup"), four, digits, teacher)
    assert (q.scale, q.shuffle_factor, q.mix_alpha) == ((0.5, 1.0), 2, 0.8)
    other = fastdd.SyntheticSet(tiny_ds.train.images[:8], tiny_ds.train.labels[:8])
    tiny_teacher = fastdd.Teacher(teacher.net, teacher.theta, teacher.buffers, {})
    assert resolve_kd(KDProtocol(), other, tiny_ds, tiny_teacher).flip is True  # a data set whose DSA flips


def test_evaluate_kd_reports_the_random_baseline_by_default(digits, teacher, syn):
    kw = dict(num_eval=1, epochs=2, show_progress=False, teacher=teacher)
    res = fastdd.evaluate(syn, digits, "kd", **kw)
    assert res.random is not None and res.ior == pytest.approx(res.mean - res.random.mean)
    p = res.protocol
    assert (p["name"], p["label_mode"], p["temperature"], p["t_squared"]) == ("kd", "online", 20.0, False)
    assert p["epochs"] == 2 and p["model"] == "convnet" and p["batch_size"] == 10
    assert p["teacher"]["model"] == "convnet" and p["teacher"]["accuracy"] == teacher.meta["accuracy"]
    assert (p["label_bytes"], p["image_bytes"]) == (2 * 20 * 10 * 2, 20 * 64 * 4)
    text = str(res)
    assert "protocol kd: teacher convnet" in text and "T 20, online labels" in text and "IOR" in text
    json.dumps(res.to_dict())
    stored = fastdd.evaluate(syn, digits, "kd", label_mode="stored", **kw)
    assert stored.accuracies == res.accuracies and stored.random.accuracies == res.random.accuracies
    assert fastdd.evaluate(syn, digits, "kd", random_baseline=False, **kw).random is None
    kw.update(random_baseline=False, epochs=1)
    cross = fastdd.evaluate(syn, digits, KDProtocol(schedule="half_cosine"), models=["mlp", "convnet"], **kw)
    assert cross["mlp"].protocol["model"] == "mlp" and cross["convnet"].protocol["schedule"] == "half_cosine"
    val = fastdd.evaluate(syn, digits.with_validation(0.1, seed=0), "kd", split="val", **kw)
    assert val.protocol["split"] == "val"


def test_evaluate_kd_with_a_callers_store(tmp_path, digits, teacher, syn):
    store = relabel_set(syn, digits, teacher, tmp_path / "s", seed=5, epochs=2)
    res = fastdd.evaluate(syn, digits, "kd", num_eval=1, epochs=2, teacher=teacher, store=tmp_path / "s",
                          random_baseline=False, show_progress=False)  # fmt: skip
    assert res.protocol["label_mode"] == "stored" and res.protocol["store_bytes"] == store.store_bytes
    with pytest.raises(ValueError, match="batch_size"):
        fastdd.evaluate(syn, digits, "kd", num_eval=1, epochs=2, batch_size=4, teacher=teacher, store=store)
    with pytest.raises(ValueError, match="holds 2 epochs"):
        fastdd.evaluate(syn, digits, "kd", num_eval=1, epochs=3, teacher=teacher, store=store)


def test_kd_errors(digits, teacher, syn):
    with pytest.raises(ValueError, match="teacher="):
        fastdd.evaluate(syn, digits, "kd", num_eval=1, epochs=1)
    with pytest.raises(TypeError, match="teacher= is for protocol 'kd'"):
        fastdd.evaluate(syn, digits, "mtt", num_eval=1, epochs=1, teacher=teacher)
    with pytest.raises(ValueError, match="real_baseline"):
        fastdd.evaluate(syn, digits, "kd", num_eval=1, epochs=1, teacher=teacher, real_baseline=True)
    with pytest.raises(TypeError, match="temprature"):
        fastdd.evaluate(syn, digits, "kd", num_eval=1, epochs=1, teacher=teacher, temprature=3)
    g = torch.Generator().manual_seed(0)
    other = from_pixels(
        "other", torch.rand(40, 1, 8, 8, generator=g), torch.arange(10).repeat(4), torch.rand(20, 1, 8, 8, generator=g),
        torch.arange(10).repeat(2), 10,
    )  # fmt: skip
    sub = fastdd.real_subset(other, fastdd.select(other, ipc=1, seed=0))
    with pytest.raises(ValueError, match="trained for dataset='digits'"):
        fastdd.evaluate(sub, other, "kd", num_eval=1, epochs=1, teacher=teacher)
