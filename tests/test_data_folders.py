"""Folder-backed data sets (fastdd.data.folders) on small generated files: no download, ever."""

from __future__ import annotations

import os
import pickle
import random
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from fastdd.data import DATASETS, load_dataset
from fastdd.data.folders import imagefolder_pixels, tinyimagenet_pixels, torchvision_pixels
from fastdd.errors import CorruptFileError, DataNotFoundError


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt by torchvision to download fails the test."""

    def fail(self, *a, **k):
        raise AssertionError(f"{type(self).__name__}.download() was called")

    for cls in (tvd.MNIST, tvd.FashionMNIST, tvd.CIFAR10, tvd.CIFAR100, tvd.SVHN):
        monkeypatch.setattr(cls, "download", fail)


# ---------------------------------------------------------------------------------------------- MNIST


def _write_idx(path, arr: np.ndarray) -> None:
    magic = 0x0800 | arr.ndim  # 0x08: unsigned byte data
    with open(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        f.write(struct.pack(f">{arr.ndim}i", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def _fake_mnist(root, folder="MNIST", n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[prefix] = (x, y)
    return out


def test_mnist_from_idx_files(tmp_path):
    data = _fake_mnist(tmp_path)
    ds = load_dataset("mnist", root=tmp_path)
    (x, y), (xt, yt) = data["train"], data["t10k"]
    assert ds.train.images.shape == (20, 1, 28, 28) and ds.test.images.shape == (10, 1, 28, 28)
    assert ds.train.images.dtype == torch.float32 and ds.train.labels.dtype == torch.int64
    assert torch.equal(ds.train.labels, torch.from_numpy(y.astype(np.int64)))
    assert torch.equal(ds.test.labels, torch.from_numpy(yt.astype(np.int64)))
    want = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    torch.testing.assert_close(ds.denormalize(ds.train.images), want, atol=1e-6, rtol=0)
    want_t = torch.from_numpy(xt.astype(np.float32) / 255.0).unsqueeze(1)
    torch.testing.assert_close(ds.denormalize(ds.test.images), want_t, atol=1e-6, rtol=0)
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.mean == pytest.approx((0.1307,))


def test_fashionmnist_folder_and_class_names(tmp_path):
    _fake_mnist(tmp_path, folder="FashionMNIST", n_train=5, n_test=3)
    tx, ty, vx, vy, names = torchvision_pixels("fashionmnist", tmp_path)
    assert tx.shape == (5, 1, 28, 28) and vx.shape == (3, 1, 28, 28)
    assert names == list(tvd.FashionMNIST.classes)
    assert 0.0 <= float(tx.min()) and float(tx.max()) <= 1.0


def test_mnist_truncated_file_is_corrupt(tmp_path):
    _fake_mnist(tmp_path, n_train=4, n_test=2)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="MNIST"):
        torchvision_pixels("mnist", tmp_path)


# ---------------------------------------------------------------------------------------------- CIFAR / SVHN
# torchvision checks their files' MD5s, which fake files cannot match: the checks are patched out here.


def test_cifar10_hwc_to_chw(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3 * 32 * 32), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = rng.integers(0, 10, size=2).tolist()
        (base / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        batches[name] = (data, labels)
    names = [f"class{i}" for i in range(10)]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    ds = load_dataset("cifar10", root=tmp_path)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32).astype(np.float32) / 255
    assert ds.train.images.shape == (10, 3, 32, 32) and ds.test.images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ds.denormalize(ds.train.images), torch.from_numpy(x), atol=1e-6, rtol=0)
    assert ds.train.labels.tolist() == sum((lab for _, lab in train), [])
    assert ds.test.labels.tolist() == batches["test_batch"][1]
    assert ds.class_names == names


def test_cifar_files_cannot_run_code(tmp_path):
    """CIFAR batches are pickles: fastdd's reader allows numpy arrays and containers, nothing else."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / name).write_bytes(pickle.dumps({"data": os.system, "labels": [0]}))
    with pytest.raises(CorruptFileError, match="refusing to load"):
        load_dataset("cifar10", root=tmp_path)


