"""The distillation inner loop without per-step host traffic: O(1) host→device copies and host reads
per iteration (counted on the CPU), ``auto`` decided once per run, the engine settings reachable."""

import builtins
import contextlib
import importlib
import json

import pytest
import torch

import fastdd
from fastdd.augment import DSAConfig, StepAugment, replay, strategy_for
from fastdd.distillation import mtt
from fastdd.engine import matching_loss, to_device_once, unroll, unroll_grad
from fastdd.experts import train_experts

F64 = dict(dtype=torch.float64)
READS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "cpu", "numpy")


class Counter:
    """Counts ``Tensor.to`` / ``.cuda`` calls that name a device, and host reads of tensors
    (``.item()``, ``float()``, ``bool()``, ``int()``, ``.tolist()``, ``.cpu()``, ...). Reads inside
    ``sample_dsa`` are not counted: it draws on a CPU generator (asserted), i.e. host tensors."""

    def __init__(self):
        self.to = 0
        self.reads = 0
        self.paused = 0

    def totals(self):
        return self.to, self.reads


def _names_device(args, kwargs) -> bool:
    if "device" in kwargs:
        return True
    return any(
        isinstance(a, (torch.device, str, torch.Tensor)) or (isinstance(a, int) and not isinstance(a, bool))
        for a in args
    )


@contextlib.contextmanager
def counting(monkeypatch):
    c = Counter()
    orig_to, orig_cuda = torch.Tensor.to, torch.Tensor.cuda

    def to(self, *args, **kwargs):
        if not c.paused and _names_device(args, kwargs):
            c.to += 1
        return orig_to(self, *args, **kwargs)

    def cuda(self, *args, **kwargs):  # pragma: no cover - never called on the CPU
        c.to += 1
        return orig_cuda(self, *args, **kwargs)

    def reader(name):
        orig = getattr(torch.Tensor, name)

        def f(self, *args, **kwargs):
            if not c.paused:
                c.reads += 1
            return orig(self, *args, **kwargs)

        return f

    orig_sample = replay.sample_dsa

    def sample(n, im_size, config=None, generator=None, **kw):
        assert generator.device.type == "cpu"  # host draws: no device tensor is read
        c.paused += 1
        try:
            return orig_sample(n, im_size, config, generator, **kw)
        finally:
            c.paused -= 1

    with monkeypatch.context() as m:
        m.setattr(replay, "sample_dsa", sample)
        for name in READS:
            m.setattr(torch.Tensor, name, reader(name))
        m.setattr(torch.Tensor, "to", to)
        m.setattr(torch.Tensor, "cuda", cuda)
        yield c


def _tiny_unroll(n_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = fastdd.build_model("convnet", in_channels=1, num_classes=3, im_size=(8, 8), width=4, depth=1)
    theta0 = net.init(g, **F64)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, **F64)
    x = torch.randn(7, 1, 8, 8, generator=g, **F64)
    y = torch.arange(7) % 3
    batches = mtt.student_batches(7, 3, n_steps, g, "cpu")
    return net, theta0, target, x, y, batches


def _call(net, theta0, target, x, y, batches, aug, mode):
    lrs = torch.full((len(batches),), 0.3, requires_grad=True, **F64)
    return unroll_grad(
        net, x.clone().requires_grad_(), y, lrs, theta0, batches, matching_loss(theta0, target), aug, mode
    )


@pytest.mark.parametrize("mode", ["bptt", "adjoint", "tesla", "auto"])
def test_unroll_makes_no_copy_and_no_host_read(monkeypatch, mode):
    counts = {}
    for n in (3, 12):
        net, theta0, target, x, y, batches = _tiny_unroll(n)
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(1)).prepare(
            [len(b) for b in batches], (8, 8), "cpu"
        )
        with counting(monkeypatch) as c:
            _call(net, theta0, target, x, y, batches, aug, mode)
        counts[n] = c.totals()
    assert counts[3] == counts[12] == (0, 0), counts


def test_the_counter_sees_per_step_copies(monkeypatch):
    """Today's lazy path (a StepAugment without prepare) moves every step's parameters: O(N) calls."""
    counts = {}
    for n in (3, 12):
        net, theta0, target, x, y, batches = _tiny_unroll(n)
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(1))
        with counting(monkeypatch) as c:
            _call(net, theta0, target, x, y, batches, aug, "adjoint")
        counts[n] = c.totals()
    assert counts[12][0] > counts[3][0] >= 3, counts


