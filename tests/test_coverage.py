"""Coverage: FAISS k-NN + exact refinement against brute-force float64 distances, the radius with
duplicates, points exactly at distance r, easy/hard halves, and the `coverage` command."""

import csv
import itertools

import pytest
import torch

import fastdd
from fastdd.cli import main
from fastdd.knn_coverage import (
    coverage_from_features,
    faiss_gpu_available,
    hard_mask,
    mean_nn_distance,
    nearest_distances,
)
from fastdd.scores import Scores
from fastdd.selection import real_subset


def brute(real: torch.Tensor, syn: torch.Tensor, radius: float | None = None) -> tuple[float, float]:
    """The definition, computed directly: float64 pairwise distances without the matmul shortcut."""
    r64, s64 = real.double(), syn.double()
    if radius is None:
        d = torch.cdist(r64, r64, compute_mode="donot_use_mm_for_euclid_dist")
        d.fill_diagonal_(float("inf"))  # self excluded by index; duplicates stay at 0
        radius = float(d.min(1).values.mean())
    nn = torch.cdist(r64, s64, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    return float((nn <= radius).double().mean()), radius


def _random_features(seed: int, n: int = 400, m: int = 40, d: int = 24):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, d, generator=g)
    real[100:120] = real[0:20]  # duplicates: their nearest other point is at distance 0
    real[200] = real[0]  # a triple
    syn = torch.randn(m, d, generator=g) * 0.8
    syn[:5] = real[300:305] + 0.01 * torch.randn(5, d, generator=g)
    return real, syn


@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_and_radius_equal_brute_force(seed):
    real, syn = _random_features(seed)
    frac, r = fastdd.coverage_of(real, syn)
    frac_bf, r_bf = brute(real, syn)
    assert r == pytest.approx(r_bf, rel=1e-12)
    assert frac == frac_bf
    assert 0 < frac < 1
    # explicit radii, around and at the data's own distances
    for radius in (0.0, 0.5 * r_bf, 1.3 * r_bf, 3.0 * r_bf):
        assert fastdd.coverage_of(real, syn, radius=radius)[0] == brute(real, syn, radius)[0]
    # chunking does not change anything
    assert fastdd.coverage_of(real, syn, chunk=7) == (frac, r)


def test_self_exclusion_is_by_index_with_duplicates():
    pts = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [10.0, 0.0]])
    d, i = nearest_distances(pts, pts, exclude_self=True)
    assert d.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, pytest.approx(65**0.5)]
    assert all(int(i[q]) != q for q in range(len(pts)))
    assert mean_nn_distance(pts) == pytest.approx(65**0.5 / 6)
    # with refine=1 FAISS returns only 2 candidates per query; among 3 identical points the own
    # index may be missing from them, and the query must still get distance 0, not a dropped match
    d1, _ = nearest_distances(pts, pts, exclude_self=True, refine=1)
    assert d1[:5].tolist() == [0.0] * 5


def test_points_exactly_at_radius_are_covered():
    # a 5 x 5 integer lattice: every nearest-neighbour distance is exactly 1, so r = 1.0 exactly
    grid = torch.tensor(list(itertools.product(range(5), range(5))), dtype=torch.float32)
    syn = torch.tensor(
        [
            [-1.0, 0.0],  # exactly 1 from (0,0) only
            [2.0, 2.0],  # (2,2) and its 4 neighbours at exactly 1
            [7.0, 4.0],
        ]
    )  # 3 from (4,4): covers nothing
    frac, r = fastdd.coverage_of(grid, syn)
    assert r == 1.0 and frac == 6 / 25 and brute(grid, syn) == (frac, r)
    # padded to more dims and shifted far from the origin: float32 |q|^2 + |x|^2 - 2 q.x would be
    # off by hundreds there; the search runs on centred features, then float64 distances.
    # Force FAISS's BLAS path (small searches otherwise take its exact direct loop).
    import faiss

    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        big = torch.cat([grid, torch.zeros(25, 6)], 1) + 100_000.0
        sbig = torch.cat([syn, torch.zeros(3, 6)], 1) + 100_000.0
        assert fastdd.coverage_of(big, sbig) == (6 / 25, 1.0) == brute(big, sbig)
    finally:
        faiss.cvar.distance_compute_blas_threshold = old
    # duplicates lower the radius: r = (0 + 0 + 24 * 1) / 26
    dup = torch.cat([grid, grid[:1]])
    frac, r = fastdd.coverage_of(dup, syn)
    assert (frac, r) == brute(dup, syn) and r == pytest.approx(24 / 26)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="real_features have 3 dims but syn_features have 2"):
        fastdd.coverage_of(torch.zeros(4, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least 2 real samples"):
        fastdd.coverage_of(torch.zeros(1, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="syn_features contain NaN"):
        fastdd.coverage_of(torch.zeros(4, 3), torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="radius must be"):
        fastdd.coverage_of(torch.zeros(4, 3), torch.zeros(2, 3), radius=-1.0)


def test_gpu_index_only_with_faiss_gpu():
    import faiss

    # faiss-cpu exposes knn_gpu (unusable); the guard must not be fooled by it
    if not hasattr(faiss, "StandardGpuResources"):
        assert not faiss_gpu_available()


def test_hard_mask_is_a_per_class_median_split():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 0])
    s = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.3, 0.2, 0.8, 0.1, 0.7])
    # class 0 = [0,1,2,7,8], low first: 1(.1), 7(.1), 2(.5), 8(.7), 0(.9) -> hard = {1, 7} (odd: middle is easy)
    # class 1 = [3,4,5,6]: 5(.2), 3(.3), 4(.3), 6(.8) -> hard = {5, 3}
    assert torch.nonzero(hard_mask(labels, s, "low")).flatten().tolist() == [1, 3, 5, 7]
    # high first: class 0: 0(.9), 8(.7) ; class 1: 6(.8), 3(.3) (tie with 4: lower index first)
    assert torch.nonzero(hard_mask(labels, Scores(s, "high"))).flatten().tolist() == [0, 3, 6, 8]


