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
- ``kd`` (SRe2L / RDED, :class:`fastdd.relabel.KDProtocol`): a student (the teacher's architecture) trained by
  knowledge distillation on a teacher's region soft labels (``teacher=``), online or from a relabel store; AdamW,
  300 epochs, T = 20, RandomResizedCrop + ShufflePatches + CutMix. A random real subset relabelled by the same
  teacher under the same protocol is evaluated by default (``result.random``, ``result.ior``).

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
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, overload

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
from .relabel import KD, KDProtocol, RelabelStore, format_bytes, kd_protocol, kd_storage, kd_train_on, resolve_kd
from .rng import derive_seed, generator
from .runs import progress
from .selection import random_indices, real_subset
from .synthetic import SyntheticSet, check_lr
from .teacher import Teacher, load_teacher
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


PROTOCOLS: dict[str, Protocol | KDProtocol] = {
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
    "kd": KD,
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
        runs = f"{len(self.accuracies)} runs, protocol {self.protocol['name']}" + _kd_note(self.protocol)
        s = f"{100 * self.mean:.2f} ± {100 * self.std:.2f} % ({runs})"
        if self.hard is not None:
            s += f"; with hard labels: {100 * self.hard.mean:.2f} ± {100 * self.hard.std:.2f} %"
        ior, hlr, score = self.ior, self.hlr, self.lrs()
        if self.random is not None and ior is not None:
            s += (
                f"; random real subset: {100 * self.random.mean:.2f} ± {100 * self.random.std:.2f} % "
                f"(IOR {100 * ior:+.2f})"
            )
        if self.real is not None and hlr is not None:
            s += f"; real train split: {100 * self.real.mean:.2f} % (HLR {100 * hlr:.2f})"
        if score is not None:
            s += f"; LRS {100 * score:.2f}"
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


def _kd_note(info: dict[str, Any]) -> str:
    """``": teacher convnet (91.20 %), T 20, online labels (1.2 MB of logits for 2.6 kB of images)"`` for the
    ``kd`` protocol's record, ``""`` for the others."""
    if "teacher" not in info or "label_bytes" not in info:
        return ""
    t = info["teacher"]
    acc = f" ({100 * t['accuracy']:.2f} %)" if isinstance(t.get("accuracy"), float) else ""
    return (
        f": teacher {t.get('model')}{acc}, T {info.get('temperature'):g}, {info.get('label_mode')} labels "
        f"({format_bytes(info['label_bytes'])} of logits for {format_bytes(info['image_bytes'])} of images)"
    )


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


@overload
def resolve_protocol(protocol: Literal["kd"] | KDProtocol, **overrides: Any) -> KDProtocol: ...


@overload
def resolve_protocol(protocol: str | Protocol, **overrides: Any) -> Protocol: ...


def resolve_protocol(protocol: str | Protocol | KDProtocol, **overrides: Any) -> Protocol | KDProtocol:
    """The named preset (or ``protocol`` itself) with ``overrides`` (its fields, checked; ``None`` values
    ignored) applied and checked. ``"kd"`` gives a :class:`~fastdd.relabel.KDProtocol`, the rest a
    :class:`Protocol`."""
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    if isinstance(protocol, KDProtocol):
        return kd_protocol(protocol, **overrides)
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
    protocol: str | Protocol | KDProtocol = "mtt",
    num_eval: int = 5,
    seed: int = 0,
    *,
    random_baseline: bool | None = None,
    real_baseline: bool = False,
    real_epochs: int = 20,
    split: str = "test",
    models: list | None = None,
    show_progress: bool = True,
    teacher: Teacher | str | os.PathLike | None = None,
    store: RelabelStore | str | os.PathLike | None = None,
    **overrides: Any,
) -> EvalResult | CrossArchResult:
    """Train ``num_eval`` fresh networks on ``syn`` under ``protocol`` and test them on ``ds.test``.

    Args:
        syn: the set to evaluate (distilled, selected or real).
        ds: the data set it came from (its test split is used; its train split only for the baselines).
        protocol: ``"mtt"``, ``"selmatch"``, ``"soft"``, a :class:`Protocol`, ``"dd"`` (a DD set: replay
            its learned steps with its learned rates on held-out start weights), or ``"kd"`` / a
            :class:`~fastdd.relabel.KDProtocol` (knowledge distillation from ``teacher``).
        num_eval: independent runs (network init, batch order, augmentation all seeded per run).
        random_baseline: also evaluate, under the same protocol and lr, a random class-balanced real
            subset with the same per-class counts (a fresh subset per run); ``result.random``, ``result.ior``.
            ``None`` (the default): on for ``kd`` (the subset relabelled by the same teacher), off otherwise.
        real_baseline: also train on the whole real train split with hard labels, the same protocol
            but ``real_epochs`` epochs; ``result.real``, ``result.hlr`` and ``result.lrs()``. A soft-label
            set is then also evaluated on its hard (argmax) labels (``result.hard``), as HLR asks.
        split: ``"test"`` (default) or ``"val"`` (``ds.val``, from :meth:`Dataset.with_validation`): score
            choices on the validation split, report on test.
        models: evaluate on each of these architectures (names, or ``(name, model_kwargs)`` pairs) and
            return a :class:`CrossArchResult`; the protocol's ``model_kwargs`` apply to its own model only.
        teacher: ``kd`` only, and required there: a :class:`~fastdd.teacher.Teacher` or its folder, checked
            against ``ds`` (data set, classes and their order).
        store: ``kd`` only: a :class:`~fastdd.relabel.RelabelStore` (or its folder) of ``syn``'s images made by
            that teacher with this protocol's settings (:func:`fastdd.relabel.relabel_set`); implies
            ``label_mode="stored"``. Every run replays it; the random baseline is relabelled per run.
        overrides: any :class:`Protocol` (or :class:`~fastdd.relabel.KDProtocol`) field, e.g. ``epochs=300``,
            ``lr=0.01``, ``model="convnetbn"``.

    Returns an :class:`EvalResult` (``mean``, ``std``, ``accuracies``, ``random``, ``ior``, ...).
    """
    if num_eval < 1:
        raise ValueError(f"num_eval must be >= 1, got {num_eval}")
    if real_epochs < 1:
        raise ValueError(f"real_epochs must be >= 1, got {real_epochs}")
    _check_set(syn, ds, split)
    is_kd = protocol == "kd" or isinstance(protocol, KDProtocol)
    if not is_kd and (teacher is not None or store is not None):
        what = "teacher=" if teacher is not None else "store="
        raise TypeError(f"{what} is for protocol 'kd' (knowledge distillation from a teacher), not {_name(protocol)!r}")
    if random_baseline is None:
        random_baseline = is_kd
    if is_kd:
        kd = resolve_protocol(protocol if isinstance(protocol, KDProtocol) else "kd", **overrides)
        kw: dict[str, Any] = dict(num_eval=num_eval, seed=seed, random_baseline=random_baseline)
        kw.update(real_baseline=real_baseline, split=split, show_progress=show_progress, teacher=teacher, store=store)
        if models is not None:
            return CrossArchResult(
                {
                    name: _evaluate_kd(syn, ds, replace(kd, model=name, model_kwargs=dict(mk)), **kw)
                    for name, mk in _architectures(models, kd)
                }
            )
        return _evaluate_kd(syn, ds, kd, **kw)
    assert not isinstance(protocol, KDProtocol)  # handled above
    if models is not None:
        if protocol == "dd":
            raise ValueError("protocol 'dd' replays the set's own network; it cannot change architectures")
        base = resolve_protocol(protocol, **overrides)
        common: dict[str, Any] = dict(num_eval=num_eval, seed=seed, random_baseline=random_baseline)
        common.update(real_baseline=real_baseline, real_epochs=real_epochs, split=split, show_progress=show_progress)
        results = {}
        for name, mk in _architectures(models, base):
            one = evaluate(syn, ds, replace(base, model=name, model_kwargs=dict(mk)), **common)
            assert isinstance(one, EvalResult)  # one architecture each
            results[name] = one
        return CrossArchResult(results)
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


def _name(protocol: str | Protocol | KDProtocol) -> str:
    return protocol if isinstance(protocol, str) else protocol.name


def _evaluate_kd(
    syn: SyntheticSet,
    ds: Dataset,
    p: KDProtocol,
    *,
    num_eval: int,
    seed: int,
    random_baseline: bool,
    real_baseline: bool,
    split: str,
    show_progress: bool,
    teacher: Teacher | str | os.PathLike | None,
    store: RelabelStore | str | os.PathLike | None,
) -> EvalResult:
    """``protocol="kd"``: ``num_eval`` students of ``p`` (resolved for ``syn`` with the teacher) and, by default,
    as many on random real subsets of the same per-class size relabelled by the same teacher."""
    if teacher is None:
        raise ValueError(
            "protocol 'kd' trains on a teacher's soft labels: pass teacher= (a fastdd.Teacher or its folder, e.g. "
            "made by fastdd.train_teacher(ds, out=...))"
        )
    if real_baseline:
        raise ValueError(
            "protocol 'kd' takes no real_baseline: HLR compares hard labels with hard labels; evaluate the set "
            "under 'mtt' with real_baseline=True for it"
        )
    t = load_teacher(teacher, ds, "kd teacher")
    if store is not None:
        store = store if isinstance(store, RelabelStore) else RelabelStore.load(store)
        p = replace(p, label_mode="stored")
    q = resolve_kd(p, syn, ds, t)
    if store is not None:
        images = syn.images.to(ds.device)
        store.check(images, t, augment=q.augment(), batch_size=q.batch_size, dtype=q.label_dtype, epochs=q.epochs)
    info: dict[str, Any] = {
        **asdict(q),
        "ipc": syn.ipc,
        "num_images": len(syn),
        "seed": seed,
        "split": split,
        "teacher": {
            "model": t.net.name,
            "model_kwargs": {k: v for k, v in t.net.spec.items() if k not in ("in_channels", "num_classes", "im_size")},
            "accuracy": t.meta.get("accuracy"),
            "dataset": t.meta.get("dataset"),
            "source": t.meta.get("source"),
        },
        **kd_storage(q, syn, ds.num_classes),
    }
    if isinstance(store, RelabelStore):
        info.update(store_bytes=store.store_bytes, store=str(store.folder) if store.folder is not None else "memory")
    held_out = ds.val if split == "val" else ds.test

    def trainer(given: RelabelStore | None):
        def train_one(images, labels, ds_, p_, lr, *, seed, distilled, show_progress, desc, test_images, test_labels):
            return kd_train_on(
                images,
                ds_,
                p_,
                t,
                seed,
                store=given,
                show_progress=show_progress,
                desc=desc,
                test_images=test_images,
                test_labels=test_labels,
            )

        return train_one

    own = _Runs(ds, q.lr, num_eval, seed, held_out, show_progress, trainer(store))
    result = EvalResult(own(lambda r: (syn.images, syn.hard_labels), q, "kd"), info)
    if random_baseline:
        fresh = _Runs(ds, q.lr, num_eval, seed, held_out, show_progress, trainer(None))
        kept = {k: v for k, v in info.items() if k not in ("store", "store_bytes")}  # the subsets are relabelled
        result.random = _random_baseline(syn, ds, q, fresh, kept)
    return result


def _architectures(models: list, base: Protocol | KDProtocol) -> list[tuple[str, dict[str, Any]]]:
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


def _all_real(p: Protocol | KDProtocol, n: int) -> torch.Tensor | None:
    """The distilled mask for real images: the combined augmentation treats every one as selected real."""
    return None if not isinstance(p, Protocol) or p.augment != "combined" else torch.zeros(n, dtype=torch.bool)


class _Runs:
    """``num_eval`` seeded training runs of one kind, each tested on ``held_out``; under torch.distributed
    each rank trains every world-th run and all ranks get every accuracy."""

    def __init__(
        self,
        ds: Dataset,
        lr: float,
        num_eval: int,
        seed: int,
        held_out,
        show_progress: bool,
        train_one: Callable[..., float] | None = None,
    ):
        self.ds, self.lr, self.num_eval, self.seed, self.held_out = ds, lr, num_eval, seed, held_out
        self.train_one: Callable[..., float] = train_on if train_one is None else train_one  # kd passes its own
        self.dist = current()
        self.show_progress = show_progress and (self.dist is None or self.dist.is_main)

    def __call__(self, pick, p: Protocol | KDProtocol, what: str, mask: torch.Tensor | None = None) -> list[float]:
        """Run ``r`` trains on ``pick(r) = (images, labels)`` under ``p``; returns the ``num_eval`` accuracies."""
        d, n = self.dist, self.num_eval
        mine = {
            r: self.train_one(
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


def _random_baseline(
    syn: SyntheticSet, ds: Dataset, p: Protocol | KDProtocol, runs: _Runs, info: dict[str, Any]
) -> EvalResult:
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