def test_svhn_labels_and_shape(tmp_path, monkeypatch):
    sio = pytest.importorskip("scipy.io")
    import torchvision.datasets.svhn as tv_svhn

    monkeypatch.setattr(tv_svhn, "check_integrity", lambda *a, **k: True)
    rng = np.random.default_rng(2)
    mats = {}
    for split, n in (("train", 6), ("test", 3)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # SVHN's .mat: H, W, C, N
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # digit 0 is stored as 10
        sio.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        mats[split] = (x, y)
    tx, ty, vx, vy, names = torchvision_pixels("svhn", tmp_path)
    x, y = mats["train"]
    assert tx.shape == (6, 3, 32, 32) and vx.shape == (3, 3, 32, 32)
    want = torch.from_numpy(np.transpose(x, (3, 2, 0, 1)).astype(np.float32) / 255)
    torch.testing.assert_close(tx, want, atol=0, rtol=0)
    assert ty.tolist() == [int(v) % 10 for v in y[:, 0]]
    assert names == [str(c) for c in range(10)]


# ---------------------------------------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("mnist", os.path.join("MNIST", "raw")),
        ("fashionmnist", os.path.join("FashionMNIST", "raw")),
        ("svhn", "train_32x32.mat"),
        ("tinyimagenet", "train"),
    ],
)
def test_missing_root_names_path_and_download(tmp_path, name, expected):
    root = tmp_path / "nope"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, root=root)
    msg = str(err.value)
    assert str(root) in msg and expected in msg and "download" in msg
    assert not root.exists()  # nothing was created (or downloaded) there


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("mnist", os.path.join("MNIST", "raw")),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_empty_root_names_expected_path(tmp_path, name, expected):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, root=tmp_path)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), expected) in msg and "download=True" in msg and "--download" in msg


def test_no_root_and_no_env(monkeypatch):
    monkeypatch.delenv("FASTDD_DATA", raising=False)
    with pytest.raises(DataNotFoundError, match="root"):
        load_dataset("cifar10")


def test_env_var_root(tmp_path, monkeypatch):
    _fake_mnist(tmp_path, n_train=3, n_test=2)
    monkeypatch.setenv("FASTDD_DATA", str(tmp_path))
    assert len(load_dataset("mnist").train) == 3


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="cifar11") as err:
        load_dataset("cifar11")
    for name in DATASETS:
        assert name in str(err.value)


# ---------------------------------------------------------------------------------------------- Tiny-ImageNet

WNIDS = ["n02085620", "n01443537", "n09999999"]  # deliberately not sorted


def _fake_tiny(parent, size=(8, 6), n_train=4, n_val=5, seed=3):
    """A miniature tiny-imagenet-200 with JPEG files (W, H = size); returns (base, {val name: wnid})."""
    rng = np.random.default_rng(seed)
    base = parent / "tiny-imagenet-200"
    w, h = size
    for wnid in WNIDS:
        img_dir = base / "train" / wnid / "images"
        img_dir.mkdir(parents=True)
        for k in (3, 0, 2, 1)[:n_train]:
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(img_dir / f"{wnid}_{k}.JPEG", format="JPEG")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("not an image\n")
    (base / "val" / "images").mkdir(parents=True)
    truth = {}
    for k in range(n_val):
        name = f"val_{k}.JPEG"
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(base / "val" / "images" / name, format="JPEG")
        truth[name] = WNIDS[(k * 2) % len(WNIDS)]
    lines = [f"{n}\t{wnid}\t0\t0\t{w - 1}\t{h - 1}" for n, wnid in truth.items()]
    random.Random(seed).shuffle(lines)
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "words.txt").write_text(f"{WNIDS[1]}\tgoldfish, Carassius auratus\n{WNIDS[0]}\tChihuahua\n")
    return base, truth


def _read_rgb(path) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)


def test_tinyimagenet_order_labels_and_pixels(tmp_path):
    base, truth = _fake_tiny(tmp_path)
    tx, ty, vx, vy, names = tinyimagenet_pixels(tmp_path)  # the parent folder
    assert tx.shape == (12, 3, 6, 8) and vx.shape == (5, 3, 6, 8)
    assert tx.dtype == torch.float32 and ty.dtype == torch.int64
    ref = tvd.ImageFolder(str(base / "train"))
    assert ty.tolist() == ref.targets
    for i, (path, _) in enumerate(ref.samples):
        assert torch.equal(tx[i], _read_rgb(path)), path
    order = sorted(truth)
    wnids = sorted(WNIDS)
    assert vy.tolist() == [wnids.index(truth[n]) for n in order]
    for i, n in enumerate(order):
        assert torch.equal(vx[i], _read_rgb(base / "val" / "images" / n))
    assert names == ["goldfish", "Chihuahua", "n09999999"]  # words.txt where listed, else the wnid

    # The tiny-imagenet-200 folder itself works too, and so does load_dataset.
    tx2, ty2, *_ = tinyimagenet_pixels(base)
    assert torch.equal(tx, tx2) and torch.equal(ty, ty2)
    ds = load_dataset("tinyimagenet", root=base)
    assert ds.num_classes == 3 and len(ds.train) == 12 and len(ds.test) == 5