def test_coverage_on_tiny_ds_matches_raw_features(tiny_ds):
    flat = lambda x: x.flatten(1)  # noqa: E731 - pixels as features
    idx = fastdd.select(tiny_ds, "random", 3, seed=0)
    syn = real_subset(tiny_ds, idx)
    scores = Scores(torch.rand(len(tiny_ds.train), generator=torch.Generator().manual_seed(0)), "low", "cscore")
    res = fastdd.coverage(syn, tiny_ds, extractor=flat, scores=scores, show_progress=False)
    train_f, test_f, syn_f = (flat(t) for t in (tiny_ds.train.images, tiny_ds.test.images, syn.images))
    frac, r = brute(train_f, syn_f)
    assert res.radius == pytest.approx(r, rel=1e-12) and res.train == frac
    assert res.test == brute(test_f, syn_f, r)[0]
    hard = hard_mask(tiny_ds.train.labels, scores)
    assert res.train_hard == brute(train_f[hard], syn_f, r)[0]
    assert res.train_easy == brute(train_f[~hard], syn_f, r)[0]
    assert res.test_easy is None and res.test_hard is None  # no scores for the test split
    t_scores = torch.rand(len(tiny_ds.test), generator=torch.Generator().manual_seed(1))
    res2 = coverage_from_features(
        train_f,
        syn_f,
        test_features=test_f,
        test_labels=tiny_ds.test.labels,
        test_scores=t_scores,
        hardest="high",
        split="test",
    )
    thard = hard_mask(tiny_ds.test.labels, t_scores, "high")
    assert res2.train is None and res2.test_hard == brute(test_f[thard], syn_f, r)[0]
    # the whole train split covers itself
    full = real_subset(tiny_ds, torch.arange(len(tiny_ds.train)))
    assert fastdd.coverage(full, tiny_ds, extractor=flat, split="train", show_progress=False).train == 1.0


def test_coverage_default_extractor_is_seeded(tiny_ds):
    syn = real_subset(tiny_ds, fastdd.select(tiny_ds, "random", 2, seed=0))
    a = fastdd.coverage(syn, tiny_ds, seed=1, show_progress=False)
    assert a == fastdd.coverage(syn, tiny_ds, seed=1, show_progress=False)
    assert 0 <= a.train <= 1 and 0 <= a.test <= 1 and a.radius > 0 and "convnet" in a.extractor


def test_cli_coverage_on_digits(tmp_path, capsys):
    import numpy as np

    ds = fastdd.load_dataset("digits")
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random(len(ds.train)).astype(np.float32))
    assert (
        main(
            [
                "select",
                "--dataset",
                "digits",
                "--method",
                "kcenter",
                "--ipc",
                "2",
                "--extractor-epochs",
                "1",
                "--out",
                str(tmp_path / "kc"),
            ]
        )
        == 0
    )
    out = tmp_path / "cov"
    assert (
        main(
            [
                "coverage",
                "--dataset",
                "digits",
                "--syn",
                str(tmp_path / "kc"),
                "--random-ipc",
                "1",
                "3",
                "--scores",
                str(tmp_path / "f.npy"),
                "--extractor-epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "coverage.csv")))
    assert [(r["method"], r["ipc"]) for r in rows] == [("kcenter", "2"), ("random", "1"), ("random", "3")]
    for r in rows:
        assert all(0 <= float(r[k]) <= 1 for k in ("train", "train_easy", "train_hard", "test"))
    assert len({r["radius"] for r in rows}) == 1
    assert (out / "coverage_vs_ipc.png").stat().st_size > 0 and (out / "coverage_easy_hard.png").stat().st_size > 0
    assert "radius r =" in capsys.readouterr().out


def test_torch_search_without_faiss_matches_faiss(monkeypatch):
    # without FAISS installed, the exact torch ranking finds the same neighbours and float64 distances
    import fastdd.knn_coverage as cov

    g = torch.Generator().manual_seed(3)
    pts = torch.randn(300, 12, generator=g, dtype=torch.float64)
    q = torch.randn(50, 12, generator=g, dtype=torch.float64)
    ref_self, ref_q = nearest_distances(pts, pts, exclude_self=True), nearest_distances(q, pts)
    monkeypatch.setattr(cov, "_faiss", lambda: None)
    assert cov.search_backend(pts) == "torch" and not faiss_gpu_available()
    got_self, got_q = nearest_distances(pts, pts, exclude_self=True), nearest_distances(q, pts)
    brute = torch.cdist(q, pts)
    for (d, i), (rd, ri) in ((got_self, ref_self), (got_q, ref_q)):
        assert torch.equal(i, ri)
        torch.testing.assert_close(d, rd, rtol=0, atol=0)
    torch.testing.assert_close(got_q[0], brute.min(1).values, rtol=1e-12, atol=1e-12)
