"""SRe2L's recover step (Yin, Xing, Shen, NeurIPS 2023, "Squeeze, Recover and Relabel"), with CDA's crop
curriculum (Yin & Shen, TMLR 2024) as an option: a policy on the distillation loop.

The set is recovered from a trained batch-norm **teacher** (:class:`~fastdd.teacher.Teacher`; squeeze is
:func:`fastdd.train_teacher`). SRe2L runs every image index ``j < ipc`` separately, with one image per class
per batch; here a **group** is image ``j`` of every class in one *class batch* (``class_batch`` consecutive
classes; default all of them), and every group is its own SRe2L batch:

1. **The view.** One random resized crop of the whole group (``multicrop``: torchvision's
   ``RandomResizedCrop`` rule, scale ``(s_min, 1)``, ratio ``(3/4, 4/3)``, resized back to the image size,
   then a horizontal flip with probability 0.5 where the data set's DSA strategy flips; none for digits),
   then one random roll (``torch.roll``) by ``(dy, dx)``, each uniform in ``0 … jitter``. Crop, flip and roll
   are one pair of matrices per group (rows and columns), so the view is two matrix products.
2. **The loss** of group ``g`` (images ``x_g``, labels its classes, teacher ``f`` in evaluation mode):
   ``L_g = CE(f(v_g), y_g) + r_bn · Σ_l w_l (‖μ_l(v_g) − μ_l^BN‖₂ + ‖σ²_l(v_g) − σ²_l^BN‖₂) + tv_l2 · TV(v_g)
   + l2 · mean_i ‖v_g,i‖₂``: ``μ_l, σ²_l`` the per-channel mean and biased variance of the input of the
   teacher's batch-norm layer ``l`` over the group's batch (and space), ``μ^BN, σ²^BN`` its running
   statistics, ``w_1 = first_bn_multiplier`` and ``w_l = 1`` after; L2 norms, not squared. ``TV`` is
   DeepInversion's L2 prior (the sum of the L2 norms of the four neighbour differences: right, down and
   both diagonals); both priors default to 0, as in every SRe2L script.
3. **The step.** One loop iteration is one Adam step (betas 0.5, 0.9) of every image on ``Σ_g L_g``: Adam
   works per element, so this is exactly ``ipc × class batches`` independent SRe2L runs. The learning rate
   follows SRe2L's cosine, ``lr · (1 + cos(π·i/N))/2`` at iteration ``i`` of ``N`` (set before the step, no
   warm-up). After the step the pixels are clamped to the valid range in the normalised space, per channel
   ``[(0 − mean)/std, (1 − mean)/std]`` (``clamp``); ZCA'd data is refused while ``clamp`` is on.

CDA's curriculum (``crop_schedule``) moves ``s_min`` from 1 down to ``crop_min`` over the first
``milestone · N`` iterations (:func:`crop_scale_min`): ``"cosine"`` (CDA's shipped choice), ``"linear"`` or
``"step"`` (1 until the milestone); ``"fixed"`` (SRe2L) keeps ``crop_min``.

The groups are computed in passes of at most ``chunk_images`` images (whole groups of one class batch; the
teacher runs on every pass at once through ``torch.func.vmap``, each group with its own batch moments), so
memory stays bounded. The random view of every group at iteration ``i`` is drawn from a stream derived
from ``(seed, i)`` in a fixed order over all groups, so the result depends neither on ``chunk_images``
nor on the number of processes, and a resume re-derives it (nothing random is checkpointed).

The images are kept group-major (the rows of group ``(q, j)`` contiguous); under torch.distributed the
groups are split over the ranks (each keeps and steps its groups' rows; the logged losses are
all-reduced), and :meth:`SRe2LPolicy.result` returns the class-major set with hard labels. The soft labels
SRe2L trains with come at evaluation: ``evaluate(syn, ds, protocol="kd", teacher=...)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment import DSAConfig, strategy_for
from ..augment.crops import ResizedCrops, crop_matrix, sample_resized_crops
from ..data import Dataset
from ..distributed import Shard, all_reduce_, current, split_rows
from ..rng import generator
from ..selection import check_ipc
from ..synthetic import SyntheticSet
from ..teacher import Teacher
from .loop import Policy, Step, data_scale
from .registry import Setup, register_method
from .start import start_images

INITS = ("noise", "real")
CROP_SCHEDULES = ("fixed", "cosine", "linear", "step")
#: Adam's betas in SRe2L's recover (and CDA's).
BETAS = (0.5, 0.9)
#: torchvision's ``RandomResizedCrop`` default aspect ratios.
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class SRe2LConfig:
    """SRe2L's recover settings. Defaults: its ImageNet script (``lr`` 0.25, ``r_bn`` 0.01, multi-crop with
    scale 0.08–1, ``first_bn_multiplier`` 10, no priors) with the jitter of its CIFAR script (4 px: about an
    eighth of a 28–32 px side, the reach of the usual pad-4 crop; the ImageNet script's 32 px is the same
    share of 224 px). Iterations are ``distill``'s ``iterations`` (SRe2L: 1K on CIFAR, 4K on ImageNet)."""

    lr: float = 0.25  # Adam (betas 0.5, 0.9), cosine from lr to 0 over the run
    r_bn: float = 0.01  # weight of the batch-norm statistics term (Tiny-ImageNet script: 1; CDA's Tiny: 0.05)
    first_bn_multiplier: float = 10.0  # weight of the first batch-norm layer's term (the others: 1)
    jitter: int = 4  # the random roll: 0 … jitter pixels down and right (0: none)
    multicrop: bool = True  # random resized crop (+ flip where DSA flips) of each group's view
    crop_min: float = 0.08  # the smallest crop area share (RandomResizedCrop's scale (crop_min, 1))
    crop_schedule: str = "fixed"  # "fixed" (SRe2L) | CDA's "cosine" | "linear" | "step"
    milestone: float = 1.0  # CDA: the share of the iterations over which s_min falls from 1 to crop_min
    tv_l2: float = 0.0  # weight of DeepInversion's L2 total-variation prior of the view
    l2: float = 0.0  # weight of the mean L2 norm of the view's images
    init: str = "noise"  # "noise": N(0, 1) in the normalised space (SRe2L) | "real": random real images
    class_batch: int | None = None  # classes per batch-norm batch (None: all; SRe2L's ImageNet: 100)
    chunk_images: int = 512  # at most this many images per forward/backward pass (whole groups; >= 1 group)
    clamp: bool = True  # clamp the pixels to [0, 1] (in the normalised space) after every step

    def validate(self) -> None:
        """``ValueError`` naming the first setting out of range."""
        from ..options import check_positive

        check_positive(self, "lr")
        check_positive(self, "r_bn", "first_bn_multiplier", "tv_l2", "l2", allow_zero=True)
        for name, low in (("jitter", 0), ("chunk_images", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        cb = self.class_batch
        if cb is not None and (isinstance(cb, bool) or not isinstance(cb, int) or cb < 1):
            raise ValueError(f"class_batch must be an integer >= 1 or None (all classes), got {cb!r}")
        for name in ("multicrop", "clamp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("crop_min", "milestone"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {v!r}")
        if self.crop_schedule not in CROP_SCHEDULES:
            raise ValueError(f"crop_schedule must be one of {', '.join(CROP_SCHEDULES)}, got {self.crop_schedule!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")


def crop_scale_min(schedule: str, crop_min: float, milestone: float, i: int, iterations: int) -> float:
    """The smallest crop area share ``s_min`` at iteration ``i`` of ``iterations`` (the crops' scale is
    ``(s_min, 1)``). ``"fixed"``: ``crop_min``. CDA's curriculum, for ``i < M = milestone · iterations``:
    ``"cosine"`` ``crop_min + (1 − crop_min)(1 + cos(π i / M))/2``, ``"linear"`` ``1 − (1 − crop_min) i / M``,
    ``"step"`` 1; from ``M`` on, ``crop_min``."""
    if schedule not in CROP_SCHEDULES:
        raise ValueError(f"crop_schedule must be one of {', '.join(CROP_SCHEDULES)}, got {schedule!r}")
    m = milestone * iterations
    if schedule == "fixed" or i >= m:
        return crop_min
    if schedule == "cosine":
        return crop_min + (1 - crop_min) * (1 + math.cos(math.pi * i / m)) / 2
    if schedule == "linear":
        return 1 - (1 - crop_min) * i / m
    return 1.0


def cosine_lr(lr: float, i: int, iterations: int) -> float:
    """SRe2L's learning rate at iteration ``i`` of ``iterations``: ``lr · (1 + cos(π i / iterations))/2``."""
    return 0.5 * (1 + math.cos(math.pi * i / iterations)) * lr


def pixel_bounds(ds: Dataset) -> tuple[Tensor, Tensor]:
    """``(low, high)`` ``(1, C, 1, 1)``: the normalised values of pixels 0 and 1 per channel, on ``ds.device``."""
    mean = torch.tensor(ds.mean, dtype=torch.float32, device=ds.device).view(1, -1, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32, device=ds.device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def tv_prior(v: Tensor) -> Tensor:
    """DeepInversion's L2 image prior per group: ``v`` ``(G, n, C, H, W)`` → ``(G,)``, the sum of the L2 norms
    (over the group) of the differences to the right, downward and along both diagonals."""
    diffs = (
        v[..., :, :-1] - v[..., :, 1:],
        v[..., :-1, :] - v[..., 1:, :],
        v[..., 1:, :-1] - v[..., :-1, 1:],
        v[..., :-1, :-1] - v[..., 1:, 1:],
    )
    return torch.stack([d.flatten(1).norm(dim=1) for d in diffs]).sum(0)


@dataclass
class Views:
    """The random views of every group at one iteration (in the policy's group order): the crop boxes and
    flips (``crops``, or ``None`` without multi-crop), the crop scale's lower end, and the roll ``shifts``
    ``(G, 2)`` (down, right; ``None`` without jitter)."""

    crops: ResizedCrops | None
    s_min: float
    shifts: Tensor | None

    def matrices(self, groups: list[int], im_hw: tuple[int, int]) -> tuple[Tensor, Tensor] | None:
        """``(rows (g, H, H), cols (g, W, W))`` float64 on the CPU for the groups ``groups``: the view of a
        group's images ``x`` is ``rows @ x @ cols.T`` (crop, resize, flip, then roll), or ``None`` when the
        view is the image itself."""
        h, w = im_hw
        if self.crops is None and self.shifts is None:
            return None
        n = len(groups)
        if self.crops is not None:
            c = self.crops.index(groups)
            rows = crop_matrix(h, h, c.top, c.height)
            cols = crop_matrix(w, w, c.left, c.width, c.flip)
        else:
            rows = torch.eye(h, dtype=torch.float64).expand(n, h, h)
            cols = torch.eye(w, dtype=torch.float64).expand(n, w, w)
        if self.shifts is not None:  # torch.roll of the output: output row i is row (i − shift) mod size
            s = self.shifts[groups]
            k = torch.arange(n)[:, None]
            rows = rows[k, (torch.arange(h)[None] - s[:, :1]) % h]
            cols = cols[k, (torch.arange(w)[None] - s[:, 1:]) % w]
        return rows, cols


class SRe2LPolicy(Policy):
    """SRe2L's recover on the loop (see the module's description). ``images`` are group-major (rows of group
    ``(q, j)``, image ``j`` of class batch ``q``, contiguous); ``order`` maps them to the class-major set."""

    pixel_lr = "lr"

    def __init__(
        self, ds: Dataset, ipc: int, cfg: SRe2LConfig, seed: int, method: str, teacher: Teacher, iterations: int
    ):
        cfg.validate()
        self.ds, self.ipc, self.config, self.seed, self.method = ds, ipc, cfg, seed, method
        self.teacher = self._check(ds, ipc, cfg, teacher)
        self.net = self.teacher.net
        self.iterations = iterations
        self.pixel_scale = data_scale(ds)
        self.log_fields = ("ce", "bn", "lr", "crop_min") if cfg.multicrop else ("ce", "bn", "lr")
        k = ds.num_classes
        cb = k if cfg.class_batch is None else min(cfg.class_batch, k)
        self.class_batches = [(lo, min(lo + cb, k)) for lo in range(0, k, cb)]
        # the groups (q, j) in order, each with its rows in the group-major layout
        self.groups = [(q, j) for q in range(len(self.class_batches)) for j in range(ipc)]
        sizes = [self.class_batches[q][1] - self.class_batches[q][0] for q, _ in self.groups]
        starts = [0]
        for s in sizes:
            starts.append(starts[-1] + s)
        self.order = torch.tensor(
            [c * ipc + j for q, j in self.groups for c in range(*self.class_batches[q])], dtype=torch.long
        )
        g_init = generator(seed, method, "init")
        start, self.init_idx = start_images(ds, ipc, cfg.init, g_init)
        images = start[self.order.to(start.device)].contiguous()
        mine = range(len(self.groups))
        d = current()
        if d is not None:  # each rank owns whole groups (contiguous rows)
            gb = split_rows(len(self.groups), d.world, "groups (an image index of a class batch)")
            self.shard = Shard(d, len(images), ("images",), [(starts[lo], starts[hi]) for lo, hi in gb])
            mine = range(*gb[d.rank])
            images = self.shard.rows(images)
        self.passes = self._passes(mine, starts)
        self.images = images.requires_grad_(True)
        self.tensors = {"images": self.images}
        self.optimizers = {"img": torch.optim.Adam([self.images], lr=cfg.lr, betas=BETAS)}
        self.generators: dict[str, torch.Generator] = {}  # every draw comes from a stream derived from (seed, it)
        dsa = DSAConfig(strategy=strategy_for(ds.name))
        self.prob_flip = dsa.prob_flip if "flip" in dsa.families else 0.0
        self.low, self.high = pixel_bounds(ds)
        stats = self.teacher.bn_statistics()
        self.weights = [cfg.first_bn_multiplier] + [1.0] * (len(stats) - 1)
        self.running = [(m.detach(), v.detach()) for m, v in stats]

    @staticmethod
    def _check(ds: Dataset, ipc: int, cfg: SRe2LConfig, teacher: Teacher | None) -> Teacher:
        if teacher is None:
            raise ValueError(
                "sre2l recovers images from a trained network: pass teacher= (a Teacher or its folder); make one "
                "with fastdd.train_teacher or `fastdd teacher`"
            )
        if not isinstance(teacher, Teacher):
            raise TypeError(f"sre2l: teacher must be a fastdd.teacher.Teacher, got {teacher!r:.60}")
        if not teacher.has_batchnorm:
            raise ValueError(
                f"sre2l matches the teacher's batch-norm running statistics, and the teacher {teacher.net.describe()} "
                "has no batch norm: train one with a batch-norm model, e.g. fastdd.train_teacher(ds, 'convnetbn')"
            )
        teacher.check(ds)
        if ds.zca is not None and cfg.clamp:
            raise ValueError(
                f"sre2l clamps the pixels to [0, 1] after every step, which has no per-pixel meaning in {ds.name}'s "
                "ZCA space: load the data without ZCA (zca=False), or pass clamp=False to recover without the clamp"
            )
        if cfg.init == "real":
            check_ipc(ds, ipc)
        elif isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
            raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
        return teacher.to(ds.device)

    def _passes(self, mine: range, starts: list[int]) -> list[tuple[list[int], int, int, int]]:
        """This process's passes ``(groups, first row, last row + 1, class batch)``: runs of consecutive groups
        of one class batch, ``max(1, chunk_images // its size)`` image indices per pass (aligned to multiples of
        that count, so a split over processes changes only the passes it cuts); rows are this process's."""
        out: list[tuple[list[int], int, int, int]] = []
        base = starts[mine.start] if len(mine) else 0
        for gi in mine:
            q, j = self.groups[gi]
            lo, hi = self.class_batches[q]
            per = max(1, self.config.chunk_images // (hi - lo))
            prev = out[-1] if out else None
            if prev is not None and prev[3] == q and self.groups[prev[0][-1]][1] // per == j // per:
                prev[0].append(gi)
                out[-1] = (prev[0], prev[1], starts[gi + 1] - base, q)
            else:
                out.append(([gi], starts[gi] - base, starts[gi + 1] - base, q))
        return out

    @classmethod
    def from_setup(cls, setup: Setup) -> SRe2LPolicy:
        assert setup.ipc is not None  # the runner checks it
        return cls(setup.ds, setup.ipc, setup.config, setup.seed, setup.method, setup.teacher, setup.iterations)

    def extra_state(self) -> dict[str, Any]:
        return {"schedule_iterations": self.iterations}

    def resume(self, iteration: int, extra: dict[str, Any]) -> None:
        """Warn when the checkpoint's run had another length: the cosine learning rate and the crop curriculum
        span the run's iterations, so the rest of the run follows the new schedule."""
        before = extra.get("schedule_iterations")
        if isinstance(before, int) and before != self.iterations:
            warnings.warn(
                f"{self.method}: the checkpoint's run was of {before} iterations, this one is of {self.iterations}: "
                "the learning rate (cosine to 0) and the crop schedule now span the new count, so the set differs "
                "from an uninterrupted run of either length",
                RuntimeWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ the iteration
    def views(self, it: int) -> Views:
        """Iteration ``it``'s views of every group, drawn from a stream derived from ``(seed, it)``: the crops of
        all groups (one call, a fixed number of draws), then their roll shifts."""
        cfg, seed = self.config, self.seed
        assert seed is not None  # set in __init__
        g = generator(seed, self.method, "views", it)
        n = len(self.groups)
        s_min = crop_scale_min(cfg.crop_schedule, cfg.crop_min, cfg.milestone, it, self.iterations)
        crops = None
        if cfg.multicrop:
            crops = sample_resized_crops(n, tuple(self.ds.im_size), g, (s_min, 1.0), CROP_RATIO, self.prob_flip)
        shifts = torch.randint(0, cfg.jitter + 1, (n, 2), generator=g) if cfg.jitter > 0 else None
        return Views(crops, s_min, shifts)

    def group_losses(self, v: Tensor, q: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(L_g, CE_g, BN_g)`` ``(G,)`` of views ``v`` ``(G, n, C, H, W)`` of ``G`` groups of class batch ``q``
        (every group its own batch-norm batch)."""
        cfg = self.config
        lo, hi = self.class_batches[q]
        logits, moments = torch.func.vmap(self.teacher.bn_moments)(v)
        y = torch.arange(lo, hi, device=v.device).repeat(len(v))
        ce = F.cross_entropy(logits.flatten(0, 1), y, reduction="none").view(len(v), -1).mean(1)
        bn = v.new_zeros(len(v))
        for w, (mean, var), (rm, rv) in zip(self.weights, moments, self.running):
            bn = bn + w * ((mean - rm).norm(dim=1) + (var - rv).norm(dim=1))
        loss = ce + cfg.r_bn * bn
        if cfg.tv_l2 > 0:
            loss = loss + cfg.tv_l2 * tv_prior(v)
        if cfg.l2 > 0:
            loss = loss + cfg.l2 * v.flatten(2).norm(dim=2).mean(1)
        return loss, ce, bn

    def step(self, it: int) -> Step:
        """The gradient of ``Σ_g L_g`` over this process's groups (each pass its own backward); the loss and the
        logged ``ce`` and ``bn`` are means over all groups (all-reduced under torch.distributed)."""
        views = self.views(it)
        x = self.images.detach()
        c, h, w = x.shape[1:]
        grad = torch.zeros_like(x)
        parts: list[Tensor] = []
        for groups, r0, r1, q in self.passes:
            xs = x[r0:r1].view(len(groups), -1, c, h, w).requires_grad_(True)
            mats = views.matrices(groups, (h, w))
            v = xs
            if mats is not None:
                rows, cols = (m.to(dtype=x.dtype, device=x.device)[:, None, None] for m in mats)
                v = rows @ xs @ cols.transpose(-1, -2)
            loss, ce, bn = self.group_losses(v, q)
            grad[r0:r1] = torch.autograd.grad(loss.sum(), xs)[0].view(r1 - r0, c, h, w)
            parts.append(torch.stack([loss.detach(), ce.detach(), bn.detach()], 1))
        sums = torch.cat(parts).sum(0) if parts else x.new_zeros(3)
        if self.shard is not None:
            sums = all_reduce_(sums.clone(), self.shard.dist)
        means = sums / len(self.groups)
        lr = cosine_lr(self.config.lr, it, self.iterations)
        info = {"lr": lr, "crop_min": views.s_min}
        return Step(means[0], (grad,), info, (grad, lr, means[1:]))

    def apply(self, step: Step) -> None:
        grad, lr, _ = step.payload
        opt = self.optimizers["img"]
        for group in opt.param_groups:
            group["lr"] = lr
        self.images.grad = grad
        opt.step()
        self.images.grad = None
        if self.config.clamp:
            with torch.no_grad():
                self.images.copy_(torch.maximum(torch.minimum(self.images, self.high), self.low))

    def log_values(self, step: Step) -> dict[str, Any]:
        ce, bn = step.payload[2].tolist()  # after the loop's read-back: the device is done with them
        return {"ce": ce, "bn": bn}

    def postfix(self, loss: float, values: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{loss:.4f}", "ce": f"{values['ce']:.3f}", "bn": f"{values['bn']:.3f}"}

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        """The class-major set (``K·ipc`` images, hard labels) and its metadata, with the teacher's."""
        whole = self.whole(self.images.detach())
        images = torch.empty_like(whole)
        images[self.order.to(whole.device)] = whole
        labels = torch.arange(self.ds.num_classes, device=images.device).repeat_interleave(self.ipc)
        t = self.teacher.meta
        teacher = {k: t[k] for k in ("dataset", "accuracy", "source", "seed", "recipe") if k in t}
        meta = self.run_meta(
            iterations,
            skipped,
            self.ipc,
            teacher={"model": self.net.name, "model_spec": self.net.spec, **teacher},
            class_batch=self.class_batches[0][1] - self.class_batches[0][0],
            init_indices=None if self.init_idx is None else self.init_idx.tolist(),
            labels="hard: evaluate with protocol='kd' and the teacher for SRe2L's soft labels",
            **(extra_meta or {}),
        )
        return SyntheticSet(images, labels, None, None, meta)


register_method(
    "sre2l",
    config=SRe2LConfig,
    policy=SRe2LPolicy,
    needs_teacher=True,
    distributed="rows",
    selection=False,
    description="recover images from a batch-norm teacher's statistics (SRe2L, Yin et al. 2023; CDA's curriculum)",
)


__all__ = [
    "SRe2LConfig",
    "SRe2LPolicy",
    "Views",
    "crop_scale_min",
    "cosine_lr",
    "pixel_bounds",
    "tv_prior",
    "INITS",
    "CROP_SCHEDULES",
    "BETAS",
    "CROP_RATIO",
]
