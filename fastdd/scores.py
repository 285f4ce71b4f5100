"""Per-example difficulty scores: forgetting counts, EL2N and GraNd (computed) and C-scores (loaded).

Conventions (which end of the scale is *hard*):

- **C-score** (Jiang et al. 2021): expected held-out accuracy, in ``[0, 1]``; **low = hard**
  (``hardest="low"``). Not recomputable cheaply; load the released ``.npz`` files.
- **Forgetting count** (Toneva et al. 2019): how often an example goes from correctly to
  incorrectly classified during training, averaged over runs; **high = hard** (``hardest="high"``).
  Never-learned examples get the maximum, the number of presentations (= epochs).
- **EL2N** (Paul et al. 2021): ``‖softmax(f(w_t, x)) − onehot(y)‖₂`` after ``t`` epochs, averaged over
  independent runs; in ``[0, √2]``; **high = hard**.
- **GraNd** (Paul et al. 2021): ``‖∇_w ℓ(f(w_t, x), y)‖₂`` over all parameters (or, with
  ``last_layer=True``, the last linear layer's only), averaged over runs; **high = hard**.

Files are read with numpy (``allow_pickle=False``): nothing is unpickled. A loaded score array keeps
the dtype it has on disk (float64 C-scores, float32 forgetting counts): converting would round
distinct scores into ties and change the order that the window selection relies on.
:func:`save_scores` writes any :class:`Scores` to an ``.npz`` with its kind, convention and metadata
(0-d string arrays, the metadata as JSON), which :func:`load_scores` reads back.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import DSA, DSAConfig, crop_flip, strategy_for
from .data import Dataset
from .errors import CorruptFileError
from .io import atomic_write_bytes
from .models import FunctionalNet, model_for
from .rng import generator
from .runs import progress
from .train import SGD, fit

HARDEST = ("low", "high")
#: The hard end of each score kind fastdd knows; a saved file of one of these kinds must agree.
KINDS = {"cscore": "low", "forgetting": "high", "el2n": "high", "grand": "high"}


@dataclass(frozen=True)
class Scores:
    """A difficulty score per training example, with the convention that says which end is hard.

    Attributes:
        values: ``(N,)`` floating tensor on the CPU, index = the data set's training order.
        hardest: ``"low"`` (C-scores: low = hard) or ``"high"`` (forgetting, EL2N, GraNd: high = hard).
        kind: ``"cscore"``, ``"forgetting"``, ``"el2n"``, ``"grand"`` or any label.
        source: the file the scores came from (``None`` if computed).
        meta: how they were computed (JSON-serialisable: model, epochs, num_runs, seed, definition, ...);
            saved with them by :func:`save_scores`.
    """

    values: torch.Tensor
    hardest: str = "low"
    kind: str = "scores"
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

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


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read without unpickling; ``what`` (e.g. "a C-score .npz
    with keys 'labels' and 'scores'") describes the expected file in the error for a single ``.npy`` array."""
    data = _np_load(path)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise CorruptFileError(f"{path} is a single array, not {what}")
    with data:
        try:
            return {key: data[key] for key in data.files}
        except ValueError as e:
            raise CorruptFileError(f"{path}: cannot read without unpickling ({e})") from e
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise CorruptFileError(f"{path} is truncated or corrupt: {e}") from e


def _require(data: dict[str, np.ndarray], path: Path, keys: tuple[str, ...], holds: str) -> None:
    for key in keys:
        if key not in data:
            raise CorruptFileError(f"{path} has no '{key}' array (keys: {', '.join(data) or 'none'}); {holds}")


