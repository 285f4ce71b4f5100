"""Feature spaces for selection and coverage: a network's penultimate features of images.

An *extractor* is anything :func:`resolve_extractor` accepts: ``None`` (a ConvNet trained for a few epochs,
seeded), a callable ``images (B, C, H, W) -> (B, D)``, a ``(net, theta[, buffers])`` tuple, an
:class:`fastdd.ExpertBuffer` or its folder. :func:`extract_features` runs one over a split in batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from .data import Dataset
from .experts import ExpertBuffer, ExpertConfig, train_one
from .models import model_for
from .rng import derive_seed
from .runs import progress

DEFAULT_EXTRACTOR_EPOCHS = 5

# None (default ConvNet) | callable images -> (B, D) | (net, theta[, buffers]) | ExpertBuffer | its folder
Extractor = Any


class FeatureExtractor:
    """Penultimate features of a functional net: ``extractor(images (B, C, H, W)) -> (B, D)``.

    Runs ``net.embed(x, theta, buffers, train=buffers is None)`` without gradients. Nets with batch
    norm and no ``buffers`` (e.g. an expert snapshot: running statistics are not stored) use batch
    statistics, so their features depend on the batch.
    """

    def __init__(self, net: Any, theta: torch.Tensor, buffers: torch.Tensor | None = None, description: str = ""):
        self.net, self.theta, self.buffers = net, theta.detach(), None if buffers is None else buffers.detach()
        self.description = description or net.describe()

    @property
    def feature_dim(self) -> int:
        return int(self.net.feature_dim)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = images.to(self.theta.device)
            return self.net.embed(x, self.theta, self.buffers, train=self.buffers is None)

    def __repr__(self) -> str:
        return f"<FeatureExtractor {self.description}>"


def default_extractor(
    ds: Dataset,
    seed: int = 0,
    *,
    model: str = "convnet",
    epochs: int = DEFAULT_EXTRACTOR_EPOCHS,
    lr: float = 0.01,
    momentum: float = 0.9,
    batch_size: int = 256,
    model_kwargs: dict[str, Any] | None = None,
    show_progress: bool = False,
) -> FeatureExtractor:
    """A ConvNet (depth by resolution) trained for ``epochs`` epochs on ``ds.train`` (SGD, seeded by
    ``seed``); its penultimate layer is the feature space (``width·(H/2^d)·(W/2^d)`` dims: 2,048 on CIFAR)."""
    net = model_for(ds, model, **(model_kwargs or {}))
    cfg = ExpertConfig(lr=lr, momentum=momentum, batch_size=batch_size)
    bar = progress(total=epochs, desc=f"feature extractor ({net.name}, {ds.name})", disable=not show_progress)
    traj, acc = train_one(
        net, ds, epochs, cfg, seed=derive_seed(seed, "select.extractor"), on_epoch=lambda ep, loss: bar.update(1)
    )
    bar.close()
    theta = traj[-1].to(ds.device)
    buffers = None
    if net.has_batchnorm:  # train_one keeps no running statistics: estimate them on the train split
        buffers = net.init_buffers(device=ds.device)
        with torch.no_grad():
            for x in ds.train.images.split(batch_size):
                net(x, theta, buffers, train=True)
    return FeatureExtractor(
        net,
        theta,
        buffers,
        description=f"{net.describe()} trained {epochs} epochs on "
        f"{ds.name} (seed {seed}, test accuracy {100 * acc:.1f}%)",
    )


def resolve_extractor(
    ds: Dataset, extractor: Extractor = None, seed: int = 0, show_progress: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn ``extractor`` into a callable ``images -> (B, D)`` features.

    Accepted: ``None`` (:func:`default_extractor`), a callable, a ``(net, theta)`` or
    ``(net, theta, buffers)`` tuple, an :class:`fastdd.ExpertBuffer` or the folder of one (the final
    snapshot of its first expert).
    """
    if extractor is None:
        return default_extractor(ds, seed, show_progress=show_progress)
    if isinstance(extractor, (str, os.PathLike)):
        extractor = ExpertBuffer(extractor)
    if isinstance(extractor, ExpertBuffer):
        i = extractor.ids[0]
        theta = extractor.snapshots(i, [extractor.num_epochs])[0].to(ds.device)
        return FeatureExtractor(
            extractor.model(), theta, description=f"expert {i} of {extractor.path} after epoch {extractor.num_epochs}"
        )
    if isinstance(extractor, tuple):
        if len(extractor) not in (2, 3):
            raise ValueError(
                f"extractor tuple must be (net, theta) or (net, theta, buffers), got {len(extractor)} items"
            )
        return FeatureExtractor(*extractor)
    if callable(extractor):
        return extractor
    raise TypeError(
        f"extractor must be None, a callable, (net, theta[, buffers]), an ExpertBuffer or its folder; "
        f"got {type(extractor).__name__}"
    )


def extract_features(
    ds: Dataset,
    split: str = "train",
    extractor: Extractor = None,
    batch: int = 512,
    seed: int = 0,
    show_progress: bool = False,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """Features of a split's images (or of ``images``): ``(N, D)`` float32 on ``ds.device``.

    Args:
        split: ``"train"`` or ``"test"`` (ignored when ``images`` is given).
        extractor: see :func:`resolve_extractor`; ``None`` trains the default ConvNet (seeded).
        batch: images per forward pass.
        images: ``(M, C, H, W)`` images in the data set's training space, instead of a split.
    """
    if images is None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        images = getattr(ds, split).images
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    fn = resolve_extractor(ds, extractor, seed, show_progress=show_progress)
    chunks = []
    with torch.no_grad():
        for x in progress(images.split(batch), desc="features", disable=not show_progress):
            f = fn(x.to(ds.device))
            if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != x.shape[0]:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"the feature extractor must return a ({x.shape[0]}, D) tensor for {x.shape[0]} images, got {shape}"
                )
            chunks.append(f.float())
    return torch.cat(chunks)
