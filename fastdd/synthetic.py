"""The distilled (or selected) training set: :class:`SyntheticSet`, saved as safetensors + JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CorruptFileError
from .io import atomic_save_safetensors, atomic_write_json

FORMAT = "fastdd.synthetic/1"


@dataclass
class SyntheticSet:
    """A small training set and what was learned with it.

    Attributes:
        images: ``(M, C, H, W)`` float32 in the data set's training space (normalised or ZCA'd).
        labels: ``(M,)`` int64 hard labels, or ``(M, K)`` float32 target probabilities (soft labels).
        lr: learned learning rate: a 0-d tensor (MTT / SelMatch), a ``(T,)`` tensor of per-step
            rates (DD), or ``None``.
        frozen: ``(M,)`` bool, True for real images kept frozen during distillation (SelMatch's
            selected part), or ``None``.
        meta: JSON-serialisable metadata: method, ipc, num_classes, dataset, seed, hyper-parameters,
            normalisation ``mean``/``std``, fastdd version.
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor | None = None
    frozen: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.images.shape[0]
        if self.images.dim() != 4:
            raise ValueError(f"images must be (M, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape[0] != m or self.labels.dim() not in (1, 2):
            raise ValueError(f"labels must be ({m},) or ({m}, K), got {tuple(self.labels.shape)}")
        if self.frozen is not None and self.frozen.shape != (m,):
            raise ValueError(f"frozen must be a ({m},) bool mask, got {tuple(self.frozen.shape)}")
        if not torch.isfinite(self.images).all():
            raise ValueError("synthetic images contain NaN or inf")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def soft(self) -> bool:
        return self.labels.dim() == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        """``(M,)`` int64: the labels, or the argmax of soft labels."""
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def num_classes(self) -> int:
        if "num_classes" in self.meta:
            return int(self.meta["num_classes"])
        return self.labels.shape[1] if self.soft else int(self.labels.max()) + 1

    def per_class_counts(self) -> list[int]:
        return torch.bincount(self.hard_labels.cpu(), minlength=self.num_classes).tolist()

    @property
    def ipc(self) -> int:
        """Images per class (the smallest class's count if they differ)."""
        return min(self.per_class_counts())

    def to(self, device) -> "SyntheticSet":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SyntheticSet(self.images.to(device), self.labels.to(device), mv(self.lr), mv(self.frozen), dict(self.meta))

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike, grid: bool = True, denormalize=None) -> Path:
        """Save into folder ``path``: ``synthetic.safetensors`` (tensors), ``synthetic.json``
        (metadata) and, with ``grid``, ``images.png``. Each file is written atomically.

        ``denormalize``: a callable mapping images back to ``[0, 1]`` pixels for the picture, e.g.
        ``ds.denormalize`` (needed for ZCA'd sets); by default the stored mean/std are used.
        """
        from . import __version__
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images, "labels": self.labels}
        if self.lr is not None:
            tensors["lr"] = self.lr.reshape(-1) if self.lr.dim() else self.lr.reshape(1)
        if self.frozen is not None:
            tensors["frozen"] = self.frozen.to(torch.uint8)
        atomic_save_safetensors(path / "synthetic.safetensors", tensors, metadata={"format": FORMAT})
        meta = dict(self.meta, format=FORMAT, fastdd_version=__version__,
                    lr_shape=list(self.lr.shape) if self.lr is not None else None)
        atomic_write_json(path / "synthetic.json", meta)
        if grid:
            from .plots import save_image_grid
            if denormalize is not None:
                save_image_grid(denormalize(self.images), path / "images.png", labels=self.hard_labels,
                                mean=[0.0] * self.images.shape[1], std=[1.0] * self.images.shape[1])
            else:
                save_image_grid(self.images, path / "images.png", labels=self.hard_labels,
                                mean=self.meta.get("mean"), std=self.meta.get("std"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "SyntheticSet":
        """Load a set saved by :meth:`save` (no unpickling)."""
        path = Path(path)
        tfile, jfile = path / "synthetic.safetensors", path / "synthetic.json"
        for f in (tfile, jfile):
            if not f.exists():
                raise FileNotFoundError(f"{f} not found: {path} is not a saved SyntheticSet folder")
        try:
            t = load_file(str(tfile))
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{tfile} is truncated or corrupt: {e}") from e
        try:
            meta = json.loads(jfile.read_text())
        except json.JSONDecodeError as e:
            raise CorruptFileError(f"{jfile} is not valid JSON: {e}") from e
        if meta.get("format") != FORMAT or "images" not in t or "labels" not in t:
            raise CorruptFileError(f"{path} does not hold a {FORMAT} synthetic set")
        lr = t.get("lr")
        if lr is not None and meta.get("lr_shape") == []:
            lr = lr.reshape(())
        frozen = t["frozen"].bool() if "frozen" in t else None
        meta.pop("lr_shape", None)
        return cls(t["images"], t["labels"], lr, frozen, meta).to(device)
