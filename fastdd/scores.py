"""Per-example difficulty scores: forgetting counts (computed) and C-scores (loaded from files).

Conventions (which end of the scale is *hard*):

- **C-score** (Jiang et al. 2021): expected held-out accuracy, in ``[0, 1]``; **low = hard**
  (``hardest="low"``). Not recomputable cheaply; load the released ``.npz`` files.
- **Forgetting count** (Toneva et al. 2019): how often an example goes from correctly to
  incorrectly classified during training, averaged over runs; **high = hard** (``hardest="high"``).
  Never-learned examples get the maximum, the number of presentations (= epochs).

Files are read with numpy (``allow_pickle=False``): nothing is unpickled. A loaded score array keeps
the dtype it has on disk (float64 C-scores, float32 forgetting counts): converting would round
distinct scores into ties and change the order that the window selection relies on.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import DSA, DSAConfig, crop_flip, strategy_for
from .data import Dataset
from .errors import CorruptFileError
from .models import model_for
from .rng import generator
from .runs import progress
from .train import SGD, fit

HARDEST = ("low", "high")


@dataclass(frozen=True)
class Scores:
    """A difficulty score per training example, with the convention that says which end is hard.

    Attributes:
        values: ``(N,)`` floating tensor on the CPU, index = the data set's training order.
        hardest: ``"low"`` (C-scores: low = hard) or ``"high"`` (forgetting: high = hard).
        kind: ``"cscore"``, ``"forgetting"`` or any label.
        source: the file the scores came from (``None`` if computed).
    """

    values: torch.Tensor
    hardest: str = "low"
    kind: str = "scores"
    source: str | None = None

    def __post_init__(self) -> None:
        check_hardest(self.hardest)
        if self.values.dim() != 1:
            raise ValueError(f"scores must be a 1-D (N,) tensor, got shape {tuple(self.values.shape)}")

    def __len__(self) -> int:
        return self.values.shape[0]

    def __repr__(self) -> str:
        src = f" from {self.source}" if self.source else ""
        return f"<Scores {self.kind}{src}: {len(self)} values, hardest={self.hardest!r}>"


def check_hardest(hardest: str) -> str:
    """Return ``hardest`` if it is ``"low"`` or ``"high"``, else raise ``ValueError`` naming it."""
    if hardest not in HARDEST:
        raise ValueError(
            f"hardest must be 'low' (C-scores: low = hard) or 'high' (forgetting: high = hard), got {hardest!r}"
        )
    return hardest


def as_scores(
    scores: Any, *, hardest: str | None = None, n: int | None = None, what: str = "scores", default_hardest: str = "low"
) -> Scores:
    """Coerce ``scores`` (a :class:`Scores`, tensor, array or list) into :class:`Scores`.

    ``hardest=None`` keeps a :class:`Scores`' own convention and uses ``default_hardest`` for plain
    arrays; an explicit ``hardest`` that contradicts a :class:`Scores`' convention raises. ``n``, when
    given, is the required length (e.g. ``len(ds.train)``).
    """
    if isinstance(scores, Scores):
        if hardest is not None and check_hardest(hardest) != scores.hardest:
            raise ValueError(
                f"hardest={hardest!r} contradicts the {scores.kind} scores' own convention "
                f"(hardest={scores.hardest!r}); leave hardest unset"
            )
        out = scores
    else:
        if isinstance(scores, (str, os.PathLike)):
            raise TypeError(f"{what} is a path ({os.fspath(scores)}); load it with fastdd.load_scores first")
        t = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
        if t.dim() != 1:
            raise ValueError(f"{what} must be 1-D (N,), got shape {tuple(t.shape)}")
        if not (
            t.is_floating_point()
            or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)
        ):
            raise ValueError(f"{what} must be numeric, got dtype {t.dtype}")
        out = Scores(t.detach().cpu(), hardest=check_hardest(hardest or default_hardest), kind="scores")
    if out.values.is_floating_point() and not torch.isfinite(out.values).all():
        bad = int(torch.nonzero(~torch.isfinite(out.values))[0])
        raise ValueError(f"{what} contain NaN or inf (first at index {bad})")
    if n is not None and len(out) != n:
        raise ValueError(f"{what} have {len(out)} values but the training split has {n} examples")
    return out


# --------------------------------------------------------------------------------------------- loading
def _np_load(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"score file {path} not found")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise CorruptFileError(
            f"{path}: cannot read without unpickling ({e}); score files must hold plain numeric arrays"
        ) from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"{path} is truncated or not a numpy .npy/.npz file: {e}") from e


def _check_array(a: np.ndarray, path: Path, key: str, n: int | None) -> np.ndarray:
    if a.ndim != 1:
        raise CorruptFileError(f"{path}: '{key}' must be 1-D (N,), got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise CorruptFileError(f"{path}: '{key}' must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise CorruptFileError(
            f"{path}: '{key}' contains NaN or inf (first at index {int(np.flatnonzero(~np.isfinite(a))[0])})"
        )
    if n is not None and len(a) != n:
        raise ValueError(f"{path}: '{key}' has {len(a)} values but the training split has {n} examples")
    return a


def load_cscores(path: str | os.PathLike, labels: Any = None) -> Scores:
    """Load C-scores from an ``.npz`` file with keys ``labels`` (int, ``(N,)``) and ``scores`` (``(N,)``).

    Args:
        path: the file (e.g. SelMatch's ``cscores_CIFAR10.npz``).
        labels: the data set's training labels ``(N,)`` (tensor or array); when given, the file's
            ``labels`` must equal them, else ``ValueError`` naming the file and the first mismatching
            index (or both lengths if they differ).

    Returns :class:`Scores` (``hardest="low"``, ``kind="cscore"``), values float64 as stored.
    """
    path = Path(path)
    data = _np_load(path)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CorruptFileError(f"{path} is a single array, not a C-score .npz with keys 'labels' and 'scores'")
    with data:
        for key in ("labels", "scores"):
            if key not in data.files:
                raise CorruptFileError(
                    f"{path} has no '{key}' array (keys: {', '.join(data.files) or 'none'}); "
                    "a C-score file holds 'labels' and 'scores'"
                )
        try:
            file_labels, scores = data["labels"], data["scores"]
        except ValueError as e:
            raise CorruptFileError(f"{path}: cannot read without unpickling ({e})") from e
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise CorruptFileError(f"{path} is truncated or corrupt: {e}") from e
    _check_array(file_labels, path, "labels", None)
    _check_array(scores, path, "scores", None)
    if len(file_labels) != len(scores):
        raise CorruptFileError(f"{path}: 'labels' has {len(file_labels)} values but 'scores' has {len(scores)}")
    if labels is not None:
        want = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if len(want) != len(file_labels):
            raise ValueError(
                f"{path} holds {len(file_labels)} C-scores but the data set has {len(want)} training "
                "labels: the file belongs to another data set"
            )
        diff = np.flatnonzero(file_labels.astype(np.int64) != want.astype(np.int64))
        if len(diff):
            i = int(diff[0])
            raise ValueError(
                f"{path}: labels differ from the data set's at {len(diff)} indices, first at index {i} "
                f"(file {int(file_labels[i])}, data set {int(want[i])}); the scores must follow the "
                "data set's training order"
            )
    return Scores(torch.from_numpy(np.ascontiguousarray(scores)), hardest="low", kind="cscore", source=os.fspath(path))


def load_forgetting(path: str | os.PathLike, n: int | None = None) -> Scores:
    """Load forgetting counts from an ``.npy`` float array ``(N,)`` (e.g. ``forgetting_CIFAR10.npy``).

    ``n``, when given, is the required length (the training split's size). Returns :class:`Scores`
    (``hardest="high"``, ``kind="forgetting"``), values as stored (float32 for SelMatch's files).
    """
    path = Path(path)
    a = _np_load(path)
    if isinstance(a, np.lib.npyio.NpzFile):
        a.close()
        raise CorruptFileError(f"{path} is an .npz archive; forgetting scores are a single .npy array")
    _check_array(a, path, "forgetting scores", n)
    if a.dtype.kind == "f" and (a < 0).any():
        raise CorruptFileError(f"{path}: forgetting counts cannot be negative (index {int(np.flatnonzero(a < 0)[0])})")
    return Scores(torch.from_numpy(np.ascontiguousarray(a)), hardest="high", kind="forgetting", source=os.fspath(path))


def load_scores(path: str | os.PathLike, ds: Dataset | None = None) -> Scores:
    """Load a score file by extension: ``.npz`` → :func:`load_cscores`, ``.npy`` → :func:`load_forgetting`.

    With ``ds``, the file is checked against ``ds.train`` (labels for C-scores, length for both).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_cscores(path, labels=ds.train.labels if ds is not None else None)
    if suffix == ".npy":
        return load_forgetting(path, n=len(ds.train) if ds is not None else None)
    raise ValueError(
        f"score file {path}: unknown extension {path.suffix!r}; expected .npz (C-scores: 'labels', "
        "'scores') or .npy (forgetting counts)"
    )


# ------------------------------------------------------------------------------------------ forgetting
class ForgettingTracker:
    """Per-presentation bookkeeping of forgetting events (Toneva et al.), vectorised over examples.

    Call :meth:`update` once per minibatch with the examples' indices and whether each was
    classified correctly at that presentation; :meth:`end_run` after each training run. A
    forgetting event is a 1 → 0 transition between two consecutive presentations of an example.
    Examples never classified correctly in a run get that run's maximum (their number of
    presentations, = epochs when each example is seen once per epoch). :meth:`scores` averages the
    runs.

    State (all ``(n,)`` tensors on ``device``): ``last`` (bool, last presentation correct),
    ``ever`` (bool, correct at least once this run), ``forgets`` and ``presentations`` (int64).
    """

    def __init__(self, n: int, device: torch.device | str = "cpu"):
        if n < 1:
            raise ValueError(f"ForgettingTracker needs n >= 1 examples, got {n}")
        self.n, self.device = int(n), torch.device(device)
        self.total = torch.zeros(self.n, dtype=torch.float64, device=self.device)
        self.runs = 0
        self._reset()

    def _reset(self) -> None:
        z = dict(device=self.device)
        self.last = torch.zeros(self.n, dtype=torch.bool, **z)
        self.ever = torch.zeros(self.n, dtype=torch.bool, **z)
        self.forgets = torch.zeros(self.n, dtype=torch.int64, **z)
        self.presentations = torch.zeros(self.n, dtype=torch.int64, **z)

    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """Record one presentation of each example in ``indices`` ``(B,)`` int64 (distinct) with
        ``correct`` ``(B,)`` bool (or 0/1)."""
        indices = torch.as_tensor(indices, device=self.device).long().reshape(-1)
        correct = torch.as_tensor(correct, device=self.device).reshape(-1).bool()
        if indices.shape != correct.shape:
            raise ValueError(
                f"indices {tuple(indices.shape)} and correct {tuple(correct.shape)} must have the same length"
            )
        if len(indices) == 0:
            return
        if int(indices.min()) < 0 or int(indices.max()) >= self.n:
            raise IndexError(f"indices must lie in [0, {self.n}), got [{int(indices.min())}, {int(indices.max())}]")
        if len(torch.unique(indices)) != len(indices):
            raise ValueError("indices of one update must be distinct (one presentation per example per minibatch)")
        self.forgets[indices] += (self.last[indices] & ~correct).long()  # last is False before the 1st presentation
        self.last[indices] = correct
        self.ever[indices] |= correct
        self.presentations[indices] += 1

    def run_scores(self) -> torch.Tensor:
        """``(n,)`` float64: this run's counts; never-learned examples get their number of presentations."""
        return torch.where(self.ever, self.forgets, self.presentations).double()

    def end_run(self) -> None:
        """Finish the current run: add its counts to the total and reset the per-run state."""
        self.total += self.run_scores()
        self.runs += 1
        self._reset()

    def scores(self) -> torch.Tensor:
        """``(n,)`` float32: the mean count over the finished runs (and the current run, if it has any
        presentation)."""
        total, runs = self.total.clone(), self.runs
        if int(self.presentations.sum()) > 0:
            total += self.run_scores()
            runs += 1
        if runs == 0:
            raise RuntimeError("ForgettingTracker.scores(): no presentation was recorded")
        return (total / runs).float()


def forgetting_scores(
    ds: Dataset,
    model: str = "convnet",
    epochs: int = 20,
    runs: int = 1,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> torch.Tensor:
    """Forgetting counts of ``ds.train``'s examples, averaged over ``runs`` training runs.

    Each run trains a fresh ``model`` (SGD, ``epochs`` passes over a seeded permutation of the
    training split, minibatches of ``batch_size``). At every presentation, **before** the
    optimiser step, in train mode and on the (optionally augmented) input, each example's
    correctness (argmax = label) goes into a :class:`ForgettingTracker`.

    Args:
        model: a registry name (depth by resolution for ``"convnet"``); ``model_kwargs`` its options.
        augment: ``None``, ``"crop_flip"`` (pad-4 crop + flip) or ``"dsa"`` (DSA with the data
            set's strategy).
        seed: run ``r`` draws its init, batch order and augmentation from streams derived from
            ``(seed, r)``.

    Returns ``(N,)`` float32 counts on the CPU in ``[0, epochs]`` (high = hard). Never-learned
    examples count ``epochs``.
    """

    if epochs < 1 or runs < 1 or batch_size < 1:
        raise ValueError(f"epochs, runs and batch_size must be >= 1, got {epochs}, {runs}, {batch_size}")
    if augment not in (None, "none", "crop_flip", "dsa"):
        raise ValueError(f"augment must be None, 'crop_flip' or 'dsa', got {augment!r}")

    dev = ds.device
    net = model_for(ds, model, **(model_kwargs or {}))
    y_all = ds.train.labels
    tracker = ForgettingTracker(len(y_all), device=dev)
    dsa = None
    if augment == "dsa":
        dsa = DSA(DSAConfig(strategy=strategy_for(ds.name)))
    sgd = SGD(lr, momentum, weight_decay)
    bar = progress(total=runs * epochs, desc=f"forgetting ({net.name}, {ds.name})", disable=not show_progress)
    for r in range(runs):
        augment_fn = _run_augment(augment, dsa, generator(seed, "forgetting", r, "augment"))
        fit(
            net,
            net.init(generator(seed, "forgetting", r, "init"), device=dev),
            ds.train.images,
            y_all,
            epochs,
            sgd,
            generator(seed, "forgetting", r, "batches"),
            batch_size=batch_size,
            buffers=net.init_buffers(device=dev) if net.has_batchnorm else None,
            augment=augment_fn,
            on_batch=lambda idx, logits: tracker.update(idx, logits.detach().argmax(1) == y_all[idx]),
            on_epoch=lambda *_: bar.update(1),
        )
        tracker.end_run()
    bar.close()
    return tracker.scores().cpu()


def _run_augment(augment: str | None, dsa: Any, g: torch.Generator) -> Callable | None:
    """The augmentation ``(images, indices) -> images`` of one :func:`forgetting_scores` run, drawing from
    ``g``: ``dsa`` (a :class:`~fastdd.augment.DSA`) when given, pad-4 crop + flip for ``"crop_flip"``, else none."""

    if dsa is not None:
        return lambda x, idx: dsa(x, g)
    if augment == "crop_flip":
        return lambda x, idx: crop_flip(x, g)
    return None


__all__ = [
    "Scores",
    "HARDEST",
    "check_hardest",
    "as_scores",
    "load_cscores",
    "load_forgetting",
    "load_scores",
    "ForgettingTracker",
    "forgetting_scores",
]


def forgetting_from_experts(buf, ds: Dataset, batch: int = 1024, split: str = "train") -> Scores:
    """Forgetting counts read off expert trajectories, without training anything new.

    Each expert's snapshots after epochs 1..E are evaluated on ``ds``'s ``split`` (``"train"`` or
    ``"test"``; one "presentation" per epoch, in evaluation after the epoch rather than during it);
    a 1 → 0 change of correctness between consecutive epochs is a forgetting event, never-learned
    examples get E, and counts are averaged over the experts (:class:`ForgettingTracker`). High = hard.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    part = ds.train if split == "train" else ds.test
    net = buf.model()
    tracker = ForgettingTracker(len(part), device=ds.device)
    every = torch.arange(len(part), device=ds.device)
    for e in buf.ids:
        traj = buf[e]
        for epoch in range(1, traj.shape[0]):
            theta = traj[epoch].to(ds.device)
            with torch.no_grad():
                pred = torch.cat([net(x, theta).argmax(1) for x in part.images.split(batch)])
            tracker.update(every, pred == part.labels)
        tracker.end_run()
    return Scores(
        tracker.scores().cpu(), hardest="high", kind="forgetting", source=f"experts {buf.path} ({split} split)"
    )
