"""Coverage: how much of the real data lies near some synthetic image, in a feature space.

``coverage_of(real, syn, r)`` is the fraction of real feature vectors within Euclidean distance
``r`` (``<= r``) of at least one synthetic feature vector. The default radius ``r`` is the mean
nearest-neighbour distance among the real *training* features, each point's own match excluded
(a duplicate of a point is another point: its distance 0 counts).

Nearest neighbours come from a FAISS exact index (``IndexFlatL2``), searched in chunks of queries
(without FAISS installed: the same ranking in torch, see :func:`search_backend`).
FAISS ranks candidates in float32 (``‖q‖² + ‖x‖² − 2q·x``, on features centred by the database's
mean, which leaves distances unchanged and keeps that expansion accurate); the distances of the
best ``refine`` candidates are then recomputed directly in float64 (``‖q − x‖``), so a point at
exactly distance ``r`` is counted as covered. A FAISS GPU index is used only when the features are CUDA
tensors and the installed FAISS has GPU support (``StandardGpuResources`` present and
``get_num_gpus() > 0``; ``pip install "fastdd[gpu]"``); then the features stay on the device (FAISS takes
CUDA tensors through ``faiss.contrib.torch_utils``) and only the final distances come back. Otherwise
the CPU index.

``coverage(syn, ds)`` reports coverage overall and for the easy and hard halves by a difficulty
score (a **per-class median split**: in each class, the ``⌊n_c/2⌋`` hardest examples, ranked as
the window selection ranks them, hardest first with ties by index, form the hard half, the rest
the easy half), on the train and test splits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import numpy as np
import torch

from .data import Dataset
from .features import Extractor, extract_features, resolve_extractor
from .runs import progress
from .scores import Scores, as_scores
from .synthetic import SyntheticSet

DEFAULT_CHUNK = 8192
DEFAULT_REFINE = 8
_REFINE_ELEMS = 1 << 24  # float64 elements per refinement block (128 MiB)


def _faiss():
    """The FAISS module, or ``None`` when neither faiss-cpu (``fastdd[cpu]``) nor faiss-gpu (``fastdd[gpu]``) is
    installed; the search then runs on exact torch distances (same neighbours, up to float32 near-ties)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_gpu_available() -> bool:
    """True when the installed FAISS can build GPU indexes and sees a GPU.

    Never tested with ``hasattr(faiss, "knn_gpu")``: faiss-cpu has that name but it fails when called.
    """
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def search_backend(x: torch.Tensor) -> str:
    """Where :func:`nearest_distances` ranks candidates for features ``x``: ``"faiss-gpu"`` (CUDA features and
    a GPU FAISS: tensors stay on the device), ``"faiss-cpu"``, or ``"torch"`` (no FAISS installed: chunked
    exact distances on ``x``'s device)."""
    if _faiss() is None:
        return "torch"
    return "faiss-gpu" if x.is_cuda and faiss_gpu_available() else "faiss-cpu"


class _FaissSearch:
    """FAISS ``IndexFlatL2`` over the (centred, float32) database; on the GPU, searched with torch tensors
    through ``faiss.contrib.torch_utils`` so nothing is copied to the host."""

    def __init__(self, xc: torch.Tensor, on_gpu: bool):
        faiss = _faiss()
        index = faiss.IndexFlatL2(xc.shape[1])
        self.on_gpu = on_gpu
        if on_gpu:
            import faiss.contrib.torch_utils  # noqa: F401 - lets GPU indexes take and return CUDA tensors

            self.res = faiss.StandardGpuResources()  # kept alive as long as the index
            index = faiss.index_cpu_to_gpu(self.res, xc.device.index or 0, index)
            index.add(xc.float().contiguous())
        else:
            index.add(np.ascontiguousarray(xc.float().numpy()))
        self.index = index

    def __call__(self, qc: torch.Tensor, k: int) -> torch.Tensor:
        if self.on_gpu:
            return self.index.search(qc.float().contiguous(), k)[1].long()
        return torch.from_numpy(self.index.search(np.ascontiguousarray(qc.float().numpy()), k)[1]).long()


class _TorchSearch:
    """Exact float32 ranking ``‖q‖² + ‖x‖² − 2q·x`` with ``topk``, on the database's device."""

    def __init__(self, xc: torch.Tensor):
        self.x = xc.float()
        self.sq = self.x.pow(2).sum(1)

    def __call__(self, qc: torch.Tensor, k: int) -> torch.Tensor:
        q = qc.float()
        d2 = torch.addmm(self.sq[None, :], q, self.x.t(), alpha=-2.0)
        return d2.topk(k, dim=1, largest=False, sorted=True).indices