def _check_labels(path: Path, file_labels: np.ndarray, labels: Any, what: str) -> None:
    """Raise ``ValueError`` unless the file's ``labels`` ``(N,)`` equal the data set's ``labels``."""
    want = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if len(want) != len(file_labels):
        raise ValueError(
            f"{path} holds {len(file_labels)} {what} but the data set has {len(want)} training "
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
    return _cscores_from(path, _read_npz(path, "a C-score .npz with keys 'labels' and 'scores'"), labels)


def _cscores_from(path: Path, data: dict[str, np.ndarray], labels: Any) -> Scores:
    if "kind" in data and _text(data, path, "kind") != "cscore":
        raise ValueError(
            f"{path} holds {_text(data, path, 'kind')} scores written by fastdd.save_scores, not C-scores; "
            "load it with fastdd.load_scores"
        )
    _require(data, path, ("labels", "scores"), "a C-score file holds 'labels' and 'scores'")
    file_labels, scores = data["labels"], data["scores"]
    _check_array(file_labels, path, "labels", None)
    _check_array(scores, path, "scores", None)
    if len(file_labels) != len(scores):
        raise CorruptFileError(f"{path}: 'labels' has {len(file_labels)} values but 'scores' has {len(scores)}")
    if labels is not None:
        _check_labels(path, file_labels, labels, "C-scores")
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
    """Load a score file by extension and content.

    - ``.npz`` written by :func:`save_scores` (it has a ``kind`` array; EL2N, GraNd, ...): that kind,
      convention and metadata.
    - other ``.npz`` → :func:`load_cscores`; ``.npy`` → :func:`load_forgetting`.

    With ``ds``, the file is checked against ``ds.train`` (labels when the file has them, length always).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    labels = ds.train.labels if ds is not None else None
    if suffix == ".npz":
        data = _read_npz(path, "an .npz score file (C-scores, or one written by fastdd.save_scores)")
        return _saved_from(path, data, labels) if "kind" in data else _cscores_from(path, data, labels)
    if suffix == ".npy":
        return load_forgetting(path, n=len(ds.train) if ds is not None else None)
    raise ValueError(
        f"score file {path}: unknown extension {path.suffix!r}; expected .npz (C-scores: 'labels', "
        "'scores'; or a file written by fastdd.save_scores) or .npy (forgetting counts)"
    )


# ------------------------------------------------------------------------------ saved score files
def save_scores(scores: Scores, path: str | os.PathLike, labels: Any = None) -> Path:
    """Write ``scores`` to an ``.npz`` file that :func:`load_scores` reads back with its kind, convention
    and metadata (atomically; plain arrays, no pickles).

    Arrays: ``scores`` ``(N,)`` (``scores.values``' dtype), ``kind`` and ``hardest`` (0-d strings),
    ``meta`` (0-d string, ``scores.meta`` as a JSON object) and, when ``labels`` (``(N,)`` integer, e.g.
    ``ds.train.labels``) is given, ``labels`` int64: ``load_scores(path, ds)`` then checks them against the
    data set. Returns the path.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"score file {path}: the name must end in .npz (load_scores picks the format by extension)")
    if not isinstance(scores, Scores):
        raise TypeError(f"save_scores needs a fastdd.scores.Scores, got {type(scores).__name__}")
    arrays: dict[str, Any] = {
        "scores": scores.values.detach().cpu().numpy(),
        "kind": np.array(scores.kind),
        "hardest": np.array(scores.hardest),
        "meta": np.array(json.dumps(scores.meta, sort_keys=True)),
    }
    if labels is not None:
        lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if lab.shape != (len(scores),):
            raise ValueError(f"labels must be ({len(scores)},) like the scores, got shape {lab.shape}")
        arrays["labels"] = lab.astype(np.int64)
    buf = BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _text(data: dict[str, np.ndarray], path: Path, key: str) -> str:
    a = data[key]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise CorruptFileError(f"{path}: '{key}' must be a 0-d string array, got shape {a.shape} dtype {a.dtype}")
    return str(a[()])


def _saved_from(path: Path, data: dict[str, np.ndarray], labels: Any) -> Scores:
    """The :class:`Scores` in a file written by :func:`save_scores` (``data``: its arrays)."""
    _require(data, path, ("scores", "kind", "hardest", "meta"), "save_scores writes scores, kind, hardest, meta")
    kind, hardest = _text(data, path, "kind"), _text(data, path, "hardest")
    if hardest not in HARDEST or KINDS.get(kind, hardest) != hardest:
        want = KINDS.get(kind, "'low' or 'high'")
        raise CorruptFileError(f"{path}: hardest={hardest!r} is wrong for {kind} scores (expected {want!r})")
    try:
        meta = json.loads(_text(data, path, "meta"))
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path}: 'meta' is not JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    scores = _check_array(data["scores"], path, "scores", None)
    if "labels" in data:
        file_labels = _check_array(data["labels"], path, "labels", None)
        if len(file_labels) != len(scores):
            raise CorruptFileError(f"{path}: 'labels' has {len(file_labels)} values but 'scores' has {len(scores)}")
        if labels is not None:
            _check_labels(path, file_labels, labels, f"{kind} scores")
    elif labels is not None and len(labels) != len(scores):
        raise ValueError(f"{path}: 'scores' has {len(scores)} values but the training split has {len(labels)} examples")
    values = torch.from_numpy(np.ascontiguousarray(scores))
    return Scores(values, hardest=hardest, kind=kind, source=os.fspath(path), meta=meta)


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
    net = model_for(ds, model, **(model_kwargs or {}))
    y_all = ds.train.labels
    tracker = ForgettingTracker(len(y_all), device=ds.device)
    training = _Training(ds, net, "forgetting", seed, epochs, SGD(lr, momentum, weight_decay), batch_size, augment)
    bar = progress(total=runs * epochs, desc=f"forgetting ({net.name}, {ds.name})", disable=not show_progress)
    for r in range(runs):
        training.run(
            r,
            on_batch=lambda idx, logits: tracker.update(idx, logits.detach().argmax(1) == y_all[idx]),
            on_epoch=lambda *_: bar.update(1),
        )
        tracker.end_run()
    bar.close()
    return tracker.scores().cpu()


