"""NCFM (Wang et al., CVPR 2025, "Neural Characteristic Function Matching"), a policy on the distillation loop.

Per iteration ``n``:

1. **Feature extractor.** One expert of the buffer is drawn and ``λ ~ U(0, 1)``; the network is
   ``θ = λ·θ_init + (1 − λ)·θ_trained`` (the expert's snapshot at epoch 0 and its last one). Both draws come
   from a stream derived from ``(seed, n)``, so every step of iteration ``n`` (and a resume anywhere in
   it) sees the same pair.
2. **Matching** (one loop step, one pixel update): per class ``c``, a real batch of ``batch_real`` images
   and the class's synthetic images (decoded, see ``factor``) get one shared DSA draw (siamese, as DM);
   their penultimate features are L2-normalised, and the loss is ``loss_scale`` × the sum over classes of
   the characteristic-function discrepancy (:func:`fastdd.kernels.cf_discrepancy`, weights ``alpha`` and
   ``beta``) at ``num_freqs`` frequencies ``t ~ N(0, I)`` drawn once per iteration. The images take one
   step of their optimiser (AdamW, as NCFM's configs) on the summed loss (the code steps per class).
3. **Calibration** (``iter_calib`` further loop steps, each a pixel update): ``calib_weight`` × the sum over
   classes of ``CE(f_θ_trained(aug(x̃_c)), c)``, one DSA draw per class. ``calib_weight = 0`` or
   ``iter_calib = 0`` turns it off. ``log.csv`` has a row per loop step; ``stage`` says which.

``sampling_net=True`` learns the frequencies instead (NCFM's ``SampleNet``; every shipped config has it
off): ψ maps ``num_freqs // sampler_tile`` Gaussian noise rows through 3 × [Linear(d, d), BatchNorm1d
(batch statistics; ``sampler_norm``) → LeakyReLU(0.2), LeakyReLU(0.2), Tanh]. The code tiles the result
``sampler_tile`` times; the loss is a mean over frequencies, which repeated rows leave unchanged, so the
distinct rows are used. ψ *ascends* the matching loss with its own SGD: its gradient comes from the same
backward as the images' (one ``autograd.grad`` over both), and the two updates take opposite signs. The
code's min-max step (backward, step the images, backward ``−loss`` into the same ``.grad``) cancels ψ's
gradient exactly; that is not reproduced. ψ's parameters (``tensors["sampler.*"]``) and its optimiser
are checkpointed.

Multi-formation (``factor`` f > 1, NCFM's default 2): each stored image is an f×f grid of cells, and each
cell is bilinearly upsampled to the full size, so ``ipc`` stored images per class decode into
``ipc·f²`` training images. Losses see the decoded images; :meth:`NCFMPolicy.result` returns the decoded
set (what a network trains on) with ``meta["ipc"]`` the stored count, ``meta["factor"]`` and
``meta["decoded_ipc"]``. ``init="mix"`` starts each stored image as a mosaic of f² real images of its
class, each downsized to one cell.

Not reproduced: the images' ReduceLROnPlateau (factor 0.5, patience 500), the clamp of the pixels to
[0, 1] (fastdd learns in the normalised space), CutMix and soft labels at evaluation. Under
torch.distributed the classes are split over the ranks as for ``dm``; ψ is replicated and its gradient
all-reduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment import DSAConfig, apply_dsa, sample_dsa, strategy_for
from ..augment.crops import bilinear_matrix
from ..data import Dataset
from ..distributed import Shard, all_reduce_, current, split_rows
from ..experts import ExpertBuffer
from ..kernels import cf_discrepancy
from ..models import FunctionalNet
from ..options import check_positive
from ..rng import generator
from ..selection import check_ipc
from ..synthetic import SyntheticSet
from .loop import Step, data_scale
from .matching import MatchingPolicy
from .mtt import check_experts
from .registry import Setup, register_method
from .start import start_images

INITS = ("real", "mix", "noise")
IMAGE_OPTIMIZERS = ("adamw", "sgd")


@dataclass
class NCFMConfig:
    """NCFM's settings. Defaults: its shipped configs (``config/ipc*/*.yaml``), except ``factor`` (1: the set
    has ``ipc`` images per class like every other method; the configs' 2 is in the presets) and ``init``."""

    num_freqs: int = 4096  # frequencies t per iteration (the configs; the paper says 1024)
    alpha: float = 0.5  # weight of the amplitude term
    beta: float = 0.5  # weight of the phase term
    loss_scale: float = 300.0  # the code multiplies the discrepancy by 300
    batch_real: int = 1024  # real images per class per iteration
    dsa: bool = True  # siamese DSA on each class's real and synthetic batch (and on calibration batches)
    lr_img: float = 0.01
    optimizer_img: str = "adamw"  # "adamw" | "sgd" (the configs' CIFAR-100 IPC 10)
    weight_decay_img: float = 5e-4
    momentum_img: float = 0.5  # "sgd" only
    init: str = "real"  # "real" | "mix" (f² downsized real images per stored image) | "noise"
    factor: int = 1  # multi-formation: 1 off, 2 the paper's (each stored image decodes into 4)
    iter_calib: int = 1  # calibration steps per iteration
    calib_weight: float = 1.0  # 0 turns calibration off
    sampling_net: bool = False  # learn the frequencies with ψ (gradient ascent)
    lr_sampling_net: float = 1e-3  # ψ's SGD ...
    momentum_sampling_net: float = 0.5  # ... with this momentum
    sampler_tile: int = 16  # ψ maps num_freqs // sampler_tile noise rows (the code tiles them back)
    sampler_norm: bool = True  # BatchNorm1d (batch statistics, affine) in ψ's layers

    def validate(self) -> None:
        """``ValueError`` naming the first setting out of range."""
        for name in ("num_freqs", "batch_real", "factor", "sampler_tile"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.iter_calib, bool) or not isinstance(self.iter_calib, int) or self.iter_calib < 0:
            raise ValueError(f"iter_calib must be an integer >= 0, got {self.iter_calib!r}")
        check_positive(self, "lr_img", "loss_scale", "lr_sampling_net")
        check_positive(self, "alpha", "beta", "calib_weight", allow_zero=True)
        check_positive(self, "weight_decay_img", "momentum_img", "momentum_sampling_net", allow_zero=True)
        if self.alpha == 0 and self.beta == 0:
            raise ValueError("alpha and beta are both 0: the discrepancy would be 0")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.optimizer_img not in IMAGE_OPTIMIZERS:
            raise ValueError(f"optimizer_img must be one of {', '.join(IMAGE_OPTIMIZERS)}, got {self.optimizer_img!r}")
        if self.sampling_net:
            rows = self.num_freqs // self.sampler_tile
            if self.num_freqs % self.sampler_tile or rows < (2 if self.sampler_norm else 1):
                raise ValueError(
                    f"sampling_net: num_freqs ({self.num_freqs}) must be a multiple of sampler_tile "
                    f"({self.sampler_tile}) with at least {2 if self.sampler_norm else 1} distinct rows "
                    "(batch norm needs 2)"
                )

    @property
    def calibration_steps(self) -> int:
        """Calibration pixel updates per iteration (0 when ``calib_weight`` is 0)."""
        return self.iter_calib if self.calib_weight > 0 else 0


