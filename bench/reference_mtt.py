"""A reference-style MTT meta-gradient: the way the research code computes it, as the benchmark's baseline.

This is what fastdd's engine is measured against (``bench/test_bench_iteration.py``, group ``iteration``).
It follows the structure of MTT's ``distill.py`` (``../shared/reference/trajectory-matching.md`` §1.3, §6),
re-written here from that description:

- the student is an ``nn.Module`` ConvNet (``nn.Conv2d`` → ``nn.GroupNorm(C, C)`` → ``nn.ReLU(inplace=True)``
  → ``nn.AvgPool2d(2, 2)``, × depth, then ``nn.Linear``), evaluated over ONE flat parameter tensor: the
  flat vector is split into views shaped like the module's parameters and the module runs on them with
  ``torch.func.functional_call`` (what the research code's ``ReparamModule`` does by swapping attributes);
- DSA is applied per call with plain torch ops per family, one family for the whole batch with
  per-sample parameters (mode 'S'); scale and rotate build their affine matrices in a Python loop on
  the CPU, crop and cutout use padded / clamped index grids, as the research code does. The parameters
  are not drawn here: they are those fastdd's :class:`fastdd.augment.StepAugment` drew for each step
  (a :class:`fastdd.augment.DSAParams`), so the result is comparable with fastdd's;
- ``create_graph=True`` through all N student steps (every θ_i and its graph stay alive), then one
  ``torch.autograd.grad`` of the normalised matching loss ``‖θ_N − θ*‖² / ‖θ_0 − θ*‖²`` with respect to
  the images and the learnable learning rate.

:func:`meta_grad` has the signature of :func:`fastdd.engine.trajectory_matching_grad` (the ``mode`` is
ignored), so ``fastdd.bench.measure(..., impl="bench/reference_mtt.py:meta_grad")`` measures its memory
in a fresh process. ``tests/test_bench_suite.py`` checks that it equals fastdd's ``bptt`` and
``adjoint`` gradients (float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------ the network
class ConvNet(nn.Module):
    """The research code's default ConvNet (instance norm = ``GroupNorm(C, C)``, ReLU, average pooling)."""

    def __init__(
        self, channel: int, num_classes: int, width: int = 128, depth: int = 3, im_size: tuple[int, int] = (32, 32)
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channel, im_size
        for d in range(depth):
            pad = 3 if (channel == 1 and d == 0) else 1
            layers += [
                nn.Conv2d(c, width, kernel_size=3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            c, h, w = width, (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class FlatParamNet:
    """``net(x, flat_param=θ)``: the module run over views of one flat parameter vector (ReparamModule-style)."""

    def __init__(self, module: nn.Module):
        self.module = module
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)

    def __call__(self, x: torch.Tensor, flat_param: torch.Tensor) -> torch.Tensor:
        views = {n: t.view(s) for n, t, s in zip(self.names, flat_param.split(self.numels), self.shapes)}
        return torch.func.functional_call(self.module, views, (x,))


_NETS: dict[tuple, FlatParamNet] = {}


def student_for(spec: dict, device: torch.device | str, dtype: torch.dtype) -> FlatParamNet:
    """The reference student for a fastdd ConvNet spec (``net.spec``), built once per spec/device/dtype."""
    if (spec.get("norm", "instancenorm"), spec.get("act", "relu"), spec.get("pool", "avgpool")) != (
        "instancenorm",
        "relu",
        "avgpool",
    ):
        raise ValueError(f"the reference baseline is the default ConvNet block only, got {spec}")
    key = (tuple(sorted((k, str(v)) for k, v in spec.items())), str(device), dtype)
    if key not in _NETS:
        m = ConvNet(spec["in_channels"], spec["num_classes"], spec["width"], spec["depth"], tuple(spec["im_size"]))
        _NETS[key] = FlatParamNet(m.to(device=device, dtype=dtype))
    return _NETS[key]


# ------------------------------------------------------------------------------------ DiffAugment
def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def rand_brightness(x, t):
    return x + _col(t["brightness"], x)


def rand_saturation(x, t):
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * _col(t["saturation"], x) + x_mean


def rand_contrast(x, t):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * _col(t["contrast"], x) + x_mean


def rand_crop(x, t):
    """Translation with zero fill: a 1-pixel zero border and clamped index grids (shifted-in pixels come
    from the border)."""
    n, _, h, w = x.shape
    shift = t["shift"].to(x.device)
    gb, gx, gy = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + shift[:, 0].view(-1, 1, 1) + 1, 0, h + 1)
    gy = torch.clamp(gy + shift[:, 1].view(-1, 1, 1) + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def rand_cutout(x, t):
    """A k×k square of zeros per sample: a clamped index grid written into a ones mask."""
    n, _, h, w = x.shape
    centre = t["cutout_centre"].to(x.device)
    kh, kw = (int(v) for v in t["cutout_size"][0])
    gb, gx, gy = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(kh, device=x.device),
        torch.arange(kw, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + centre[:, 0].view(-1, 1, 1) - kh // 2, 0, h - 1)
    gy = torch.clamp(gy + centre[:, 1].view(-1, 1, 1) - kw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def rand_flip(x, t):
    return torch.where(t["flip"].to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def rand_scale(x, t):
    """Per-sample ``[[sx, 0, 0], [0, sy, 0]]`` built in a Python loop on the CPU, then affine_grid +
    bilinear grid_sample (zero padding, align_corners=True)."""
    s = t["scale"].cpu()
    theta = [[[float(s[i, 0]), 0.0, 0.0], [0.0, float(s[i, 1]), 0.0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True).to(x.device)
    return F.grid_sample(x, grid, align_corners=True)


def rand_rotate(x, t):
    """Per-sample rotation matrices built in a Python loop on the CPU, then affine_grid + grid_sample."""
    a = t["angle"].cpu().to(torch.float64)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = [[[float(cos[i]), float(-sin[i]), 0.0], [float(sin[i]), float(cos[i]), 0.0]] for i in range(x.shape[0])]
    theta = torch.tensor(theta, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True).to(x.device)
    return F.grid_sample(x, grid, align_corners=True)


AUGMENT_FNS = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "crop": [rand_crop],
    "cutout": [rand_cutout],
    "flip": [rand_flip],
    "scale": [rand_scale],
    "rotate": [rand_rotate],
}


def diff_augment(x: torch.Tensor, params) -> torch.Tensor:
    """Apply one call's DSA parameters (a :class:`fastdd.augment.DSAParams` of one family) family-function
    by family-function, as the research code's ``DiffAugment`` does."""
    if params.family not in AUGMENT_FNS:
        raise ValueError(f"the reference DiffAugment applies one family per call, got {params.family!r}")
    for f in AUGMENT_FNS[params.family]:
        x = f(x, params.tensors)
    return x.contiguous()


def _step_params(augment, step: int, x: torch.Tensor):
    """Step ``step``'s parameters from a :class:`fastdd.augment.StepAugment` (drawn like it would, if absent)."""
    from fastdd.augment import sample_dsa

    p = augment.params.get(step)
    if p is None:
        p = sample_dsa(x.shape[0], tuple(x.shape[2:]), augment.config, augment.generator).to(x.device)
        augment.params[step] = p
    return p


# ------------------------------------------------------------------------------------ the meta-gradient
def meta_grad(
    net,
    images: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    start_params: torch.Tensor,
    target_params: torch.Tensor,
    batches: Sequence[torch.Tensor],
    augment=None,
    mode: str = "reference",
    **unused,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, ∂L/∂images, ∂L/∂syn_lr)`` computed the research code's way.

    ``net`` is the fastdd ConvNet whose spec the reference student copies (parameters in the same order,
    so the same flat vectors apply); ``augment`` a :class:`fastdd.augment.StepAugment` or ``None``;
    ``labels`` class indices. ``mode`` and other keywords are ignored (one way only).
    """
    student = student_for(net.spec, images.device, images.dtype)
    image_syn = images.detach().clone().requires_grad_(True)
    syn_lr = syn_lr.detach().clone().requires_grad_(True)
    start = start_params.detach()
    student_params = [start.clone().requires_grad_(True)]
    for step, idx in enumerate(batches):
        x = image_syn[idx]
        y = labels[idx]
        if augment is not None:
            x = diff_augment(x, _step_params(augment, step, x))
        ce = F.cross_entropy(student(x, flat_param=student_params[-1]), y)
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    num_params = student.num_params
    param_loss = F.mse_loss(student_params[-1], target_params, reduction="sum") / num_params
    param_dist = F.mse_loss(start, target_params, reduction="sum") / num_params
    loss = param_loss / param_dist
    g_images, g_lr = torch.autograd.grad(loss, [image_syn, syn_lr])
    return loss.detach(), g_images, g_lr
