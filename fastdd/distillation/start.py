"""Where a distilled set starts: noise, or random real images of each class."""

from __future__ import annotations

import torch

from ..data import Dataset


def start_images(ds: Dataset, ipc: int, init: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class-major start images ``(K·ipc, C, H, W)``: standard normal noise, or ``ipc`` random real
    images per class (then also their indices into ``ds.train``)."""
    if init == "noise":
        return torch.randn((ds.num_classes * ipc, ds.channels, *ds.im_size), generator=g).to(ds.device), None
    idx = torch.cat(ds.sample_per_class(ipc, g))
    return ds.train.images[idx.to(ds.device)].clone(), idx