def decode(x: Tensor, factor: int) -> Tensor:
    """Multi-formation decode: ``(N, C, H, W)`` stored images → ``(N·f², C, H, W)``. Each image is cut into an
    f×f grid of ``(H/f, W/f)`` cells (row-major), each cell resized bilinearly to ``(H, W)`` (the weights of
    ``F.interpolate(mode="bilinear", align_corners=False)``, applied as two matrix products: a deterministic
    backward on CUDA too); the cells of image ``i`` are rows ``i·f² … (i+1)·f² − 1``. ``factor`` 1 returns ``x``."""
    if factor == 1:
        return x
    n, c, h, w = x.shape
    ph, pw = h // factor, w // factor
    cells = x.reshape(n, c, factor, ph, factor, pw).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ph, pw)
    rows, cols = (bilinear_matrix(o, i, x.dtype, x.device) for o, i in ((h, ph), (w, pw)))
    return rows @ cells @ cols.T


def mosaic(cells: Tensor, factor: int) -> Tensor:
    """The inverse arrangement of :func:`decode`'s cut: ``(N·f², C, h, w)`` cells → ``(N, C, f·h, f·w)`` images,
    cells ``i·f² …`` in row-major order within image ``i``."""
    m, c, ph, pw = cells.shape
    grid = cells.reshape(m // (factor * factor), factor, factor, c, ph, pw)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, factor * ph, factor * pw)


def ncfm_start(
    ds: Dataset, ipc: int, init: str, factor: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class-major stored start images ``(K·ipc, C, H, W)`` and the real indices used (``None`` for noise).
    ``"mix"``: per stored image, f² random real images of its class downsized (bilinear) into an f×f mosaic
    (``ipc·f²`` images per class); otherwise :func:`~fastdd.distillation.start.start_images`."""
    if init != "mix":
        return start_images(ds, ipc, init, g)
    idx = torch.cat(ds.sample_per_class(ipc * factor * factor, g))
    real = ds.train.images[idx.to(ds.device)]
    h, w = ds.im_size
    small = F.interpolate(real, size=(h // factor, w // factor), mode="bilinear", align_corners=False)
    return mosaic(small, factor).contiguous(), idx


class FrequencySampler:
    """NCFM's sampling network ψ: Gaussian noise ``(r, d)`` → 3 × [Linear(d, d), BatchNorm1d with batch
    statistics (if ``norm``), LeakyReLU(0.2) | LeakyReLU(0.2) | Tanh] → frequencies ``(r, d)`` in (−1, 1).

    ``params`` (leaf tensors, PyTorch's Linear initialisation U(±1/√d) drawn from ``g``; norm scales 1,
    shifts 0) and ``optimizer`` (SGD) are the state a checkpoint keeps. :meth:`ascend` takes one step *up*
    the loss whose gradients it is given."""

    def __init__(
        self,
        dim: int,
        norm: bool,
        lr: float,
        momentum: float,
        g: torch.Generator,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.dim, self.norm = dim, norm
        bound = 1 / math.sqrt(dim)
        params: dict[str, Tensor] = {}
        for i in range(3):
            for name, shape in ((f"linear{i}.weight", (dim, dim)), (f"linear{i}.bias", (dim,))):
                params[name] = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
            if norm:
                params[f"norm{i}.weight"], params[f"norm{i}.bias"] = torch.ones(dim), torch.zeros(dim)
        self.params = {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in params.items()}
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=lr, momentum=momentum)

    def leaves(self) -> list[Tensor]:
        """Detached copies of the parameters that require grad: differentiate a loss computed with them."""
        return [p.detach().requires_grad_(True) for p in self.params.values()]

    def frequencies(self, noise: Tensor, params: list[Tensor] | None = None) -> Tensor:
        """``(r, d)`` frequencies from noise ``(r, d)`` under ``params`` (default: the current parameters)."""
        it = iter(list(self.params.values()) if params is None else params)
        h = noise
        for i in range(3):
            h = F.linear(h, next(it), next(it))
            if self.norm:
                h = F.batch_norm(h, None, None, next(it), next(it), training=True)
            h = F.leaky_relu(h, 0.2) if i < 2 else torch.tanh(h)
        return h

    def ascend(self, grads: tuple[Tensor, ...] | list[Tensor]) -> None:
        """One optimiser step that *increases* the loss whose gradients w.r.t. :meth:`leaves` are ``grads``."""
        for p, g in zip(self.params.values(), grads):
            p.grad = -g
        self.optimizer.step()


def image_optimizer(images: Tensor, cfg: NCFMConfig) -> torch.optim.Optimizer:
    """AdamW (``lr_img``, ``weight_decay_img``) or SGD (with ``momentum_img``) on the stored images."""
    if cfg.optimizer_img == "adamw":
        return torch.optim.AdamW([images], lr=cfg.lr_img, weight_decay=cfg.weight_decay_img)
    return torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum_img, weight_decay=cfg.weight_decay_img)


class NCFMPolicy(MatchingPolicy):
    """NCFM on the loop. It shares DM's per-class machinery (:meth:`MatchingPolicy.pairs`: the real batches,
    siamese DSA, the split by class under torch.distributed) and builds the rest itself: the network comes
    from the experts, the images may be multi-formation, the optimiser is AdamW (or SGD). ``ipc`` is the decoded
    images per class (what :meth:`pairs` slices); ``stored_ipc`` the images kept per class.

    One iteration is ``1 + calibration_steps`` loop steps (``steps_per_iteration``)."""

    splits_classes = True
    log_fields = ("stage", "expert", "lam")

    def __init__(
        self,
        ds: Dataset,
        ipc: int,
        cfg: NCFMConfig,
        seed: int,
        method: str,
        experts: ExpertBuffer,
        resident_experts: bool | None = None,
    ):
        cfg.validate()
        self.ds, self.config, self.seed, self.method = ds, cfg, seed, method
        self.net = self._check(ds, ipc, cfg, experts)
        f2 = cfg.factor * cfg.factor
        self.stored_ipc, self.ipc = ipc, ipc * f2
        self.pixel_scale = data_scale(ds)
        self.steps_per_iteration = 1 + cfg.calibration_steps
        on_device = ds.device.type == "cuda" if resident_experts is None else resident_experts
        last = experts.num_epochs  # (E, 2, P): every expert's (θ_init, θ_trained)
        pairs = torch.stack([experts.snapshots(e, [0, last]) for e in experts.ids])
        self.expert_ids, self.expert_pairs = list(experts.ids), pairs.to(ds.device) if on_device else pairs
        images, self.init_idx = ncfm_start(ds, ipc, cfg.init, cfg.factor, generator(seed, method, "init"))
        self.classes = range(ds.num_classes)  # the classes this process matches
        d = current()
        if d is not None:  # each rank owns whole classes (their stored rows)
            bounds = split_rows(ds.num_classes, d.world, "classes")
            self.shard = Shard(d, len(images), ("images",), [(lo * ipc, hi * ipc) for lo, hi in bounds])
            self.classes = range(*bounds[d.rank])
            images = self.shard.rows(images)
        self.images = images.requires_grad_(True)
        self.tensors = {"images": self.images}
        self.optimizers = {"img": image_optimizer(self.images, cfg)}
        self.generators = {k: generator(seed, method, k) for k in ("iter", "augment", "freqs")}
        self.dsa_cfg = DSAConfig(strategy=strategy_for(ds.name))
        self.sampler: FrequencySampler | None = None
        if cfg.sampling_net:
            g = generator(seed, method, "sampler")
            self.sampler = FrequencySampler(
                self.net.feature_dim, cfg.sampler_norm, cfg.lr_sampling_net, cfg.momentum_sampling_net, g, ds.device
            )
            self.tensors.update({f"sampler.{k}": v for k, v in self.sampler.params.items()})
            self.optimizers["sampler"] = self.sampler.optimizer

    @staticmethod
    def _check(ds: Dataset, ipc: int, cfg: NCFMConfig, experts: ExpertBuffer) -> FunctionalNet:
        """The experts' network, after checking it fits ``ds`` (no batch norm), the classes hold the real
        images the start needs and the image size divides by ``factor``."""
        net = experts.model()
        check_experts(ds, experts, net)
        experts.verify_all()  # a corrupt shard is found now, before the run folder is touched
        if net.has_batchnorm:
            raise ValueError(
                f"ncfm: the experts' model {net.describe()} uses batch norm, which per-class feature batches "
                "would have to freeze or share; train the experts with a model without it (e.g. convnet)"
            )
        check_ipc(ds, ipc)
        need, smallest = ipc * cfg.factor * cfg.factor, min(ds.class_counts())
        if cfg.init == "mix" and need > smallest:
            raise ValueError(
                f"init 'mix' takes ipc·factor² = {need} real images per class; the smallest class of {ds.name}'s "
                f"train split has {smallest}"
            )
        if any(s % cfg.factor for s in ds.im_size):
            raise ValueError(f"factor {cfg.factor} must divide the image size {tuple(ds.im_size)}")
        return net

    @classmethod
    def from_setup(cls, setup: Setup) -> NCFMPolicy:
        assert setup.ipc is not None and setup.experts is not None  # the runner checks both
        return cls(setup.ds, setup.ipc, setup.config, setup.seed, setup.method, setup.experts, setup.resident_experts)

    def extractor(self, n: int) -> tuple[int, float, Tensor, Tensor]:
        """Iteration ``n``'s ``(expert id, λ, θ = λ·θ_init + (1 − λ)·θ_trained, θ_trained)``, drawn from a
        stream derived from ``(seed, n)`` (the same for every step of the iteration, on every rank)."""
        g = generator(self.seed, self.method, "extractor", n)
        i = int(torch.randint(len(self.expert_ids), (1,), generator=g))
        lam = float(torch.rand(1, generator=g))
        pair = self.expert_pairs[i].to(self.ds.device)
        return self.expert_ids[i], lam, lam * pair[0] + (1 - lam) * pair[1], pair[1]

    def frequencies(self, psi: list[Tensor]) -> Tensor:
        """This iteration's frequencies ``(num_freqs, d)`` ~ N(0, I), or ψ's ``(num_freqs // sampler_tile, d)``
        under ``psi`` (:meth:`FrequencySampler.leaves`), from the ``freqs`` stream."""
        cfg, d, g = self.config, self.net.feature_dim, self.generators["freqs"]
        if self.sampler is None:
            return torch.randn(cfg.num_freqs, d, generator=g).to(self.ds.device)
        noise = torch.randn(cfg.num_freqs // cfg.sampler_tile, d, generator=g).to(self.ds.device)
        return self.sampler.frequencies(noise, psi)

    def step(self, it: int) -> Step:
        n, k = divmod(it, self.steps_per_iteration)
        return self.match(n) if k == 0 else self.calibrate(n)

    def match(self, n: int) -> Step:
        """The matching step of iteration ``n``: the scaled CF loss summed over this process's classes, its
        gradient w.r.t. the stored images and (with ψ) w.r.t. ψ's parameters (all-reduced over ranks)."""
        cfg, net = self.config, self.net
        e, lam, theta, _ = self.extractor(n)
        x = self.images.detach().requires_grad_(True)
        psi = self.sampler.leaves() if self.sampler is not None else []
        t = self.frequencies(psi)
        loss = x.new_zeros(())
        for _, xr, xs in self.pairs(decode(x, cfg.factor)):
            with torch.no_grad():
                z_real = F.normalize(net.embed(xr, theta), dim=1)
            z_syn = F.normalize(net.embed(xs, theta), dim=1)
            loss = loss + cf_discrepancy(z_real, z_syn, t, cfg.alpha, cfg.beta)
        loss = loss * cfg.loss_scale
        grad_x, *grad_psi = torch.autograd.grad(loss, [x, *psi])
        loss = loss.detach()
        if self.shard is not None:  # every rank's classes: the whole loss, ψ's whole gradient
            flat = all_reduce_(torch.cat([loss.reshape(1), *(g.reshape(-1) for g in grad_psi)]), self.shard.dist)
            loss, rest = flat[0], flat[1:].split([g.numel() for g in grad_psi])
            grad_psi = [r.view_as(g) for r, g in zip(rest, grad_psi)]
        info = {"stage": "match", "expert": e, "lam": lam}
        return Step(loss, (grad_x, *grad_psi), info, (grad_x, grad_psi))

    def calibrate(self, n: int) -> Step:
        """A calibration step of iteration ``n``: ``calib_weight`` × Σ_c CE(f_θ_trained(aug(x̃_c)), c) over this
        process's classes (one DSA draw per class, made for every class) and its gradient w.r.t. the images."""
        e, lam, _, theta_trained = self.extractor(n)
        x = self.images.detach().requires_grad_(True)
        xd = decode(x, self.config.factor)
        draws = [self._draw() for _ in range(self.ds.num_classes)] if self.config.dsa else None
        loss = x.new_zeros(())
        for j, c in enumerate(self.classes):
            xs = xd[j * self.ipc : (j + 1) * self.ipc]
            if draws is not None:
                xs = apply_dsa(xs, draws[c].expand(len(xs)))
            y = torch.full((len(xs),), c, device=xs.device)
            loss = loss + F.cross_entropy(self.net(xs, theta_trained), y)
        loss = loss * self.config.calib_weight
        grad = torch.autograd.grad(loss, x)[0]
        loss = loss.detach()
        if self.shard is not None:
            loss = all_reduce_(loss.clone(), self.shard.dist)
        return Step(loss, (grad,), {"stage": "calib", "expert": e, "lam": lam}, (grad, []))

    def _draw(self):
        """One siamese DSA draw (parameters for one sample) from the ``augment`` stream."""
        return sample_dsa(1, tuple(self.ds.im_size), self.dsa_cfg, self.generators["augment"])

    def apply(self, step: Step) -> None:
        grad_x, grad_psi = step.payload
        self.images.grad = grad_x
        self.optimizers["img"].step()
        if grad_psi:
            assert self.sampler is not None
            self.sampler.ascend(grad_psi)

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        """The decoded set: ``K·ipc·f²`` images (class-major) with hard labels; ``meta["ipc"]`` is the stored
        images per class, ``meta["factor"]`` f, ``meta["decoded_ipc"]`` the images per class of this set."""
        with torch.no_grad():
            images = decode(self.whole(self.images.detach()), self.config.factor).clone()
        labels = torch.arange(self.ds.num_classes, device=images.device).repeat_interleave(self.ipc)
        meta = self.run_meta(
            iterations,
            skipped,
            self.stored_ipc,
            factor=self.config.factor,
            decoded_ipc=self.ipc,
            init_indices=None if self.init_idx is None else self.init_idx.tolist(),
            **(extra_meta or {}),
        )
        return SyntheticSet(images, labels, None, None, meta)


register_method(
    "ncfm",
    config=NCFMConfig,
    policy=NCFMPolicy,
    needs_experts=True,
    distributed="classes",
    description="characteristic-function matching on interpolated expert features (Wang et al. 2025)",
)


__all__ = [
    "NCFMConfig",
    "NCFMPolicy",
    "FrequencySampler",
    "decode",
    "bilinear_matrix",
    "mosaic",
    "ncfm_start",
    "image_optimizer",
    "INITS",
    "IMAGE_OPTIMIZERS",
]
