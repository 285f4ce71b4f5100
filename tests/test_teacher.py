"""The teacher (fastdd.teacher): training, evaluation-mode logits and batch-norm moments against torch.nn,
the saved folder checked on load, the class order pinned, and an expert's last snapshot as a teacher."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fastdd
from fastdd.cli import main
from fastdd.errors import CorruptFileError
from fastdd.teacher import Teacher, train_teacher


@pytest.fixture(scope="module")
def digits():
    return fastdd.load_dataset("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    return train_teacher(digits, epochs=2, show_progress=False, seed=0)


def _module(t: Teacher) -> nn.Module:
    m = t.net.module().double()
    t.net.load_into_module(m, t.theta.double(), t.buffers.double())
    return m.eval()


def test_logits_and_bn_moments_equal_torch_nn(teacher, digits):
    """Evaluation-mode logits equal the nn.Module's in eval mode; the recorded moments equal each BatchNorm2d
    input's per-channel mean and biased variance, read with forward hooks; the running statistics are the
    module's buffers."""
    x = digits.train.images[:7].double()
    t = Teacher(teacher.net, teacher.theta.double(), teacher.buffers.double(), teacher.meta)
    module = _module(teacher)
    inputs = []
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for m in bns]
    with torch.no_grad():
        want = module(x)
    for h in hooks:
        h.remove()
    logits, moments = t.bn_moments(x)
    torch.testing.assert_close(logits, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(t.logits(x, batch=3), want, rtol=1e-10, atol=1e-10)
    assert len(moments) == len(bns) == 3
    for (mean, var), inp in zip(moments, inputs):
        torch.testing.assert_close(mean, inp.mean((0, 2, 3)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(var, inp.var((0, 2, 3), unbiased=False), rtol=1e-10, atol=1e-12)
    for (rm, rv), bn in zip(t.bn_statistics(), bns):
        assert torch.equal(rm, bn.running_mean) and torch.equal(rv, bn.running_var)
    assert moments[0][0].requires_grad is False  # x needs no grad here; with one it flows:
    xg = x.clone().requires_grad_(True)
    _, m2 = t.bn_moments(xg)
    assert torch.autograd.grad(m2[1][1].sum(), xg)[0].abs().sum() > 0


def test_training_is_seeded_and_tested(teacher, digits):
    again = train_teacher(digits, epochs=2, show_progress=False, seed=0)
    other = train_teacher(digits, epochs=2, show_progress=False, seed=1)
    assert torch.equal(again.theta, teacher.theta) and torch.equal(again.buffers, teacher.buffers)
    assert not torch.equal(other.theta, teacher.theta)
    module = _module(teacher)
    with torch.no_grad():
        pred = module(digits.test.images.double()).argmax(1)
    assert teacher.meta["accuracy"] == pytest.approx(float((pred == digits.test.labels).double().mean()))
    assert teacher.meta["class_names"] == digits.class_names and teacher.meta["recipe"]["epochs"] == 2


def test_save_load_checked(teacher, digits, tmp_path):
    teacher.save(tmp_path / "t")
    back = Teacher.load(tmp_path / "t")
    assert torch.equal(back.theta, teacher.theta) and torch.equal(back.buffers, teacher.buffers)
    assert back.meta["accuracy"] == teacher.meta["accuracy"]
    f = tmp_path / "t" / "teacher.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="teacher.safetensors"):
        Teacher.load(tmp_path / "t")
    teacher.save(tmp_path / "u")
    j = tmp_path / "u" / "teacher.json"
    meta = json.loads(j.read_text())
    meta["model_spec"]["width"] = 7
    j.write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match="teacher"):
        Teacher.load(tmp_path / "u")
    with pytest.raises(FileNotFoundError, match="not a teacher folder"):
        Teacher.load(tmp_path)


def test_class_order_is_pinned(teacher, digits):
    teacher.check(digits)
    shuffled = Teacher(teacher.net, teacher.theta, teacher.buffers, {**teacher.meta, "class_names": list("abcdefghij")})
    with pytest.raises(ValueError, match="class_names"):
        shuffled.check(digits)
    with pytest.raises(ValueError, match="dataset"):
        Teacher(teacher.net, teacher.theta, teacher.buffers, {**teacher.meta, "dataset": "cifar10"}).check(digits)
    with pytest.raises(ValueError, match="teacher="):
        fastdd.distill(digits, "rded", ipc=1, show_progress=False)  # needs a teacher


def test_from_experts_and_no_batchnorm(digits, tmp_path):
    buf = fastdd.train_experts(digits, "convnet", num_experts=1, epochs=1, out=tmp_path / "e", show_progress=False)
    t = Teacher.from_experts(buf)
    assert torch.equal(t.theta, buf[0][-1]) and t.buffers is None and not t.has_batchnorm
    with pytest.raises(ValueError, match="no batch norm"):
        t.bn_statistics()
    t.check(digits)
    bn = fastdd.train_experts(digits, "convnetbn", num_experts=1, epochs=1, out=tmp_path / "b", show_progress=False)
    with pytest.raises(ValueError, match="running statistics"):
        Teacher.from_experts(bn)


def test_cli_teacher(tmp_path):
    assert main(["teacher", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "t")]) == 0
    t = Teacher.load(tmp_path / "t")
    assert t.meta["dataset"] == "digits" and t.has_batchnorm


def test_cli_decoupled_pipeline(tmp_path, capsys):
    """teacher → distill rded → relabel → evaluate --protocol kd --store: the stored labels replay, the relabelled
    random baseline is there by default, and kd flags are refused with another protocol."""
    t, r, store = (str(tmp_path / n) for n in ("t", "r", "store"))
    data = ["--dataset", "digits"]
    assert main(["teacher", *data, "--epochs", "1", "--model-kwargs", '{"width": 16}', "--out", t]) == 0
    assert main(["distill", *data, "--method", "rded", "--ipc", "1", "--teacher", t, "--out", r]) == 0
    assert main(["relabel", *data, "--syn", f"{r}/synthetic", "--teacher", t, "--epochs", "3", "--out", store]) == 0
    out = str(tmp_path / "eval")
    args = ["--syn", f"{r}/synthetic", "--protocol", "kd", "--teacher", t, "--store", store, "--epochs", "3"]
    assert main(["evaluate", *data, *args, "--num-eval", "1", "--out", out]) == 0
    res = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert res["protocol"]["label_mode"] == "stored" and res["protocol"]["label_bytes"] > 0
    assert "random" in res and "ior" in res
    capsys.readouterr()
    assert main(["evaluate", *data, "--syn", f"{r}/synthetic", "--teacher", t, "--num-eval", "1"]) == 2
    assert "--teacher: for --protocol kd only" in capsys.readouterr().err
    assert (
        main(["distill", *data, "--method", "rded", "--ipc", "1", "--teacher", t, "--iterations", "3", "--out", r]) == 2
    )
    assert "rded sets its own number of iterations" in capsys.readouterr().err


def test_presets_and_the_cli_run_sre2l_and_rded(tmp_path):
    """A preset applies to a data set of its name (generated CIFAR-shaped tensors named "cifar10" here: no data
    is read), with the caller's options on top; sre2l runs from the CLI with --teacher."""
    from fastdd.data import from_pixels
    from fastdd.models import model_for

    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(6)
    x = torch.rand(len(y), 3, 32, 32, generator=g)
    ds = from_pixels("cifar10", x, y, x[:20], y[:20], 10)
    net = model_for(ds, "convnetbn", width=8)
    t = Teacher(net, net.init(g), net.init_buffers(), {"dataset": "cifar10", "num_classes": 10})
    syn = fastdd.distill(ds, preset="rded-cifar10-ipc1", teacher=t, mipc=4, show_progress=False)
    assert syn.meta["preset"] == "rded-cifar10-ipc1" and syn.meta["num_crop"] == 5 and len(syn) == 10
    assert fastdd.PRESETS["sre2l-cifar100-ipc10"].options["multicrop"] is False
    with pytest.raises(ValueError, match="is for cifar100"):
        fastdd.distill(ds, preset="sre2l-cifar100-ipc1", teacher=t, iterations=1, show_progress=False)
    teacher_dir, out = str(tmp_path / "t"), str(tmp_path / "s")
    assert (
        main(
            ["teacher", "--dataset", "digits", "--epochs", "1", "--model-kwargs", '{"width": 8}', "--out", teacher_dir]
        )
        == 0
    )
    cmd = ["distill", "--dataset", "digits", "--method", "sre2l", "--ipc", "1", "--iterations", "2"]
    assert main([*cmd, "--teacher", teacher_dir, "--options", '{"jitter": 1}', "--out", out]) == 0
    made = fastdd.SyntheticSet.load(tmp_path / "s" / "synthetic")
    assert made.meta["method"] == "sre2l" and made.meta["iterations"] == 2 and made.meta["config"]["jitter"] == 1


class _Died(Exception):
    pass


def test_a_teacher_killed_mid_training_resumes_bitwise(digits, tmp_path, monkeypatch):
    """A run killed after its epoch-2 checkpoint continues from it to the uninterrupted teacher's parameters and
    running statistics exactly; the checkpoint goes once the teacher is saved; a finished folder is reused, not
    retrained; other settings or resume=False are refused, naming what differs; a damaged checkpoint is named."""
    import fastdd.teacher as tm

    kw = dict(epochs=4, show_progress=False, seed=3, model_kwargs={"width": 8})
    want = train_teacher(digits, **kw)
    write = tm._write_checkpoint

    def dies_after_two(folder, settings, state, *a):
        write(folder, settings, state, *a)
        if state.epoch == 2:
            raise _Died

    monkeypatch.setattr(tm, "_write_checkpoint", dies_after_two)
    out = tmp_path / "t"
    with pytest.raises(_Died):
        train_teacher(digits, out=out, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["teacher.partial-000002.safetensors", "teacher.partial.json"]
    with pytest.raises(ValueError, match="epochs differ"):
        train_teacher(digits, out=out, **{**kw, "epochs": 5})
    with pytest.raises(ValueError, match="resume=True"):
        train_teacher(digits, out=out, resume=False, **kw)
    monkeypatch.setattr(tm, "_write_checkpoint", write)
    got = train_teacher(digits, out=out, **kw)
    assert torch.equal(got.theta, want.theta) and torch.equal(got.buffers, want.buffers)
    assert sorted(p.name for p in out.iterdir()) == ["teacher.json", "teacher.safetensors"]

    def no_training(*a, **k):
        raise AssertionError("a finished teacher must be reused")

    monkeypatch.setattr(tm, "fit", no_training)
    again = train_teacher(digits, out=out, **kw)
    assert torch.equal(again.theta, want.theta)
    with pytest.raises(ValueError, match="seed differ"):
        train_teacher(digits, out=out, **{**kw, "seed": 4})
    with pytest.raises(ValueError, match="already holds a teacher"):
        train_teacher(digits, out=out, resume=False, **kw)
    monkeypatch.undo()

    monkeypatch.setattr(tm, "_write_checkpoint", dies_after_two)
    with pytest.raises(_Died):
        train_teacher(digits, out=tmp_path / "u", **kw)
    f = tmp_path / "u" / "teacher.partial-000002.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="teacher.partial-000002.safetensors"):
        train_teacher(digits, out=tmp_path / "u", **kw)
    with pytest.raises(_Died):
        train_teacher(digits, out=tmp_path / "v", **kw)
    j = tmp_path / "v" / "teacher.partial.json"
    good = json.loads(j.read_text())
    for edit in (
        lambda r: r["optimizer"]["param_groups"][0].update(lr="0.1"),
        lambda r: r["optimizer"]["param_groups"][0].update(momentum=0.5),
        lambda r: r["scheduler"].update(last_epoch=1),
        lambda r: r.update(scheduler=None),
        lambda r: r.update(epoch=0),
    ):
        bad = json.loads(json.dumps(good))
        edit(bad)
        j.write_text(json.dumps(bad))
        with pytest.raises(CorruptFileError, match="teacher.partial.json"):
            train_teacher(digits, out=tmp_path / "v", **kw)


def test_checkpoint_every_and_the_cli_resume(digits, tmp_path, capsys):
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_teacher(digits, epochs=1, checkpoint_every=0, out=tmp_path / "x", show_progress=False)
    cmd = ["teacher", "--dataset", "digits", "--model-kwargs", '{"width": 8}', "--out", str(tmp_path / "t")]
    assert main([*cmd, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*cmd, "--epochs", "1"]) == 0  # reused
    assert main([*cmd, "--epochs", "2"]) == 2
    assert "epochs differ" in capsys.readouterr().err
    assert main([*cmd, "--epochs", "1", "--no-resume"]) == 2
    assert "already holds a teacher" in capsys.readouterr().err
