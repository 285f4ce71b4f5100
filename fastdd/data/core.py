"""Data sets as tensors: :class:`Split` (images + labels) and :class:`Dataset` (train, test, stats)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..rng import generator
from .zca import ZCA


@dataclass
class Split:
    """One split. ``images`` float32 ``(N, C, H, W)`` in the training space (normalised, or ZCA'd);
    ``labels`` int64 ``(N,)`` in ``[0, num_classes)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be ({self.images.shape[0]},) to match images, got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, idx: torch.Tensor) -> Split:
        idx = idx.to(self.images.device)
        return Split(self.images[idx], self.labels[idx])


@dataclass
class Dataset:
    """A labelled image data set, held as tensors on one device.

    Attributes:
        name: registry name (``"mnist5k"``, ``"cifar10"``, ...).
        train, test: the splits.
        num_classes: number of classes K.
        mean, std: per-channel statistics used to normalise (``(0,…)`` / ``(1,…)`` when ZCA is on).
        class_names: one name per class.
        zca: the whitening fitted on the train set (``None`` unless ``zca=True``); ``zca.inverse``
            maps back to ``[0, 1]`` pixels.
        class_indices: per class, the indices into ``train`` of its images (ascending).
        val: a validation split carved from the original train split (:meth:`with_validation`), or
            ``None``. Choices made while distilling or tuning (which iteration's set to keep, a learning
            rate) should be scored on it, never on ``test``.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    zca: ZCA | None = None
    class_indices: list[torch.Tensor] = field(default_factory=list, repr=False)
    val: Split | None = None

    def __post_init__(self) -> None:
        for split_name in ("train", "test"):
            lab = getattr(self, split_name).labels
            if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
                raise ValueError(
                    f"{self.name} {split_name} labels must lie in [0, {self.num_classes}), "
                    f"found [{int(lab.min())}, {int(lab.max())}]"
                )
        if tuple(self.train.images.shape[1:]) != tuple(self.test.images.shape[1:]):
            raise ValueError(
                f"{self.name}: train images {tuple(self.train.images.shape[1:])} and test images "
                f"{tuple(self.test.images.shape[1:])} differ in shape"
            )
        if not self.class_names:
            self.class_names = [str(c) for c in range(self.num_classes)]
        labels = self.train.labels.cpu()
        self.class_indices = [
            torch.nonzero(labels == c).flatten().to(self.train.labels.device) for c in range(self.num_classes)
        ]

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def im_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[2:])

    @property
    def device(self) -> torch.device:
        return self.train.images.device

    def class_counts(self) -> list[int]:
        return [len(i) for i in self.class_indices]

    def to(self, device) -> Dataset:
        return replace(
            self,
            train=self.train.to(device),
            test=self.test.to(device),
            val=None if self.val is None else self.val.to(device),
        )

    def sample_per_class(self, n: int | list[int], generator: torch.Generator) -> list[torch.Tensor]:
        """Per class (in class order), ``n`` (or ``n[c]``; at most the class size) indices into ``train``
        drawn without replacement: one ``randperm`` per class from ``generator``, on the host."""
        counts = n if isinstance(n, list) else [n] * self.num_classes
        return [ci.cpu()[torch.randperm(len(ci), generator=generator)[:k]] for ci, k in zip(self.class_indices, counts)]

    def with_validation(self, fraction: float = 0.1, seed: int = 0) -> Dataset:
        """This data set with a seeded, stratified validation split carved out of ``train``.

        Per class, ``max(1, round(fraction · n_c))`` images drawn at random (stream ``(seed,
        "validation")``) go to ``val``; the rest stay in ``train`` in their original order. ``test`` is
        untouched. Normalisation statistics (and a ZCA) stay those fitted on the full train split.
        """
        if self.val is not None:
            raise ValueError(f"{self.name} already has a validation split ({len(self.val)} images)")
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        counts = [max(1, round(fraction * len(ci))) for ci in self.class_indices]
        for c, (k, ci) in enumerate(zip(counts, self.class_indices)):
            if k >= len(ci):
                raise ValueError(
                    f"class {c} has {len(ci)} train images: too few to keep any after taking {k} for validation"
                )
        val_idx = torch.cat(self.sample_per_class(counts, generator(seed, "validation"))).sort().values
        keep = torch.ones(len(self.train), dtype=torch.bool)
        keep[val_idx] = False
        return replace(self, train=self.train.subset(torch.nonzero(keep).flatten()), val=self.train.subset(val_idx))

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images from the training space back to ``[0, 1]`` pixels (undoing ZCA or mean/std)."""
        if self.zca is not None:
            return self.zca.inverse(images)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return images * std + mean

    def describe(self) -> str:
        c, (h, w) = self.channels, self.im_size
        z = ", ZCA" if self.zca is not None else ""
        v = f" / {len(self.val)} validation" if self.val is not None else ""
        return (
            f"{self.name}: {len(self.train)} train{v} / {len(self.test)} test images, {self.num_classes} classes, "
            f"{c}x{h}x{w}{z}, on {self.device}"
        )


def minibatches(
    n: int, batch_size: int, generator: torch.Generator, device=None, min_last: int = 1
) -> list[torch.Tensor]:
    """Chunks of one random permutation of ``range(n)`` (the last may be short). A last chunk
    smaller than ``min_last`` is merged into the one before (batch norm cannot train on 1 image)."""
    chunks = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < min_last:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return [c.to(device) for c in chunks] if device is not None else chunks


def from_pixels(
    name: str,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    zca: bool = False,
    zca_eps: float = 0.1,
    class_names: list[str] | None = None,
    device: torch.device | str = "cpu",
) -> Dataset:
    """Build a :class:`Dataset` from ``[0, 1]`` pixel tensors ``(N, C, H, W)``.

    Without ZCA, images are normalised per channel with ``mean``/``std`` (computed on the train
    split when not given). With ``zca=True`` (as MTT does), the raw ``[0, 1]`` pixels are whitened by a
    ZCA fitted once on the train split, and ``mean``/``std`` are reported as 0/1.
    """
    train_x, test_x = train_x.float(), test_x.float()
    c = train_x.shape[1]
    if zca:
        z = ZCA.fit(train_x, eps=zca_eps)
        tr, te = z(train_x), z(test_x)
        mean, std = (0.0,) * c, (1.0,) * c
    else:
        z = None
        if mean is None or std is None:
            mean = tuple(train_x.mean(dim=(0, 2, 3)).tolist())
            std = tuple(train_x.std(dim=(0, 2, 3)).tolist())
        m = torch.tensor(mean).view(1, -1, 1, 1)
        s = torch.tensor(std).view(1, -1, 1, 1)
        tr, te = (train_x - m) / s, (test_x - m) / s
    ds = Dataset(
        name=name,
        train=Split(tr.contiguous(), train_y.long()),
        test=Split(te.contiguous(), test_y.long()),
        num_classes=num_classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        class_names=list(class_names or []),
        zca=z,
    )
    return ds.to(device) if torch.device(device) != torch.device("cpu") else ds
