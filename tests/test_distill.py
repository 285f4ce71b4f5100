"""Methods on the engine: MTT, SelMatch, TESLA, DATM options, DD; checkpoints, guards, presets."""

import pytest
import torch
import torch.nn.functional as F

import fastdd
from fastdd.distillation import PRESETS, DDConfig, MTTConfig
from fastdd.distillation.mtt import start_upper_bound, student_batches
from fastdd.experts import train_experts

FAST = dict(
    syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=10.0, lr_lr=1e-3, lr_init=0.01, batch_syn=5, mode="adjoint"
)


@pytest.fixture
def experts(tiny_ds, tmp_path):
    return train_experts(
        tiny_ds,
        "convnet",
        num_experts=2,
        epochs=3,
        out=tmp_path / "experts",
        seed=0,
        model_kwargs={"width": 4, "depth": 2},
        show_progress=False,
    )


def _mtt(ds, experts, **kw):
    args = dict(method="mtt", ipc=3, experts=experts, iterations=3, seed=0, show_progress=False, **FAST)
    args.update(kw)
    return fastdd.distill(ds, **args)


def test_mtt_runs_learns_and_is_deterministic(tiny_ds, experts, tmp_path):
    syn = _mtt(tiny_ds, experts, out=tmp_path / "run")
    assert syn.images.shape == (12, 1, 8, 8) and syn.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert syn.lr.dim() == 0 and float(syn.lr) > 0 and float(syn.lr) != 0.01
    assert syn.meta["method"] == "mtt" and syn.meta["skipped_iterations"] == 0
    again = _mtt(tiny_ds, experts)
    assert torch.equal(syn.images, again.images) and torch.equal(syn.lr, again.lr)
    # init = real images of the right class (recorded in meta), then moved by the updates
    idx = torch.tensor(syn.meta["init_indices"])
    assert tiny_ds.train.labels[idx].tolist() == syn.labels.tolist() and len(set(idx.tolist())) == 12
    from fastdd.distillation.mtt import MTTPolicy

    start = MTTPolicy(tiny_ds, 3, experts, MTTConfig(**FAST), 0, "mtt")  # the set before any iteration
    assert start.init_idx.tolist() == idx.tolist() and torch.equal(start.images.detach(), tiny_ds.train.images[idx])
    assert not torch.equal(syn.images, start.images.detach())
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,loss") and len(rows) == 4
    other = _mtt(tiny_ds, experts, seed=1)
    assert not torch.equal(syn.images, other.images)


def test_bptt_and_adjoint_give_the_same_distilled_set(tiny_ds, experts):
    a = _mtt(tiny_ds, experts, mode="adjoint")
    b = _mtt(tiny_ds, experts, mode="bptt")
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.lr, b.lr, rtol=1e-4, atol=1e-8)


def test_resume_continues_to_the_same_result(tiny_ds, experts, tmp_path):
    full = _mtt(tiny_ds, experts, iterations=4, out=tmp_path / "full", checkpoint_every=2)
    _mtt(tiny_ds, experts, iterations=2, out=tmp_path / "part", checkpoint_every=2)  # "interrupted" after 2
    resumed = _mtt(tiny_ds, experts, iterations=4, out=tmp_path / "part", checkpoint_every=2, resume=True)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.lr, resumed.lr)
    assert len((tmp_path / "part" / "log.csv").read_text().splitlines()) == 5
    assert len(list((tmp_path / "part").glob("checkpoint_*.safetensors"))) == 1
    with pytest.raises(ValueError, match="other settings"):
        _mtt(tiny_ds, experts, iterations=4, out=tmp_path / "part", resume=True, lr_img=5.0)