def test_prepared_draws_equal_lazy_draws_and_adjoint_equals_bptt():
    net, theta0, target, x, y, batches = _tiny_unroll(6)
    sizes = [len(b) for b in batches]
    assert sizes == [3, 3, 1, 3, 3, 1]
    lazy = StepAugment(DSAConfig(), torch.Generator().manual_seed(5))
    ref = _call(net, theta0, target, x, y, batches, lazy, "bptt")
    out = {}
    for mode in ("bptt", "adjoint"):
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(5)).prepare(sizes, (8, 8), "cpu")
        for i, p in aug.params.items():  # the same random numbers, step by step
            assert p.family == lazy.params[i].family
            assert all(torch.equal(v, lazy.params[i].tensors[k]) for k, v in p.tensors.items())
        out[mode] = _call(net, theta0, target, x, y, batches, aug, mode)
    assert torch.equal(out["bptt"].images, ref.images) and torch.equal(out["bptt"].lrs, ref.lrs)
    b, a = out["bptt"], out["adjoint"]
    assert ((a.images - b.images).norm() / b.images.norm()) < 1e-10
    assert ((a.lrs - b.lrs).norm() / b.lrs.norm()) < 1e-10
    with pytest.raises(ValueError, match="already have"):
        aug.prepare(sizes, (8, 8), "cpu")


def test_one_packed_copy_round_trips(monkeypatch):
    ts = [
        torch.arange(5),
        torch.rand(3, 2, **F64),
        torch.tensor([True, False, True]),
        torch.tensor(2.5),
        torch.zeros(0, 2, dtype=torch.int64),
        torch.rand(3),
    ]
    assert all(a is b for a, b in zip(to_device_once(ts, "cpu"), ts))  # already there: nothing moves
    monkeypatch.setattr(unroll, "_on_device", lambda t, d: False)  # as if the target were another device
    with counting(monkeypatch) as c:
        out = to_device_once(ts, "cpu")
    assert c.to == 1
    assert all(torch.equal(a, b) and a.dtype == b.dtype and a.shape == b.shape for a, b in zip(out, ts))
    b = mtt.student_batches(7, 3, 5, torch.Generator().manual_seed(0), "cpu")
    assert [len(t) for t in b] == [3, 3, 1, 3, 3] and b[0].untyped_storage().data_ptr() == b[
        4
    ].untyped_storage().data_ptr()  # one device tensor, chunks are views
    assert unroll._pinned((2,), torch.float32) is None or torch.cuda.is_available()  # CPU-only: no pinning


# ------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fastdd.data import from_pixels

    g = torch.Generator().manual_seed(0)
    tx, vx = torch.rand(24, 1, 8, 8, generator=g), torch.rand(6, 1, 8, 8, generator=g)
    ds = from_pixels("tiny", tx, torch.arange(3).repeat_interleave(8), vx, torch.arange(3).repeat(2), 3)
    exp = train_experts(
        ds,
        "convnet",
        num_experts=2,
        epochs=2,
        out=tmp_path_factory.mktemp("sync") / "experts",
        seed=0,
        model_kwargs={"width": 4, "depth": 1},
        show_progress=False,
    )
    return ds, exp


def _run(setup, **kw):
    ds, exp = setup
    args = dict(
        method="mtt",
        ipc=2,
        experts=exp,
        iterations=1,
        seed=0,
        show_progress=False,
        syn_steps=3,
        expert_epochs=1,
        max_start_epoch=1,
        lr_img=10.0,
        lr_lr=1e-7,
        batch_syn=4,
    )
    args.update(kw)
    return fastdd.distill(ds, **args)


@pytest.mark.parametrize("mode", ["adjoint", "auto"])
def test_mtt_iteration_traffic_is_constant_in_steps(setup, monkeypatch, mode):
    monkeypatch.setattr(unroll, "_on_device", lambda t, d: False)  # count the copies a CUDA run makes
    counts = {}
    for n in (3, 12):
        for its in (1, 2):
            with counting(monkeypatch) as c:
                _run(setup, syn_steps=n, iterations=its, mode=mode)
            counts[n, its] = c.totals()
    per_it = {n: tuple(b - a for a, b in zip(counts[n, 1], counts[n, 2])) for n in (3, 12)}
    assert counts[3, 1] == counts[12, 1] and counts[3, 2] == counts[12, 2], counts
    assert per_it[3] == per_it[12] and per_it[3][0] == 2, per_it  # one copy of the batches, one of the DSA draws
    print(f"per iteration ({mode}): .to(device) calls, host reads = {per_it}")


def test_auto_is_decided_once_from_the_configuration(setup, monkeypatch, tmp_path):
    def no_free_memory(*a, **k):
        raise AssertionError("the free memory was read")

    real_open = builtins.open
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_free_memory)
    monkeypatch.setattr(
        builtins, "open", lambda f, *a, **k: no_free_memory() if str(f) == "/proc/meminfo" else real_open(f, *a, **k)
    )
    probes = []
    real_predict = unroll.predict_bptt_bytes
    monkeypatch.setattr(unroll, "predict_bptt_bytes", lambda *a, **k: probes.append(1) or real_predict(*a, **k))
    monkeypatch.setattr(unroll, "choose_mode", no_free_memory)  # the engine never decides during a run
    a = _run(setup, iterations=2, mode="auto")
    assert a.meta["gradient_mode"] == "bptt"
    assert len(probes) == len(DSAConfig(strategy=strategy_for("tiny")).families)  # once per run, per DSA family
    b = _run(setup, iterations=2, mode="auto")
    assert torch.equal(a.images, b.images) and torch.equal(a.lr, b.lr)
    small = _run(setup, iterations=1, mode="auto", memory_budget="1B")
    assert small.meta["gradient_mode"] == "adjoint" and small.meta["config"]["memory_budget"] == 1
    assert _run(setup, mode="tesla").meta["gradient_mode"] == "tesla"
    dd = fastdd.distill(
        setup[0],
        method="dd",
        iterations=1,
        show_progress=False,
        model="convnet",
        steps=1,
        epochs=1,
        real_batch=8,
        memory_budget=0,
    )
    assert dd.meta["gradient_mode"] == "adjoint"
    # unroll_grad(mode="auto") called directly: the budget or the constant, never the free memory
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_free_memory)
    net, theta0, target, x, y, batches = _tiny_unroll(3)
    assert _call(net, theta0, target, x, y, batches, None, "auto").mode == "bptt"
    monkeypatch.setattr(unroll, "DEFAULT_MEMORY_BUDGET", 1)
    assert _call(net, theta0, target, x, y, batches, None, "auto").mode == "adjoint"


