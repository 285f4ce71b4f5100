"""PNG pictures: image grids (one row per class) and simple curves. Matplotlib runs headless (Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Write a matplotlib figure to ``path`` atomically (a temporary file, then a rename) and close it."""
    plt = _pyplot()
    tmp = f"{os.fspath(path)}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    labels: torch.Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_per_class: int = 10,
) -> None:
    """Save ``images`` ``(M, C, H, W)`` as a grid: one row per class (at most ``max_per_class`` each).

    Images are un-normalised with ``mean``/``std`` when given (else min-max scaled) and clipped to [0, 1].
    """
    from torchvision.utils import save_image

    tmp = f"{os.fspath(path)}.tmp.png"
    save_image(image_grid(images, labels, mean, std, max_per_class), tmp)
    os.replace(tmp, path)


def image_grid(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_per_class: int = 10,
) -> torch.Tensor:
    """The picture :func:`save_image_grid` saves, as a float tensor ``(C, H', W')`` in [0, 1] on the CPU (what
    experiment trackers log, :mod:`fastdd.tracking`)."""
    from torchvision.utils import make_grid

    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    x = x.clamp(0, 1)
    if labels is not None:
        labels = labels.cpu()
        rows = [x[labels == c][:max_per_class] for c in labels.unique(sorted=True)]
        ncol = max(len(r) for r in rows)
        blank = torch.ones((1,) + tuple(x.shape[1:]))
        x = torch.cat([torch.cat([r, blank.expand(ncol - len(r), *x.shape[1:])]) for r in rows])
    else:
        ncol = min(len(x), max_per_class)
    return make_grid(x, nrow=ncol, padding=1, pad_value=1.0)


def save_curves(
    path: str | os.PathLike,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> None:
    """Line plot of named ``(x, y)`` series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o" if len(xs) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_quickstart_figure(
    path: str | os.PathLike,
    start: torch.Tensor,
    distilled: torch.Tensor,
    iterations: Sequence[int],
    losses: Sequence[float],
    title: str,
) -> None:
    """The quickstart's figure: start images (top row) above distilled images (bottom row), both
    ``(K, C, H, W)`` in ``[0, 1]`` pixels, one per class, and the loss curve beside them."""
    from torchvision.utils import make_grid

    plt = _pyplot()
    k = len(start)
    grid = make_grid(torch.cat([start, distilled]).detach().float().cpu().clamp(0, 1), nrow=k, padding=2, pad_value=1.0)
    fig, (ax_img, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.0), dpi=110, gridspec_kw={"width_ratios": [2.6, 1]})
    ax_img.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    h = start.shape[-2] + 2
    ax_img.set_yticks([h / 2, 1.5 * h], ["start (real)", "distilled"])
    ax_img.set_xticks([])
    ax_img.set_title(title, fontsize=10)
    its, ys = list(iterations), list(losses)
    ax_loss.plot(its, ys, alpha=0.35, label="per iteration")
    w = max(1, len(ys) // 15)
    if w > 1:  # each iteration draws a fresh network: a running mean shows the trend
        ax_loss.plot(
            its[w - 1 :], [sum(ys[i - w + 1 : i + 1]) / w for i in range(w - 1, len(ys))], label=f"mean of {w}"
        )
        ax_loss.legend(fontsize=8)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("matching loss")
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
