"""fastdd.sweep_window: the same accuracies as a window selection evaluated by hand, the best beta chosen on
the validation split when there is one (else on test, and said so), and `fastdd sweep window` writing the
files the API writes."""

import json

import numpy as np
import pytest
import torch

import fastdd
from fastdd.cli import main
from fastdd.evaluation import EvalResult
from fastdd.scores import Scores
from fastdd.selection import real_subset
from fastdd.window_sweep import window_betas

SMALL = {"epochs": 1, "model_kwargs": {"width": 8}}  # E = 1 trains 2 passes; a narrow ConvNet


@pytest.fixture(scope="module")
def digits():
    return fastdd.load_dataset("digits")


def _random_scores(n: int, seed: int = 0) -> Scores:
    return Scores(torch.rand(n, generator=torch.Generator().manual_seed(seed)), hardest="low", kind="random")


def _by_hand(ds, scores, ipc, beta, split="test"):
    idx = fastdd.window_indices(ds.train.labels, scores, ipc, beta)
    syn = real_subset(ds, idx, method="window", ipc=ipc, beta=beta)
    return fastdd.evaluate(syn, ds, "mtt", num_eval=1, seed=3, split=split, show_progress=False, **SMALL)


def test_sweep_equals_window_selections_evaluated_by_hand(digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = _random_scores(len(digits.train))
    sweep = fastdd.sweep_window(digits, 2, scores, [0, 1.5], num_eval=1, seed=3, show_progress=False, **SMALL)
    want = [_by_hand(digits, scores, 2, beta) for beta in (0, 1.5)]
    assert sweep.betas == [0.0, 1.5] and sweep.val_results is None
    assert [r.accuracies for r in sweep.results] == [r.accuracies for r in want]
    best = max(range(2), key=lambda i: want[i].mean)
    assert sweep.best_beta == sweep.betas[best] and sweep.best is sweep.results[best]
    assert sweep.best_beta_on == "test"
    d = sweep.to_dict()
    assert (d["ipc"], d["hardest"], d["best_beta_on"]) == (2, "low", "test")
    assert [(r["beta"], r["start_rank"], r["mean"]) for r in d["results"]] == [
        (0.0, 0, want[0].mean),
        (1.5, 3, want[1].mean),
    ]
    assert list(tmp_path.iterdir()) == [], "nothing written without out="


def test_with_a_validation_split_the_best_beta_is_chosen_on_it(digits, tmp_path):
    ds = digits.with_validation(0.2, seed=0)
    scores = _random_scores(len(ds.train), seed=1)
    sweep = fastdd.sweep_window(ds, 2, scores, [0, 2], num_eval=1, seed=3, out=tmp_path, show_progress=False, **SMALL)
    for beta, test, val in zip(sweep.betas, sweep.results, sweep.val_results):
        assert test.accuracies == _by_hand(ds, scores, 2, beta).accuracies
        assert val.accuracies == _by_hand(ds, scores, 2, beta, split="val").accuracies
        assert (test.protocol["split"], val.protocol["split"]) == ("test", "val")
    assert sweep.best_beta_on == "val"
    assert sweep.best_beta == max(zip(sweep.betas, sweep.val_results), key=lambda bv: bv[1].mean)[0]
    header = (tmp_path / "sweep.csv").read_text().splitlines()[0]
    assert header == "beta,mean,std,val_mean,val_std"
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["best_beta_on"] == "val" and saved["results"][0]["val"]["protocol"]["split"] == "val"
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_the_choosing_split_decides(digits, monkeypatch):
    # test accuracy rises with beta and validation accuracy falls: each split would pick another beta
    def fake_evaluate(syn, ds, protocol, num_eval, seed, split, show_progress, **overrides):
        beta = syn.meta["beta"]
        return EvalResult([0.5 + (0.1 * beta if split == "test" else -0.1 * beta)], {"name": "mtt", "split": split})

    monkeypatch.setattr("fastdd.window_sweep.evaluate", fake_evaluate)
    scores = _random_scores(len(digits.train))
    on_test = fastdd.sweep_window(digits, 2, scores, [0, 1, 2], show_progress=False)
    assert (on_test.best_beta, on_test.best_beta_on) == (2.0, "test")
    seen = []
    ds = digits.with_validation(0.2)
    on_val = fastdd.sweep_window(
        ds,
        2,
        _random_scores(len(ds.train)),
        [0, 1, 2],
        show_progress=False,
        on_result=lambda beta, test, val: seen.append((beta, test.mean, val.mean)),
    )
    assert (on_val.best_beta, on_val.best_beta_on) == (0.0, "val") and on_val.best.mean == 0.5
    assert seen == [(0.0, 0.5, 0.5), (1.0, 0.6, 0.4), (2.0, 0.7, 0.3)]


def test_bad_grids_fail_before_anything_is_trained(digits, tmp_path):
    scores = _random_scores(len(digits.train))
    with pytest.raises(ValueError, match="runs past the end of class"):
        fastdd.sweep_window(digits, 50, scores, [0, 5], out=tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="betas is empty"):
        fastdd.sweep_window(digits, 2, scores, [], out=tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="scores have 3 values"):
        fastdd.sweep_window(digits, 2, torch.zeros(3), out=tmp_path / "x", show_progress=False)
    assert not (tmp_path / "x").exists()
    assert window_betas(digits, 10, step=0.5, beta_max=2) == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_cli_writes_what_the_api_writes(digits, tmp_path, capsys):
    np.save(tmp_path / "s.npy", np.random.default_rng(0).integers(0, 5, len(digits.train)).astype(np.float32))
    args = ["--ipc", "2", "--scores", str(tmp_path / "s.npy"), "--betas", "0", "1", "--epochs", "1", "--num-eval", "1"]
    assert main(["sweep", "window", "--dataset", "digits", *args, "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    scores = fastdd.load_scores(tmp_path / "s.npy", digits)
    sweep = fastdd.sweep_window(
        digits, 2, scores, [0, 1], epochs=1, num_eval=1, out=tmp_path / "api", show_progress=False
    )
    for name in ("sweep.csv", "sweep.json", "sweep.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name
    assert json.loads((tmp_path / "cli" / "sweep.json").read_text()) == json.loads(json.dumps(sweep.to_dict()))
    assert (tmp_path / "cli" / "config.yaml").exists()
    assert f"best beta: {sweep.best_beta:g} " in printed and "chosen on the test split" in printed
