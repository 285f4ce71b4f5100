"""Evaluation: train fresh networks on a small set, test them on the real test split.

Protocols (named presets; every field can be overridden by keyword):

- ``mtt`` (MTT / DC / DSA / DM): ConvNet (depth by resolution), SGD with the set's learned lr
  (0.01 if none), momentum 0.9, weight decay 5e-4, lr ×0.1 once at epoch ⌊E/2⌋+1 (the optimiser is
  re-created, so momentum restarts), batch 256, DSA on every batch, E = 1000, ``E + 1`` epochs.
- ``selmatch``: ResNet-18-BN (stride-2 stem at 64 px), SGD lr 0.1 (fixed), momentum 0.9, weight decay
  5e-4, cosine annealing to 0.001 over E, batch 128, combined augmentation (DSA on distilled images,
  crop+flip on selected real ones), E = round(50 / (ipc / class size)) capped at 1000 (the paper's
  1000/500/250/167 epochs at 5/10/20/30 % of the data).

- ``soft``: ``mtt`` trained on the set's soft labels (cross-entropy against them); refuses a set with
  hard labels. ``mtt`` itself uses whatever labels the set carries; ``labels="hard"`` trains any set on
  its argmax labels.
- ``dd``: a DD set's own evaluation: replay its learned steps on held-out start weights.

The reported number is the **final-epoch** test accuracy, mean ± std (population std) over
``num_eval`` runs with independent seeds; no test-set model selection. ``split="val"`` scores on a
validation split (:meth:`fastdd.data.Dataset.with_validation`) instead, for any choice made before the
final test. Beside the accuracy, ``random_baseline`` and ``real_baseline`` give DD-Ranking's IOR, HLR
and LRS (:mod:`fastdd.metrics`); ``models=[...]`` evaluates across architectures. Under
torch.distributed (``torchrun ... fastdd evaluate``) rank ``r`` trains runs ``r, r + K, ...`` and every
rank gets every run's accuracy: the same numbers one process reports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .augment import DSA, DSAConfig, combined_augment, crop_flip, strategy_for
from .data import Dataset
from .dd_protocol import evaluate_dd
from .distributed import all_gather_objects, current
from .engine import student_loss
from .experts import ExpertBuffer
from .metrics import hlr, ior, lrs
from .models import accuracy, model_for
from .options import check_dataclass_options, check_positive
from .rng import derive_seed, generator
from .runs import progress
from .selection import random_indices, real_subset
from .synthetic import SyntheticSet, check_lr
from .train import SGD, fit


@dataclass(frozen=True)
class Protocol:
    name: str
    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = 1000  # None: by IPC ratio (selmatch rule)
    batch_size: int = 256
    lr: float | str | None = None  # None: the set's learned lr if it has one, else lr_default; "learned": must have one
    lr_default: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step" (×0.1 at E//2+1) | "cosine" (to eta_min) | "constant"
    eta_min: float = 0.001
    augment: str = "dsa"  # "dsa" | "combined" | "crop_flip" | "none"
    labels: str = "auto"  # "auto" (the set's own) | "hard" (argmax of soft labels) | "soft" (must be soft)


PROTOCOLS: dict[str, Protocol] = {
    "mtt": Protocol("mtt", model="convnet"),
    "soft": Protocol("soft", model="convnet", labels="soft"),
    "selmatch": Protocol(
        "selmatch",
        model="resnet18bn",
        epochs=None,
        batch_size=128,
        lr=0.1,
        schedule="cosine",
        eta_min=0.001,
        augment="combined",
    ),
}


@dataclass
class EvalResult:
    """Final-epoch accuracies (fractions in [0, 1]) of ``num_eval`` independently seeded runs.

    ``random``: a random real subset of the same per-class size under the same protocol (for IOR);
    ``real``: the whole real train split, hard labels (for HLR); ``hard``: this set on hard labels when
    the protocol trained on soft ones (HLR compares hard with hard)."""

    accuracies: list[float]
    protocol: dict[str, Any]
    random: EvalResult | None = None
    real: EvalResult | None = None
    hard: EvalResult | None = None

    @property
    def mean(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.accuracies) / len(self.accuracies))

    @property
    def ior(self) -> float | None:
        """Mean accuracy minus the random subset's (needs ``random_baseline=True``)."""
        return None if self.random is None else ior(self.mean, self.random.mean)

    @property
    def hlr(self) -> float | None:
        """The real train split's mean accuracy minus this set's on hard labels (needs ``real_baseline=True``)."""
        return None if self.real is None else hlr(self.real.mean, (self.hard or self).mean)

    def lrs(self, weight: float = 0.5) -> float | None:
        """DD-Ranking's label-robust score in [0, 1] (needs both baselines)."""
        return None if self.ior is None or self.hlr is None else lrs(self.ior, self.hlr, weight)

    def __str__(self) -> str:
        runs = f"{len(self.accuracies)} runs, protocol {self.protocol['name']}"
        s = f"{100 * self.mean:.2f} ± {100 * self.std:.2f} % ({runs})"
        if self.hard is not None:
            s += f"; with hard labels: {100 * self.hard.mean:.2f} ± {100 * self.hard.std:.2f} %"
        if self.random is not None:
            s += (
                f"; random real subset: {100 * self.random.mean:.2f} ± {100 * self.random.std:.2f} % "
                f"(IOR {100 * self.ior:+.2f})"
            )
        if self.real is not None:
            s += f"; real train split: {100 * self.real.mean:.2f} % (HLR {100 * self.hlr:.2f})"
        if self.lrs() is not None:
            s += f"; LRS {100 * self.lrs():.2f}"
        return s

    def to_dict(self) -> dict[str, Any]:
        d = {"mean": self.mean, "std": self.std, "accuracies": self.accuracies, "protocol": self.protocol}
        for key in ("random", "real", "hard"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key).to_dict()
        for key, value in (("ior", self.ior), ("hlr", self.hlr), ("lrs", self.lrs())):
            if value is not None:
                d[key] = value
        return d