def test_selmatch_window_init_and_frozen_part(tiny_ds, experts):
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(len(tiny_ds.train), generator=g)
    syn = fastdd.distill(
        tiny_ds,
        "selmatch",
        ipc=4,
        experts=experts,
        iterations=2,
        scores=scores,
        alpha=0.5,
        beta=0.5,
        seed=0,
        show_progress=False,
        **FAST,
    )
    # independent rule: per class, ascending score (hardest first for C-scores), ranks [2, 6)
    expect = []
    for c in range(4):
        idx = [i for i in range(len(tiny_ds.train)) if int(tiny_ds.train.labels[i]) == c]
        expect += sorted(idx, key=lambda i: float(scores[i]))[2:6]
    init = tiny_ds.train.images[torch.tensor(expect)]
    assert syn.frozen.tolist() == [True, True, False, False] * 4  # harder half frozen
    assert syn.meta["init_indices"] == expect
    assert torch.equal(syn.images[syn.frozen], init[syn.frozen])
    assert not torch.equal(syn.images[~syn.frozen], init[~syn.frozen])
    res = fastdd.evaluate(
        syn,
        tiny_ds,
        "selmatch",
        num_eval=1,
        model="convnetbn",
        model_kwargs={"width": 4, "depth": 1},
        epochs=1,
        show_progress=False,
    )
    assert 0 <= res.mean <= 1
    with pytest.raises(ValueError, match="scores"):
        fastdd.distill(tiny_ds, "selmatch", ipc=4, experts=experts, iterations=1, show_progress=False, **FAST)
    with pytest.raises(ValueError, match="would be distilled"):
        fastdd.distill(
            tiny_ds,
            "selmatch",
            ipc=1,
            experts=experts,
            scores=scores,
            alpha=0.5,
            iterations=1,
            show_progress=False,
            **FAST,
        )


def test_nan_guard_skips_and_reports(tiny_ds, experts, monkeypatch, capsys):
    from fastdd.distillation import mtt

    real = mtt.unroll_grad
    calls = []

    def poisoned(*a, **k):
        res = real(*a, **k)
        calls.append(1)
        if len(calls) == 1:
            res.images = res.images * float("nan")
        return res

    monkeypatch.setattr(mtt, "unroll_grad", poisoned)
    syn = _mtt(tiny_ds, experts, iterations=2)  # iteration 0 skipped, iteration 1 applied
    assert syn.meta["skipped_iterations"] == 1
    out = capsys.readouterr()
    assert "iteration 0 skipped (non-finite" in out.out + out.err
    calls.clear()  # the next run's first unroll is poisoned again
    with pytest.raises(fastdd.RunFailedError, match=r"1 of 1 iterations were skipped \(1 for non-finite"):
        _mtt(tiny_ds, experts, iterations=1)  # every iteration skipped: an error, not the start set returned
    with pytest.raises(fastdd.RunFailedError, match=r"2 of 2 iterations were skipped \(2 for loss above the thr"):
        _mtt(tiny_ds, experts, iterations=2, threshold=-1.0)  # the gate skips every update


def test_datm_soft_labels_learn(tiny_ds, experts):
    syn = fastdd.distill(
        tiny_ds,
        "datm",
        ipc=2,
        experts=experts,
        iterations=2,
        seed=0,
        show_progress=False,
        threshold=None,
        lr_y=5.0,
        **FAST,
    )
    assert syn.labels.shape == (8, 4) and syn.soft
    torch.testing.assert_close(syn.labels.sum(1), torch.ones(8))
    res = fastdd.evaluate(
        syn, tiny_ds, "mtt", num_eval=1, epochs=1, model_kwargs={"width": 4, "depth": 2}, show_progress=False
    )
    assert 0 <= res.mean <= 1


def test_tesla_soft_labels_from_target_expert(tiny_ds, experts):
    syn = fastdd.distill(
        tiny_ds,
        "tesla",
        ipc=2,
        experts=experts,
        iterations=1,
        seed=0,
        show_progress=False,
        soft_labels="tesla",
        **{**FAST, "mode": "tesla"},
    )
    assert syn.labels.dim() == 1  # TESLA relabels on the fly; the stored labels stay hard


def test_expert_and_model_mismatch_refused(tiny_ds, experts):
    digits = fastdd.load_dataset("digits")
    with pytest.raises(fastdd.ModelMismatchError, match="trained on"):
        _mtt(digits, experts)
    _mtt(tiny_ds, experts, max_start_epoch=3, iterations=1)  # starts 0..2, targets up to epoch 3: fits
    with pytest.raises(ValueError, match="exceeds"):
        _mtt(tiny_ds, experts, max_start_epoch=4)
    with pytest.raises(TypeError, match="no option"):
        _mtt(tiny_ds, experts, syn_stepz=3)
    with pytest.raises(ValueError, match="unknown method"):
        fastdd.distill(tiny_ds, "kip", ipc=1, experts=experts)
    with pytest.raises(ValueError, match="pass experts"):
        fastdd.distill(tiny_ds, "mtt", ipc=1)


