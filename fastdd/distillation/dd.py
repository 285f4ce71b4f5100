"""Dataset Distillation (Wang et al. 2018): learn per-step images and per-step learning rates.

``steps`` groups of images (``images_per_class`` per class each) are applied in order, the whole
sequence ``epochs`` times, each application with its own learning rate η_t = softplus(ρ_t)
(T = steps × epochs rates, always positive). The outer loss is the cross-entropy of the trained
network on a real minibatch (the *poisoning* objective relabels real class ``a`` as ``b`` there).
Images and ρ are learned with Adam (lr 0.01, betas (0.5, 0.999)), the rate halved every
``decay_every`` iterations. Initialisations: ``fixed`` (``n_nets`` inits drawn once), ``random``
(fresh inits every iteration), ``pretrained`` (final snapshots of an expert buffer).

``mode="auto"`` is resolved once per run from ``memory_budget`` and the shapes (recorded in
``syn.meta["gradient_mode"]`` and the checkpoints); the iteration's checks read one tensor back.

Truncated unrolls: ``mode="truncated", window=W`` differentiates through the last W of the T = steps ×
epochs steps only (the first T − W run without a graph). ``rat_bptt=True`` adds RaT-BPTT's random-length
unroll (Feng, Vedantam & Kempe, ICLR 2024): every iteration draws N₀ uniformly from
[``min_prefix``, T − W] with the run's seeded generator (checkpointed with the others), runs N₀ steps
without a graph and W differentiable steps, and evaluates the outer loss after those N₀ + W steps (the
later steps and their rates are not used that iteration). Unlike RaT-BPTT, whose inner optimiser is Adam
(differentiated through its state), the inner steps here stay Wang et al.'s plain SGD steps with one
learned rate each; the outer update stays this method's Adam, without RaT-BPTT's gradient clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data import Dataset, minibatches
from ..distributed import current
from ..engine import EngineConfig, dd_grad, to_device_once
from ..experts import ExpertBuffer
from ..models import FunctionalNet, model_for
from ..options import check_positive
from ..rng import generator
from ..synthetic import SyntheticSet
from .loop import Policy, Step, data_scale
from .registry import Setup, register_method


@dataclass
class DDConfig(EngineConfig):
    """Wang et al.'s settings (defaults: the official code's), with the engine's options inherited."""

    model: str = "lenet"
    steps: int = 10
    epochs: int = 3
    images_per_class: int = 1  # per step
    lr_init: float = 0.02  # initial η (softplus⁻¹ stored)
    lr: float = 0.01  # Adam
    betas: tuple[float, float] = (0.5, 0.999)
    decay_every: int | None = None  # iterations; None = iterations // 10
    decay_factor: float = 0.5
    real_batch: int = 1024
    init_mode: str = "fixed"  # "fixed" | "random" | "pretrained"
    n_nets: int = 1  # inits per iteration (fixed: drawn once)
    init: str = "default"  # weight init scheme of the network ("default" | "xavier")
    attack: tuple[int, int] | None = None  # poisoning: relabel real class a as b in the outer loss
    rat_bptt: bool = False  # RaT-BPTT: unroll N0 + window steps, N0 ~ U[min_prefix, T - window] per iteration
    min_prefix: int = 0  # rat_bptt: the fewest steps run before the window

    def validate(self, num_classes: int) -> None:
        if self.init_mode not in ("fixed", "random", "pretrained"):
            raise ValueError(f"init_mode must be 'fixed', 'random' or 'pretrained', got {self.init_mode!r}")
        if self.steps < 1 or self.epochs < 1 or self.images_per_class < 1 or self.n_nets < 1 or self.real_batch < 1:
            raise ValueError(
                "steps, epochs, images_per_class, n_nets and real_batch must be >= 1, got "
                f"{self.steps}, {self.epochs}, {self.images_per_class}, {self.n_nets}, {self.real_batch}"
            )
        check_positive(self, "lr", "lr_init")
        if not 0 < self.decay_factor <= 1:
            raise ValueError(f"decay_factor must be in (0, 1], got {self.decay_factor}")
        if self.decay_every is not None and self.decay_every < 1:
            raise ValueError(f"decay_every must be >= 1 (or None), got {self.decay_every}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.attack is not None:
            a, b = self.attack
            if not (0 <= a < num_classes and 0 <= b < num_classes and a != b):
                raise ValueError(f"attack=(a, b) needs two different classes in [0, {num_classes}), got {self.attack}")
        self.validate_truncation()
        self.validate_engine()

    def validate_truncation(self) -> None:
        """``rat_bptt`` needs ``mode="truncated"`` with a ``window`` of at most T = steps × epochs, and
        0 <= ``min_prefix`` <= T − window; ``min_prefix`` is refused without it."""
        if not self.rat_bptt:
            if self.min_prefix != 0:
                raise ValueError(f"min_prefix={self.min_prefix} applies to rat_bptt=True only")
            return
        total = self.steps * self.epochs
        if self.mode != "truncated" or not isinstance(self.window, int) or not 1 <= self.window <= total:
            raise ValueError(
                f"rat_bptt=True needs mode='truncated' and a window in [1, steps × epochs = {total}], "
                f"got mode={self.mode!r}, window={self.window!r}"
            )
        if isinstance(self.min_prefix, bool) or not isinstance(self.min_prefix, int):
            raise ValueError(f"min_prefix must be an int, got {self.min_prefix!r}")
        if not 0 <= self.min_prefix <= total - self.window:
            raise ValueError(
                f"min_prefix must be in [0, steps × epochs − window = {total - self.window}], got {self.min_prefix}"
            )


def inverse_softplus(x: float) -> float:
    return math.log(math.expm1(x))


def dd_inits(
    net: FunctionalNet,
    cfg: DDConfig,
    seed: int,
    it: int,
    device,
    buf: ExpertBuffer | None,
    g: torch.Generator | None,
) -> list[torch.Tensor]:
    """The start parameters of iteration ``it`` (``buf`` and ``g``: for ``pretrained`` inits)."""
    if cfg.init_mode == "fixed":
        return [net.init(generator(seed, "dd.fixed", j), device=device) for j in range(cfg.n_nets)]
    if cfg.init_mode == "random":
        return [net.init(generator(seed, "dd.random", it, j), device=device) for j in range(cfg.n_nets)]
    assert buf is not None and g is not None  # pretrained: checked in DDPolicy
    ids = torch.randint(len(buf.ids), (cfg.n_nets,), generator=g).tolist()
    return [buf[buf.ids[i]][-1].to(device) for i in ids]


@register_method(
    "dd",
    config=DDConfig,
    needs_ipc=False,
    selection=False,
    description="Dataset Distillation: per-step images and learned rates (Wang et al. 2018)",
)
class DDPolicy(Policy):
    """Wang et al.'s method as a policy on :func:`fastdd.distillation.loop.run_loop`."""

    method = "dd"
    log_fields: tuple[str, ...] = ("mean_lr",)
    pixel_lr = "lr"  # Adam's rate on the images (and the rates)
    seed: int

    def __init__(
        self,
        ds: Dataset,
        cfg: DDConfig,
        iterations: int,
        seed: int,
        experts: ExpertBuffer | None,
        resident_experts: bool | None = None,
    ):
        if current() is not None:
            raise ValueError(
                "dd runs on one process (its images are per step, not a set to split); launch it without torchrun"
            )
        if cfg.init_mode == "pretrained":
            if experts is None:
                raise ValueError("init_mode='pretrained' needs experts= (their final snapshots are the start weights)")
            net = experts.model()
            experts.verify_all()  # a corrupt shard is found now, before the run folder is touched
        else:
            net = model_for(ds, cfg.model, init=cfg.init)
        dev = ds.device
        if experts is not None and (dev.type == "cuda" if resident_experts is None else resident_experts):
            experts = experts.to(dev)
        self.ds, self.config, self.seed, self.experts, self.net = ds, cfg, seed, experts, net
        self.pixel_scale = data_scale(ds)
        self.fixed = dd_inits(net, cfg, seed, 0, dev, experts, None) if cfg.init_mode == "fixed" else None
        k, s, n_img = ds.num_classes, cfg.steps, cfg.images_per_class
        g_init, g_iter = generator(seed, "dd", "images"), generator(seed, "dd", "iter")
        self.images = (
            torch.randn((s, k * n_img, ds.channels, *ds.im_size), generator=g_init).to(dev).requires_grad_(True)
        )
        self.labels = torch.arange(k, device=dev).repeat_interleave(n_img).repeat(s, 1)
        self.rho = torch.full((s * cfg.epochs,), inverse_softplus(cfg.lr_init), device=dev, requires_grad=True)
        self.opt = torch.optim.Adam([self.images, self.rho], lr=cfg.lr, betas=cfg.betas)
        self.decay = cfg.decay_every or max(1, iterations // 10)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=self.decay, gamma=cfg.decay_factor)
        self.tensors, self.optimizers = {"images": self.images, "rho": self.rho}, {"adam": self.opt}
        self.generators = {"iter": g_iter}
        if cfg.rat_bptt:  # N0 per iteration; a default run keeps exactly the streams it had
            self.generators["rat_bptt"] = generator(seed, "dd", "rat_bptt")
            self.log_fields = ("mean_lr", "unroll")
        self.per_epoch = -(-len(ds.train) // cfg.real_batch)
        self.real_batches: list[torch.Tensor] = []
        self.mode: str | None = None

    @classmethod
    def from_setup(cls, setup: Setup) -> DDPolicy:
        """``ipc``, when given, is steps × images per class per step: it sets ``images_per_class``."""
        cfg, ipc = setup.config, setup.ipc
        if ipc is not None and ipc != cfg.steps * cfg.images_per_class:
            if ipc % cfg.steps:
                raise ValueError(f"dd: ipc {ipc} is not a multiple of steps={cfg.steps}")
            cfg.images_per_class = ipc // cfg.steps
        cfg.validate(setup.ds.num_classes)
        return cls(setup.ds, cfg, setup.iterations, setup.seed, setup.experts, setup.resident_experts)

    def resume(self, iteration: int, extra: dict[str, Any]) -> None:
        self.mode = extra.get("gradient_mode")  # the mode the run started with
        self.sched.last_epoch = iteration
        for grp, base in zip(self.opt.param_groups, self.sched.base_lrs):
            grp["lr"] = base * self.config.decay_factor ** (iteration // self.decay)

    def begin(self) -> None:
        if self.mode is None:  # "auto" decided once, from the configuration and the shapes
            cfg, dev, s = self.config, self.ds.device, self.config.steps
            per = self.images.shape[1]
            ar = torch.arange(s * per, device=dev).view(s, per)
            self.mode = cfg.resolve_mode(
                self.net,
                self.images.reshape(s * per, *self.images.shape[2:]),
                self.labels.reshape(-1),
                self.fixed[0]
                if self.fixed is not None
                else self.net.init(torch.Generator().manual_seed(0), device=dev),
                [ar[t % s] for t in range(s * cfg.epochs)],
            )

    def extra_state(self) -> dict[str, Any]:
        return {"gradient_mode": self.mode}

    def step(self, it: int) -> Step:
        cfg, ds, dev = self.config, self.ds, self.ds.device
        if it % self.per_epoch == 0 or not self.real_batches:  # one permutation per real epoch, a function of it
            self.real_batches = to_device_once(
                minibatches(len(ds.train), cfg.real_batch, generator(self.seed, "dd.real", it // self.per_epoch)), dev
            )
        idx = self.real_batches[it % self.per_epoch]
        xr, yr = ds.train.images[idx], ds.train.labels[idx]
        if cfg.attack is not None:
            yr = torch.where(yr == cfg.attack[0], torch.full_like(yr, cfg.attack[1]), yr)
        thetas = (
            self.fixed
            if self.fixed is not None
            else dd_inits(self.net, cfg, self.seed, it, dev, self.experts, self.generators["iter"])
        )
        length = self.unroll_length()
        eta = F.softplus(self.rho.detach())
        g_x, g_eta = torch.zeros_like(self.images), torch.zeros_like(eta)
        loss_t: torch.Tensor | None = None
        assert self.mode is not None  # decided in begin()
        for theta0 in thetas:
            res = dd_grad(
                self.net,
                self.images.detach().requires_grad_(True),
                self.labels,
                eta.clone().requires_grad_(True),
                theta0,
                xr,
                yr,
                cfg.epochs,
                mode=self.mode,
                memory_budget=cfg.memory_budget,
                theta_storage=cfg.theta_storage,
                window=cfg.window,
                length=length,
            )
            assert res.images is not None and res.lrs is not None  # both ask for gradients
            g_x += res.images / len(thetas)
            g_eta += res.lrs / len(thetas)
            term = res.loss.double() / len(thetas)
            loss_t = term if loss_t is None else loss_t + term
        assert loss_t is not None  # n_nets >= 1
        info = {} if length is None else {"unroll": length}
        return Step(loss_t, (g_x, g_eta), info, payload=(g_x, g_eta))

    def unroll_length(self) -> int | None:
        """RaT-BPTT: this iteration's N₀ + window, N₀ drawn uniformly from [min_prefix, T − window];
        ``None`` (all T steps) otherwise."""
        cfg = self.config
        if not cfg.rat_bptt:
            return None
        assert cfg.window is not None  # validate_truncation
        high = cfg.steps * cfg.epochs - cfg.window
        n0 = int(torch.randint(cfg.min_prefix, high + 1, (1,), generator=self.generators["rat_bptt"]))
        return n0 + cfg.window

    def apply(self, step: Step) -> None:
        g_x, g_eta = step.payload
        self.images.grad = g_x
        self.rho.grad = g_eta * torch.sigmoid(self.rho.detach())  # d softplus(ρ)/dρ = sigmoid(ρ)
        self.opt.step()

    def end_iteration(self, it: int) -> None:
        self.sched.step()

    def log_values(self, step: Step) -> dict[str, Any]:
        return {"mean_lr": float(F.softplus(self.rho.detach()).mean())}

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        ds, cfg, net = self.ds, self.config, self.net
        k, s, n_img = ds.num_classes, cfg.steps, cfg.images_per_class
        meta = self.run_meta(
            iterations,
            skipped,
            s * n_img,
            steps=s,
            epochs=cfg.epochs,
            images_per_step=k * n_img,
            init_scheme=net.init_scheme,
            experts=str(self.experts.path) if self.experts is not None else None,
            gradient_mode=self.mode,
            **(extra_meta or {}),
        )
        return SyntheticSet(
            self.images.detach().reshape(s * k * n_img, ds.channels, *ds.im_size).clone(),
            self.labels.reshape(-1).clone(),
            F.softplus(self.rho.detach()).clone(),
            None,
            meta,
        )
