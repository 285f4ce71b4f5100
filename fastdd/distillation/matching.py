"""The per-class matching baselines, as policies on :func:`fastdd.distillation.loop.run_loop`.

- ``dc`` (Zhao et al. 2021, gradient matching): for a fresh random network, per class, the layer-wise
  cosine distance between the gradients of the loss on a real batch and on the class's synthetic
  images; one SGD step on the pixels per *outer step*, and between outer steps the network trains
  ``inner_loop`` epochs on the synthetic set (:func:`fastdd.train.fit`). ``outer_loop`` outer steps per
  network. One loop step here is one outer step (one pixel update); ``distill(..., iterations=n)``
  counts networks, as DC's ``Iteration`` does, and runs ``n · outer_loop`` loop steps.
- ``dsa`` (Zhao & Bilen 2021): DC with *siamese* DSA: the real and the synthetic batch of a class get the
  same augmentation (:func:`fastdd.augment.siamese_dsa`); the inner network updates use ordinary DSA.
- ``dm`` (Zhao & Bilen 2023, distribution matching): for a fresh random network (never trained), per
  class, the squared distance between the mean embeddings of a real batch and of the class's synthetic
  images, both under one siamese DSA draw; one SGD step on the pixels per iteration. Under
  torch.distributed each rank owns whole classes (their rows, their pixel updates): the classes' terms
  are independent, so only the loss is all-reduced.

The gradient of a gradient that DC needs goes through the same model code and op layer
(:mod:`fastdd.kernels`) as the engine, so the Triton kernels serve it on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..augment import DSA, DSAConfig, sample_dsa, siamese_dsa, strategy_for
from ..data import Dataset
from ..distributed import Shard, all_reduce_, current, split_rows
from ..engine import student_loss, to_device_once
from ..models import FunctionalNet, model_for
from ..options import check_positive
from ..rng import generator
from ..selection import check_ipc
from ..synthetic import SyntheticSet
from ..train import SGD, fit
from .loop import Policy, Step, data_scale
from .registry import Setup, register_method
from .start import start_images

# DC's (outer_loop, inner_loop) by IPC (its get_loops); other IPCs need both given.
DC_LOOPS: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
DISTANCES = ("ours", "mse", "cos")


@dataclass
class MatchingConfig:
    """Settings shared by DC, DSA and DM."""

    model: str = "convnet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 32}
    lr_img: float = 0.1  # SGD on pixels ...
    momentum_img: float = 0.5  # ... with this momentum
    batch_real: int = 256  # real images per class per matching step
    init: str = "noise"  # "noise" | "real" (random real images of each class)
    dsa: bool = False  # siamese DSA on the matched batches

    def validate(self) -> None:
        if self.init not in ("noise", "real"):
            raise ValueError(f"init must be 'noise' or 'real', got {self.init!r}")
        if self.batch_real < 1:
            raise ValueError(f"batch_real must be >= 1, got {self.batch_real}")
        check_positive(self, "lr_img")
        check_positive(self, "momentum_img", allow_zero=True)


@dataclass
class DCConfig(MatchingConfig):
    """Gradient matching (``dc``; ``dsa`` = ``init="real", dsa=True``). Defaults: DC's code."""

    lr_net: float = 0.01  # the network's SGD on the synthetic set between outer steps
    batch_train: int = 256  # its minibatch
    outer_loop: int | None = None  # None: DC_LOOPS[ipc]
    inner_loop: int | None = None
    distance: str = "ours"  # "ours" (layer-wise, per output row) | "mse" | "cos"

    def validate(self) -> None:
        super().validate()
        check_positive(self, "lr_net")
        if self.batch_train < 1:
            raise ValueError(f"batch_train must be >= 1, got {self.batch_train}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")

    def loops(self, ipc: int) -> tuple[int, int]:
        if (self.outer_loop is None or self.inner_loop is None) and ipc not in DC_LOOPS:
            raise ValueError(
                f"dc: DC defines (outer_loop, inner_loop) only for ipc in {sorted(DC_LOOPS)}; for ipc "
                f"{ipc} pass both (the authors suggest (50, 10) or (20, 25) above 50)"
            )
        table = DC_LOOPS.get(ipc, (None, None))
        outer = self.outer_loop if self.outer_loop is not None else table[0]
        inner = self.inner_loop if self.inner_loop is not None else table[1]
        assert outer is not None and inner is not None  # from the arguments or the table
        if outer < 1 or inner < 0:
            raise ValueError(f"need outer_loop >= 1 and inner_loop >= 0, got {outer}, {inner}")
        return outer, inner


@dataclass
class DMConfig(MatchingConfig):
    """Distribution matching. Defaults: DM's code (lr_img 1; the README uses 10 for CIFAR-10 at IPC >= 100)."""

    lr_img: float = 1.0
    init: str = "real"
    dsa: bool = True