def test_tinyimagenet_unknown_wnid(tmp_path):
    base, _ = _fake_tiny(tmp_path, n_train=1, n_val=2)
    ann = base / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises((CorruptFileError, DataNotFoundError), match="val_annotations.txt"):
        tinyimagenet_pixels(base)


def test_tinyimagenet_missing_val_file_and_annotations(tmp_path):
    base, truth = _fake_tiny(tmp_path, n_train=1, n_val=2)
    missing = base / "val" / "images" / sorted(truth)[0]
    missing.unlink()
    with pytest.raises(DataNotFoundError, match=str(missing)):
        tinyimagenet_pixels(base)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataNotFoundError, match="val_annotations.txt"):
        tinyimagenet_pixels(base)


# ---------------------------------------------------------------------------------------------- ImageFolder


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _fake_folder(root, sizes=None, gray=False, seed=4, test="test"):
    """2 classes; train 3 + test 2 images per class (RGB PNGs, H=5, W=7 unless ``sizes`` is given)."""
    rng = np.random.default_rng(seed)
    files = {"train": [], test: []}
    for split, n in (("train", 3), (test, 2)):
        for label, cls in enumerate(["cat", "dog"]):
            for k in range(n):
                h, w = sizes.pop(0) if sizes else (5, 7)
                shape = (h, w) if gray else (h, w, 3)
                arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
                ext = ".PNG" if k == 1 else ".png"  # extensions are case-insensitive
                _png(root / split / cls / f"img{k}{ext}", arr)
                files[split].append((arr, label))
    (root / "train" / "cat" / "notes.txt").write_text("ignored\n")
    return files


def _stack(items, gray=False):
    arrs = [a[None] if gray else a.transpose(2, 0, 1) for a, _ in items]
    return torch.from_numpy(np.stack(arrs).astype(np.float32) / 255), [lab for _, lab in items]


def test_imagefolder_exact_pixels(tmp_path):
    files = _fake_folder(tmp_path)
    tx, ty, vx, vy, names = imagefolder_pixels(tmp_path)
    assert names == ["cat", "dog"]
    want_x, want_y = _stack(files["train"])
    assert tx.shape == (6, 3, 5, 7) and torch.equal(tx, want_x) and ty.tolist() == want_y
    want_vx, want_vy = _stack(files["test"])
    assert torch.equal(vx, want_vx) and vy.tolist() == want_vy
    ds = load_dataset("imagefolder", root=tmp_path)
    torch.testing.assert_close(ds.denormalize(ds.train.images), want_x, atol=1e-6, rtol=0)
    assert ds.class_names == ["cat", "dog"]


def test_imagefolder_grayscale_and_val_split(tmp_path):
    files = _fake_folder(tmp_path, gray=True, test="val")
    tx, ty, vx, vy, _ = imagefolder_pixels(tmp_path)
    assert tx.shape == (6, 1, 5, 7) and vx.shape == (4, 1, 5, 7)
    assert torch.equal(vx, _stack(files["val"], gray=True)[0])


def test_imagefolder_mixed_sizes(tmp_path):
    sizes = [(5, 7), (6, 6), (5, 7), (9, 4), (5, 7), (5, 7), (8, 8), (5, 7), (5, 7), (5, 7)]
    _fake_folder(tmp_path, sizes=sizes)
    with pytest.raises(ValueError, match="im_size"):
        imagefolder_pixels(tmp_path)
    with pytest.raises(ValueError, match="im_size"):
        load_dataset("imagefolder", root=tmp_path)
    tx, _, vx, _, _ = imagefolder_pixels(tmp_path, im_size=(8, 8))
    assert tx.shape == (6, 3, 8, 8) and vx.shape == (4, 3, 8, 8)
    assert load_dataset("imagefolder", root=tmp_path, im_size=(8, 8)).im_size == (8, 8)


def test_imagefolder_test_class_missing_from_train(tmp_path):
    _fake_folder(tmp_path)
    _png(tmp_path / "test" / "emu" / "a.png", np.zeros((5, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="emu") as err:
        imagefolder_pixels(tmp_path)
    assert str(tmp_path / "test") in str(err.value)


def test_imagefolder_missing_folders(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "nope")):
        imagefolder_pixels(tmp_path / "nope")
    (tmp_path / "test").mkdir()
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "train")):
        imagefolder_pixels(tmp_path)
