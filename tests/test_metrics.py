"""DD-Ranking's IOR / HLR / LRS / ARS against their formulas, and evaluate()'s baselines, validation
split, soft-label protocol and cross-architecture table."""

import math

import pytest
import torch

import fastdd
from fastdd.metrics import ars, hlr, ior, lrs
from fastdd.selection import random_indices, real_subset

E = math.e


def test_metrics_match_the_formulas():
    assert ior(0.62, 0.50) == pytest.approx(0.12)
    assert hlr(0.84, 0.62) == pytest.approx(0.22)
    a = 0.5 * 0.12 - 0.5 * 0.22
    assert lrs(0.12, 0.22) == pytest.approx((math.exp(a) - 1 / E) / (E - 1 / E))
    assert lrs(0.12, 0.22, weight=1.0) == pytest.approx((math.exp(0.12) - 1 / E) / (E - 1 / E))
    assert lrs(1.0, 0.0, weight=1.0) == pytest.approx(1.0) and lrs(0.0, 1.0, weight=0.0) == pytest.approx(0.0)
    b = 0.3 * 0.1 + 0.7 * 0.05
    assert ars(0.1, 0.05, weight=0.3) == pytest.approx((math.exp(b) - 1 / E) / (E - 1 / E))


def test_metrics_reject_percentages_and_bad_weights():
    with pytest.raises(ValueError, match="fractions"):
        ior(62.0, 50.0)
    with pytest.raises(ValueError, match="weight"):
        lrs(0.1, 0.1, weight=2.0)


def test_validation_split_is_seeded_stratified_and_disjoint(tiny_ds):
    ds = tiny_ds.with_validation(0.25, seed=1)
    assert len(ds.val) == 4 * 3 and len(ds.train) == 4 * 9 and torch.equal(ds.test.images, tiny_ds.test.images)
    assert torch.bincount(ds.val.labels).tolist() == [3] * 4 and ds.class_counts() == [9] * 4
    rows = lambda s: {tuple(x.flatten().tolist()) for x in s.images}  # noqa: E731
    full, tr, va, te = rows(tiny_ds.train), rows(ds.train), rows(ds.val), rows(ds.test)
    assert tr | va == full and not tr & va and not (tr | va) & te
    again = tiny_ds.with_validation(0.25, seed=1)
    assert torch.equal(again.val.images, ds.val.images)
    assert not torch.equal(tiny_ds.with_validation(0.25, seed=2).val.images, ds.val.images)
    with pytest.raises(ValueError, match="already"):
        ds.with_validation(0.1)
    with pytest.raises(ValueError, match="fraction"):
        tiny_ds.with_validation(1.5)


def test_evaluate_on_val_and_baselines(tiny_ds):
    ds = tiny_ds.with_validation(0.25, seed=0)
    syn = real_subset(ds, random_indices(ds, 2, seed=0))
    kw = dict(num_eval=2, epochs=3, show_progress=False, model_kwargs={"width": 4, "depth": 1})
    res = fastdd.evaluate(syn, ds, random_baseline=True, real_baseline=True, real_epochs=2, **kw)
    assert res.ior == pytest.approx(res.mean - res.random.mean)
    assert res.hlr == pytest.approx(res.real.mean - res.mean)
    assert res.lrs() == pytest.approx(lrs(res.ior, res.hlr))
    assert res.real.protocol["num_images"] == len(ds.train) and "IOR" in str(res) and "LRS" in str(res)
    d = res.to_dict()
    assert d["ior"] == res.ior and d["real"]["accuracies"] == res.real.accuracies
    val = fastdd.evaluate(syn, ds, split="val", **kw)
    assert val.protocol["split"] == "val"
    from fastdd.evaluation import resolve_protocol, train_on

    p = resolve_protocol("mtt", epochs=3, model_kwargs={"width": 4, "depth": 1})
    from fastdd.evaluation import _run_seed

    want = train_on(
        syn.images, syn.labels, ds, p, 0.01, seed=_run_seed(0, 0), test_images=ds.val.images, test_labels=ds.val.labels
    )
    assert val.accuracies[0] == want
    with pytest.raises(ValueError, match="validation"):
        fastdd.evaluate(syn, tiny_ds, split="val", **kw)


def test_soft_label_protocol_and_hard_labels_for_hlr(tiny_ds):
    syn = real_subset(tiny_ds, random_indices(tiny_ds, 2, seed=0))
    kw = dict(num_eval=1, epochs=2, show_progress=False, model_kwargs={"width": 4, "depth": 1})
    with pytest.raises(ValueError, match="soft labels"):
        fastdd.evaluate(syn, tiny_ds, "soft", **kw)
    soft = fastdd.SyntheticSet(
        syn.images, torch.nn.functional.one_hot(syn.labels, 4).float() * 0.7 + 0.075, None, None, dict(syn.meta)
    )
    res = fastdd.evaluate(soft, tiny_ds, "soft", real_baseline=True, real_epochs=1, **kw)
    assert res.hard is not None and res.hard.protocol["labels"] == "hard"
    assert res.hlr == pytest.approx(res.real.mean - res.hard.mean)
    hard = fastdd.evaluate(soft, tiny_ds, "mtt", labels="hard", **kw)
    plain = fastdd.evaluate(syn, tiny_ds, "mtt", **kw)
    assert hard.accuracies == plain.accuracies  # argmax labels = the subset's own labels


def test_cross_architecture_evaluation(tiny_ds):
    syn = real_subset(tiny_ds, random_indices(tiny_ds, 2, seed=0))
    res = fastdd.evaluate(
        syn,
        tiny_ds,
        "mtt",
        num_eval=1,
        epochs=1,
        show_progress=False,
        model_kwargs={"width": 4, "depth": 1},
        models=["convnet", ("mlp", {"width": 8})],
        random_baseline=True,
    )
    assert set(res.results) == {"convnet", "mlp"}
    assert res["convnet"].protocol["model_kwargs"] == {"width": 4, "depth": 1}
    assert res["mlp"].protocol["model"] == "mlp" and res["mlp"].random is not None
    assert "| mlp |" in res.table()
    alone = fastdd.evaluate(
        syn, tiny_ds, "mtt", num_eval=1, epochs=1, show_progress=False, model_kwargs={"width": 4, "depth": 1}
    )
    assert res["convnet"].accuracies == alone.accuracies
