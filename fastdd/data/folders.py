"""Loaders for data sets kept in a local folder (torchvision layouts, Tiny-ImageNet, ImageFolder).

Every loader returns ``(train_x, train_y, test_x, test_y, class_names)``: ``*_x`` float32 CPU tensors
of pixels in ``[0, 1]`` shaped ``(N, C, H, W)``, ``*_y`` int64 CPU tensors ``(N,)``, and one name per class.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import CorruptFileError, DataNotFoundError

Pixels = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TINY_IMAGENET = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

# torchvision class name and the file / folder each split is read from (relative to root).
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw"),
    "fashionmnist": ("FashionMNIST", "FashionMNIST/raw"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "svhn": ("SVHN", "{split}_32x32.mat"),
}


def _to_unit_float(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` → contiguous float32 in ``[0, 1]``."""
    return u8.contiguous().to(torch.float32).div_(255.0)


# --------------------------------------------------------------------------------------------------
# torchvision data sets
# --------------------------------------------------------------------------------------------------


def _torchvision_split(key: str, root: str, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls_name, rel = _TORCHVISION[key]
    cls = getattr(tvd, cls_name)
    split = "train" if train else "test"
    expected = os.path.join(root, rel.format(split=split))
    if key in ("mnist", "fashionmnist"):
        prefix = "train" if train else "t10k"
        expected += f" ({prefix}-images-idx3-ubyte, {prefix}-labels-idx1-ubyte, uncompressed)"
    how = "pass download=True (CLI: --download) to let torchvision fetch it, or place the files there yourself"
    if not download and not os.path.isdir(root):
        raise DataNotFoundError(f"{key}: data folder {root} does not exist (expected the data at {expected}); {how}")
    kwargs = {"split": split} if key == "svhn" else {"train": train}
    try:
        return cls(root=root, download=download, **kwargs)
    except ImportError as e:  # SVHN reads .mat files with scipy
        raise ImportError(f"{key}: loading needs an optional package ({e}); install it (e.g. pip install scipy)") from e
    except RuntimeError as e:
        msg = str(e)
        if "not found" in msg.lower():
            raise DataNotFoundError(
                f"{key} ({split} split) not found or corrupted at {expected}; {how}. torchvision said: {msg}"
            ) from e
        if download:
            raise DataNotFoundError(
                f"{key}: downloading into {root} failed ({msg}); place the files at {expected} yourself"
            ) from e
        raise CorruptFileError(f"{key}: could not read {expected}: {msg}") from e
    except OSError as e:
        if download:
            raise DataNotFoundError(
                f"{key}: downloading into {root} failed ({e}); place the files at {expected} yourself"
            ) from e
        raise CorruptFileError(f"{key}: could not read {expected}: {e}") from e
    except (AssertionError, ValueError, TypeError, EOFError, KeyError, pickle.UnpicklingError) as e:
        raise CorruptFileError(
            f"{key}: {expected} is truncated or not in the expected format ({type(e).__name__}: {e})"
        ) from e


def _torchvision_arrays(key: str, ds) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data
    x = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
    if key in ("mnist", "fashionmnist"):  # (N, 28, 28)
        x = x.unsqueeze(1)
    elif key in ("cifar10", "cifar100"):  # (N, 32, 32, 3) HWC
        x = x.permute(0, 3, 1, 2)
    # svhn: already (N, 3, 32, 32)
    labels = ds.labels if key == "svhn" else ds.targets
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    return _to_unit_float(x), y.to(torch.int64).contiguous()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: the CIFAR batch files need nothing else, and
    a file a user downloaded must not be able to run code (``pickle.load`` would import anything)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only numpy arrays and plain containers "
            "are allowed in a CIFAR batch file"
        )


def _read_cifar_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataNotFoundError(f"{path} not found")
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CorruptFileError(
            f"{path} is truncated, corrupt or not a CIFAR batch file ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} is not a CIFAR batch file (no dict inside)")
    return obj


