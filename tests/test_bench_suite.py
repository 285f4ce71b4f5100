"""The benchmark suite's correctness (fast; the timings themselves run with ``pytest bench``):
the reference-style baseline equals fastdd's gradients, the per-image loops equal the batched
augmentations, and the memory-scaling model and its command line do what they say."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastdd
from fastdd import bench
from fastdd.augment import FAMILIES, DSAConfig, StepAugment, apply_combined, apply_dsa, sample_combined, sample_dsa
from fastdd.engine import trajectory_matching_grad

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_fastdd_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def reference():
    return _load("reference_mtt")


@pytest.fixture(scope="module")
def loops():
    return _load("test_bench_augment")


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("channels,size", [(3, 12), (1, 10)])
def test_reference_baseline_equals_bptt_and_adjoint(reference, channels, size):
    net = fastdd.build_model("convnet", in_channels=channels, num_classes=4, im_size=(size, size), width=6, depth=2)
    ref_module = reference.ConvNet(channels, 4, 6, 2, (size, size))
    assert [tuple(p.shape) for p in ref_module.parameters()] == [tuple(p.shape) for p in net.module().parameters()]
    g = torch.Generator().manual_seed(0)
    theta0 = net.init(g, dtype=torch.float64)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, dtype=torch.float64)
    x = torch.randn(16, channels, size, size, generator=g, dtype=torch.float64)
    y = torch.arange(16) % 4
    batches = [torch.randperm(16, generator=g)[:8] for _ in FAMILIES]
    lr = torch.tensor(0.05, dtype=torch.float64)

    def augment():  # one step per DSA family, the parameters fastdd's StepAugment holds
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(1))
        ga = torch.Generator().manual_seed(2)
        for i, fam in enumerate(FAMILIES):
            aug.params[i] = sample_dsa(8, size, DSAConfig(), ga, family=fam)
        return aug

    loss_r, gx_r, glr_r = reference.meta_grad(net, x, y, lr, theta0, target, batches, augment())
    assert gx_r.abs().max() > 0 and glr_r.abs() > 0
    for mode in ("bptt", "adjoint"):
        loss, gx, glr = trajectory_matching_grad(net, x, y, lr, theta0, target, batches, augment(), mode=mode)
        assert _rel(loss, loss_r) < 1e-10 and _rel(gx, gx_r) < 1e-10 and _rel(glr, glr_r) < 1e-10, mode


def test_reference_lazy_augment_draws_like_step_augment(reference):
    """Without prepared parameters the baseline draws each step's as StepAugment would (same generator)."""
    net = fastdd.build_model("convnet", in_channels=3, num_classes=4, im_size=(8, 8), width=4, depth=1)
    g = torch.Generator().manual_seed(0)
    theta0 = net.init(g, dtype=torch.float64)
    target = theta0 + 0.05 * torch.randn(net.num_params, generator=g, dtype=torch.float64)
    x = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(8) % 4
    batches = [torch.arange(8)] * 4
    lr = torch.tensor(0.05, dtype=torch.float64)
    out = [
        f(net, x, y, lr, theta0, target, batches, StepAugment(None, torch.Generator().manual_seed(3)))
        for f in (reference.meta_grad, trajectory_matching_grad)
    ]
    assert _rel(out[0][1], out[1][1]) < 1e-10


@pytest.mark.parametrize("size", [12, 11])
def test_per_sample_dsa_loop_equals_batched(loops, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, size, size, generator=g, dtype=torch.float64)
    for fam in FAMILIES:
        p = sample_dsa(24, size, DSAConfig(), g, family=fam)
        torch.testing.assert_close(loops.loop_dsa(x, p), apply_dsa(x, p), rtol=0, atol=1e-12, msg=fam)
    p = sample_dsa(24, size, DSAConfig(), g, per_sample_family=True)
    torch.testing.assert_close(loops.loop_dsa(x, p), apply_dsa(x, p), rtol=0, atol=1e-12)


