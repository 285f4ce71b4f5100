"""Difficulty scores: forgetting bookkeeping (hand-traced), forgetting_scores, and the score-file loaders."""

import numpy as np
import pytest
import torch
from conftest import SCORES, needs_scores  # noqa: E402

import fastdd
from fastdd.errors import CorruptFileError
from fastdd.scores import ForgettingTracker, Scores, load_cscores, load_forgetting, load_scores, save_scores


# ------------------------------------------------------------------------------------- bookkeeping
def _present(tracker, batches):
    for idx, correct in batches:
        tracker.update(torch.tensor(idx), torch.tensor(correct))


def test_forgetting_tracker_hand_traced():
    t = ForgettingTracker(4)
    # Run 1, epoch by epoch (minibatches in mixed order). Per example, the presentation sequences are
    #   ex0: 1 0 1 0 -> two 1->0 events        ex1: 0 0 0 0 -> never learned -> 4 (= presentations)
    #   ex2: 1 1 1 1 -> 0                      ex3: 0 1 0 1 -> one event
    _present(t, [([0, 1], [1, 0]), ([3, 2], [0, 1])])
    _present(t, [([2, 0], [1, 0]), ([1, 3], [0, 1])])
    _present(t, [([3], [0]), ([0, 1, 2], [1, 0, 1])])
    _present(t, [([1, 2, 3, 0], [0, 1, 1, 0])])
    assert t.run_scores().tolist() == [2.0, 4.0, 0.0, 1.0]
    t.end_run()
    # Run 2:  ex0: 1 1 1 1 -> 0    ex1: 0 1 0 0 -> 1    ex2: 1 0 0 0 -> 1    ex3: 0 0 0 0 -> 4
    _present(t, [([0, 1, 2, 3], [1, 0, 1, 0])])
    _present(t, [([3, 2, 1, 0], [0, 0, 1, 1])])
    _present(t, [([0, 1], [1, 0]), ([2, 3], [0, 0])])
    _present(t, [([2], [0]), ([3], [0]), ([1], [0]), ([0], [1])])
    t.end_run()
    assert t.runs == 2
    assert t.scores().dtype == torch.float32
    assert t.scores().tolist() == [1.0, 2.5, 0.5, 2.5]  # mean of [2,4,0,1] and [0,1,1,4]


def test_forgetting_tracker_first_presentation_is_no_event_and_unseen_is_never_learned():
    t = ForgettingTracker(3)
    _present(t, [([0, 1], [0, 1])])  # a wrong first presentation is not a forgetting event
    _present(t, [([0, 1], [1, 1])])
    assert t.scores().tolist() == [0.0, 0.0, 0.0]  # in-progress run counts; ex2 unseen: 0 presentations
    with pytest.raises(ValueError, match="distinct"):
        t.update(torch.tensor([0, 0]), torch.tensor([1, 1]))
    with pytest.raises(IndexError):
        t.update(torch.tensor([3]), torch.tensor([1]))


# -------------------------------------------------------------------------------- forgetting_scores
def test_forgetting_scores_end_to_end_on_tiny(tiny_ds):
    s = fastdd.forgetting_scores(tiny_ds, epochs=3, runs=2, seed=0, batch_size=16, show_progress=False)
    assert s.shape == (len(tiny_ds.train),) and s.dtype == torch.float32
    assert float(s.min()) >= 0 and float(s.max()) <= 3
    assert torch.equal(s * 2, (s * 2).round())  # the mean of 2 integer counts
    again = fastdd.forgetting_scores(tiny_ds, epochs=3, runs=2, seed=0, batch_size=16, show_progress=False)
    assert torch.equal(s, again)


def test_forgetting_scores_without_learning_are_zero_or_max(tiny_ds):
    # lr = 0: every example keeps its initial prediction, so it is either always right (0 events) or
    # never learned (count = number of epochs); the same examples for 1 and 3 epochs (same init).
    kw = dict(seed=3, batch_size=5, lr=0.0, momentum=0.0, weight_decay=0.0, show_progress=False)
    one = fastdd.forgetting_scores(tiny_ds, epochs=1, **kw)
    three = fastdd.forgetting_scores(tiny_ds, epochs=3, **kw)
    assert set(one.tolist()) <= {0.0, 1.0} and torch.equal(three, 3 * one)
    assert 0 < float(one.sum()) < len(one)  # both kinds occur, so the test can tell them apart


def test_forgetting_is_recorded_before_the_optimiser_step(tiny_ds):
    # one epoch, one full batch: the only presentation happens at init. Recorded before the step, a
    # huge lr cannot change the result, which must equal the no-learning run's (same init seed).
    n = len(tiny_ds.train)
    kw = dict(epochs=1, seed=7, batch_size=n, momentum=0.0, weight_decay=0.0, show_progress=False)
    frozen = fastdd.forgetting_scores(tiny_ds, lr=0.0, **kw)
    assert torch.equal(fastdd.forgetting_scores(tiny_ds, lr=5.0, **kw), frozen)


