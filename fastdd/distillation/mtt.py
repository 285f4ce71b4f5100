"""Trajectory matching (MTT) and the methods that are policies on it: SelMatch, TESLA, DATM, FTD.

One outer iteration: pick a random expert and a start epoch ``s``; the student starts at the
expert's parameters after epoch ``s`` and takes ``syn_steps`` SGD steps on (augmented) synthetic
minibatches with the learnable rate α; the loss ``‖θ_N − θ*‖² / ‖θ_0 − θ*‖²`` compares it with the
expert ``expert_epochs`` later. Pixels and α take one SGD step (momentum 0.5) on the meta-gradient
from :func:`fastdd.engine.unroll_grad`.

Policies:
- ``init="real" | "noise"`` (MTT), ``"window"`` (SelMatch: per-class difficulty window; the harder
  ``ipc − int(ipc·alpha)`` images stay frozen real images that still take part in the student's
  batches but get no gradient), ``"correct"`` (DATM: real images the experts classify correctly).
- ``soft_labels="tesla"``: labels = softmax of the target expert's logits, recomputed every iteration.
  ``soft_labels="datm"``: learnable logits initialised from experts that classify the image correctly.
- DATM's start-epoch schedule (``current_max_start_epoch`` → ``max_start_epoch`` by ``expansion_end``)
  and loss-threshold gate (``threshold``).
- ``ema_decay=d`` (FTD): an exponential moving average of the images, ``ema ← d·ema + (1−d)·x`` after every
  applied update, is kept beside them and is the set the run returns. FTD's other half, flat experts, is
  expert training (``train_experts(..., sam_rho=0.01)``); its matching loss is MTT's.
- :meth:`MTTPolicy.outer_loss` builds the matching loss; PAD (:mod:`fastdd.distillation.pad`) overrides it
  with a mask over the parameters.

Per iteration the host→device traffic is O(1) in ``syn_steps``: the student's index batches are drawn
on the host and copied once, the DSA parameters of every step are drawn at once
(:meth:`StepAugment.prepare`) and copied once, and the experts can stay on the device
(``resident_experts``). Under torch.distributed (``torchrun``) the set's rows are split over the
ranks (:class:`fastdd.distributed.Shard`): every rank draws the same expert, start epoch, batches and
DSA parameters, unrolls its part of each batch, and the engine's all-reduces (:class:`StepReduce`)
keep θ, λ and ∂L/∂α the same everywhere; the result equals one process's to float round-off.
Inside the unroll nothing synchronises; the iteration's checks (finite loss and gradients, the loss
gate) read one small tensor back, and the log reads the learned rate. ``mode="auto"`` is resolved once
per run (:meth:`fastdd.engine.EngineConfig.resolve_mode`) and recorded in ``syn.meta["gradient_mode"]``
and in the checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..augment import DSAConfig, StepAugment, apply_dsa, sample_dsa, strategy_for
from ..data import Dataset
from ..distributed import Shard, all_reduce_, current
from ..engine import EngineConfig, StepReduce, matching_loss, to_device_once, unroll_grad
from ..errors import ModelMismatchError
from ..experts import ExpertBuffer
from ..options import check_positive
from ..rng import generator
from ..scores import Scores, as_scores
from ..selection import check_ipc, window_indices
from ..synthetic import SyntheticSet
from .loop import Policy, Step, data_scale
from .registry import Setup, register_method
from .start import start_images


@dataclass
class MTTConfig(EngineConfig):
    """Hyper-parameters of trajectory matching (defaults: MTT's code; presets set the papers' values), with the
    engine's options (:class:`~fastdd.engine.EngineConfig`: ``mode``, ``theta_storage``, ``memory_budget``,
    ``deterministic``) inherited."""

    syn_steps: int = 20  # N, unrolled student steps per iteration
    expert_epochs: int = 2  # M, target = start + M
    max_start_epoch: int = 20  # T⁺, start ~ U{min_start_epoch, ..., T⁺ − 1}
    min_start_epoch: int = 0
    lr_img: float = 1000.0  # SGD (momentum 0.5) on pixels
    lr_lr: float = 1e-5  # SGD (momentum 0.5) on α
    lr_init: float = 0.01  # initial α (MTT: the experts' lr; SelMatch: 0.001)
    lr_floor: float = 1e-6  # α is clamped here after every step: it cannot go negative
    batch_syn: int | None = None  # student minibatch; None = the whole set
    init: str = "real"  # "real" | "noise" | "window" | "correct"
    dsa: bool = True
    # SelMatch
    alpha: float = 1.0  # fraction of each class that is distilled (the rest frozen)
    beta: float = 0.0  # window start, in multiples of ipc
    hardest: str = "low"  # "low" for C-scores, "high" for forgetting
    # TESLA / DATM
    soft_labels: str | None = None  # None | "tesla" | "datm"
    lr_y: float = 2.0  # SGD (momentum 0.9) on DATM's label logits
    threshold: float | None = None  # DATM: skip the update when the loss exceeds this
    current_max_start_epoch: int | None = None  # DATM: upper bound starts here ...
    expansion_end: int | None = None  # ... and grows linearly to max_start_epoch by this iteration
    # FTD: the returned images are an EMA of the learned ones (see MTTPolicy.apply / result); None: off
    ema_decay: float | None = None

    def validate(self) -> None:
        if self.init not in ("real", "noise", "window", "correct"):
            raise ValueError(f"init must be 'real', 'noise', 'window' or 'correct', got {self.init!r}")
        if self.soft_labels not in (None, "tesla", "datm"):
            raise ValueError(f"soft_labels must be None, 'tesla' or 'datm', got {self.soft_labels!r}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha (fraction distilled) must be in (0, 1], got {self.alpha}")
        if self.syn_steps < 1 or self.expert_epochs < 1:
            raise ValueError(f"syn_steps and expert_epochs must be >= 1, got {self.syn_steps} and {self.expert_epochs}")
        check_positive(self, "lr_img", "lr_lr", "lr_init", "lr_floor", "lr_y")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number (or None), got {self.threshold}")
        check_positive(self, "beta", allow_zero=True)
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) (or None: no EMA), got {self.ema_decay}")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise ValueError(f"batch_syn must be >= 1 (or None: the whole set), got {self.batch_syn}")
        for name in ("current_max_start_epoch", "expansion_end"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {getattr(self, name)}")
        if not 0 <= self.min_start_epoch < self.max_start_epoch:
            raise ValueError(
                f"need 0 <= min_start_epoch < max_start_epoch, got {self.min_start_epoch}, {self.max_start_epoch}"
            )
        self.validate_engine()


def dsa_probes(dsa_cfg: DSAConfig) -> list[Callable]:
    """One augmentation per DSA family, for ``mode="auto"``'s memory prediction (the largest graph wins);
    drawn from their own generator, so the run's streams are untouched."""
    g = torch.Generator().manual_seed(0)
    return [
        (lambda x, i, f=f: apply_dsa(x, sample_dsa(x.shape[0], tuple(x.shape[2:]), dsa_cfg, g, family=f)))
        for f in dsa_cfg.families
    ]