def match_distance(g_real: torch.Tensor, g_syn: torch.Tensor, net: FunctionalNet, metric: str = "ours") -> torch.Tensor:
    """DC's distance between two flat gradients ``(P,)`` of ``net``.

    ``"ours"``: per parameter tensor, reshaped to ``(out, -1)``, the sum over rows of
    ``1 − cos(row_real, row_syn)`` (cosine with 1e-6 added to the norms' product); tensors with one
    dimension (biases, norm scales) contribute 0. ``"mse"``: ``Σ (g_real − g_syn)²``. ``"cos"``:
    ``1 − cos`` of the whole vectors.
    """
    if metric == "mse":
        return ((g_real - g_syn) ** 2).sum()
    if metric == "cos":
        return 1 - (g_real * g_syn).sum() / (g_real.norm() * g_syn.norm() + 1e-6)
    if metric != "ours":
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {metric!r}")
    total = g_real.new_zeros(())
    for gr, gs in zip(net.unflatten(g_real), net.unflatten(g_syn)):
        if gr.dim() == 1:
            continue
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
        total = total + (1 - (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)).sum()
    return total


def mean_embedding_distance(emb_real: torch.Tensor, emb_syn: torch.Tensor) -> torch.Tensor:
    """DM's per-class loss: ``‖mean(emb_real) − mean(emb_syn)‖²`` over batches ``(B, D)``."""
    return ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()


def real_class_batches(ds: Dataset, n: int, g: torch.Generator) -> list[torch.Tensor]:
    """Per class, ``min(n, class size)`` random indices into ``ds.train`` (drawn on the host, one copy)."""
    idx = ds.sample_per_class(n, g)
    flat = to_device_once([torch.cat(idx)], ds.device)[0]
    return list(flat.split([len(i) for i in idx]))


class MatchingPolicy(Policy):
    """What DC, DSA and DM share: the class-major set, its SGD, the per-class real batches, siamese DSA."""

    seed: int
    splits_classes = False  # whether the method runs under torch.distributed, each rank on whole classes

    def __init__(self, ds: Dataset, ipc: int, cfg: MatchingConfig, seed: int, method: str):
        cfg.validate()
        check_ipc(ds, ipc)
        net = model_for(ds, cfg.model, **cfg.model_kwargs)
        if net.has_batchnorm:
            raise ValueError(
                f"{method}: model {cfg.model!r} uses batch norm, which per-class matching would have to freeze "
                "or share across classes; use a model without it (e.g. convnet, instance norm)"
            )
        self.ds, self.ipc, self.config, self.seed, self.method, self.net = ds, ipc, cfg, seed, method, net
        self.pixel_scale = data_scale(ds)
        images, self.init_idx = start_images(ds, ipc, cfg.init, generator(seed, method, "init"))
        labels = torch.arange(ds.num_classes, device=ds.device).repeat_interleave(ipc)
        self.classes = range(ds.num_classes)  # the classes this process matches (all, or its share)
        d = current()
        if d is not None and not self.splits_classes:
            raise ValueError(
                f"{method} runs on one process (its network trains on the whole set between pixel "
                "updates); launch it without torchrun"
            )
        if d is not None:  # torch.distributed (DM): each rank owns whole classes, every class's draws are made
            classes = split_rows(ds.num_classes, d.world, "classes")
            self.shard = Shard(d, len(images), ("images",), [(lo * ipc, hi * ipc) for lo, hi in classes])
            self.classes = range(*classes[d.rank])
            images, labels = self.shard.rows(images), self.shard.rows(labels)
        self.images = images.requires_grad_(True)
        self.labels = labels
        self.tensors = {"images": self.images}
        self.optimizers = {"img": torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum_img)}
        self.generators = {"iter": generator(seed, method, "iter"), "augment": generator(seed, method, "augment")}
        self.dsa_cfg = DSAConfig(strategy=strategy_for(ds.name))

    @classmethod
    def from_setup(cls, setup: Setup) -> MatchingPolicy:
        assert setup.ipc is not None  # the runner checks it (needs_ipc)
        return cls(setup.ds, setup.ipc, setup.config, setup.seed, setup.method)

    def pairs(self, x: torch.Tensor):
        """Per class of :attr:`classes` ``(c, real batch, synthetic images of c as rows of x)``,
        siamese-augmented if configured. The random draws of every class are made (a process that
        matches some classes keeps its streams where one process matching all of them has them)."""
        first = self.classes.start
        for c, idx in enumerate(real_class_batches(self.ds, self.config.batch_real, self.generators["iter"])):
            if c not in self.classes:
                if self.config.dsa:  # the draw siamese_dsa makes for this class
                    sample_dsa(1, tuple(self.ds.im_size), self.dsa_cfg, self.generators["augment"])
                continue
            xr, xs = self.ds.train.images[idx], x[(c - first) * self.ipc : (c - first + 1) * self.ipc]
            if self.config.dsa:
                (xr, xs), _ = siamese_dsa([xr, xs], self.dsa_cfg, self.generators["augment"])
            yield c, xr, xs

    def apply(self, step: Step) -> None:
        self.images.grad = step.payload
        self.optimizers["img"].step()

    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> SyntheticSet:
        meta = self.run_meta(
            iterations,
            skipped,
            self.ipc,
            init_indices=None if self.init_idx is None else self.init_idx.tolist(),
            **(extra_meta or {}),
        )
        return SyntheticSet(self.whole(self.images.detach()).clone(), self.whole(self.labels).clone(), None, None, meta)