# ------------------------------------------------------------------------------------------ loaders
def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_cscore_loader_checks_labels(tmp_path):
    labels = np.array([0, 1, 2, 1, 0], dtype=np.int64)
    f = _write_npz(tmp_path / "cs.npz", labels=labels, scores=np.array([0.5, 0.1, 0.9, 0.3, 0.2]))
    s = load_cscores(f, labels=torch.from_numpy(labels))
    assert s.hardest == "low" and s.kind == "cscore" and s.values.dtype == torch.float64
    assert s.values.tolist() == [0.5, 0.1, 0.9, 0.3, 0.2]
    wrong = labels.copy()
    wrong[3] = 2
    with pytest.raises(ValueError, match=r"cs\.npz.*index 3"):
        load_cscores(f, labels=wrong)
    with pytest.raises(ValueError, match=r"cs\.npz holds 5 C-scores but the data set has 4"):
        load_cscores(f, labels=labels[:4])
    with pytest.raises(CorruptFileError, match=r"nokey\.npz has no 'scores'"):
        load_cscores(_write_npz(tmp_path / "nokey.npz", labels=labels))
    np.savez(tmp_path / "obj.npz", labels=labels, scores=np.array([None] * 5, dtype=object))
    with pytest.raises(CorruptFileError, match=r"obj\.npz.*unpickling"):
        load_cscores(tmp_path / "obj.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptFileError, match=r"bad\.npz"):
        load_cscores(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_cscores(tmp_path / "missing.npz")


def test_forgetting_loader_and_dispatch(tmp_path):
    np.save(tmp_path / "f.npy", np.array([0.0, 2.2, 1.0], dtype=np.float32))
    s = load_forgetting(tmp_path / "f.npy", n=3)
    assert s.hardest == "high" and s.values.dtype == torch.float32
    with pytest.raises(ValueError, match=r"f\.npy.*3 values but the training split has 4"):
        load_forgetting(tmp_path / "f.npy", n=4)
    np.save(tmp_path / "two_d.npy", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(CorruptFileError, match=r"two_d\.npy.*1-D"):
        load_forgetting(tmp_path / "two_d.npy")
    np.save(tmp_path / "nan.npy", np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(CorruptFileError, match=r"nan\.npy.*NaN.*index 1"):
        load_forgetting(tmp_path / "nan.npy")
    assert load_scores(tmp_path / "f.npy").kind == "forgetting"
    _write_npz(tmp_path / "c.npz", labels=np.zeros(3, dtype=np.int64), scores=np.ones(3))
    assert load_scores(tmp_path / "c.npz").kind == "cscore"
    for kind in ("el2n", "grand"):  # files written by save_scores: their kind, convention and metadata
        saved = save_scores(Scores(torch.ones(3), "high", kind, meta={"seed": 1}), tmp_path / f"{kind}.npz")
        back = load_scores(saved)
        assert (back.kind, back.hardest, back.meta) == (kind, "high", {"seed": 1})
    (tmp_path / "s.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"s\.txt: unknown extension"):
        load_scores(tmp_path / "s.txt")


def test_load_scores_checks_against_dataset(tmp_path, tiny_ds):
    n = len(tiny_ds.train)
    labels = tiny_ds.train.labels.numpy().copy()
    _write_npz(tmp_path / "ok.npz", labels=labels, scores=np.linspace(0, 1, n))
    assert len(load_scores(tmp_path / "ok.npz", tiny_ds)) == n
    labels[7] = (labels[7] + 1) % tiny_ds.num_classes
    _write_npz(tmp_path / "bad.npz", labels=labels, scores=np.linspace(0, 1, n))
    with pytest.raises(ValueError, match=r"bad\.npz.*first at index 7"):
        load_scores(tmp_path / "bad.npz", tiny_ds)
    np.save(tmp_path / "short.npy", np.zeros(n - 1, dtype=np.float32))
    with pytest.raises(ValueError, match=r"short\.npy"):
        load_scores(tmp_path / "short.npy", tiny_ds)


@needs_scores
def test_real_score_files_load():
    cs = load_cscores(SCORES / "cscores_CIFAR10.npz")
    assert len(cs) == 50_000 and cs.values.dtype == torch.float64
    with np.load(SCORES / "cscores_CIFAR10.npz", allow_pickle=False) as z:
        labels = z["labels"]
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # torchvision CIFAR-10 train order
    load_cscores(SCORES / "cscores_CIFAR10.npz", labels=labels)  # matching labels pass
    wrong = labels.copy()
    wrong[12345] = (wrong[12345] + 1) % 10
    with pytest.raises(ValueError, match=r"cscores_CIFAR10\.npz.*first at index 12345"):
        load_cscores(SCORES / "cscores_CIFAR10.npz", labels=wrong)
    f = load_forgetting(SCORES / "forgetting_CIFAR10.npy", n=50_000)
    assert f.values.dtype == torch.float32 and float(f.values.max()) == pytest.approx(55.4)
    assert len(load_scores(SCORES / "forgetting_Tiny.npy")) == 100_000


def test_scores_convention_is_checked():
    s = Scores(torch.zeros(3), hardest="high", kind="forgetting")
    with pytest.raises(ValueError, match="contradicts"):
        fastdd.window_indices(torch.zeros(3, dtype=torch.long), s, ipc=1, beta=0, hardest="low")
    with pytest.raises(ValueError, match="hardest must be"):
        Scores(torch.zeros(3), hardest="hard")