def test_per_image_combined_loop_equals_batched(loops):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 12, 12, generator=g, dtype=torch.float64)
    p = sample_combined(torch.arange(24) % 3 == 0, 12, g)
    torch.testing.assert_close(loops.loop_combined(x, p), apply_combined(x, p), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ memory model
P = 320_010  # the default ConvNet's parameters


def _linear(mode, steps, batch, a=400.0, b=2.85, device="cpu", images=None, ipc=None):
    """A point exactly on the model: a + b·x + θ storage."""
    theta = bench.theta_vectors(mode, steps, device) * P * 4 / 2**20
    peak = a + b * bench._x(mode, steps, batch) + theta
    return bench.MemoryPoint(mode, steps, batch, peak, 1.0, device, images=images, ipc=ipc)


@pytest.mark.parametrize("mode", ["bptt", "adjoint", "adjoint:all", "tesla:host"])
def test_fit_predicts_held_out_point_on_linear_data_and_max_ipc_inverts_it(mode):
    pts = [_linear(mode, n, b) for n in (10, 20, 40) for b in (100, 256)]
    check = bench.holdout_check(pts, P)
    assert isinstance(check, bench.HoldoutCheck)
    assert (check.steps, check.batch, check.fitted_on) == (40, 256, 5)  # the largest x (ties: most steps)
    assert abs(check.error_pct) < 1e-9
    fit = bench.fit_memory(pts, P)
    assert fit.intercept_mib == pytest.approx(400.0) and fit.per_image_step_mib == pytest.approx(2.85)
    assert fit.max_residual_pct < 1e-9
    assert fit.predict(80, 500) == pytest.approx(_linear(mode, 80, 500).peak_mib)
    for gib, steps in ((24, 80), (24, 10), (1.0, 20), (0.3, 10)):
        ipc = fit.max_ipc(gib, steps, num_classes=10)
        assert fit.predict(steps, 10 * (ipc + 1)) > gib * 1024
        if ipc > 0:
            assert fit.predict(steps, 10 * ipc) <= gib * 1024
    assert fit.max_ipc(0.3, 10) == 0  # 400 MiB do not fit 0.3 GiB


def test_fit_without_a_slope_predicts_only_its_own_images_per_step():
    pts = [_linear("adjoint", n, 100) for n in (10, 20, 40)]  # adjoint: x = batch, the same at every step count
    fit = bench.fit_memory(pts, P)
    assert fit.per_image_step_mib is None
    assert fit.predict(80, 100) == pytest.approx(_linear("adjoint", 80, 100).peak_mib)
    assert fit.predict(10, 500) is None and fit.max_ipc(24, 10) is None
    check = bench.holdout_check(pts, P)  # 40 steps held out: the same x, so the θ term alone extrapolates
    assert check.steps == 40 and abs(check.error_pct) < 1e-9
    assert isinstance(bench.holdout_check(pts[:2], P), str)
    assert isinstance(bench.holdout_check(pts + [_linear("adjoint", 10, 500)], P), str)  # 500: no slope from the rest


def test_theta_vectors_and_mode_labels():
    assert bench.theta_vectors("bptt", 40) == 40
    assert bench.theta_vectors("adjoint:all", 40) == 41
    assert bench.theta_vectors("adjoint:host", 40, "cuda") == 1 and bench.theta_vectors("adjoint:host", 40) == 41
    assert (
        bench.theta_vectors("adjoint", 80) == 9 + 9 - 1
    )  # k = 9 for 80 steps: 9 checkpoints + a segment of 9 (one shared)
    assert (
        bench.mode_label("adjoint:auto") == "adjoint" and bench.mode_label("adjoint:checkpoint") == "adjoint:checkpoint"
    )
    assert bench.mode_label("tesla:all") == "tesla:all" and bench.parse_mode("adjoint") == ("adjoint", "auto")
    for bad in ("bptt:all", "adjoint:disk", "sgd", "reference"):
        with pytest.raises(ValueError):
            bench.mode_label(bad)
    assert bench.mode_label("reference", allow_reference=True) == "reference"


def test_grid_axes():
    assert bench.grid([10, 20], 100) == [(100, 100, None, 10), (100, 100, None, 20)]
    assert bench.grid([5], None, [10, 50]) == [(100, 100, 10, 5), (500, 500, 50, 5)]  # batch = all images
    assert bench.grid([5], [256], [10, 50]) == [(100, 100, 10, 5), (500, 256, 50, 5)]  # minibatch, capped
    with pytest.raises(ValueError):
        bench.grid([0], 100)


def test_memory_scaling_measures_what_fits_and_predicts_beyond(tmp_path):
    calls = []

    def fake_measure(mode, steps, batch, *args, images=None, ipc=None, **kw):
        calls.append((mode, steps, batch))
        return _linear(mode, steps, batch, images=images, ipc=ipc)

    res = bench.memory_scaling(
        [10, 20, 40, 80],
        ["bptt", "adjoint:all"],
        ipc=[10, 50],
        max_mib=16000,
        max_gib=24,
        max_ipc_steps=[80, 200],
        out=tmp_path,
        echo=lambda s: None,
        measure_fn=fake_measure,
    )
    by = {(p.mode, p.ipc, p.steps): p for p in res.points}
    assert len(res) == 16 and len(calls) == 16 - 4
    # bptt, 2.85 MiB per image·step: IPC 10 x 80 steps (23,200 MiB) and IPC 50 x 20 / 40 / 80 steps > 16,000 MiB
    for key in (("bptt", 10, 80), ("bptt", 50, 20), ("bptt", 50, 40), ("bptt", 50, 80)):
        p = by[key]
        assert p.source == "predicted" and p.peak_mib is None and ("bptt", key[2], 10 * key[1]) not in calls
        assert p.predicted_mib == pytest.approx(_linear("bptt", key[2], 10 * key[1]).peak_mib)
    assert by[("bptt", 50, 10)].source == "measured"  # 14,660 MiB: fits
    assert all(p.source == "measured" for p in res.points if p.mode == "adjoint:all")
    assert abs(res.holdout["bptt"].error_pct) < 1e-9 and abs(res.holdout["adjoint:all"].error_pct) < 1e-9
    assert set(res.max_ipc["bptt"]) == {80, 200} and res.max_ipc["bptt"][80] == res.fits["bptt"].max_ipc(24, 80)
    assert res.max_ipc["bptt"][80] == 10  # (24 GiB − 400 MiB − 80 θ) / (2.85 MiB × 10 images × 80 steps)
    for f in ("memory_scaling.csv", "memory_scaling.md", "memory_scaling.json", "memory_scaling.png"):
        assert (tmp_path / f).exists(), f
    rows = (tmp_path / "memory_scaling.csv").read_text().splitlines()
    assert rows[0].startswith("mode,steps") and len(rows) == 17 and sum(",predicted," in r for r in rows) == 4
    doc = json.loads((tmp_path / "memory_scaling.json").read_text())
    assert set(doc) >= {"points", "fits", "holdout", "max_ipc", "config"}
    assert "held-out" in (tmp_path / "memory_scaling.md").read_text()


def test_cli_flags_parse():
    from fastdd.cli import build_parser

    a = build_parser().parse_args(
        [
            "bench",
            "memory-scaling",
            "--ipc",
            "10",
            "50",
            "--steps",
            "20",
            "80",
            "--modes",
            "bptt",
            "adjoint:all",
            "tesla",
            "--batch",
            "256",
            "--max-gib",
            "24",
            "--dsa",
            "--device",
            "cuda",
            "--max-mib",
            "9000",
            "--depth",
            "4",
            "--num-classes",
            "100",
            "--max-gib-steps",
            "80",
            "200",
        ]
    )
    assert (
        a.ipc,
        a.steps,
        a.modes,
        a.batch,
        a.max_gib,
        a.dsa,
        a.device,
        a.max_mib,
        a.depth,
        a.num_classes,
        a.max_gib_steps,
    ) == ([10, 50], [20, 80], ["bptt", "adjoint:all", "tesla"], [256], 24.0, True, "cuda", 9000.0, 4, 100, [80, 200])
    d = build_parser().parse_args(["bench", "memory-scaling"])
    assert (d.steps, d.modes, d.batch, d.ipc, d.max_gib, d.dsa) == (
        [10, 20, 40, 80],
        ["adjoint", "bptt"],
        None,
        None,
        None,
        False,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "memory-scaling", "--modes", "adjoint:disk"])


def test_measure_runs_the_reference_baseline_in_a_fresh_process():
    p = bench.measure(
        "reference",
        2,
        4,
        im_size=8,
        channels=1,
        width=4,
        depth=1,
        dsa=True,
        impl=f"{BENCH / 'reference_mtt.py'}:meta_grad",
    )
    assert p.source == "measured" and p.peak_mib is not None and p.peak_mib >= 0, p.note
    bad = bench.measure(
        "adjoint", 2, 4, im_size=8, channels=1, width=4, depth=1, impl=f"{BENCH / 'reference_mtt.py'}:no_such_function"
    )
    assert bad.source == "failed" and "no_such_function" in bad.note


def test_bench_suite_collects():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(BENCH),
            "--collect-only",
            "-q",
            "--bench-size",
            "tiny",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH.parent,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for group in ("test_iteration", "test_dsa", "test_combined", "test_train_experts", "test_knn", "test_step"):
        assert group in out.stdout, group