@dataclass
class CrossArchResult:
    """One :class:`EvalResult` per architecture (``evaluate(..., models=[...])``)."""

    results: dict[str, EvalResult]

    def __getitem__(self, model: str) -> EvalResult:
        return self.results[model]

    def table(self) -> str:
        """A markdown table: one row per architecture, accuracy and (when measured) the random subset and IOR."""
        rows = ["| model | accuracy (%) | random real (%) | IOR |", "|---|---|---|---|"]
        for name, r in self.results.items():
            rnd = f"{100 * r.random.mean:.2f} ± {100 * r.random.std:.2f}" if r.random is not None else "—"
            rows.append(
                f"| {name} | {100 * r.mean:.2f} ± {100 * r.std:.2f} | {rnd} | "
                + (f"{100 * r.ior:+.2f}" if r.ior is not None else "—")
                + " |"
            )
        return "\n".join(rows)

    __str__ = table

    def to_dict(self) -> dict[str, Any]:
        return {name: r.to_dict() for name, r in self.results.items()}


def selmatch_epochs(ipc: int, class_size: int, full_epochs: int = 50) -> int:
    """SelMatch's equal-compute epoch budget: the compute of ``full_epochs`` epochs of the full class (SelMatch:
    50), so 1000/500/250/167 at 5/10/20/30 % of a class; capped at 1000."""
    return min(1000, max(1, round(full_epochs / (ipc / class_size))))


def resolve_protocol(protocol: str | Protocol, **overrides: Any) -> Protocol:
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    check_dataclass_options(Protocol, overrides, f"protocol {protocol.name!r}")
    p = replace(protocol, **overrides)
    check_protocol(p)
    return p


def check_protocol(p: Protocol) -> None:
    """``ValueError`` naming the setting when a number of ``p`` is out of range."""
    for name, low in (("epochs", 0), ("batch_size", 1)):  # epochs E trains E + 1 passes (the reference's count)
        v = getattr(p, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"protocol {p.name!r}: {name} must be an integer >= {low}, got {v!r}")
    if p.lr not in (None, "learned"):
        check_positive(p, "lr")
    check_positive(p, "lr_default")
    check_positive(p, "momentum", "weight_decay", "eta_min", allow_zero=True)


_loss = student_loss  # hard labels or target probabilities, as in the student's inner loop


def _augmentation(name: str, ds: Dataset, distilled: torch.Tensor, g: torch.Generator):
    """The protocol's training augmentation ``(x, idx) -> x`` (``None`` for ``"none"``), drawing from ``g``;
    ``distilled`` ``(M,)`` bool tells the combined augmentation which images get DSA."""
    cfg = DSAConfig(strategy=strategy_for(ds.name))
    if name == "dsa":
        dsa = DSA(cfg)
        return lambda x, idx: dsa(x, g)
    if name == "combined":
        return lambda x, idx: combined_augment(x, distilled[idx], g, cfg)
    if name == "crop_flip":
        return lambda x, idx: crop_flip(x, g, prob_flip=cfg.prob_flip if "flip" in cfg.families else 0.0)
    if name == "none":
        return None
    raise ValueError(f"unknown augmentation {name!r}")


