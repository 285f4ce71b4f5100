"""Keeping the best set by its validation score (distill(select_every=...)), never the test split."""

import csv

import pytest
import torch

import fastdd

SMALL = {"width": 4, "depth": 1}
SELECT = dict(epochs=2, model_kwargs=SMALL)


def test_keeps_the_best_scoring_iteration_and_records_it(tiny_ds, tmp_path):
    ds = tiny_ds.with_validation(0.25, seed=0)
    kw = dict(ipc=2, seed=0, show_progress=False, model_kwargs=SMALL, batch_real=8, lr_img=5.0)
    syn = fastdd.distill(ds, "dm", iterations=6, select_every=2, select_options=SELECT, out=tmp_path, **kw)
    sel = syn.meta["selection"]
    rows = list(csv.DictReader(open(tmp_path / "selection.csv")))
    assert [int(r["iterations"]) for r in rows] == [2, 4, 6] and sel["split"] == "val"
    scores = [float(r["score"]) for r in rows]
    assert sel["kept_iteration"] == 2 * (scores.index(max(scores)) + 1)
    assert sel["val_score"] == pytest.approx(max(scores))
    # the kept set is the set a plain run of that many iterations ends with (scoring changes nothing)
    plain = fastdd.distill(ds, "dm", iterations=sel["kept_iteration"], **kw)
    assert torch.equal(syn.images, plain.images)
    # and its score is its validation accuracy under the selection protocol
    again = fastdd.evaluate(plain, ds, "mtt", num_eval=1, seed=0, split="val", show_progress=False, **SELECT)
    assert again.mean == pytest.approx(sel["val_score"])


def test_selection_resumes_bitwise(tiny_ds, tmp_path):
    ds = tiny_ds.with_validation(0.25, seed=0)
    kw = dict(
        ipc=1,
        seed=1,
        show_progress=False,
        model_kwargs=SMALL,
        batch_real=4,
        outer_loop=2,
        inner_loop=1,
        select_every=1,
        select_options=SELECT,
    )
    full = fastdd.distill(ds, "dsa", iterations=3, **kw)
    fastdd.distill(ds, "dsa", iterations=2, out=tmp_path, checkpoint_every=1, **kw)
    resumed = fastdd.distill(ds, "dsa", iterations=3, out=tmp_path, resume=True, checkpoint_every=1, **kw)
    assert torch.equal(full.images, resumed.images)
    assert full.meta["selection"] == resumed.meta["selection"]
    assert len((tmp_path / "selection.csv").read_text().splitlines()) == 1 + 3


def test_selection_needs_a_validation_split(tiny_ds):
    with pytest.raises(ValueError, match="with_validation"):
        fastdd.distill(tiny_ds, "dm", ipc=1, iterations=1, select_every=1, show_progress=False)
    with pytest.raises(ValueError, match="dd"):
        fastdd.distill(tiny_ds.with_validation(0.25), "dd", iterations=1, select_every=1, show_progress=False)


def test_cli_selects_on_a_validation_split(tmp_path):
    import json

    from fastdd.cli import main

    opts = json.dumps({"model_kwargs": {"width": 4, "depth": 1}, "batch_real": 4})
    assert (
        main(
            [
                "distill",
                "--dataset",
                "digits",
                "--method",
                "dm",
                "--ipc",
                "1",
                "--iterations",
                "2",
                "--options",
                opts,
                "--val-fraction",
                "0.1",
                "--select-every",
                "1",
                "--select-options",
                json.dumps({"epochs": 1, "model_kwargs": {"width": 4, "depth": 1}}),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "synthetic" / "synthetic.json").read_text())
    assert meta["selection"]["kept_iteration"] in (1, 2) and meta["selection"]["split"] == "val"
    assert (tmp_path / "selection.csv").exists()