class _Training:
    """The training runs behind :func:`forgetting_scores`, :func:`el2n_scores` and :func:`grand_scores`:
    run ``r`` trains a fresh ``net`` on ``ds.train`` with :func:`fastdd.train.fit`, drawing its init, batch
    order and augmentation from the streams ``(seed, stream, r, "init" | "batches" | "augment")``."""

    def __init__(
        self,
        ds: Dataset,
        net: FunctionalNet,
        stream: str,
        seed: int,
        epochs: int,
        sgd: SGD,
        batch_size: int,
        augment: str | None,
    ):
        if epochs < 0 or batch_size < 1:
            raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
        if augment not in (None, "none", "crop_flip", "dsa"):
            raise ValueError(f"augment must be None, 'crop_flip' or 'dsa', got {augment!r}")
        self.ds, self.net, self.stream, self.seed = ds, net, stream, seed
        self.epochs, self.sgd, self.batch_size, self.augment = epochs, sgd, batch_size, augment
        self.dsa = DSA(DSAConfig(strategy=strategy_for(ds.name))) if augment == "dsa" else None

    def run(self, r: int, on_batch: Callable | None = None, on_epoch: Callable | None = None) -> tuple[Any, Any]:
        """Train run ``r``; return its final flat parameters ``(P,)`` and batch-norm statistics (``None``
        without batch norm; fresh ones after 0 epochs)."""
        net, dev, keys = self.net, self.ds.device, (self.seed, self.stream, r)
        buffers = net.init_buffers(device=dev) if net.has_batchnorm else None
        theta = fit(
            net,
            net.init(generator(*keys, "init"), device=dev),
            self.ds.train.images,
            self.ds.train.labels,
            self.epochs,
            self.sgd,
            generator(*keys, "batches"),
            batch_size=self.batch_size,
            buffers=buffers,
            augment=_run_augment(self.augment, self.dsa, generator(*keys, "augment")),
            on_batch=on_batch,
            on_epoch=on_epoch,
        )
        return theta, buffers


def _run_augment(augment: str | None, dsa: Any, g: torch.Generator) -> Callable | None:
    """The augmentation ``(images, indices) -> images`` of one training run, drawing from ``g``: ``dsa``
    (a :class:`~fastdd.augment.DSA`) when given, pad-4 crop + flip for ``"crop_flip"``, else none."""

    if dsa is not None:
        return lambda x, idx: dsa(x, g)
    if augment == "crop_flip":
        return lambda x, idx: crop_flip(x, g)
    return None