def _as_2d(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contain NaN or inf")
    return t


def nearest_distances(
    queries: torch.Tensor,
    database: torch.Tensor,
    *,
    exclude_self: bool = False,
    chunk: int = DEFAULT_CHUNK,
    refine: int = DEFAULT_REFINE,
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest-neighbour search: for each query, the closest database vector.

    Args:
        queries: ``(Q, D)`` features.
        database: ``(M, D)`` features (the same tensor as ``queries`` with ``exclude_self``).
        exclude_self: ``queries`` is ``database``; each query's own row is removed **by index**
            (not by distance), so an exact duplicate of a point is still its neighbour at distance 0.
        chunk: queries per FAISS search call (memory: ``chunk × (refine + 1)`` results, plus FAISS's
            own fixed-size blocks).
        refine: FAISS candidates per query whose distances are recomputed in float64.

    Returns ``(distance (Q,) float64 Euclidean, index (Q,) int64 into database)`` on the CPU.
    """
    q = _as_2d(queries, "queries")
    x = _as_2d(database, "database")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dims but the database has {x.shape[1]}")
    if exclude_self and q.shape[0] != x.shape[0]:
        raise ValueError("exclude_self needs queries and database to be the same set")
    m = x.shape[0] - (1 if exclude_self else 0)
    if m < 1:
        raise ValueError("the database has no point to match (with exclude_self it needs at least 2)")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    k = min(max(1, refine), m) + (1 if exclude_self else 0)
    backend = search_backend(x)
    dev = torch.device("cpu") if backend == "faiss-cpu" else x.device
    x64 = x.detach().to(dev, torch.float64)
    centre = x64.mean(0)  # distances do not change; float32 ranking loses far less precision on centred data
    search = _TorchSearch(x64 - centre) if backend == "torch" else _FaissSearch(x64 - centre, backend == "faiss-gpu")
    dist_out = torch.empty(q.shape[0], dtype=torch.float64, device=dev)
    idx_out = torch.empty(q.shape[0], dtype=torch.long, device=dev)
    qc = q.detach().to(dev)
    for s in progress(range(0, q.shape[0], chunk), desc="k-NN", disable=not show_progress):
        qq = qc[s : s + chunk].double()
        cand = search(qq - centre, k)  # (B, k) indices, nearest first; -1 never happens: k <= M
        if exclude_self:
            own = torch.arange(s, s + len(qq), device=dev)[:, None]
            is_self = cand == own
            # drop the own index; if the search did not return it (many duplicates), drop the last candidate
            drop = torch.where(is_self.any(1), is_self.float().argmax(1), torch.full((len(qq),), k - 1, device=dev))
            keep = torch.ones_like(cand, dtype=torch.bool)
            keep[torch.arange(len(qq), device=dev), drop] = False
            cand = cand[keep].view(len(qq), k - 1)
        rows = max(1, _REFINE_ELEMS // (cand.shape[1] * x.shape[1]))  # bounds the float64 temporaries
        for b in range(0, len(qq), rows):
            cb = cand[b : b + rows]
            d = (qq[b : b + rows][:, None, :] - x64[cb]).pow(2).sum(-1).sqrt()  # (rows, k') exact float64
            j = d.argmin(1)  # ties: the search's order (lower distance first, then lower index)
            dist_out[s + b : s + b + len(cb)] = d.gather(1, j[:, None]).flatten()
            idx_out[s + b : s + b + len(cb)] = cb.gather(1, j[:, None]).flatten()
    return dist_out.cpu(), idx_out.cpu()


def mean_nn_distance(features: torch.Tensor, *, chunk: int = DEFAULT_CHUNK, show_progress: bool = False) -> float:
    """Mean Euclidean distance from each row of ``features`` ``(N, D)`` (N >= 2) to its nearest other row."""
    d, _ = nearest_distances(features, features, exclude_self=True, chunk=chunk, show_progress=show_progress)
    return float(d.mean())


def coverage_of(
    real_features: torch.Tensor,
    syn_features: torch.Tensor,
    radius: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    show_progress: bool = False,
) -> tuple[float, float]:
    """Fraction of ``real_features`` ``(N, D)`` within distance ``radius`` (``<=``) of some row of
    ``syn_features`` ``(M, D)``.

    ``radius=None``: the mean nearest-neighbour distance among ``real_features`` themselves (self
    excluded); pass the training features' radius explicitly when ``real_features`` is another set
    (e.g. the test split). Returns ``(fraction in [0, 1], radius)`` (same units as the features).
    """
    real = _as_2d(real_features, "real_features")
    syn = _as_2d(syn_features, "syn_features")
    if real.shape[1] != syn.shape[1]:
        raise ValueError(f"real_features have {real.shape[1]} dims but syn_features have {syn.shape[1]}")
    if radius is None:
        if real.shape[0] < 2:
            raise ValueError("the default radius needs at least 2 real samples")
        radius = mean_nn_distance(real, chunk=chunk, show_progress=show_progress)
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    d, _ = nearest_distances(real, syn, chunk=chunk, show_progress=show_progress)
    return float((d <= radius).double().mean()), radius


# ---------------------------------------------------------------------------------- easy / hard groups
def hard_mask(labels: torch.Tensor, scores: Scores | torch.Tensor, hardest: str | None = None) -> torch.Tensor:
    """``(N,)`` bool: True for the hard half of each class.

    Per class, examples are ranked hardest-first (stable: ties in ascending index order) and the
    first ``⌊n_c/2⌋`` are hard; with an odd ``n_c`` the middle example counts as easy.
    """
    s = as_scores(scores, hardest=hardest, n=len(labels))
    lab = torch.as_tensor(labels).cpu()
    key = s.values.double() if s.hardest == "low" else -s.values.double()
    mask = torch.zeros(len(lab), dtype=torch.bool)
    for c in torch.unique(lab).tolist():
        members = torch.nonzero(lab == c).flatten()
        order = torch.sort(key[members], stable=True).indices
        mask[members[order[: len(members) // 2]]] = True
    return mask


@dataclass
class CoverageResult:
    """Coverage fractions in ``[0, 1]`` (``None`` where not computed) and the radius used.

    ``radius`` is in feature units (mean nearest-neighbour distance among the real training
    features unless given). ``easy`` / ``hard`` halves are per-class median splits by the score.
    """

    radius: float
    train: float | None = None
    train_easy: float | None = None
    train_hard: float | None = None
    test: float | None = None
    test_easy: float | None = None
    test_hard: float | None = None
    num_syn: int = 0
    extractor: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        parts = [f"r={self.radius:.4g}"]
        for split in ("train", "test"):
            v = getattr(self, split)
            if v is not None:
                s = f"{split} {pct(v)}"
                if getattr(self, f"{split}_easy") is not None:
                    s += f" (easy {pct(getattr(self, f'{split}_easy'))}, hard {pct(getattr(self, f'{split}_hard'))})"
                parts.append(s)
        return f"coverage of {self.num_syn} images: " + ", ".join(parts)


def coverage_from_features(
    train_features: torch.Tensor,
    syn_features: torch.Tensor,
    *,
    train_labels: torch.Tensor | None = None,
    test_features: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    scores: Any = None,
    test_scores: Any = None,
    hardest: str | None = None,
    radius: float | None = None,
    split: str = "both",
    chunk: int = DEFAULT_CHUNK,
    show_progress: bool = False,
) -> CoverageResult:
    """:func:`coverage` on precomputed features (``(N, D)`` train, ``(M, D)`` synthetic, ``(T, D)`` test).

    ``radius=None`` computes it from ``train_features`` (pass it when calling repeatedly with the same
    real features: the self k-NN is the expensive part). Easy/hard halves need ``scores`` and
    ``train_labels`` (train) or ``test_scores`` and ``test_labels`` (test).
    """
    if split not in ("train", "test", "both"):
        raise ValueError(f"split must be 'train', 'test' or 'both', got {split!r}")
    if radius is None:
        radius = mean_nn_distance(_as_2d(train_features, "train_features"), chunk=chunk, show_progress=show_progress)
    res = CoverageResult(radius=float(radius), num_syn=int(torch.as_tensor(syn_features).shape[0]))
    todo = []
    if split in ("train", "both"):
        todo.append(("train", train_features, train_labels, scores))
    if split in ("test", "both"):
        if test_features is None:
            raise ValueError(f"split={split!r} needs test_features")
        todo.append(("test", test_features, test_labels, test_scores))
    for name, feats, labels, sc in todo:
        d, _ = nearest_distances(feats, syn_features, chunk=chunk, show_progress=show_progress)
        covered = d <= res.radius
        setattr(res, name, float(covered.double().mean()))
        if sc is not None:
            if labels is None:
                raise ValueError(f"easy/hard coverage on {name} needs {name}_labels")
            hard = hard_mask(labels, sc, hardest)
            if len(hard) != len(covered):
                raise ValueError(f"{name} scores have {len(hard)} values but there are {len(covered)} {name} features")
            setattr(res, f"{name}_hard", float(covered[hard].double().mean()) if hard.any() else float("nan"))
            setattr(res, f"{name}_easy", float(covered[~hard].double().mean()) if (~hard).any() else float("nan"))
    return res


@overload
def coverage(syn: SyntheticSet, ds: Dataset, *args: Any, **kwargs: Any) -> CoverageResult: ...
@overload
def coverage(syn: Sequence[SyntheticSet], ds: Dataset, *args: Any, **kwargs: Any) -> list[CoverageResult]: ...
def coverage(
    syn: SyntheticSet | Sequence[SyntheticSet],
    ds: Dataset,
    extractor: Extractor = None,
    scores: Any = None,
    hardest: str | None = None,
    split: str = "both",
    *,
    test_scores: Any = None,
    seed: int = 0,
    radius: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    show_progress: bool = True,
) -> CoverageResult | list[CoverageResult]:
    """Coverage of the real data by ``syn`` in a feature space.

    Args:
        syn: the synthetic (or selected) set; its images must be in ``ds``'s training space. A sequence of
            sets gives one result per set, all in one feature space with one radius: the real features
            and the radius are computed once.
        ds: the data set; ``radius`` defaults to the mean nearest-neighbour distance among its
            train features (self excluded).
        extractor: the feature space (see :func:`fastdd.selection.resolve_extractor`): ``None`` trains
            the default ConvNet on ``ds.train`` (seeded by ``seed``) and uses its penultimate layer.
        scores: difficulty of ``ds.train``'s examples (a :class:`fastdd.scores.Scores` or ``(N,)``
            tensor) for the easy/hard halves on train; ``test_scores`` likewise for ``ds.test``
            (without them, test reports the overall coverage only).
        hardest: ``"low"``/``"high"``; ``None``: a :class:`Scores`' own convention, ``"low"`` for
            plain tensors.
        split: ``"train"``, ``"test"`` or ``"both"``.

    Returns a :class:`CoverageResult` (a list of them, in order, for a sequence of sets).
    """
    if split not in ("train", "test", "both"):
        raise ValueError(f"split must be 'train', 'test' or 'both', got {split!r}")
    sets = [syn] if isinstance(syn, SyntheticSet) else list(syn)
    if not sets:
        raise ValueError("syn is an empty sequence: give at least one set")
    for one in sets:
        if tuple(one.images.shape[1:]) != (ds.channels, *ds.im_size):
            raise ValueError(
                f"the synthetic images {tuple(one.images.shape[1:])} do not match {ds.name}'s "
                f"{(ds.channels, *ds.im_size)}"
            )
    if scores is not None:
        scores = as_scores(scores, hardest=hardest, n=len(ds.train), what="scores")
    if test_scores is not None:
        test_scores = as_scores(test_scores, hardest=hardest, n=len(ds.test), what="test_scores")
    fn = resolve_extractor(ds, extractor, seed, show_progress=show_progress)
    train_f = extract_features(ds, "train", fn, show_progress=show_progress)
    test_f = extract_features(ds, "test", fn, show_progress=show_progress) if split != "train" else None
    results = []
    for one in progress(sets, desc="coverage", disable=not show_progress or len(sets) == 1):
        res = coverage_from_features(
            train_f,
            extract_features(ds, extractor=fn, images=one.images),
            train_labels=ds.train.labels,
            test_features=test_f,
            test_labels=ds.test.labels,
            scores=scores,
            test_scores=test_scores,
            radius=radius,
            split=split,
            chunk=chunk,
            show_progress=show_progress,
        )
        res.extractor = getattr(fn, "description", repr(fn))
        radius = res.radius  # the train features' self k-NN, computed for the first set, is the expensive part
        results.append(res)
    return results[0] if isinstance(syn, SyntheticSet) else results


__all__ = [
    "coverage",
    "coverage_of",
    "coverage_from_features",
    "CoverageResult",
    "nearest_distances",
    "mean_nn_distance",
    "hard_mask",
    "faiss_gpu_available",
    "search_backend",
]