def test_student_batches_are_chunks_of_permutations():
    b = student_batches(7, 3, 5, torch.Generator().manual_seed(0), "cpu")
    assert [len(x) for x in b] == [3, 3, 1, 3, 3]
    assert sorted(torch.cat(b[:3]).tolist()) == list(range(7))


def test_datm_start_epoch_schedule():
    cfg = MTTConfig(max_start_epoch=20, current_max_start_epoch=10, expansion_end=1000)
    assert [start_upper_bound(cfg, it) for it in (0, 500, 1000, 5000)] == [10, 15, 20, 20]
    assert start_upper_bound(MTTConfig(max_start_epoch=7), 123) == 7


def test_dd_fixed_init_and_replay_evaluation(tiny_ds, tmp_path):
    syn = fastdd.distill(
        tiny_ds,
        "dd",
        iterations=5,
        seed=0,
        show_progress=False,
        model="mlp",
        steps=2,
        epochs=2,
        images_per_class=1,
        lr_init=0.05,
        real_batch=16,
        init_mode="fixed",
        mode="adjoint",
        out=tmp_path / "dd",
    )
    assert syn.images.shape == (8, 1, 8, 8) and syn.lr.shape == (4,) and bool((syn.lr > 0).all())
    res = fastdd.evaluate(syn, tiny_ds, "dd", num_eval=2)
    # independent replay with torch.nn: the fixed init, 4 plain SGD steps with the learned rates
    from fastdd.rng import generator

    net = fastdd.build_model("mlp", in_channels=1, num_classes=4, im_size=(8, 8))
    mod = net.module().double()
    net.load_into_module(mod, net.init(generator(0, "dd.fixed", 0), dtype=torch.float64))
    x = syn.images.double().view(2, 4, 1, 8, 8)
    y = syn.labels.view(2, 4)
    for t, eta in enumerate(syn.lr.tolist()):
        mod.zero_grad()
        F.cross_entropy(mod(x[t % 2]), y[t % 2]).backward()
        with torch.no_grad():
            for p in mod.parameters():
                p -= eta * p.grad
    with torch.no_grad():
        want = (mod(tiny_ds.test.images.double()).argmax(1) == tiny_ds.test.labels).double().mean().item()
    assert res.accuracies[0] == pytest.approx(want)
    # the poisoning objective runs and reports its success rate
    atk = fastdd.distill(
        tiny_ds, "dd", iterations=2, show_progress=False, model="mlp", steps=1, epochs=1, real_batch=16, attack=(0, 1)
    )
    r = fastdd.evaluate(atk, tiny_ds, "dd", num_eval=1)
    assert len(r.protocol["attack_success"]) == 1


def test_dd_resume(tiny_ds, tmp_path):
    kw = dict(show_progress=False, model="mlp", steps=1, epochs=2, real_batch=16, checkpoint_every=2)
    full = fastdd.distill(tiny_ds, "dd", iterations=4, out=tmp_path / "a", **kw)
    fastdd.distill(tiny_ds, "dd", iterations=2, out=tmp_path / "b", **kw)
    resumed = fastdd.distill(tiny_ds, "dd", iterations=4, out=tmp_path / "b", resume=True, **kw)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.lr, resumed.lr)


def test_presets_match_the_reference_tables():
    from fastdd.distillation.presets import check_preset
    from fastdd.distillation.registry import get_method, make_config

    for p in PRESETS.values():  # every preset's method is registered and its options are fields of its config
        check_preset(p)
        cfg = make_config(get_method(p.method), dict(p.options))
        cfg.validate(10) if isinstance(cfg, DDConfig) else cfg.validate()
    m = PRESETS["mtt-cifar10-ipc1"].options
    assert (m["syn_steps"], m["expert_epochs"], m["max_start_epoch"], m["lr_img"], m["lr_lr"], m["lr_init"]) == (
        50,
        2,
        2,
        100,
        1e-7,
        0.01,
    )
    assert PRESETS["mtt-cifar10-ipc50"].zca is False and PRESETS["mtt-cifar100-ipc50"].options["batch_syn"] == 125
    s = PRESETS["selmatch-cifar10-ipc1000"].options
    assert (s["alpha"], s["beta"], s["lr_img"], s["syn_steps"], s["lr_init"]) == (0.1, 0.2, 10000, 55, 0.001)
    assert PRESETS["selmatch-tinyimagenet-ipc50"].options["syn_steps"] == 20
    d = PRESETS["datm-cifar100-ipc10"].options
    assert (d["current_max_start_epoch"], d["max_start_epoch"], d["expansion_end"], d["lr_y"]) == (30, 50, 2000, 10)
    assert PRESETS["datm-cifar10-ipc1"].options["threshold"] == 1.1


