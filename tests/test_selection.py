"""Selection: SelMatch's window on the real score files, herding / k-center / k-means on hand-made
points, every method class-balanced and seeded, and the `sweep window` command."""

import csv

import numpy as np
import pytest
import torch
from conftest import SCORES, needs_scores  # noqa: E402

import fastdd
from fastdd.cli import main
from fastdd.data import from_pixels
from fastdd.scores import Scores, load_cscores, load_forgetting
from fastdd.selection import (
    METHODS,
    beta_grid,
    extract_features,
    herding_order,
    kcenter_order,
    kmeans_order,
    max_window_beta,
    select,
    window_indices,
)


def reference_window(labels: list[int], scores: list[float], ipc: int, beta: float, hardest: str) -> list[int]:
    """The rule written the simple way (as SelMatch does): per class, Python's stable sorted()."""
    out = []
    start = int(ipc * beta)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)  # ascending dataset order
    for c in sorted(by_class):
        ranked = sorted(by_class[c], key=lambda i: scores[i], reverse=(hardest == "high"))
        assert start + ipc <= len(ranked)
        out += ranked[start : start + ipc]
    return out


# ------------------------------------------------------------------------------------------- window
def test_window_hand_example_with_ties():
    labels = [1, 0, 0, 1, 0, 1, 0, 1]
    scores = [0.5, 0.2, 0.1, 0.5, 0.2, 0.1, 0.9, 0.5]
    # class 0 = [1, 2, 4, 6] scores [.2, .1, .2, .9]; class 1 = [0, 3, 5, 7] scores [.5, .5, .1, .5]
    assert window_indices(labels, scores, ipc=2, beta=0.0, hardest="low").tolist() == [2, 1, 5, 0]
    assert window_indices(labels, scores, ipc=2, beta=0.5, hardest="low").tolist() == [1, 4, 0, 3]
    assert window_indices(labels, scores, ipc=2, beta=0.0, hardest="high").tolist() == [6, 1, 0, 3]
    assert window_indices(labels, scores, ipc=2, beta=1.0, hardest="high").tolist() == [4, 2, 7, 5]
    with pytest.raises(ValueError, match="runs past the end of class 0"):
        window_indices(labels, scores, ipc=2, beta=1.5)
    with pytest.raises(ValueError, match="same length"):
        window_indices(labels[:-1], scores, ipc=1, beta=0)


@needs_scores
@pytest.mark.parametrize(
    "ipc,beta", [(250, 0.5), (500, 0.3), (1000, 0.2), (1500, 0.2), (10, 0.0), (50, 0.7), (25, 0.3)]
)
def test_window_on_real_cifar10_scores(ipc, beta):
    cs = load_cscores(SCORES / "cscores_CIFAR10.npz")
    with np.load(SCORES / "cscores_CIFAR10.npz", allow_pickle=False) as z:
        labels = z["labels"].tolist()
    fg = load_forgetting(SCORES / "forgetting_CIFAR10.npy")
    for s, hardest in ((cs, "low"), (fg, "high")):
        got = window_indices(labels, s.values, ipc, beta, hardest=hardest)
        assert got.tolist() == reference_window(labels, s.values.tolist(), ipc, beta, hardest)
        assert torch.equal(got, window_indices(labels, s, ipc, beta))  # the Scores' own convention
        per_class = torch.bincount(torch.tensor(labels)[got], minlength=10)
        assert per_class.tolist() == [ipc] * 10


@needs_scores
def test_window_on_real_tiny_forgetting_scores():
    fg = load_forgetting(SCORES / "forgetting_Tiny.npy", n=100_000)
    labels = np.repeat(np.arange(200), 500)  # ImageFolder order: 200 classes x 500
    values = fg.values.tolist()
    # forgetting counts tie a lot: the tie rule (ascending index) decides most windows
    assert len(set(values)) < 1000
    for ipc, beta in ((50, 0.8), (100, 0.7), (10, 0.0), (100, 3.9)):
        got = window_indices(labels, fg, ipc, beta)
        assert got.tolist() == reference_window(labels.tolist(), values, ipc, beta, "high")
    with pytest.raises(ValueError, match="runs past the end of class 0, which has 500"):
        window_indices(labels, fg, ipc=100, beta=4.1)


@needs_scores
def test_window_overflow_on_cifar10():
    cs = load_cscores(SCORES / "cscores_CIFAR10.npz")
    with np.load(SCORES / "cscores_CIFAR10.npz", allow_pickle=False) as z:
        labels = z["labels"]
    assert max_window_beta(5000, 1500) == pytest.approx(2.3)
    window_indices(labels, cs, ipc=1500, beta=2.3)
    with pytest.raises(ValueError, match=r"\[3600, 5100\) .* runs past the end of class 0, which has 5000 examples"):
        window_indices(labels, cs, ipc=1500, beta=2.4)