_CIFAR = {  # folder, train files, test files, label key, meta file, class-name key
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def cifar_pixels(key: str, root: str, download: bool = False) -> Pixels:
    """CIFAR-10 / CIFAR-100 from torchvision's python layout, read without unpickling code."""
    folder, train_files, test_files, label_key, meta_file, names_key = _CIFAR[key]
    base = os.path.join(root, folder)
    how = "pass download=True (CLI: --download) to let torchvision fetch it, or place the files there yourself"
    if download and not os.path.isdir(base):
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_and_extract_archive

        cls = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
        try:
            download_and_extract_archive(cls.url, root, filename=cls.filename, md5=cls.tgz_md5)
        except Exception as e:  # network errors of every kind
            raise DataNotFoundError(
                f"{key}: downloading into {root} failed ({e}); place the files at {base} yourself"
            ) from e
    if not os.path.isdir(root):
        raise DataNotFoundError(f"{key}: data folder {root} does not exist (expected the data at {base}); {how}")
    if not os.path.isdir(base):
        raise DataNotFoundError(f"{key} not found: expected the folder {base}; {how}")

    def read(files):
        xs, ys = [], []
        for name in files:
            d = _read_cifar_file(os.path.join(base, name))
            if "data" not in d or label_key not in d:
                raise CorruptFileError(f"{os.path.join(base, name)} lacks the 'data' / '{label_key}' entries")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        return _to_unit_float(torch.from_numpy(np.concatenate(xs))), torch.from_numpy(np.concatenate(ys))

    tx, ty = read(train_files)
    vx, vy = read(test_files)
    meta_path = os.path.join(base, meta_file)
    if os.path.isfile(meta_path):
        names = [str(n) for n in _read_cifar_file(meta_path).get(names_key, [])]
    else:
        names = []
    if not names:
        names = [str(c) for c in range(10 if key == "cifar10" else 100)]
    return tx, ty, vx, vy, names


def torchvision_pixels(key: str, root: str | os.PathLike, download: bool = False) -> Pixels:
    """MNIST / FashionMNIST / SVHN / CIFAR-10 / CIFAR-100 from ``root`` in torchvision's layout.

    Returns ``(train_x, train_y, test_x, test_y, class_names)``: ``(N, 1, 28, 28)`` for the MNISTs,
    ``(N, 3, 32, 32)`` otherwise, in torchvision's order. Downloads only when ``download=True``.

    Raises:
        DataNotFoundError: the files are not there (the message names the expected path).
    """
    if key not in _TORCHVISION:
        raise ValueError(f"unknown torchvision data set {key!r}; choose one of: {', '.join(_TORCHVISION)}")
    root = os.path.expanduser(os.fspath(root))
    if key in _CIFAR:
        return cifar_pixels(key, root, download)
    tr = _torchvision_split(key, root, True, download)
    te = _torchvision_split(key, root, False, download)
    tx, ty = _torchvision_arrays(key, tr)
    vx, vy = _torchvision_arrays(key, te)
    classes = getattr(tr, "classes", None)
    if classes:
        names = [str(c) for c in classes]
    else:  # SVHN has no class list: its 10 digits (label 0 is the digit 0)
        n = 10 if key == "svhn" else int(max(ty.max(), vy.max())) + 1
        names = [str(c) for c in range(n)]
    return tx, ty, vx, vy, names


# --------------------------------------------------------------------------------------------------
# image files
# --------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(split_dir: str) -> list[str]:
    """Sorted class sub-folder names (torchvision ``find_classes`` order)."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _class_files(class_dir: str) -> list[str]:
    """Image files under ``class_dir`` in torchvision ``make_dataset`` order (sorted walk, sorted names)."""
    out = []
    for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
        out.extend(os.path.join(dirpath, f) for f in sorted(fnames) if _is_image(f))
    return out


def _scan_split(
    split_dir: str, class_to_idx: dict[str, int], classes: Sequence[str], require_nonempty: bool
) -> tuple[list[str], list[int]]:
    paths: list[str] = []
    labels: list[int] = []
    for name in classes:
        files = _class_files(os.path.join(split_dir, name))
        if require_nonempty and not files:
            raise DataNotFoundError(
                f"class folder {os.path.join(split_dir, name)} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(files)
        labels.extend([class_to_idx[name]] * len(files))
    return paths, labels


def _open(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise DataNotFoundError(f"image file {path} is missing") from e
    except (UnidentifiedImageError, OSError) as e:
        raise CorruptFileError(f"could not read image {path}: {e}") from e


def _load_images(
    paths: Sequence[str],
    mode: str,
    size: tuple[int, int],
    resize: bool,
    desc: str,
    mismatch: type[ValueError] = CorruptFileError,
    hint: str = "",
) -> np.ndarray:
    """Read ``paths`` into a uint8 ``(N, C, H, W)`` array; ``size`` is ``(H, W)``, ``mode`` PIL's "RGB" or "L".

    With ``resize`` every image is resized (bilinear) to ``size``; otherwise a differently sized image
    raises ``mismatch`` (its message ends with ``hint``).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    h, w = size
    c = 1 if mode == "L" else 3
    out = np.empty((len(paths), c, h, w), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, disable=None, desc=desc, unit="img", leave=False)):
        with _open(p) as im:
            try:
                im = im.convert(mode)
                if im.size != (w, h):
                    if not resize:
                        raise mismatch(f"image {p} is {im.size[0]}x{im.size[1]} (WxH), expected {w}x{h}{hint}")
                    im = im.resize((w, h), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
            except OSError as e:  # truncated / undecodable data surfaces on load
                raise CorruptFileError(f"could not decode image {p}: {e}") from e
        out[i] = arr[None] if c == 1 else arr.transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------------------
# Tiny-ImageNet
# --------------------------------------------------------------------------------------------------


def _tiny_root(root: str) -> str:
    nested = os.path.join(root, TINY_IMAGENET)
    return nested if os.path.isdir(nested) else root


def _read_words(path: str) -> dict[str, str]:
    names: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            wnid, _, words = line.rstrip("\n").partition("\t")
            first = words.split(",")[0].strip()
            if wnid and first:
                names[wnid.strip()] = first
    return names


def tinyimagenet_pixels(root: str | os.PathLike) -> Pixels:
    """Tiny-ImageNet-200 from ``root`` (the ``tiny-imagenet-200`` folder or its parent).

    Train: ``train/<wnid>/images/*.JPEG`` in ``torchvision.datasets.ImageFolder(root/train)`` order.
    Test: ``val/images`` labelled by ``val/val_annotations.txt``, sorted by file name.
    Returns ``(train_x, train_y, test_x, test_y, class_names)``, images ``(N, 3, H, W)`` (64×64 for
    the real data); class names from ``words.txt`` when present, else the wnids.

    Raises:
        DataNotFoundError: a folder, the annotation file or an image is missing.
        CorruptFileError: the annotation file is malformed, or an image is unreadable / differently sized.
    """
    given = os.path.expanduser(os.fspath(root))
    base = _tiny_root(given)
    train_dir = os.path.join(base, "train")
    how = (
        f"download {TINY_IMAGENET_URL} and unzip it so that {os.path.join(given, TINY_IMAGENET, 'train')} "
        f"exists (pass that folder or its parent as root)"
    )
    if not os.path.isdir(train_dir):
        raise DataNotFoundError(f"tinyimagenet: train folder {train_dir} not found; {how}")
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataNotFoundError(f"tinyimagenet: {train_dir} holds no class (wnid) folder; {how}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train_paths, train_labels = _scan_split(train_dir, class_to_idx, classes, require_nonempty=True)

    ann_path = os.path.join(base, "val", "val_annotations.txt")
    if not os.path.isfile(ann_path):
        raise DataNotFoundError(f"tinyimagenet: annotation file {ann_path} not found; {how}")
    val_img_dir = os.path.join(base, "val", "images")
    val: dict[str, int] = {}
    with open(ann_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 2:
                raise CorruptFileError(
                    f"{ann_path}, line {lineno}: expected 'filename<TAB>wnid<TAB>...', got {line.strip()!r}"
                )
            fname, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in class_to_idx:
                raise CorruptFileError(f"{ann_path}, line {lineno}: wnid {wnid!r} is not a class folder of {train_dir}")
            if fname in val:
                raise CorruptFileError(f"{ann_path}, line {lineno}: {fname!r} is listed twice")
            val[fname] = class_to_idx[wnid]
    if not val:
        raise CorruptFileError(f"{ann_path} lists no image")
    val_names = sorted(val)
    val_paths = [os.path.join(val_img_dir, n) for n in val_names]
    for p in val_paths:
        if not os.path.isfile(p):
            raise DataNotFoundError(f"tinyimagenet: {p} (listed in {ann_path}) is missing")
    val_labels = [val[n] for n in val_names]

    with _open(train_paths[0]) as im:
        w, h = im.size
    tx = _load_images(train_paths, "RGB", (h, w), False, "tinyimagenet train")
    vx = _load_images(val_paths, "RGB", (h, w), False, "tinyimagenet val")

    words = os.path.join(base, "words.txt")
    lookup = _read_words(words) if os.path.isfile(words) else {}
    names = [lookup.get(c, c) for c in classes]
    return (
        _to_unit_float(torch.from_numpy(tx)),
        torch.tensor(train_labels, dtype=torch.int64),
        _to_unit_float(torch.from_numpy(vx)),
        torch.tensor(val_labels, dtype=torch.int64),
        names,
    )


# --------------------------------------------------------------------------------------------------
# Generic ImageFolder
# --------------------------------------------------------------------------------------------------


def imagefolder_pixels(root: str | os.PathLike, im_size: tuple[int, int] | None = None) -> Pixels:
    """Images in ``root/train/<class>/...`` and ``root/test/<class>/...`` (or ``root/val``).

    Classes are the sorted sub-folders of ``train`` (torchvision ``ImageFolder`` order); images are
    read as RGB, or as grayscale ``"L"`` when every train image is. Returns ``(train_x, train_y,
    test_x, test_y, class_names)`` with images ``(N, C, H, W)``, C in {1, 3}; ``im_size=(H, W)``
    resizes (bilinear), otherwise all images must share one size.

    Raises:
        DataNotFoundError: ``root``, ``train`` or the test split is missing, or a train class is empty.
        ValueError: sizes differ without ``im_size``, or the test split has a class absent from train.
    """
    root = os.path.expanduser(os.fspath(root))
    layout = "expected root/train/<class>/<image> and root/test/<class>/<image> (or root/val/...)"
    if not os.path.isdir(root):
        raise DataNotFoundError(f"imagefolder: folder {root} does not exist; {layout}")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataNotFoundError(f"imagefolder: train folder {train_dir} not found; {layout}")
    test_dir = os.path.join(root, "test")
    if not os.path.isdir(test_dir):
        test_dir = os.path.join(root, "val")
        if not os.path.isdir(test_dir):
            raise DataNotFoundError(
                f"imagefolder: neither {os.path.join(root, 'test')} nor {test_dir} exists; {layout}"
            )
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataNotFoundError(f"imagefolder: {train_dir} holds no class folder; {layout}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    test_classes = _class_dirs(test_dir)
    unknown = [c for c in test_classes if c not in class_to_idx]
    if unknown:
        raise ValueError(f"imagefolder: {test_dir} has class folder(s) absent from {train_dir}: {', '.join(unknown)}")
    train_paths, train_labels = _scan_split(train_dir, class_to_idx, classes, require_nonempty=True)
    test_paths, test_labels = _scan_split(test_dir, class_to_idx, test_classes, require_nonempty=False)
    if not test_paths:
        raise DataNotFoundError(f"imagefolder: {test_dir} holds no image ({', '.join(IMAGE_EXTENSIONS)})")

    # Header pass over train (cheap: PIL reads no pixel data here): modes, and sizes when not resizing.
    all_gray = True
    first_size = None
    for p in train_paths:
        with _open(p) as im:
            all_gray &= im.mode == "L"
            if first_size is None:
                first_size = im.size
            elif im_size is None and im.size != first_size:
                raise ValueError(
                    f"imagefolder: images differ in size ({train_paths[0]} is "
                    f"{first_size[0]}x{first_size[1]}, {p} is {im.size[0]}x{im.size[1]}, WxH); "
                    f"pass im_size=(H, W) to resize them all"
                )
    mode = "L" if all_gray else "RGB"
    if im_size is not None:
        size = (int(im_size[0]), int(im_size[1]))
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"im_size must be two positive ints (H, W), got {im_size!r}")
    else:
        size = (first_size[1], first_size[0])
    hint = "; images differ in size: pass im_size=(H, W) to resize them all"
    tx = _load_images(train_paths, mode, size, im_size is not None, "imagefolder train", ValueError, hint)
    vx = _load_images(test_paths, mode, size, im_size is not None, "imagefolder test", ValueError, hint)
    return (
        _to_unit_float(torch.from_numpy(tx)),
        torch.tensor(train_labels, dtype=torch.int64),
        _to_unit_float(torch.from_numpy(vx)),
        torch.tensor(test_labels, dtype=torch.int64),
        list(classes),
    )