def test_preset_must_match_data(tiny_ds, experts):
    with pytest.raises(ValueError, match="is for cifar10"):
        fastdd.distill(tiny_ds, preset="mtt-cifar10-ipc10", experts=experts)
    with pytest.raises(ValueError, match="unknown preset"):
        fastdd.distill(tiny_ds, preset="mtt-cifar11-ipc10", experts=experts)


@pytest.mark.parametrize("split", ["train", "test"])
def test_forgetting_from_expert_snapshots(tiny_ds, experts, split):
    from fastdd.scores import forgetting_from_experts

    part = getattr(tiny_ds, split)
    s = forgetting_from_experts(experts, tiny_ds, split=split)
    assert s.hardest == "high" and s.values.shape == (len(part),)
    net = experts.model()
    want = torch.zeros(len(part), dtype=torch.float64)
    for e in experts.ids:  # plain loops: per example, count 1 -> 0 between consecutive epochs
        traj = experts[e]
        correct = [(net(part.images, traj[ep]).argmax(1) == part.labels).tolist() for ep in range(1, traj.shape[0])]
        for i in range(len(part)):
            seq = [c[i] for c in correct]
            want[i] += sum(a and not b for a, b in zip(seq, seq[1:])) if any(seq) else len(seq)
    torch.testing.assert_close(s.values.double(), want / len(experts.ids))


def test_cli_distill_and_memory_bench(tmp_path, capsys):
    from fastdd.cli import main

    exp = str(tmp_path / "exp")
    assert (
        main(
            [
                "experts",
                "--dataset",
                "digits",
                "--num-experts",
                "1",
                "--epochs",
                "3",
                "--model-kwargs",
                '{"width": 8, "depth": 2}',
                "--out",
                exp,
            ]
        )
        == 0
    )
    out = tmp_path / "mtt"
    assert (
        main(
            [
                "distill",
                "--dataset",
                "digits",
                "--method",
                "mtt",
                "--ipc",
                "1",
                "--experts",
                exp,
                "--iterations",
                "2",
                "--options",
                '{"syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 2, "lr_img": 10}',
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for f in (
        "log.csv",
        "loss.png",
        "lr.png",
        "config.yaml",
        "checkpoint.json",
        "synthetic/synthetic.safetensors",
        "synthetic/images.png",
    ):
        assert (out / f).exists(), f
    assert (
        main(
            [
                "distill",
                "--dataset",
                "digits",
                "--method",
                "mtt",
                "--ipc",
                "1",
                "--experts",
                exp,
                "--iterations",
                "2",
                "--options",
                '{"max_start_epoch": 9}',
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    assert "exceeds" in capsys.readouterr().err
    assert (
        main(
            [
                "distill",
                "--dataset",
                "digits",
                "--method",
                "mtt",
                "--ipc",
                "1",
                "--experts",
                exp,
                "--iterations",
                "1",
                "--options",
                '{"syn_stepz": 2}',
                "--out",
                str(tmp_path / "bad2"),
            ]
        )
        == 2
    )
    assert "--options: mtt has no option 'syn_stepz'; its options: alpha," in capsys.readouterr().err
    assert (
        main(
            [
                "bench",
                "memory-scaling",
                "--steps",
                "1",
                "2",
                "--modes",
                "adjoint",
                "--batch",
                "4",
                "--width",
                "8",
                "--im-size",
                "8",
                "--out",
                str(tmp_path / "bench"),
            ]
        )
        == 0
    )
    rows = (tmp_path / "bench" / "memory_scaling.csv").read_text().splitlines()
    assert rows[0].startswith("mode,steps") and len(rows) == 3 and (tmp_path / "bench" / "memory_scaling.png").exists()
