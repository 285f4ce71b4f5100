"""Wang et al.'s evaluation protocol for a Dataset Distillation set: replay its learned steps.

A DD set holds ``steps`` groups of images and one learned rate per application; training a network on
it means applying the groups in order with those rates (plain SGD). This module lets
:func:`fastdd.evaluate` (``protocol="dd"``) reach the protocol without importing the method.
"""

from __future__ import annotations

from typing import Any

import torch

from .data import Dataset
from .engine import student_loss
from .experts import ExpertBuffer
from .models import FunctionalNet, model_from_spec
from .rng import generator
from .synthetic import SyntheticSet


def replay(syn: SyntheticSet, net: FunctionalNet, theta0: torch.Tensor) -> torch.Tensor:
    """Train ``theta0`` by replaying a DD set's learned steps (plain SGD with the learned rates)."""
    s, per = syn.meta["steps"], syn.meta["images_per_step"]
    x = syn.images.view(s, per, *syn.images.shape[1:])
    y = syn.labels.view(s, per, *syn.labels.shape[1:])
    theta = theta0.detach()
    if syn.lr is None:
        raise ValueError("replay needs a DD set's learned rates (syn.lr is None)")
    for t, eta in enumerate(syn.lr.tolist()):
        with torch.enable_grad():
            th = theta.requires_grad_(True)
            g = torch.autograd.grad(student_loss(net(x[t % s], th), y[t % s]), th)[0]
        theta = (theta - eta * g).detach()
    return theta


def evaluate_dd(
    syn: SyntheticSet, ds: Dataset, num_eval: int = 5, seed: int = 0, experts: ExpertBuffer | None = None
) -> tuple[list[float], dict[str, Any]]:
    """Wang et al.'s evaluation: replay the learned steps on start weights and test on ``ds.test``.

    ``fixed``: the training inits (cycled); ``random``: held-out inits (a stream the distillation
    never used); ``pretrained``: the experts' final snapshots. Returns accuracies and, for the
    poisoning objective, the per-run fraction of test images of class ``a`` predicted as ``b``.
    """
    m = syn.meta
    if m.get("method") != "dd":
        raise ValueError("protocol 'dd' replays the learned steps of a set made by method='dd'")
    net = model_from_spec(m["model"], m["model_spec"], m.get("init_scheme", "default"))
    cfg = m["config"]
    accs, hits = [], []
    for r in range(num_eval):
        if cfg["init_mode"] == "fixed":
            theta0 = net.init(generator(m["seed"], "dd.fixed", r % cfg["n_nets"]), device=ds.device)
        elif cfg["init_mode"] == "random":
            theta0 = net.init(generator(seed, "dd.heldout", r), device=ds.device)
        else:
            if experts is None:
                raise ValueError("evaluating a 'pretrained' DD set needs experts=")
            theta0 = experts[experts.ids[r % len(experts.ids)]][-1].to(ds.device)
        theta = replay(syn.to(ds.device), net, theta0)
        with torch.no_grad():
            pred = torch.cat([net(x, theta).argmax(1) for x in ds.test.images.split(1024)])
        accs.append(float((pred == ds.test.labels).float().mean()))
        if cfg.get("attack"):
            a, b = cfg["attack"]
            sel = ds.test.labels == a
            hits.append(float((pred[sel] == b).float().mean()))
    info = {"name": "dd", "init_mode": cfg["init_mode"], "steps": m["steps"], "epochs": m["epochs"]}
    if hits:
        info["attack_success"] = hits
    return accs, info