def train_on(
    images: torch.Tensor,
    labels: torch.Tensor,
    ds: Dataset,
    p: Protocol,
    lr: float,
    seed: int,
    distilled: torch.Tensor | None = None,
    show_progress: bool = False,
    desc: str = "",
    test_images: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
) -> float:
    """Train one fresh network of protocol ``p`` on ``(images, labels)`` (:func:`fastdd.train.fit`); return
    its final-epoch accuracy on ``ds.test`` (or on ``test_images``/``test_labels``, e.g. a validation split).

    ``distilled`` ``(M,)`` bool marks the distilled images for the combined augmentation (the
    others are treated as selected real images).
    """
    dev = ds.device
    images, labels = images.to(dev), labels.to(dev)
    net = model_for(ds, p.model, **p.model_kwargs)
    theta0 = net.init(generator(seed, "eval.init"), device=dev)
    buffers = net.init_buffers(device=dev) if net.has_batchnorm else None
    g_batch = generator(seed, "eval.batches")
    if distilled is None:
        distilled = torch.ones(len(images), dtype=torch.bool)
    augment = _augmentation(p.augment, ds, distilled.to(dev), generator(seed, "eval.augment"))
    epochs = (
        p.epochs
        if p.epochs is not None
        else selmatch_epochs(max(1, len(images) // ds.num_classes), min(ds.class_counts()))
    )
    if p.schedule not in ("step", "cosine", "constant"):
        raise ValueError(f"unknown schedule {p.schedule!r}")
    # E + 1 passes, lr x0.1 from pass E//2 + 1 (the reference loop's off-by-one kept), or cosine over E
    sgd = SGD(
        lr,
        p.momentum,
        p.weight_decay,
        schedule=p.schedule,
        decay_epoch=epochs // 2 + 1,
        cosine_epochs=epochs,
        eta_min=p.eta_min,
    )
    bar = progress(total=epochs + 1, desc=desc, disable=not show_progress)
    theta = fit(
        net,
        theta0,
        images,
        labels,
        epochs + 1,
        sgd,
        g_batch,
        batch_size=p.batch_size,
        buffers=buffers,
        augment=augment,
        on_epoch=lambda *_: bar.update(1),
    )
    bar.close()
    return accuracy(
        net,
        theta,
        buffers,
        test_images if test_images is not None else ds.test.images,
        test_labels if test_labels is not None else ds.test.labels,
    )


def evaluate(
    syn: SyntheticSet,
    ds: Dataset,
    protocol: str | Protocol = "mtt",
    num_eval: int = 5,
    seed: int = 0,
    *,
    random_baseline: bool = False,
    real_baseline: bool = False,
    real_epochs: int = 20,
    split: str = "test",
    models: list | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> EvalResult | CrossArchResult:
    """Train ``num_eval`` fresh networks on ``syn`` under ``protocol`` and test them on ``ds.test``.

    Args:
        syn: the set to evaluate (distilled, selected or real).
        ds: the data set it came from (its test split is used; its train split only for the baselines).
        protocol: ``"mtt"``, ``"selmatch"``, ``"soft"``, a :class:`Protocol`, or ``"dd"`` (a DD set: replay
            its learned steps with its learned rates on held-out start weights).
        num_eval: independent runs (network init, batch order, augmentation all seeded per run).
        random_baseline: also evaluate, under the same protocol and lr, a random class-balanced real
            subset with the same per-class counts (a fresh subset per run); ``result.random``, ``result.ior``.
        real_baseline: also train on the whole real train split with hard labels, the same protocol
            but ``real_epochs`` epochs; ``result.real``, ``result.hlr`` and ``result.lrs()``. A soft-label
            set is then also evaluated on its hard (argmax) labels (``result.hard``), as HLR asks.
        split: ``"test"`` (default) or ``"val"`` (``ds.val``, from :meth:`Dataset.with_validation`): score
            choices on the validation split, report on test.
        models: evaluate on each of these architectures (names, or ``(name, model_kwargs)`` pairs) and
            return a :class:`CrossArchResult`; the protocol's ``model_kwargs`` apply to its own model only.
        overrides: any :class:`Protocol` field, e.g. ``epochs=300``, ``lr=0.01``, ``model="convnetbn"``.

    Returns an :class:`EvalResult` (``mean``, ``std``, ``accuracies``, ``random``, ``ior``, ...).
    """
    if num_eval < 1:
        raise ValueError(f"num_eval must be >= 1, got {num_eval}")
    if real_epochs < 1:
        raise ValueError(f"real_epochs must be >= 1, got {real_epochs}")
    _check_set(syn, ds, split)
    if models is not None:
        if protocol == "dd":
            raise ValueError("protocol 'dd' replays the set's own network; it cannot change architectures")
        base = resolve_protocol(protocol, **overrides)
        common: dict[str, Any] = dict(num_eval=num_eval, seed=seed, random_baseline=random_baseline)
        common.update(real_baseline=real_baseline, real_epochs=real_epochs, split=split, show_progress=show_progress)
        return CrossArchResult(
            {
                name: evaluate(syn, ds, replace(base, model=name, model_kwargs=dict(mk)), **common)
                for name, mk in _architectures(models, base)
            }
        )
    if protocol == "dd":
        if random_baseline or real_baseline or split != "test":
            raise TypeError("protocol 'dd' replays the learned steps on the test split; it takes no baselines or split")
        return _replay_protocol(syn, ds, num_eval, seed, **overrides)
    p = resolve_protocol(protocol, **overrides)
    labels = _training_labels(syn, p)
    lr = _training_lr(syn, p)
    info = {**asdict(p), "lr_used": lr, "ipc": syn.ipc, "num_images": len(syn), "seed": seed, "split": split}
    runs = _Runs(ds, lr, num_eval, seed, ds.val if split == "val" else ds.test, show_progress)
    distilled = None if syn.frozen is None else ~syn.frozen
    result = EvalResult(runs(lambda r: (syn.images, labels), p, p.name, distilled), info)
    if real_baseline and syn.labels.dim() == 2 and p.labels != "hard":
        result.hard = EvalResult(
            runs(lambda r: (syn.images, syn.hard_labels), p, "hard labels", distilled), {**info, "labels": "hard"}
        )
    if random_baseline:
        result.random = _random_baseline(syn, ds, p, runs, info)
    if real_baseline:
        p_real = replace(p, epochs=real_epochs, labels="auto")
        n_train = len(ds.train)
        result.real = EvalResult(
            runs(lambda r: (ds.train.images, ds.train.labels), p_real, "real train split", _all_real(p, n_train)),
            {**info, "method": "real", "epochs": real_epochs, "num_images": n_train},
        )
    return result


def _architectures(models: list, base: Protocol) -> list[tuple[str, dict[str, Any]]]:
    """``(name, model_kwargs)`` per entry of ``models`` (names or pairs); the protocol's own ``model_kwargs``
    apply to its own model only."""
    out = []
    for entry in models:
        name, kw = (entry, None) if isinstance(entry, str) else entry
        if kw is None:
            kw = base.model_kwargs if name == base.model else {}
        out.append((name, kw))
    return out


def _replay_protocol(syn: SyntheticSet, ds: Dataset, num_eval: int, seed: int, **options: Any) -> EvalResult:
    """``protocol="dd"``: :func:`fastdd.dd_protocol.evaluate_dd`; the one option is ``experts=`` (a buffer or
    its folder, for sets made from ``pretrained`` inits)."""
    experts = options.pop("experts", None)
    if options:
        raise TypeError(f"protocol 'dd' replays the learned steps on the test split; it takes no {', '.join(options)}")
    if experts is not None and not isinstance(experts, ExpertBuffer):
        experts = ExpertBuffer(experts)
    accs, info = evaluate_dd(syn, ds, num_eval, seed, experts=experts)
    return EvalResult(accs, info)


def _check_set(syn: SyntheticSet, ds: Dataset, split: str) -> None:
    """``ValueError`` when ``syn`` cannot be evaluated on ``ds``'s ``split``, naming what does not match."""
    check_lr(syn.lr, "the set's learned lr")  # a NaN rate would train every network to chance
    labels = syn.labels
    if labels.dim() == 1 and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= ds.num_classes):
        raise ValueError(
            f"the set's labels run {int(labels.min())}..{int(labels.max())}; {ds.name} has classes "
            f"0..{ds.num_classes - 1}"
        )
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    if split == "val" and ds.val is None:
        raise ValueError(
            f"split='val' needs a validation split: use ds.with_validation(fraction, seed) ({ds.name} has none)"
        )
    if syn.num_classes != ds.num_classes or tuple(syn.images.shape[1:]) != (ds.channels, *ds.im_size):
        raise ValueError(
            f"the synthetic set ({syn.num_classes} classes, images {tuple(syn.images.shape[1:])}) does not "
            f"belong to {ds.name} ({ds.num_classes} classes, images {(ds.channels, *ds.im_size)})"
        )
    for key, have in (("dataset", ds.name), ("zca", ds.zca is not None)):
        if key in syn.meta and syn.meta[key] != have:
            raise ValueError(
                f"the synthetic set was made with {key}={syn.meta[key]!r}, but the data set has "
                f"{key}={have!r}: evaluate it on the data it came from"
            )


def _training_labels(syn: SyntheticSet, p: Protocol) -> torch.Tensor:
    """The labels protocol ``p`` trains on: the set's own, or the argmax of its soft labels."""
    if p.labels not in ("auto", "hard", "soft"):
        raise ValueError(f"labels must be 'auto', 'hard' or 'soft', got {p.labels!r}")
    if p.labels == "soft" and syn.labels.dim() != 2:
        raise ValueError(
            f"protocol {p.name!r} trains on soft labels, and this set's labels are hard class indices "
            "(use protocol 'mtt')"
        )
    return syn.hard_labels if p.labels == "hard" else syn.labels


def _training_lr(syn: SyntheticSet, p: Protocol) -> float:
    """The protocol's lr: its own, the set's one learned rate (``"learned"``, or ``None`` when the set has
    one), else ``lr_default``."""
    learned = float(syn.lr.reshape(())) if syn.lr is not None and syn.lr.numel() == 1 else None
    if p.lr == "learned":
        if learned is None:
            raise ValueError("lr='learned' needs a synthetic set with one learned learning rate")
        return learned
    if p.lr is not None:
        return float(p.lr)
    return learned if learned is not None else p.lr_default


def _all_real(p: Protocol, n: int) -> torch.Tensor | None:
    """The distilled mask for real images: the combined augmentation treats every one as selected real."""
    return None if p.augment != "combined" else torch.zeros(n, dtype=torch.bool)


class _Runs:
    """``num_eval`` seeded training runs of one kind, each tested on ``held_out``; under torch.distributed
    each rank trains every world-th run and all ranks get every accuracy."""

    def __init__(self, ds: Dataset, lr: float, num_eval: int, seed: int, held_out, show_progress: bool):
        self.ds, self.lr, self.num_eval, self.seed, self.held_out = ds, lr, num_eval, seed, held_out
        self.dist = current()
        self.show_progress = show_progress and (self.dist is None or self.dist.is_main)

    def __call__(self, pick, p: Protocol, what: str, mask: torch.Tensor | None = None) -> list[float]:
        """Run ``r`` trains on ``pick(r) = (images, labels)`` under ``p``; returns the ``num_eval`` accuracies."""
        d, n = self.dist, self.num_eval
        mine = {
            r: train_on(
                *pick(r),
                self.ds,
                p,
                self.lr,
                seed=_run_seed(self.seed, r),
                distilled=mask,
                show_progress=self.show_progress,
                desc=f"eval {what} run {r + 1}/{n}",
                test_images=self.held_out.images,
                test_labels=self.held_out.labels,
            )
            for r in (range(n) if d is None else range(d.rank, n, d.world))
        }
        if d is not None:
            mine = {r: a for part in all_gather_objects(mine, d) for r, a in part.items()}
        return [mine[r] for r in range(n)]


def _random_baseline(syn: SyntheticSet, ds: Dataset, p: Protocol, runs: _Runs, info: dict[str, Any]) -> EvalResult:
    """A fresh random class-balanced real subset per run, as many per class as ``syn`` has, under ``p``."""
    counts = syn.per_class_counts()
    if len(set(counts)) != 1:
        raise ValueError(f"random_baseline needs the same number of images per class, got {counts}")

    def random_subset(r: int):
        sub = real_subset(ds, random_indices(ds, counts[0], seed=_run_seed(runs.seed, r, "random")))
        return sub.images, sub.labels

    return EvalResult(runs(random_subset, p, "random", _all_real(p, len(syn))), {**info, "method": "random"})


def _run_seed(seed: int, r: int, *keys: object) -> int:
    return derive_seed(seed, "eval.run", r, *keys)