# ------------------------------------------------------------------------------------ EL2N and GraNd
def el2n(
    net: FunctionalNet,
    theta: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    buffers: torch.Tensor | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """EL2N of each example under one network: ``‖softmax(net(x, theta)) − onehot(y)‖₂``.

    ``theta`` ``(P,)``; ``images`` ``(N, C, H, W)``, ``labels`` ``(N,)`` int64 on its device; ``buffers``:
    batch-norm running statistics (required by batch-norm nets). Evaluation mode, in chunks of
    ``batch_size``; the softmax in float64. Returns ``(N,)`` float64 on ``images``' device, in ``[0, √2]``.
    """
    out = []
    with torch.no_grad():
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            p = torch.softmax(net(x, theta, buffers, train=False).double(), dim=1)
            out.append((p - F.one_hot(y, p.shape[1]).double()).norm(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=images.device)


def grand(
    net: FunctionalNet,
    theta: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    buffers: torch.Tensor | None = None,
    batch_size: int = 64,
    last_layer: bool = False,
) -> torch.Tensor:
    """GraNd of each example under one network: ``‖∇_θ CE(net(x, θ), y)‖₂`` (evaluation mode).

    ``last_layer=False`` (Paul et al.): the gradient over all ``P`` parameters; per-example gradients
    ``(batch_size, P)`` from ``torch.func.vmap(torch.func.grad(...))`` on ``net``'s ``torch.nn`` twin
    (:meth:`~fastdd.models.FunctionalNet.module`, called with ``theta``'s views), ``batch_size`` examples
    at a time (memory ``batch_size · P`` floats). ``last_layer=True``: only the last linear layer's
    weight and bias, in closed form ``‖e‖·√(1 + ‖h‖²)`` with ``e = softmax − onehot`` and ``h`` the
    penultimate features. Shapes as :func:`el2n`; returns ``(N,)`` float64 on ``images``' device.
    """
    if net.has_batchnorm and buffers is None:
        raise ValueError(f"{net.describe()} uses batch norm: GraNd (evaluation mode) needs its running statistics")
    chunks = list(zip(images.split(batch_size), labels.split(batch_size)))
    if last_layer:
        norms = [_last_layer_norm(net, theta, x, y, buffers) for x, y in chunks]
    else:
        per_example = _per_example_grad(net, theta, buffers)
        with torch.no_grad():
            norms = [per_example(theta, x, y).double().norm(dim=1) for x, y in chunks]
    return torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64, device=images.device)


def _per_example_grad(net: FunctionalNet, theta: torch.Tensor, buffers: torch.Tensor | None) -> Callable:
    """``(theta (P,), x (B, C, H, W), y (B,)) -> (B, P)`` per-example gradients of the cross-entropy.

    The functional net's fused ConvNet block is an ``autograd.Function`` that ``torch.func`` cannot
    transform, so the loss runs ``net.module()`` (the same layers, in ``eval()``) through
    ``torch.func.functional_call`` with ``theta``'s views as its parameters."""
    mod = net.module().eval()
    names = [name for name, _ in mod.named_parameters()]
    state: dict[str, torch.Tensor] = {}
    if buffers is not None:
        bufs = buffers.split([b.numel for b in net.buffers])
        bnames = [name for name, _ in mod.named_buffers() if not name.endswith("num_batches_tracked")]
        state = {name: t.view(b.shape) for name, t, b in zip(bnames, bufs, net.buffers)}

    def loss(th: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, net.unflatten(th)))
        logits = torch.func.functional_call(mod, {**params, **state}, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))


def _last_layer_norm(
    net: FunctionalNet, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, buffers: torch.Tensor | None
) -> torch.Tensor:
    """``(B,)`` float64 norms of the cross-entropy's gradient over the last linear layer (weight ``(K, D)``
    and bias ``(K,)``): ``∂ℓ/∂b = e``, ``∂ℓ/∂W = e hᵀ``, so the norm is ``‖e‖·√(1 + ‖h‖²)``."""
    w_spec, b_spec = net.params[-2:]
    k = net.spec["num_classes"]
    if w_spec.shape != (k, net.feature_dim) or b_spec.shape != (k,):
        raise ValueError(f"{net.describe()} does not end in a linear layer on its features: no last-layer GraNd")
    w, b = net.unflatten(theta)[-2:]
    with torch.no_grad():
        h = net.embed(x, theta, buffers, train=False).double()
        p = torch.softmax(F.linear(h, w.double(), b.double()), dim=1)
        e = p - F.one_hot(y, k).double()
        return e.norm(dim=1) * (1 + h.pow(2).sum(1)).sqrt()


