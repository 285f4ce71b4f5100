"""The distilled (or selected) training set: :class:`SyntheticSet`, saved as safetensors + JSON."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CorruptFileError, UnverifiedFileWarning
from .io import atomic_save_safetensors, atomic_write_json, check_file, json_field, read_json_object
from .version import __version__

FORMAT = "fastdd.synthetic/1"
TENSORS, INDEX = "synthetic.safetensors", "synthetic.json"  # the set's files: fixed names, never read from JSON


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
        k = self.meta.get("num_classes")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"meta['num_classes'] must be an integer >= 1, got {k!r}")
        if self.labels.dim() == 1:
            if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool:
                raise ValueError(f"hard labels must be integer class indices, got dtype {self.labels.dtype}")
            if m and (int(self.labels.min()) < 0 or (k is not None and int(self.labels.max()) >= k)):
                raise ValueError(
                    f"labels must lie in [0, {k if k is not None else 'num_classes'}), got "
                    f"{int(self.labels.min())}..{int(self.labels.max())}"
                )
        else:
            if k is not None and self.labels.shape[1] != k:
                raise ValueError(f"soft labels must have {k} columns (num_classes), got {self.labels.shape[1]}")
            if not torch.isfinite(self.labels).all() or bool((self.labels < 0).any()):
                raise ValueError("soft labels must be finite probabilities >= 0")
        check_lr(self.lr)

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

    def to(self, device) -> SyntheticSet:
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SyntheticSet(
            self.images.to(device), self.labels.to(device), mv(self.lr), mv(self.frozen), dict(self.meta)
        )

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike, grid: bool = True, denormalize=None) -> Path:
        """Save into folder ``path``: ``synthetic.safetensors`` (tensors), ``synthetic.json``
        (metadata) and, with ``grid``, ``images.png``. Each file is written atomically.

        ``denormalize``: a callable mapping images back to ``[0, 1]`` pixels for the picture, e.g.
        ``ds.denormalize`` (needed for ZCA'd sets); by default the stored mean/std are used.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {"images": self.images, "labels": self.labels}
        if self.lr is not None:
            tensors["lr"] = self.lr.reshape(-1) if self.lr.dim() else self.lr.reshape(1)
        if self.frozen is not None:
            tensors["frozen"] = self.frozen.to(torch.uint8)
        record = atomic_save_safetensors(path / TENSORS, tensors, metadata={"format": FORMAT})
        meta = dict(
            self.meta,
            format=FORMAT,
            fastdd_version=__version__,
            lr_shape=list(self.lr.shape) if self.lr is not None else None,
            files={TENSORS: record},
        )
        atomic_write_json(path / INDEX, meta)
        if grid:
            from .plots import save_image_grid

            if denormalize is not None:
                save_image_grid(
                    denormalize(self.images),
                    path / "images.png",
                    labels=self.hard_labels,
                    mean=[0.0] * self.images.shape[1],
                    std=[1.0] * self.images.shape[1],
                )
            else:
                save_image_grid(
                    self.images,
                    path / "images.png",
                    labels=self.hard_labels,
                    mean=self.meta.get("mean"),
                    std=self.meta.get("std"),
                )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SyntheticSet:
        """Load a set saved by :meth:`save` (no unpickling). The tensor file is checked against the size and
        SHA-256 that ``synthetic.json`` records (sets saved before the record load with a notice); labels out of
        range, a learned lr that is not a finite positive number, or a malformed ``synthetic.json`` raise
        :class:`~fastdd.errors.CorruptFileError` naming the file."""
        path = Path(path)
        tfile, jfile = path / TENSORS, path / INDEX
        for f in (tfile, jfile):
            if not f.exists():
                raise FileNotFoundError(f"{f} not found: {path} is not a saved SyntheticSet folder")
        meta = read_json_object(jfile, "synthetic set")
        if meta.get("format") != FORMAT:
            raise CorruptFileError(f"{jfile} is not a {FORMAT} synthetic set (format {meta.get('format')!r})")
        files = json_field(meta, "files", dict, jfile, optional=True)
        if files is None:
            warnings.warn(
                f"{jfile} predates checksums: {TENSORS} is loaded without a SHA-256 check",
                UnverifiedFileWarning,
                stacklevel=2,
            )
        else:
            if set(files) != {TENSORS}:
                raise CorruptFileError(f"{jfile}: 'files' must record {TENSORS} only, got {sorted(files)}")
            check_file(tfile, files[TENSORS], jfile, "synthetic set file")
        try:
            t = load_file(str(tfile))
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{tfile} is truncated or corrupt: {e}") from e
        if "images" not in t or "labels" not in t:
            raise CorruptFileError(f"{tfile} holds no 'images' and 'labels' tensors: not a {FORMAT} set")
        lr = t.get("lr")
        lr_shape = json_field(meta, "lr_shape", list, jfile, optional=True)
        if lr is not None and lr_shape == []:
            lr = lr.reshape(())
        frozen = t["frozen"].bool() if "frozen" in t else None
        for key in ("lr_shape", "files"):
            meta.pop(key, None)
        try:
            syn = cls(t["images"], t["labels"], lr, frozen, meta)
        except (ValueError, TypeError, RuntimeError) as e:
            raise CorruptFileError(f"{path}: {e}") from e
        return syn.to(device)


def check_lr(lr: torch.Tensor | None, what: str = "the learned lr") -> None:
    """``ValueError`` unless ``lr`` is ``None`` or every entry is a finite number > 0 (a NaN rate would train
    a network to chance without a word)."""
    if lr is None:
        return
    if not lr.dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating-point tensor, got {lr.dtype}")
    if lr.numel() and not bool((torch.isfinite(lr) & (lr > 0)).all()):
        raise ValueError(
            f"{what} must be finite and > 0, got {lr.flatten()[:4].tolist()}{' ...' if lr.numel() > 4 else ''}"
        )