def start_upper_bound(cfg: MTTConfig, it: int) -> int:
    """Exclusive upper bound of the start epoch at iteration ``it`` (DATM's sequential generation)."""
    if cfg.current_max_start_epoch is None or cfg.expansion_end is None:
        return cfg.max_start_epoch
    lo = cfg.current_max_start_epoch
    return min(cfg.max_start_epoch, lo + int((cfg.max_start_epoch - lo) * it / cfg.expansion_end))


def student_batches(m: int, batch: int, steps: int, g: torch.Generator, device) -> list[torch.Tensor]:
    """``steps`` index chunks: consecutive chunks of fresh permutations of ``range(m)`` (each
    permutation's last chunk may be short), as the reference pops chunks of a permutation.

    The permutations are drawn on the host (``g``), concatenated and moved to ``device`` with one
    copy; the chunks are views of that one device tensor."""
    per_perm = [batch] * (m // batch) + ([m % batch] if m % batch else [])
    perms: list[torch.Tensor] = []
    sizes: list[int] = []
    while len(sizes) < steps:
        perms.append(torch.randperm(m, generator=g))
        sizes.extend(per_perm)
    sizes = sizes[:steps]
    flat = torch.cat(perms)[: sum(sizes)]
    if device is not None:
        flat = to_device_once([flat], device)[0]
    return list(flat.split(sizes))


def _init_images(
    ds: Dataset, ipc: int, cfg: MTTConfig, g: torch.Generator, scores, buf: ExpertBuffer | None, net
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Class-major ``(images, labels, frozen, soft_logits, init_indices)``; ``init_indices`` ``(K·ipc,)``
    are the training images the set starts from (``None`` for noise)."""
    k = ds.num_classes
    labels = torch.arange(k, device=ds.device).repeat_interleave(ipc)
    frozen = None
    logits = None
    idx = None
    if cfg.init in ("noise", "real"):
        images, idx = start_images(ds, ipc, cfg.init, g)
    elif cfg.init == "window":
        if scores is None:
            raise ValueError(
                "init='window' (SelMatch) needs difficulty scores: pass scores= (fastdd.load_scores, "
                "fastdd.forgetting_scores, or a (N,) array with hardest='low'/'high')"
            )
        scores = as_scores(scores, hardest=None if isinstance(scores, Scores) else cfg.hardest, n=len(ds.train))
        idx = window_indices(ds.train.labels.cpu(), scores, ipc=ipc, beta=cfg.beta)
        # per class: ranks [0, spc) frozen (harder), [spc, ipc) distilled (easier)
        spc = ipc - int(ipc * cfg.alpha)
        images = ds.train.images[idx.to(ds.device)].clone()
        frozen = (torch.arange(k * ipc) % ipc < spc).to(ds.device)
    else:  # "correct" (DATM): images the last snapshot of the first expert classifies correctly
        assert buf is not None  # the MTT family always has experts
        final = buf[buf.ids[0]][-1].to(ds.device)
        chosen: list[torch.Tensor] = []
        for ci in ds.class_indices:
            perm = ci[torch.randperm(len(ci), generator=g).to(ci.device)]
            with torch.no_grad():
                ok = net(ds.train.images[perm], final).argmax(1) == ds.train.labels[perm]
            good = perm[ok]
            if len(good) < ipc:  # not enough: fill with the rest, in the same random order
                good = torch.cat([good, perm[~ok]])
            chosen.append(good[:ipc])
        idx = torch.cat(chosen)
        images = ds.train.images[idx].clone()
    if cfg.soft_labels == "datm":
        assert buf is not None
        logits = _correct_expert_logits(images, labels, buf, net)
    return images, labels, frozen, logits, (None if idx is None else idx.cpu())


def _correct_expert_logits(images, labels, buf: ExpertBuffer, net) -> torch.Tensor:
    """Per image, the mean final-epoch logits of the experts that classify it correctly (all experts
    when none does)."""
    total = torch.zeros(len(images), net.spec["num_classes"], device=images.device)
    count = torch.zeros(len(images), 1, device=images.device)
    fallback = torch.zeros_like(total)
    with torch.no_grad():
        for e in buf.ids:
            theta = buf[e][-1].to(images.device)
            out = torch.cat([net(x, theta) for x in images.split(512)])
            ok = (out.argmax(1) == labels).float().unsqueeze(1)
            total += out * ok
            count += ok
            fallback += out
    return torch.where(count > 0, total / count.clamp_min(1), fallback / len(buf.ids))


def check_experts(ds: Dataset, experts: ExpertBuffer, net) -> None:
    """The experts must have been trained on ``ds``'s image shape, classes, data set and ZCA setting."""
    if (net.spec["in_channels"], tuple(net.spec["im_size"]), net.spec["num_classes"]) != (
        ds.channels,
        ds.im_size,
        ds.num_classes,
    ):
        raise ModelMismatchError(
            f"experts in {experts.path} were trained on {net.spec['in_channels']}x"
            f"{tuple(net.spec['im_size'])} images with {net.spec['num_classes']} classes; "
            f"{ds.name} has {ds.channels}x{ds.im_size} and {ds.num_classes}"
        )
    if experts.dataset not in (ds.name, "unknown") or experts.manifest.get("zca") not in (None, ds.zca is not None):
        raise ModelMismatchError(
            f"experts in {experts.path} were trained on {experts.dataset} "
            f"(zca={experts.manifest.get('zca')}), not on {ds.name} (zca={ds.zca is not None})"
        )


def _check_settings(ds: Dataset, ipc: int, experts: ExpertBuffer, cfg: MTTConfig) -> None:
    """``ValueError`` when the experts are too short for the epochs asked, or a class too small for ``ipc``
    (SelMatch: for its window, and at least one distilled image per class)."""
    if cfg.max_start_epoch - 1 + cfg.expert_epochs > experts.num_epochs:  # the latest target epoch
        raise ValueError(
            f"the latest start epoch {cfg.max_start_epoch - 1} + expert_epochs {cfg.expert_epochs} "
            f"exceeds the {experts.num_epochs} epochs of the experts in {experts.path}"
        )
    if cfg.init == "window":
        check_ipc(ds, int(ipc * cfg.beta) + ipc)
        if int(ipc * cfg.alpha) == 0:
            raise ValueError(
                f"selmatch: int(ipc * alpha) = int({ipc} * {cfg.alpha}) = 0 images per class would "
                "be distilled; raise alpha or ipc"
            )
    else:
        check_ipc(ds, ipc)


def _check_distributed(method: str, net, cfg: MTTConfig) -> None:
    """``ValueError`` for what cannot split a set over processes: batch norm, and BPTT."""
    if net.has_batchnorm:
        raise ValueError(
            f"{method}: {net.name} has batch norm, whose batch statistics would differ when the "
            "set is split over processes; use a model without it (e.g. convnet) or one process"
        )
    if cfg.mode == "bptt":
        raise ValueError(
            f"{method}: mode='bptt' cannot run under torch.distributed; use mode='adjoint' (exact) or 'tesla'"
        )


class MTTPolicy(Policy):
    """Trajectory matching (and SelMatch, TESLA, DATM, FTD) as a policy on
    :func:`fastdd.distillation.loop.run_loop`.

    With ``config.ema_decay = d`` (FTD's EMA of the synthetic images, its ModelEmaV2 on the images only)
    ``tensors["ema"]`` ``(K·ipc, C, H, W)`` starts equal to the initial images and, after every *applied*
    update (:meth:`apply`), becomes ``d·ema + (1−d)·images``; an iteration the loop skips (non-finite, or
    above ``threshold``) leaves it as it was. Labels and the learned rate are not averaged. It is
    checkpointed with the images (split by rows like them under torch.distributed), and :meth:`result`
    returns it as the set's images: FTD evaluates the EMA. The raw images stay in the run's checkpoints
    (tensor ``images``)."""

    log_fields = ("syn_lr", "expert", "start_epoch")
    seed: int

    def __init__(
        self,
        ds: Dataset,
        ipc: int,
        experts: ExpertBuffer,
        cfg: MTTConfig,
        seed: int,
        method: str,
        scores=None,
        resident_experts: bool | None = None,
    ):
        net = experts.model()
        check_experts(ds, experts, net)
        experts.verify_all()  # a corrupt shard is found now, before the run folder is touched
        _check_settings(ds, ipc, experts, cfg)
        dev = ds.device
        if resident_experts is None:
            resident_experts = dev.type == "cuda"
        if resident_experts:
            experts = experts.to(dev)
        self.ds, self.ipc, self.experts, self.config, self.seed = ds, ipc, experts, cfg, seed
        self.method, self.net = method, net
        self.threshold = cfg.threshold
        self.pixel_scale = data_scale(ds)
        g_init, g_iter, g_aug = (
            generator(seed, method, "init"),
            generator(seed, method, "iter"),
            generator(seed, method, "augment"),
        )
        images, labels, frozen, logits, self.init_idx = _init_images(ds, ipc, cfg, g_init, scores, experts, net)
        self.m = len(images)
        d = current()
        if d is not None:  # torch.distributed: keep this rank's rows
            _check_distributed(method, net, cfg)
            split = (("images", images), ("logits", logits), ("ema", cfg.ema_decay))  # the EMA: rows like images
            self.shard = Shard(d, self.m, tuple(name for name, t in split if t is not None))
            images, labels = self.shard.rows(images), self.shard.rows(labels)
            logits = None if logits is None else self.shard.rows(logits)
            frozen = None if frozen is None else self.shard.rows(frozen)
        self.labels, self.frozen, self.logits = labels, frozen, logits
        self.images = images.requires_grad_(True)
        self.syn_lr = torch.tensor(cfg.lr_init, device=dev).requires_grad_(True)
        self.optimizers = {
            "img": torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=0.5),
            "lr": torch.optim.SGD([self.syn_lr], lr=cfg.lr_lr, momentum=0.5),
        }
        self.tensors = {"images": self.images, "syn_lr": self.syn_lr}
        if logits is not None:
            logits.requires_grad_(True)
            self.optimizers["y"] = torch.optim.SGD([logits], lr=cfg.lr_y, momentum=0.9)
            self.tensors["logits"] = logits
        self.ema = None if cfg.ema_decay is None else images.detach().clone()
        if self.ema is not None:
            self.tensors["ema"] = self.ema
        self.batch = self.m if cfg.batch_syn is None else min(cfg.batch_syn, self.m)
        self.dsa_cfg = DSAConfig(strategy=strategy_for(ds.name))
        self.generators = {"iter": g_iter, "augment": g_aug}
        self.mode: str | None = None

    @classmethod
    def from_setup(cls, setup: Setup) -> MTTPolicy:
        assert setup.ipc is not None and setup.experts is not None  # the runner checks both (needs_ipc/needs_experts)
        setup.config.validate()
        return cls(
            setup.ds,
            setup.ipc,
            setup.experts,
            setup.config,
            setup.seed,
            setup.method,
            setup.scores,
            setup.resident_experts,
        )

    def resume(self, iteration: int, extra: dict[str, Any]) -> None:
        self.mode = extra.get("gradient_mode")  # the mode the run started with

    def begin(self) -> None:
        if self.mode is None and self.shard is not None:  # the engine's one mode across processes
            self.mode = "adjoint" if self.config.mode == "auto" else self.config.mode
        if self.mode is None:  # "auto" decided once, from the configuration and the shapes
            cfg, dev = self.config, self.ds.device
            probe_y = (
                self.labels
                if cfg.soft_labels is None
                else torch.full((self.m, self.ds.num_classes), 1.0 / self.ds.num_classes, device=dev)
            )
            self.mode = cfg.resolve_mode(
                self.net,
                self.images,
                probe_y,
                self.net.init(torch.Generator().manual_seed(0), device=dev),
                [torch.arange(self.batch, device=dev)] * cfg.syn_steps,
                dsa_probes(self.dsa_cfg) if cfg.dsa else (None,),
            )

    def extra_state(self) -> dict[str, Any]:
        return {"gradient_mode": self.mode}

    def step(self, it: int) -> Step:
        cfg, dev, net, experts = self.config, self.ds.device, self.net, self.experts
        g_iter = self.generators["iter"]
        e = experts.ids[int(torch.randint(len(experts.ids), (1,), generator=g_iter))]
        ub = start_upper_bound(cfg, it)
        start = int(torch.randint(cfg.min_start_epoch, max(ub, cfg.min_start_epoch + 1), (1,), generator=g_iter))
        snaps = experts.snapshots(e, [start, start + cfg.expert_epochs])
        if snaps.device != dev:
            snaps = snaps.to(dev, non_blocking=True)
        theta0, target = snaps[0], snaps[1]
        batches = student_batches(self.m, self.batch, cfg.syn_steps, g_iter, dev if self.shard is None else None)
        aug = (
            StepAugment(self.dsa_cfg, self.generators["augment"]).prepare(
                [len(b) for b in batches], self.ds.im_size, dev
            )
            if cfg.dsa
            else None
        )
        reduce = None
        if self.shard is not None:  # this rank's part of every batch, and its DSA parameters
            local, pos, weights = self.shard.localize(batches)
            moved = to_device_once(local + pos, dev)
            batches, pos = moved[: len(local)], moved[len(local) :]
            aug = aug.subset(pos) if aug is not None else None
            d = self.shard.dist
            reduce = StepReduce(weights, lambda t: all_reduce_(t, d))
        y_probs = None
        if cfg.soft_labels == "tesla":
            with torch.no_grad():
                y = torch.softmax(torch.cat([net(x, target) for x in self.images.detach().split(512)]), 1)
        elif cfg.soft_labels == "datm":
            assert self.logits is not None
            y_probs = torch.softmax(self.logits, 1)
            y = y_probs.detach().requires_grad_(True)
        else:
            y = self.labels
        lrs = self.syn_lr.detach().expand(cfg.syn_steps).clone().requires_grad_(True)
        assert self.mode is not None  # decided in begin()
        res = unroll_grad(
            net,
            self.images.detach().requires_grad_(True),
            y,
            lrs,
            theta0,
            batches,
            self.outer_loss(theta0, target),
            aug,
            self.mode,
            memory_budget=cfg.memory_budget,
            theta_storage=cfg.theta_storage,
            window=cfg.window,
            reduce=reduce,
        )
        assert res.images is not None and res.lrs is not None  # both ask for gradients
        return Step(res.loss, (res.images, res.lrs), {"expert": e, "start_epoch": start}, (res, y_probs))

    def outer_loss(self, theta0: torch.Tensor, target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The iteration's outer loss ``θ_N -> L`` from the start ``theta0`` and target ``target`` parameters
        ``(P,)``: MTT's :func:`~fastdd.engine.matching_loss`. A policy that matches otherwise overrides it (PAD's
        masked loss, :mod:`fastdd.distillation.pad`); it reaches the engine only as :func:`unroll_grad`'s
        ``outer``, so every gradient mode, the kernels and torch.distributed work unchanged."""
        return matching_loss(theta0, target)

    def apply(self, step: Step) -> None:
        res, y_probs = step.payload
        g_img = res.images
        if self.frozen is not None:
            g_img = g_img.masked_fill(self.frozen.view(-1, 1, 1, 1), 0.0)
        self.images.grad = g_img
        self.optimizers["img"].step()
        self.syn_lr.grad = res.lrs.sum().reshape(())
        self.optimizers["lr"].step()
        with torch.no_grad():
            self.syn_lr.clamp_(min=self.config.lr_floor)
        if self.config.soft_labels == "datm":
            assert self.logits is not None
            self.logits.grad = torch.autograd.grad(y_probs, self.logits, res.labels)[0]
            self.optimizers["y"].step()
        if self.ema is not None:  # FTD: after the update, in place (the checkpointed tensor)
            assert self.config.ema_decay is not None
            with torch.no_grad():
                self.ema.mul_(self.config.ema_decay).add_(self.images.detach(), alpha=1.0 - self.config.ema_decay)

    def log_values(self, step: Step) -> dict[str, Any]:
        return {"syn_lr": float(self.syn_lr.detach())}

    def postfix(self, loss: float, values: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{loss:.4f}", "lr": f"{values['syn_lr']:.2e}"}

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        """The whole set (under torch.distributed gathered from every rank, on every rank); its images are the
        EMA ``tensors["ema"]`` when ``ema_decay`` is set (FTD), else the learned images."""
        images = self.whole(self.ema if self.ema is not None else self.images.detach())
        labels = self.whole(self.labels)
        labels_out = torch.softmax(self.whole(self.logits.detach()), 1) if self.logits is not None else labels
        frozen = None if self.frozen is None else self.whole(self.frozen.to(torch.uint8)).bool()
        meta = self.run_meta(
            iterations,
            skipped,
            self.ipc,
            experts=str(self.experts.path),
            gradient_mode=self.mode,
            init_indices=None if self.init_idx is None else self.init_idx.tolist(),
            **(extra_meta or {}),
        )
        return SyntheticSet(
            images.clone(),
            labels_out,
            self.syn_lr.detach().clone(),
            frozen.clone() if frozen is not None else None,
            meta,
        )


def _register_family(name: str, **kw: Any) -> None:
    register_method(name, config=MTTConfig, policy=MTTPolicy, needs_experts=True, distributed="rows", **kw)


_register_family("mtt", description="trajectory matching (Cazenavette et al. 2022)")
_register_family(
    "selmatch",
    defaults={"init": "window", "lr_init": 0.001, "alpha": 0.5},
    description="MTT from a difficulty window, part of each class kept real (Lee et al. 2024)",
)
_register_family(
    "tesla",
    defaults={"mode": "tesla"},
    soft_labels=True,
    description="MTT with the direct-term gradient, soft labels optional (Cui et al. 2023)",
)
#: DATM's changes from MTTConfig's defaults (PAD, a policy on DATM, registers with them too)
DATM_DEFAULTS: dict[str, Any] = {"init": "correct", "soft_labels": "datm", "threshold": 1.0}
_register_family(
    "datm",
    defaults=DATM_DEFAULTS,
    soft_labels=True,
    description="MTT with learnable soft labels and a start-epoch schedule (Guo et al. 2024)",
)