def el2n_scores(
    ds: Dataset,
    model: str = "convnet",
    epochs: int = 10,
    num_runs: int = 2,
    seed: int = 0,
    *,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    score_batch: int = 512,
    show_progress: bool = True,
) -> Scores:
    """EL2N scores (Paul et al. 2021) of ``ds.train``: :func:`el2n` after ``epochs`` of training, averaged
    over ``num_runs`` independently seeded networks.

    Run ``r`` trains a fresh ``model`` as :func:`forgetting_scores` does (SGD ``lr``, ``momentum``,
    ``weight_decay``, minibatches of ``batch_size``, ``augment``), from the streams ``(seed, "el2n", r,
    "init" | "batches" | "augment")``; the scores are taken on the un-augmented images in evaluation mode.
    The paper scores at epoch 20 of its 200-epoch schedule with 10 runs; the defaults (10 epochs, 2 runs)
    are small for CPUs. Returns :class:`Scores` (``kind="el2n"``, ``hardest="high"``), ``(N,)`` float64 on
    the CPU, and ``meta`` (model, epochs, num_runs, seed, definition, training settings).
    """
    net = model_for(ds, model, **(model_kwargs or {}))
    training = _Training(ds, net, "el2n", seed, epochs, SGD(lr, momentum, weight_decay), batch_size, augment)
    meta = dict(definition="el2n: mean over runs of ||softmax(f(w_t, x)) - onehot(y)||_2 at epoch t")

    def score(theta: torch.Tensor, buffers: torch.Tensor | None) -> torch.Tensor:
        return el2n(net, theta, ds.train.images, ds.train.labels, buffers, score_batch)

    return _averaged(training, num_runs, score, meta, show_progress)


def grand_scores(
    ds: Dataset,
    model: str = "convnet",
    epochs: int = 0,
    num_runs: int = 2,
    seed: int = 0,
    *,
    last_layer: bool = False,
    batch_size: int = 128,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    score_batch: int = 64,
    show_progress: bool = True,
) -> Scores:
    """GraNd scores (Paul et al. 2021) of ``ds.train``: :func:`grand` after ``epochs`` of training (0: at
    initialisation, the paper's setting), averaged over ``num_runs`` independently seeded networks.

    ``last_layer=False``: the gradient norm over all parameters (the paper's definition);
    ``last_layer=True``: over the last linear layer only (DeepCore's restriction, which PAD's index files
    use; DeepCore also applies the softmax twice, which is not reproduced here). ``score_batch``
    examples' gradients are held at once (``score_batch · P`` floats). Training and seeding as
    :func:`el2n_scores`, with the stream ``"grand"``. The paper averages 10 runs; the default is 2.
    Returns :class:`Scores` (``kind="grand"``, ``hardest="high"``), ``(N,)`` float64 on the CPU, and
    ``meta`` (``definition`` ``"grand-all-parameters"`` or ``"grand-last-layer"``, model, epochs, ...).
    """
    net = model_for(ds, model, **(model_kwargs or {}))
    training = _Training(ds, net, "grand", seed, epochs, SGD(lr, momentum, weight_decay), batch_size, augment)
    meta = dict(definition="grand-last-layer" if last_layer else "grand-all-parameters", last_layer=last_layer)

    def score(theta: torch.Tensor, buffers: torch.Tensor | None) -> torch.Tensor:
        return grand(net, theta, ds.train.images, ds.train.labels, buffers, score_batch, last_layer)

    return _averaged(training, num_runs, score, meta, show_progress)


def _averaged(
    training: _Training,
    num_runs: int,
    score: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    meta: dict[str, Any],
    show_progress: bool,
) -> Scores:
    """The mean over runs ``0 .. num_runs − 1`` of ``score(theta, buffers)`` ``(N,)`` after each run of
    ``training``, as :class:`Scores` of kind ``training.stream`` with ``meta`` and the settings added."""
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    t, kind = training, training.stream
    total = torch.zeros(len(t.ds.train), dtype=torch.float64, device=t.ds.device)
    bar = progress(
        total=num_runs * (t.epochs + 1), desc=f"{kind} ({t.net.name}, {t.ds.name})", disable=not show_progress
    )
    for r in range(num_runs):
        theta, buffers = t.run(r, on_epoch=lambda *_: bar.update(1))
        total += score(theta, buffers)
        bar.update(1)
    bar.close()
    settings = dict(model=t.net.name, model_spec=t.net.spec, epochs=t.epochs, num_runs=num_runs, seed=t.seed)
    sgd = dict(batch_size=t.batch_size, lr=t.sgd.lr, momentum=t.sgd.momentum, weight_decay=t.sgd.weight_decay)
    meta = {**meta, **settings, **sgd, "augment": t.augment, "dataset": t.ds.name}
    return Scores((total / num_runs).cpu(), hardest=KINDS[kind], kind=kind, meta=meta)


__all__ = [
    "Scores",
    "HARDEST",
    "KINDS",
    "check_hardest",
    "as_scores",
    "load_cscores",
    "load_forgetting",
    "load_scores",
    "save_scores",
    "ForgettingTracker",
    "forgetting_scores",
    "el2n",
    "grand",
    "el2n_scores",
    "grand_scores",
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
