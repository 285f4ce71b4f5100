"""Choosing real training images: class-balanced subsets (``fastdd.select``).

Methods (all pick exactly ``ipc`` images of every class; the result is class-major, classes in
order 0..K-1):

- ``random``: uniform without replacement per class (seeded).
- ``window``: SelMatch's sliding window over a difficulty ranking (:func:`window_indices`).
- ``forgetting``: forgetting-ranked, the most-forgotten ``ipc`` per class (a window at ``beta=0``
  with ``hardest="high"``; ``beta`` shifts it, ``easiest=True`` takes the least-forgotten).
- ``el2n``, ``grand``: the same on EL2N / GraNd scores (:func:`fastdd.scores.el2n_scores`,
  :func:`fastdd.scores.grand_scores`): the highest-scoring ``ipc`` per class by default.
- ``herding``, ``kcenter``, ``kmeans``: on features of a network (:func:`extract_features`).

Within a class, indices come in rank order (window, forgetting, el2n, grand), pick order (herding, k-center),
centroid order (k-means) or random order (random).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import Dataset
from .features import (  # noqa: F401  (re-exported: fastdd.selection.extract_features is documented)
    DEFAULT_EXTRACTOR_EPOCHS,
    Extractor,
    FeatureExtractor,
    default_extractor,
    extract_features,
    resolve_extractor,
)
from .rng import derive_seed, generator
from .runs import progress
from .scores import KINDS, Scores, as_scores
from .synthetic import SyntheticSet

METHODS = ("random", "window", "forgetting", "el2n", "grand", "herding", "kcenter", "kmeans")
#: The methods that take a window of a difficulty ranking: ``window`` (any scores, ``beta`` required) and one
#: per score kind (default ``beta`` 0, ``hardest="high"``).
RANKED = ("window", "forgetting", "el2n", "grand")

# What each method reads besides (ds, ipc, seed).
_METHOD_ARGS = {
    "random": set(),
    "window": {"scores", "beta", "hardest"},
    "forgetting": {"scores", "beta", "hardest", "easiest"},
    "el2n": {"scores", "beta", "hardest", "easiest"},
    "grand": {"scores", "beta", "hardest", "easiest"},
    "herding": {"features", "extractor"},
    "kcenter": {"features", "extractor"},
    "kmeans": {"features", "extractor"},
}


def check_ipc(ds: Dataset, ipc: int) -> None:
    """Raise a clear ``ValueError`` when ``ipc`` is not a positive count that every class can supply."""
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
    counts = ds.class_counts()
    smallest = min(counts)
    if ipc > smallest:
        c = counts.index(smallest)
        raise ValueError(
            f"ipc={ipc} is larger than the smallest class of {ds.name}'s train split "
            f"(class {c} '{ds.class_names[c]}' has {smallest} images)"
        )


def random_indices(ds: Dataset, ipc: int, seed: int = 0) -> torch.Tensor:
    """``ipc`` images drawn uniformly without replacement from each class; class-major ``(K·ipc,)``."""
    check_ipc(ds, ipc)
    return torch.cat(ds.sample_per_class(ipc, generator(seed, "select.random")))


# ----------------------------------------------------------------------------------------------- window
def window_indices(labels: Any, scores: Any, ipc: int, beta: float, hardest: str | None = None) -> torch.Tensor:
    """SelMatch's sliding-window selection: per class, ranks ``[int(ipc·beta), int(ipc·beta) + ipc)``.

    Args:
        labels: ``(N,)`` integer class labels (tensor, array or list).
        scores: ``(N,)`` difficulty scores (tensor, array, list or :class:`fastdd.scores.Scores`).
        ipc: images per class (the window's length).
        beta: the window's start as a multiple of ``ipc`` (``int(ipc * beta)`` ranks are skipped).
        hardest: ``"low"`` (C-scores) or ``"high"`` (forgetting counts). ``None``: a
            :class:`Scores`' own convention, ``"low"`` for plain arrays.

    Each class (in ascending class order) is sorted hardest-first; ties keep ascending dataset-index
    order (a stable sort, as Python's ``sorted(..., reverse=...)``). Returns ``(K·ipc,)`` int64
    dataset indices, concatenated class by class, each class in rank order. Raises ``ValueError``
    when the window runs past the end of a class.
    """
    if not isinstance(ipc, (int, np.integer)) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
    beta = float(beta)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    s = as_scores(scores, hardest=hardest, what="scores")
    lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).cpu()
    if lab.dim() != 1 or lab.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer (N,) array, got shape {tuple(lab.shape)} dtype {lab.dtype}")
    if len(lab) != len(s):
        raise ValueError(f"labels ({len(lab)}) and scores ({len(s)}) must have the same length")
    key = s.values.double()  # exact for float32/float64/int scores
    if s.hardest == "high":
        key = -key  # ascending sort of -score = descending by score, stable
    start = int(ipc * beta)
    # two stable sorts: by difficulty (ties keep dataset order), then by class (keeps that order)
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(lab[order], stable=True).indices]
    classes, counts = torch.unique_consecutive(lab[order], return_counts=True)
    short = torch.nonzero(counts < start + ipc).flatten()
    if len(short):
        c = int(short[0])
        raise ValueError(
            f"the window [{start}, {start + ipc}) (ipc={ipc}, beta={beta}) runs past the end of class "
            f"{int(classes[c])}, which has {int(counts[c])} examples"
        )
    first = torch.cumsum(counts, 0) - counts  # where each class starts in `order`
    pick = first[:, None] + start + torch.arange(ipc)[None, :]
    return order[pick.flatten()].long()


def max_window_beta(class_size: int, ipc: int, step: float = 0.1) -> float:
    """The largest β on the grid ``0, step, 2·step, ...`` whose window ``int(ipc·β) + ipc`` fits in ``class_size``."""
    if ipc > class_size:
        raise ValueError(f"ipc={ipc} is larger than the smallest class ({class_size} examples)")
    k = 0
    while int(ipc * _grid(k + 1, step)) + ipc <= class_size:
        k += 1
    return _grid(k, step)


def beta_grid(class_size: int, ipc: int, step: float = 0.1, beta_max: float | None = None) -> list[float]:
    """``[0, step, 2·step, ...]`` up to the largest β whose window fits (and ``<= beta_max`` if given).

    Values are ``k * step`` rounded to 10 decimals, so ``0.3`` is the float ``float("0.3")``, as in
    SelMatch's ``seq 0 0.1 0.9`` scripts.
    """
    if step <= 0:
        raise ValueError(f"beta step must be > 0, got {step}")
    top = max_window_beta(class_size, ipc, step)
    if beta_max is not None:
        top = min(top, beta_max)
    out, k = [], 0
    while _grid(k, step) <= top + 1e-12:
        out.append(_grid(k, step))
        k += 1
    return out


def _grid(k: int, step: float) -> float:
    return round(k * step, 10)


# ------------------------------------------------------------------------------------ greedy on features
def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Herding on one class's features ``(n, D)``: ``k`` positions in pick order.

    With μ the class mean, step ``i`` (1-based) picks the unselected ``j`` minimising
    ``‖(i·μ − Σ_selected f) − f_j‖`` (ties: the lowest position). Computed in float64.
    """
    f = _check_features(features, k)
    mu = f.mean(0)
    chosen = torch.zeros(len(f), dtype=torch.bool)
    total = torch.zeros_like(mu)
    out = []
    for i in range(1, k + 1):
        target = i * mu - total
        d = (f - target).pow(2).sum(1)
        d[chosen] = float("inf")
        j = int(torch.argmin(d))
        out.append(j)
        chosen[j] = True
        total += f[j]
    return torch.tensor(out, dtype=torch.long)


def kcenter_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy k-center on one class's features ``(n, D)``: ``k`` positions in pick order.

    Starts with the sample nearest the class mean, then repeatedly adds the sample whose distance
    to the nearest selected sample is largest (ties: the lowest position). Computed in float64.
    """
    f = _check_features(features, k)
    first = int(torch.argmin((f - f.mean(0)).pow(2).sum(1)))
    out = [first]
    mind = (f - f[first]).pow(2).sum(1)
    chosen = torch.zeros(len(f), dtype=torch.bool)
    chosen[first] = True
    for _ in range(k - 1):
        d = mind.clone()
        d[chosen] = -float("inf")
        j = int(torch.argmax(d))
        out.append(j)
        chosen[j] = True
        mind = torch.minimum(mind, (f - f[j]).pow(2).sum(1))
    return torch.tensor(out, dtype=torch.long)


def kmeans_order(features: torch.Tensor, k: int, seed: int = 0, niter: int = 20) -> torch.Tensor:
    """FAISS k-means (``k`` centroids) on one class's features ``(n, D)``; for each centroid the
    position of a distinct nearest sample, in centroid order.

    No sample is used twice: every unassigned centroid proposes its nearest unused sample, the
    closest proposer wins (ties: lower centroid index, lower sample position), repeat.
    """
    import faiss

    f = _check_features(features, k)
    x = np.ascontiguousarray(f.numpy().astype(np.float32))
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=int(derive_seed(seed, "kmeans") % (2**31 - 1)),
        min_points_per_centroid=1,
        max_points_per_centroid=max(1, len(x)),
        verbose=False,
    )
    km.train(x)
    cent = torch.from_numpy(km.centroids.astype(np.float64))
    d = torch.cdist(cent, f, compute_mode="donot_use_mm_for_euclid_dist")  # (k, n)
    assigned = torch.full((k,), -1, dtype=torch.long)
    used = torch.zeros(len(f), dtype=torch.bool)
    while bool((assigned < 0).any()):
        free = torch.nonzero(assigned < 0).flatten()
        dm = d[free].clone()
        dm[:, used] = float("inf")
        prop = dm.argmin(1)
        dprop = dm.gather(1, prop[:, None]).flatten()
        best = torch.full((len(f),), float("inf"), dtype=d.dtype).scatter_reduce(0, prop, dprop, "amin")
        cand = dprop == best[prop]
        pos = torch.arange(len(free))
        first = torch.full((len(f),), len(free), dtype=torch.long).scatter_reduce(0, prop[cand], pos[cand], "amin")
        win = cand & (first[prop] == pos)
        assigned[free[win]] = prop[win]
        used[prop[win]] = True
    return assigned


def _check_features(features: torch.Tensor, k: int) -> torch.Tensor:
    f = torch.as_tensor(features).detach().cpu().double()
    if f.dim() != 2:
        raise ValueError(f"features must be (n, D), got shape {tuple(f.shape)}")
    if not 1 <= k <= len(f):
        raise ValueError(f"cannot pick {k} of {len(f)} samples")
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f


# ------------------------------------------------------------------------------------------------ select
def select(
    ds: Dataset,
    method: str = "random",
    ipc: int = 10,
    *,
    seed: int = 0,
    scores: Any = None,
    beta: float | None = None,
    hardest: str | None = None,
    easiest: bool | None = None,
    features: torch.Tensor | None = None,
    extractor: Extractor = None,
    show_progress: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """Indices into ``ds.train`` of a class-balanced selection of ``ipc`` images per class.

    Args:
        method: one of :data:`METHODS` (see the module docstring).
        ipc: images per class.
        seed: for ``random``, ``kmeans`` and the default feature extractor.
        scores: ``window`` / ``forgetting`` / ``el2n`` / ``grand``: a :class:`fastdd.scores.Scores` (from
            :func:`fastdd.load_scores`, :func:`fastdd.el2n_scores`, ...), or a ``(N,)`` tensor/array with
            ``hardest``. ``forgetting`` / ``el2n`` / ``grand`` refuse a :class:`Scores` of another known kind.
        beta: ``window`` (required): the window starts at rank ``int(ipc·beta)``; ``forgetting`` /
            ``el2n`` / ``grand``: default 0 (the hardest ``ipc``).
        hardest: ``"low"`` / ``"high"``; ``None`` uses a :class:`Scores`' own convention, else ``"low"``
            for ``window`` and ``"high"`` for ``forgetting`` / ``el2n`` / ``grand``.
        easiest: ``forgetting`` / ``el2n`` / ``grand``: rank each class easiest-first instead (``beta=0``:
            the ``ipc`` easiest, e.g. PAD's easy → hard EL2N order). Default ``False``.
        features: ``herding`` / ``kcenter`` / ``kmeans``: ``(N, D)`` features of ``ds.train``;
            if ``None``, computed with ``extractor`` (:func:`extract_features`).

    Returns ``(K·ipc,)`` int64 indices on the CPU, class-major. Raises ``ValueError`` for a missing
    argument (e.g. ``window`` without ``scores``) and ``TypeError`` for an argument the method does
    not use.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; available: {', '.join(METHODS)}")
    if kwargs:
        raise TypeError(f"select(method={method!r}) got unexpected arguments: {', '.join(kwargs)}")
    given = {
        k
        for k, v in dict(
            scores=scores, beta=beta, hardest=hardest, easiest=easiest, features=features, extractor=extractor
        ).items()
        if v is not None
    }
    unused = given - _METHOD_ARGS[method]
    if unused:
        raise TypeError(f"select(method={method!r}) does not use {', '.join(sorted(unused))}")
    check_ipc(ds, ipc)
    if method == "random":
        return random_indices(ds, ipc, seed)
    if method in RANKED:
        return _by_rank(ds, method, ipc, scores, beta, hardest, bool(easiest))
    if features is None:
        features = extract_features(ds, "train", extractor, seed=seed, show_progress=show_progress)
    return _on_features(ds, method, ipc, torch.as_tensor(features), seed, show_progress)


def _by_rank(
    ds: Dataset, method: str, ipc: int, scores: Any, beta: float | None, hardest: str | None, easiest: bool
) -> torch.Tensor:
    """``window`` / ``forgetting`` / ``el2n`` / ``grand``: a window of ``ipc`` ranks per class of the
    difficulty ``scores``, hardest first (``easiest``: easiest first)."""
    if scores is None:
        hint = {
            "window": "fastdd.load_scores(path, ds), fastdd.forgetting_scores(ds) or fastdd.el2n_scores(ds)",
            "forgetting": "fastdd.forgetting_scores(ds) or fastdd.load_scores('forgetting_*.npy', ds)",
        }.get(method, f"fastdd.{method}_scores(ds) or fastdd.load_scores(file, ds)")
        raise ValueError(f"select(method={method!r}) needs scores= ({hint})")
    if method == "window" and beta is None:
        raise ValueError(
            "select(method='window') needs beta= (the window starts at rank int(ipc*beta) of each class, hardest first)"
        )
    if method != "window" and isinstance(scores, Scores) and scores.kind in KINDS and scores.kind != method:
        other = "window" if scores.kind == "cscore" else scores.kind
        raise ValueError(
            f"select(method={method!r}) got {'C-' if scores.kind == 'cscore' else scores.kind + ' '}scores; "
            f"use method={other!r} for them"
        )
    s = as_scores(
        scores,
        hardest=hardest,
        n=len(ds.train),
        what="scores",
        default_hardest="low" if method == "window" else "high",
    )
    if easiest:  # the same stable sort, from the other end: ties still in ascending dataset order
        s = Scores(s.values, hardest="low" if s.hardest == "high" else "high", kind=s.kind, source=s.source)
    return window_indices(ds.train.labels, s, ipc, 0.0 if beta is None else beta)


def _on_features(
    ds: Dataset, method: str, ipc: int, features: torch.Tensor, seed: int, show_progress: bool
) -> torch.Tensor:
    """``herding`` / ``kcenter`` / ``kmeans`` per class on ``features`` ``(len(ds.train), D)``."""
    if features.dim() != 2 or features.shape[0] != len(ds.train):
        raise ValueError(
            f"features must be ({len(ds.train)}, D) for {ds.name}'s train split, got {tuple(features.shape)}"
        )
    out = []
    for c, idx in enumerate(progress(ds.class_indices, desc=method, disable=not show_progress)):
        idx = idx.cpu()
        fc = features[idx.to(features.device)]
        if method == "herding":
            pos = herding_order(fc, ipc)
        elif method == "kcenter":
            pos = kcenter_order(fc, ipc)
        else:
            pos = kmeans_order(fc, ipc, seed=derive_seed(seed, "select.kmeans", c))
        out.append(idx[pos])
    return torch.cat(out).long()


def real_subset(ds: Dataset, idx: torch.Tensor, method: str = "random", **meta) -> SyntheticSet:
    """A :class:`SyntheticSet` made of real training images ``ds.train[idx]`` (hard labels, nothing learned)."""
    sub = ds.train.subset(idx)
    return SyntheticSet(
        sub.images.clone(),
        sub.labels.clone(),
        meta=dict(
            method=method,
            dataset=ds.name,
            zca=ds.zca is not None,
            num_classes=ds.num_classes,
            mean=list(ds.mean),
            std=list(ds.std),
            indices=idx.tolist(),
            **meta,
        ),
    )


__all__ = [
    "METHODS",
    "RANKED",
    "check_ipc",
    "random_indices",
    "window_indices",
    "max_window_beta",
    "beta_grid",
    "FeatureExtractor",
    "default_extractor",
    "resolve_extractor",
    "extract_features",
    "herding_order",
    "kcenter_order",
    "kmeans_order",
    "select",
    "real_subset",
]