class GradientMatchingPolicy(MatchingPolicy):
    """DC / DSA; one loop iteration = one outer step of one network."""

    log_fields = ("network", "outer_step")

    def __init__(self, ds: Dataset, ipc: int, cfg: DCConfig, seed: int, method: str = "dc"):
        super().__init__(ds, ipc, cfg, seed, method)
        self.outer, self.inner = cfg.loops(ipc)
        self.steps_per_iteration = self.outer  # an iteration is one network: outer_loop pixel updates
        self.theta = torch.zeros(self.net.num_params, device=ds.device)  # step 0 draws network 0 into it
        self.tensors["net"] = self.theta  # the current network: a resume mid-network continues it
        self.dsa = DSA(self.dsa_cfg)

    def step(self, it: int) -> Step:
        n, outer_step = divmod(it, self.outer)
        if outer_step == 0:
            self.theta.copy_(self.net.init(generator(self.seed, self.method, "net", n), device=self.ds.device))
        net, theta = self.net, self.theta.detach().requires_grad_(True)
        x = self.images.detach().requires_grad_(True)
        loss = x.new_zeros(())
        for c, xr, xs in self.pairs(x):
            y_r, y_s = (torch.full((len(b),), c, device=x.device) for b in (xr, xs))
            g_real = torch.autograd.grad(student_loss(net(xr, theta), y_r), theta)[0].detach()
            g_syn = torch.autograd.grad(student_loss(net(xs, theta), y_s), theta, create_graph=True)[0]
            loss = loss + match_distance(g_real, g_syn, net, self.config.distance)
        grad = torch.autograd.grad(loss, x)[0]
        return Step(loss.detach(), (grad,), {"network": n, "outer_step": outer_step}, grad)

    def end_iteration(self, it: int) -> None:
        if it % self.outer == self.outer - 1 or self.inner == 0:
            return  # the network is replaced before the next step
        g_aug = self.generators["augment"]
        augment = (lambda xb, idx: self.dsa(xb, g_aug)) if self.config.dsa else None
        theta = fit(
            self.net,
            self.theta,
            self.images.detach(),
            self.labels,
            self.inner,
            SGD(self.config.lr_net),
            self.generators["iter"],
            batch_size=self.config.batch_train,
            augment=augment,
        )
        self.theta.copy_(theta)


class DistributionMatchingPolicy(MatchingPolicy):
    """DM; one loop iteration = one fresh random network, one pixel update."""

    splits_classes = True

    def step(self, it: int) -> Step:
        net = self.net
        theta = net.init(generator(self.seed, self.method, "net", it), device=self.ds.device)
        x = self.images.detach().requires_grad_(True)
        loss = x.new_zeros(())
        for _, xr, xs in self.pairs(x):
            with torch.no_grad():
                emb_r = net.embed(xr, theta)
            loss = loss + mean_embedding_distance(emb_r, net.embed(xs, theta))
        grad = torch.autograd.grad(loss, x)[0]
        loss = loss.detach()
        if self.shard is not None:  # the classes' terms of every rank
            loss = all_reduce_(loss.clone(), self.shard.dist)
        return Step(loss, (grad,), payload=grad)


register_method(
    "dc",
    config=DCConfig,
    policy=GradientMatchingPolicy,
    description="gradient matching; an iteration is one network (Zhao et al. 2021)",
)
register_method(
    "dsa",
    config=DCConfig,
    policy=GradientMatchingPolicy,
    defaults={"init": "real", "dsa": True},
    description="gradient matching with siamese augmentation (Zhao & Bilen 2021)",
)
register_method(
    "dm",
    config=DMConfig,
    policy=DistributionMatchingPolicy,
    distributed="classes",
    description="distribution matching of random networks' embeddings (Zhao & Bilen 2023)",
)


__all__ = [
    "MatchingConfig",
    "DCConfig",
    "DMConfig",
    "DC_LOOPS",
    "match_distance",
    "mean_embedding_distance",
    "GradientMatchingPolicy",
    "DistributionMatchingPolicy",
    "start_images",
    "real_class_batches",
]