def test_beta_grid():
    # int(5 * 1.1) = 5: the window [5, 10) still fits a class of 10; 1.2 starts at 6 and does not
    assert beta_grid(10, 5) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]
    assert beta_grid(5000, 1500, beta_max=0.7)[-1] == 0.7 and beta_grid(5000, 1500, beta_max=0.7)[3] == 0.3


# ------------------------------------------------------------------------- greedy methods, by hand
def _points_ds(points_by_class: list[list[tuple[float, float]]], interleave: bool = True):
    """A Dataset whose train images are dummies; the features are the given 2-D points. Dataset
    order interleaves the classes, so class-local positions differ from dataset indices."""
    feats, labels = [], []
    order = []
    n = max(len(p) for p in points_by_class)
    for j in range(n):
        for c, pts in enumerate(points_by_class):
            if j < len(pts):
                order.append((c, j))
    for c, j in order:
        feats.append(points_by_class[c][j])
        labels.append(c)
    x = torch.rand(len(labels), 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor(labels)
    ds = from_pixels(
        "points", x, y, x[: len(points_by_class)], torch.arange(len(points_by_class)), len(points_by_class)
    )
    pos = {cj: i for i, cj in enumerate(order)}
    return ds, torch.tensor(feats, dtype=torch.float32), pos


HERD_A = [(0, 0), (2, 0), (0, 2), (2, 2), (1, 1)]
HERD_B = [(0, 0), (4, 0), (0, 2), (5, 5)]
KC = [(0, 0), (1, 0), (10, 0), (0, 5), (6, 6)]


def test_herding_hand_computed():
    # A: mean (1,1). i=1: target (1,1) -> (1,1)=#4. i=2: 2μ-(1,1)=(1,1): #0..#3 all at √2 -> lowest #0.
    #    i=3: 3μ-(1,1)-(0,0)=(2,2) -> #3. i=4: 4μ-(3,3)=(1,1): #1, #2 at √2 -> #1.
    assert herding_order(torch.tensor(HERD_A, dtype=torch.float32), 4).tolist() == [4, 0, 3, 1]
    # B: mean (2.25,1.75). i=1: squared distances 8.125, 6.125, 5.125, 18.125 -> #2 (0,2).
    #    i=2: target (4.5,3.5)-(0,2)=(4.5,1.5): 22.5, 2.5, -, 12.5 -> #1 (4,0).
    #    i=3: target (6.75,5.25)-(4,2)=(2.75,3.25): 18.125 vs 8.125 -> #3 (5,5) (nearest-to-mean would take #0)
    assert herding_order(torch.tensor(HERD_B, dtype=torch.float32), 3).tolist() == [2, 1, 3]


def test_kcenter_hand_computed():
    # mean (3.4, 2.2): squared distances 16.4, 10.6, 48.4, 19.4, 21.2 -> start #1 (1,0).
    # min distances to {#1}: 1, -, 9, √26, √61 -> #2 (10,0); then (6,6): min(√61, √52) = √52 > √26 -> #4;
    # then (0,5): min(√26, √125, √37) = √26 > 1 -> #3; last #0.
    assert kcenter_order(torch.tensor(KC, dtype=torch.float32), 5).tolist() == [1, 2, 4, 3, 0]


def test_greedy_methods_through_select_map_to_dataset_indices():
    ds, feats, pos = _points_ds([HERD_B, KC])
    herd = select(ds, "herding", 3, features=feats)
    assert herd.tolist()[:3] == [pos[(0, 2)], pos[(0, 1)], pos[(0, 3)]]
    kc = select(ds, "kcenter", 3, features=feats)
    assert kc.tolist()[3:] == [pos[(1, 1)], pos[(1, 2)], pos[(1, 4)]]
    assert torch.bincount(ds.train.labels[kc]).tolist() == [3, 3]


def test_kmeans_picks_the_sample_nearest_each_centroid_without_duplicates():
    two_clusters = torch.tensor([(0, 0), (1, 0), (2, 0), (100, 0), (100, 1), (100, 2)], dtype=torch.float32)
    assert sorted(kmeans_order(two_clusters, 2).tolist()) == [1, 4]
    same = torch.zeros(5, 3)  # every centroid is nearest to the same points: still 3 distinct picks
    assert sorted(kmeans_order(same, 3).tolist()) == [0, 1, 2]


# ------------------------------------------------------------------------------ select, all methods
def test_every_method_is_class_balanced_and_seeded(tiny_ds):
    ipc = 3
    net = fastdd.models.model_for(tiny_ds, "convnet", width=16)
    extractor = (net, net.init(torch.Generator().manual_seed(0)))
    feats = extract_features(tiny_ds, "train", extractor)
    scores = Scores(torch.rand(len(tiny_ds.train), generator=torch.Generator().manual_seed(1)), "high", "forgetting")
    kwargs = {
        "random": {},
        "window": {"scores": scores, "beta": 0.5},
        "forgetting": {"scores": scores},
        "el2n": {"scores": Scores(scores.values, "high", "el2n")},
        "grand": {"scores": scores.values, "beta": 1.0},
        "herding": {"features": feats},
        "kcenter": {"extractor": extractor},
        "kmeans": {"features": feats},
    }
    assert set(kwargs) == set(METHODS)
    for method, kw in kwargs.items():
        idx = select(tiny_ds, method, ipc, seed=5, **kw)
        assert idx.dtype == torch.long and len(idx) == ipc * tiny_ds.num_classes, method
        assert len(set(idx.tolist())) == len(idx), method
        labels = tiny_ds.train.labels[idx]
        assert labels.tolist() == sorted(labels.tolist()), f"{method}: not class-major"
        assert torch.bincount(labels).tolist() == [ipc] * tiny_ds.num_classes, method
        assert torch.equal(idx, select(tiny_ds, method, ipc, seed=5, **kw)), f"{method}: not reproducible"
    # forgetting = the most-forgotten ipc per class = window at beta 0 with hardest="high"
    assert torch.equal(
        select(tiny_ds, "forgetting", ipc, scores=scores),
        window_indices(tiny_ds.train.labels, scores.values, ipc, 0.0, hardest="high"),
    )
    # el2n / grand: the same window on their scores; easiest=True = the window with the other end hard
    for method in ("el2n", "grand"):
        s = Scores(scores.values, "high", method)
        assert torch.equal(select(tiny_ds, method, ipc, scores=s), window_indices(tiny_ds.train.labels, s, ipc, 0.0))
        assert torch.equal(
            select(tiny_ds, method, ipc, scores=s, beta=1.5, easiest=True),
            window_indices(tiny_ds.train.labels, scores.values, ipc, 1.5, hardest="low"),
        )


def test_default_extractor_is_seeded(tiny_ds):
    a = select(tiny_ds, "herding", 2, seed=0)
    assert torch.equal(a, select(tiny_ds, "herding", 2, seed=0))


def test_select_errors_name_the_argument(tiny_ds):
    s = torch.rand(len(tiny_ds.train))
    with pytest.raises(ValueError, match="needs scores="):
        select(tiny_ds, "window", 2, beta=0.1)
    with pytest.raises(ValueError, match="needs beta="):
        select(tiny_ds, "window", 2, scores=s)
    with pytest.raises(TypeError, match="does not use scores"):
        select(tiny_ds, "herding", 2, scores=s)
    with pytest.raises(TypeError, match="does not use features"):
        select(tiny_ds, "random", 2, features=torch.zeros(len(tiny_ds.train), 2))
    with pytest.raises(ValueError, match="48 examples"):
        select(tiny_ds, "window", 2, scores=s[:-1], beta=0.0)
    with pytest.raises(ValueError, match=r"features must be \(48, D\)"):
        select(tiny_ds, "kcenter", 2, features=torch.zeros(47, 2))
    with pytest.raises(ValueError, match="runs past the end"):
        select(tiny_ds, "window", 4, scores=s, beta=2.5)


def test_extractor_forms_agree(tiny_ds):
    buf = fastdd.train_experts(
        tiny_ds, "convnet", num_experts=1, epochs=1, out=None, model_kwargs={"width": 8}, show_progress=False
    )
    net, theta = buf.model(), buf[0][-1]
    want = net.embed(tiny_ds.train.images, theta)
    for ex in (buf, buf.path, (net, theta), lambda x: net.embed(x, theta)):
        assert torch.allclose(extract_features(tiny_ds, "train", ex, batch=7), want, atol=1e-6)
    with pytest.raises(ValueError, match=r"must return a \(7, D\) tensor"):
        extract_features(tiny_ds, "train", lambda x: x.flatten(), batch=7)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_sweep_window_on_digits(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                "window",
                "--dataset",
                "digits",
                "--ipc",
                "5",
                "--scores",
                "forgetting",
                "--forgetting-epochs",
                "1",
                "--beta-step",
                "0.2",
                "--beta-max",
                "0.4",
                "--epochs",
                "1",
                "--num-eval",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert list(rows[0]) == ["beta", "mean", "std"]
    assert [float(r["beta"]) for r in rows] == [0.0, 0.2, 0.4]
    best = max(rows, key=lambda r: float(r["mean"]))
    assert f"best beta: {float(best['beta']):g}" in printed
    assert (out / "sweep.png").stat().st_size > 0 and (out / "forgetting.npy").exists()
    # the saved scores reload and can drive `fastdd select --method window`
    assert (
        main(
            [
                "select",
                "--dataset",
                "digits",
                "--method",
                "window",
                "--ipc",
                "2",
                "--beta",
                "0.5",
                "--scores",
                str(out / "forgetting.npy"),
                "--out",
                str(tmp_path / "sel"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sweep",
                "window",
                "--dataset",
                "digits",
                "--ipc",
                "5",
                "--out",
                str(tmp_path / "x"),
                "--scores",
                str(tmp_path / "none.npy"),
            ]
        )
        == 2
    )
    assert "none.npy not found" in capsys.readouterr().err