def test_resume_uses_the_recorded_mode_and_old_checkpoints(setup, tmp_path):
    out = tmp_path / "run"
    _run(setup, iterations=1, mode="auto", out=out, checkpoint_every=1)
    ck = json.loads((out / "checkpoint.json").read_text())
    assert ck["extra"]["gradient_mode"] == "bptt"
    ck["extra"]["gradient_mode"] = "adjoint"  # as if the run had started under a smaller budget
    for k in ("theta_storage", "memory_budget", "deterministic"):  # a checkpoint made before these existed
        del ck["extra"]["config"][k]
    (out / "checkpoint.json").write_text(json.dumps(ck))
    res = _run(setup, iterations=2, mode="auto", out=out, checkpoint_every=1, resume=True)
    assert res.meta["gradient_mode"] == "adjoint"
    with pytest.raises(ValueError, match="other settings"):
        _run(setup, iterations=3, mode="auto", out=out, resume=True, theta_storage="all")


def test_engine_settings_reach_the_run(setup, monkeypatch):
    seen = []
    real = mtt.unroll_grad

    def spy(*a, **k):
        seen.append(
            (
                k["theta_storage"],
                k["memory_budget"],
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark,
                torch.are_deterministic_algorithms_enabled(),
            )
        )
        return real(*a, **k)

    monkeypatch.setattr(mtt, "unroll_grad", spy)
    before = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    det = _run(setup, mode="adjoint", theta_storage="host", memory_budget="2KiB", deterministic=True, device="cpu")
    assert seen == [("host", 2048, True, False, True)]
    assert (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    ) == before  # restored
    assert det.meta["config"]["theta_storage"] == "host" and det.meta["config"]["deterministic"] is True
    plain = _run(setup, mode="adjoint")
    assert torch.equal(det.images, plain.images)  # on the CPU the settings change nothing
    with pytest.raises(ValueError, match="theta_storage"):
        _run(setup, theta_storage="disk")
    with pytest.raises(ValueError, match="byte count"):
        _run(setup, memory_budget="lots")


def test_resident_expert_buffer_serves_the_same_tensors(setup):
    _, buf = setup
    res = buf.to("cpu")
    assert res.device == torch.device("cpu") and buf.device is None and res.to("cpu") is res
    for i in buf.ids:
        assert torch.equal(res[i], buf[i]) and res[i] is res[i]  # loaded once, kept
        assert torch.equal(res.snapshots(i, [2, 0]), buf.snapshots(i, [2, 0]))
    assert torch.equal(res.load_all(), buf.load_all())
    a, b = _run(setup, resident_experts=True), _run(setup, resident_experts=False)
    assert torch.equal(a.images, b.images)


def test_cli_engine_options_reach_distill(monkeypatch, capsys):
    from fastdd.cli import main

    got = {}

    def fake(ds, *a, **k):
        got.update(k)
        raise ValueError("stop here")

    monkeypatch.setattr(importlib.import_module("fastdd.distillation"), "distill", fake)
    base = ["distill", "--dataset", "digits", "--method", "mtt", "--ipc", "1", "--experts", "x", "--out", "unused"]
    assert (
        main(base + ["--theta-storage", "host", "--memory-budget", "8GiB", "--device", "cpu", "--deterministic"]) == 2
    )
    assert "stop here" in capsys.readouterr().err
    from fastdd.engine import EngineConfig

    engine, run = got["engine"], got["run"]  # the CLI builds the same config objects the API takes
    assert (engine.theta_storage, engine.memory_budget, engine.deterministic, run.device) == (
        "host",
        8 << 30,
        True,
        "cpu",
    )
    got.clear()
    assert main(base + ["--options", '{"theta_storage": "all"}']) == 2
    assert got["theta_storage"] == "all" and got["engine"] == EngineConfig()  # no flag: --options decides
    got.clear()
    assert main(base + ["--options", '{"theta_storage": "all"}', "--theta-storage", "checkpoint"]) == 2
    assert "theta_storage" not in got and got["engine"].theta_storage == "checkpoint"  # the flag wins
    for bad in (["--memory-budget", "lots"], ["--theta-storage", "disk"]):
        with pytest.raises(SystemExit):
            main(base + bad)
