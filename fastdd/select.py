"""Choosing real training images: class-balanced subsets (``fastdd.select``)."""
from __future__ import annotations

import torch

from .data import Dataset
from .rng import generator
from .synthetic import SyntheticSet

METHODS = ("random",)


def check_ipc(ds: Dataset, ipc: int) -> None:
    """Raise a clear ``ValueError`` when ``ipc`` is not a positive count that every class can supply."""
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
    counts = ds.class_counts()
    smallest = min(counts)
    if ipc > smallest:
        c = counts.index(smallest)
        raise ValueError(f"ipc={ipc} is larger than the smallest class of {ds.name}'s train split "
                         f"(class {c} '{ds.class_names[c]}' has {smallest} images)")


def random_indices(ds: Dataset, ipc: int, seed: int = 0) -> torch.Tensor:
    """``ipc`` images drawn uniformly without replacement from each class; class-major ``(K·ipc,)``."""
    check_ipc(ds, ipc)
    g = generator(seed, "select.random")
    out = [idx.cpu()[torch.randperm(len(idx), generator=g)[:ipc]] for idx in ds.class_indices]
    return torch.cat(out)


def select(ds: Dataset, method: str = "random", ipc: int = 10, *, seed: int = 0, **kwargs) -> torch.Tensor:
    """Indices into ``ds.train`` of a class-balanced selection of ``ipc`` images per class.

    Methods available: ``"random"``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; available: {', '.join(METHODS)}")
    if kwargs:
        raise TypeError(f"select(method={method!r}) got unexpected arguments: {', '.join(kwargs)}")
    return random_indices(ds, ipc, seed)


def real_subset(ds: Dataset, idx: torch.Tensor, method: str = "random", **meta) -> SyntheticSet:
    """A :class:`SyntheticSet` made of real training images ``ds.train[idx]`` (hard labels, nothing learned)."""
    sub = ds.train.subset(idx)
    return SyntheticSet(sub.images.clone(), sub.labels.clone(), meta=dict(
        method=method, dataset=ds.name, num_classes=ds.num_classes, mean=list(ds.mean), std=list(ds.std),
        indices=idx.tolist(), **meta))
