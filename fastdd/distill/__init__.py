"""``fastdd.distill(ds, method=...)``: every method is a thin policy on the engine (:mod:`fastdd.engine`).

Methods: ``"dd"`` (Wang et al.), ``"mtt"``, ``"selmatch"``, ``"tesla"`` (MTT with the direct-term
gradient and, with ``soft_labels="tesla"``, the target expert's soft labels), ``"datm"`` (MTT with
learnable soft labels, the start-epoch schedule and the loss gate), and the baselines ``"dc"``
(gradient matching), ``"dsa"`` (DC with siamese DSA) and ``"dm"`` (distribution matching).

Every method is a :class:`~fastdd.distill.loop.Policy` on one loop (:func:`~fastdd.distill.loop.run_loop`).
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from ..data import Dataset
from ..distributed import check_device
from ..engine import parse_bytes
from ..experts import ExpertBuffer
from ..io import check_out_folder
from ..options import check_dataclass_options
from ..synthetic import SyntheticSet
from .dd import DDConfig, run_dd
from .loop import KeepBest, run_loop
from .matching import DCConfig, DistributionMatchingPolicy, DMConfig, GradientMatchingPolicy
from .mtt import MTTConfig, run_mtt
from .presets import PRESETS, Preset, get_preset

METHODS = ("dd", "mtt", "selmatch", "tesla", "datm", "dc", "dsa", "dm")
MATCHING = {"dc": (DCConfig, {}), "dsa": (DCConfig, {"init": "real", "dsa": True}), "dm": (DMConfig, {})}
# What each MTT-family method changes from MTTConfig's defaults (a preset or the caller may override).
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mtt": {},
    "selmatch": {"init": "window", "lr_init": 0.001, "alpha": 0.5},
    "tesla": {"mode": "tesla"},
    "datm": {"init": "correct", "soft_labels": "datm", "threshold": 1.0},
}


def distill(ds: Dataset, method: str = "mtt", ipc: int | None = None, *, experts: ExpertBuffer | str | os.PathLike
            | None = None, iterations: int | None = None, seed: int = 0, preset: str | None = None,
            scores=None, out: str | os.PathLike | None = None, resume: bool = False, checkpoint_every: int = 100,
            show_progress: bool = True, theta_storage: str = "auto", memory_budget: int | str | None = None,
            device: str | torch.device | None = None, deterministic: bool = False,
            resident_experts: bool | None = None, select_every: int | None = None, select_protocol: str = "mtt",
            select_options: dict[str, Any] | None = None, **options: Any) -> SyntheticSet:
    """Distil ``ds`` into a :class:`SyntheticSet` of ``ipc`` images per class.

    Args:
        method: one of :data:`METHODS` (ignored when ``preset`` names one).
        ipc: images per class (DD: images per class per step × steps; taken from the preset if given).
        experts: an :class:`ExpertBuffer` or the folder it was saved to (MTT family; DD pretrained).
        iterations: outer iterations (default: the preset's, else 1000). For ``dc``/``dsa`` an iteration is
            one network with its ``outer_loop`` pixel updates (DC's ``Iteration``); ``checkpoint_every``
            counts the same units.
        preset: a name from :data:`PRESETS`; its data set and ZCA setting must match ``ds``.
        scores: difficulty scores ``(len(ds.train),)`` for SelMatch's window initialisation.
        out: run folder for the CSV log and atomic checkpoints every ``checkpoint_every`` iterations;
            with ``resume=True`` a run continues from its last checkpoint to the same result.
        theta_storage: where the adjoint keeps the student's parameters θ_i: ``"auto"`` (default: all of
            them when they are small against one step's activations, else ``"checkpoint"``), ``"checkpoint"``
            (every ⌈√N⌉-th), ``"all"`` or ``"host"`` (CPU memory, pinned on CUDA machines).
        memory_budget: bytes (an int, or e.g. ``"8GiB"``) ``mode="auto"`` may give a BPTT graph; default
            :data:`fastdd.engine.DEFAULT_MEMORY_BUDGET` (4 GiB). ``auto`` is resolved once per run from this
            and the shapes (never from the free memory) and recorded in ``syn.meta["gradient_mode"]``.
        device: run there (``"cpu"``, ``"cuda"``, ``"cuda:1"``): ``ds`` is moved if it is elsewhere; the
            result lives there. Default: ``ds``'s device. May differ between a run and its resume.
        deterministic: deterministic cuDNN and algorithms for the run
            (:func:`fastdd.engine.deterministic_algorithms`), previous settings restored afterwards.
        resident_experts: keep the expert trajectories in device memory (each read once); default:
            on CUDA yes, on the CPU no (where it changes nothing).
        select_every: keep the best set instead of the last: every this many iterations (and after the
            last) the current set is evaluated on ``ds.val`` (make it with :meth:`Dataset.with_validation`;
            never the test split) with ``evaluate(syn, ds, select_protocol, split="val", num_eval=1,
            **select_options)``, and the best-scoring one is returned; ``syn.meta["selection"]`` records
            which iteration it was and its score, ``out/selection.csv`` every score. Not for ``dd``.
        options: fields of :class:`MTTConfig`, :class:`DDConfig`, :class:`DCConfig` or :class:`DMConfig`
            (e.g. ``syn_steps=20``, ``mode="adjoint"``, ``batch_real=64``).

    Under torch.distributed (launched by ``torchrun``, the group started by :func:`fastdd.distributed.init`
    or by the caller) the MTT family splits the synthetic set over the ranks (``dm`` splits it by class;
    ``dd``, ``dc`` and ``dsa`` refuse): each keeps and updates its rows, the unrolled steps are all-reduced, rank 0 writes ``out`` (checkpoints hold the whole set, so
    a run resumes on any number of processes), and every rank returns the whole set, equal to one
    process's result to float round-off. ``mode="auto"`` means ``adjoint`` there; ``bptt`` is refused.

    ``theta_storage``, ``memory_budget`` and ``deterministic`` are recorded in the run's config
    (``syn.meta["config"]``, checkpoints): ``resume=True`` refuses a checkpoint made with other values.
    """
    extra: dict[str, Any] = {}
    if preset is not None:
        p = get_preset(preset)
        if p.dataset != ds.name:
            raise ValueError(f"preset {preset!r} is for {p.dataset}, not {ds.name}")
        if p.zca != (ds.zca is not None):
            raise ValueError(f"preset {preset!r} trains {'with' if p.zca else 'without'} ZCA: load the data with "
                             f"zca={p.zca}")
        method = p.method
        ipc = p.ipc if ipc is None else ipc
        iterations = p.iterations if iterations is None else iterations
        options = {**p.options, **options}
        extra["preset"] = preset
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    iterations = 1000 if iterations is None else iterations
    for name, value in (("iterations", iterations), ("ipc", ipc), ("checkpoint_every", checkpoint_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if out is not None:
        check_out_folder(out)
    if isinstance(experts, (str, os.PathLike)):
        experts = ExpertBuffer(experts)
    engine = {"theta_storage": theta_storage,
              "memory_budget": None if memory_budget is None else parse_bytes(memory_budget),
              "deterministic": bool(deterministic)}
    if device is not None:
        device = check_device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if ds.device != device:
            ds = ds.to(device)
    keep_best = None
    if select_every is not None:  # scores on the data set where the run happens
        keep_best = _keep_best(ds, method, select_every, select_protocol, select_options or {}, seed)
    if method == "dd":
        cfg = _make(DDConfig, {**options, **engine}, method)
        if ipc is not None and ipc != cfg.steps * cfg.images_per_class:
            if ipc % cfg.steps:
                raise ValueError(f"dd: ipc {ipc} is not a multiple of steps={cfg.steps}")
            cfg.images_per_class = ipc // cfg.steps
        return run_dd(ds, cfg, iterations, seed, experts, out, resume, checkpoint_every, show_progress, extra,
                      resident_experts=resident_experts)
    if ipc is None:
        raise ValueError(f"{method}: pass ipc= (images per class)")
    if method in MATCHING:
        return _run_matching(ds, method, ipc, iterations, seed, out, resume, checkpoint_every, show_progress, extra,
                             options, engine, keep_best)
    if experts is None:
        raise ValueError(f"{method} matches expert trajectories: pass experts= (a buffer or its folder); "
                         "make them with fastdd.train_experts or `fastdd experts`")
    cfg = _make(MTTConfig, {**_METHOD_DEFAULTS[method], **options, **engine}, method)
    return run_mtt(ds, ipc, experts, cfg, iterations, seed, method, scores, out, resume, checkpoint_every,
                   show_progress, extra_meta=extra, resident_experts=resident_experts, keep_best=keep_best)


def _keep_best(ds: Dataset, method: str, every: int, protocol: str, options: dict[str, Any], seed: int) -> KeepBest:
    if method == "dd":
        raise ValueError("select_every is not available for method 'dd' (its evaluation replays the learned steps "
                         "on the test split)")
    if ds.val is None:
        raise ValueError("select_every scores sets on a validation split, and this data set has none: pass "
                         "ds.with_validation(fraction, seed) (never select on the test split)")
    from ..evaluate import evaluate, resolve_protocol
    opts = {"num_eval": 1, **options}
    if protocol == "dd":
        raise ValueError("select_protocol 'dd' replays a DD set's steps on the test split; use mtt, selmatch or soft")
    own = set(inspect.signature(evaluate).parameters)  # the rest are protocol settings: checked now, not at the
    resolve_protocol(protocol, **{k: v for k, v in opts.items() if k not in own})  # first scoring hours later

    def score(syn: SyntheticSet) -> float:
        return evaluate(syn, ds, protocol, seed=seed, split="val", show_progress=False, **opts).mean

    return KeepBest(every, score, {"protocol": protocol, "options": opts, "split": "val"})


def _run_matching(ds, method, ipc, iterations, seed, out, resume, checkpoint_every, show_progress, extra, options,
                  engine, keep_best: KeepBest | None = None) -> SyntheticSet:
    from ..engine import deterministic_algorithms
    if engine["theta_storage"] != "auto" or engine["memory_budget"] is not None:
        raise TypeError(f"{method} unrolls no student training: theta_storage and memory_budget do not apply")
    cls, defaults = MATCHING[method]
    cfg = _make(cls, {**defaults, **options}, method)
    with deterministic_algorithms(engine["deterministic"]):
        if method == "dm":
            policy, per = DistributionMatchingPolicy(ds, ipc, cfg, seed, method), 1
        else:
            policy = GradientMatchingPolicy(ds, ipc, cfg, seed, method)
            per = policy.outer  # loop steps (pixel updates) per network
        done = run_loop(policy, iterations * per, out=out, resume=resume, checkpoint_every=checkpoint_every * per,
                        show_progress=show_progress, desc=f"{method} ipc={ipc}",
                        selection=None if keep_best is None else keep_best.selection(policy, per), per=per)
    return policy.result(iterations, done.skipped, {**extra, **(keep_best.meta(done, per) if keep_best else {})})


def _make(cls, options: dict[str, Any], method: str):
    """``cls(**options)`` after every key and value was checked against ``cls``'s fields (a ``TypeError``
    names the option and the type it wants)."""
    check_dataclass_options(cls, options, method)
    return cls(**options)


__all__ = ["distill", "METHODS", "MTTConfig", "DDConfig", "DCConfig", "DMConfig", "PRESETS", "Preset", "get_preset"]
