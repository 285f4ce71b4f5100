"""``fastdd.distill(ds, method=...)``: every method is a policy on one loop, registered once.

fastdd's own methods: ``"dd"`` (Wang et al.), ``"mtt"``, ``"selmatch"``, ``"tesla"`` (MTT with the direct-term
gradient and, with ``soft_labels="tesla"``, the target expert's soft labels), ``"datm"`` (MTT with
learnable soft labels, the start-epoch schedule and the loss gate), and the baselines ``"dc"``
(gradient matching), ``"dsa"`` (DC with siamese DSA) and ``"dm"`` (distribution matching). Others join
with :func:`~fastdd.distillation.registry.register_method` (``fastdd.register_method``); :func:`methods` lists
them all.

Every method is a :class:`~fastdd.distillation.loop.Policy` on one loop (:func:`~fastdd.distillation.loop.run_loop`),
run by one runner (:func:`~fastdd.distillation.registry.run_method`).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from ..data import Dataset
from ..distributed import check_device
from ..engine import EngineConfig, parse_bytes
from ..evaluation import EvalResult, evaluate, resolve_protocol
from ..experts import ExpertBuffer
from ..io import check_out_folder
from ..synthetic import SyntheticSet
from ..teacher import Teacher, load_teacher
from ..tracking import Tracker
from . import rded as rded  # registers "rded"
from .dd import DDConfig
from .loop import KeepBest
from .matching import DCConfig, DMConfig
from .mtt import MTTConfig
from .ncfm import NCFMConfig as NCFMConfig  # registers "ncfm"
from .pad import PADConfig as PADConfig  # registers "pad"
from .presets import PRESETS, Preset, check_preset_experts, get_preset
from .registry import (
    RUN_KEYWORDS,
    MethodSpec,
    RunConfig,
    SelectConfig,
    Setup,
    engine_from_keywords,
    get_method,
    make_config,
    methods,
    register_method,
    run_method,
)
from .sre2l import SRe2LConfig as SRe2LConfig  # registers "sre2l"


def distill(
    ds: Dataset,
    method: str = "mtt",
    ipc: int | None = None,
    *,
    experts: ExpertBuffer | str | os.PathLike | None = None,
    iterations: int | None = None,
    preset: str | None = None,
    scores=None,
    engine: EngineConfig | None = None,
    run: RunConfig | None = None,
    teacher: Teacher | str | os.PathLike | None = None,
    **options: Any,
) -> SyntheticSet:
    """Distil ``ds`` into a :class:`SyntheticSet` of ``ipc`` images per class.

    Args:
        method: a registered method, :func:`methods` (ignored when ``preset`` names one).
        ipc: images per class (DD: images per class per step × steps; taken from the preset if given).
        experts: an :class:`ExpertBuffer` or the folder it was saved to (MTT family; DD pretrained).
        iterations: outer iterations (default: the preset's, else 1000). For ``dc``/``dsa`` an iteration is
            one network with its ``outer_loop`` pixel updates (DC's ``Iteration``); ``checkpoint_every``
            counts the same units.
        preset: a name from :data:`PRESETS`; its data set and ZCA setting must match ``ds``.
        scores: difficulty scores ``(len(ds.train),)`` for SelMatch's window initialisation.
        teacher: a :class:`~fastdd.teacher.Teacher` or its folder (:func:`fastdd.train_teacher`) for the methods
            that distil against one (``sre2l``, ``rded``); checked against ``ds`` (data set, class order).
        engine: the engine's options (:class:`~fastdd.engine.EngineConfig`: ``mode``, ``theta_storage``,
            ``memory_budget`` (bytes, or e.g. ``"8GiB"``), ``deterministic``); also accepted as keywords.
        run: how the run is carried out (:class:`~fastdd.distillation.registry.RunConfig`: ``out``, ``resume``,
            ``checkpoint_every``, ``show_progress``, ``device``, ``seed``, ``resident_experts``, ``select``);
            also accepted as keywords, ``select`` as ``select_every``, ``select_protocol`` and
            ``select_options``: every ``select_every`` iterations the set is scored on ``ds.val`` (from
            :meth:`Dataset.with_validation`, never the test split) and the best one is returned
            (``syn.meta["selection"]``; not for ``dd``). ``loggers`` (``["tensorboard"]``, ``"wandb"``, ``"csv"``
            or :class:`fastdd.tracking.Logger` objects) and ``log_images_every``: experiment tracking into
            ``out`` (docs/tracking.md); a missing extra fails here, before anything runs.
        options: fields of the method's config dataclass (:class:`MTTConfig`, :class:`DDConfig`,
            :class:`DCConfig`, :class:`DMConfig`, or a registered method's), e.g. ``syn_steps=20``,
            ``batch_real=64``; checked against its fields and types.

    Under torch.distributed (launched by ``torchrun``, the group started by :func:`fastdd.distributed.init`
    or by the caller) the MTT family splits the synthetic set over the ranks (``dm`` splits it by class;
    ``dd``, ``dc`` and ``dsa`` refuse): each keeps and updates its rows, the unrolled steps are all-reduced,
    rank 0 writes ``out`` (checkpoints hold the whole set, so a run resumes on any number of processes), and
    every rank returns the whole set, equal to one process's result to float round-off. ``mode="auto"``
    means ``adjoint`` there; ``bptt`` is refused.

    ``theta_storage``, ``memory_budget`` and ``deterministic`` are recorded in the run's config
    (``syn.meta["config"]``, checkpoints): ``resume=True`` refuses a checkpoint made with other values.
    """
    run = _run_config(run, options)
    extra: dict[str, Any] = {}
    if preset is not None:
        method, ipc, iterations, options = _apply_preset(preset, ds, ipc, iterations, options)
        extra["preset"] = preset
    spec = get_method(method)
    if not spec.takes_iterations and iterations is not None:
        raise ValueError(f"{method} sets its own number of iterations: do not pass iterations={iterations!r}")
    iterations = 1000 if iterations is None else iterations
    for name, value in (("iterations", iterations), ("ipc", ipc), ("checkpoint_every", run.checkpoint_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    every = run.log_images_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ValueError(f"log_images_every must be an integer >= 0 (0: no pictures), got {every!r}")
    Tracker(run.loggers).check(run.out)  # unknown names, missing extras, no folder: now, not after the setup
    if ipc is None and spec.needs_ipc:
        raise ValueError(f"{method}: pass ipc= (images per class)")
    if isinstance(options.get("memory_budget"), str):
        options["memory_budget"] = parse_bytes(options["memory_budget"])
    engine, explicit = engine_from_keywords(options, engine)
    cfg = make_config(spec, options, engine, explicit)
    if run.out is not None:
        check_out_folder(run.out)
    if isinstance(experts, (str, os.PathLike)):
        experts = ExpertBuffer(experts)
    if spec.needs_experts and experts is None:
        raise ValueError(
            f"{method} matches expert trajectories: pass experts= (a buffer or its folder); "
            "make them with fastdd.train_experts or `fastdd experts`"
        )
    if preset is not None and experts is not None:
        check_preset_experts(get_preset(preset), experts)  # e.g. ftd-* on experts trained without SAM: a warning
    if spec.needs_teacher and teacher is None:
        raise ValueError(
            f"{method} distils against a trained network: pass teacher= (a Teacher or its folder); "
            "make one with fastdd.train_teacher or `fastdd teacher`"
        )
    if run.device is not None:
        ds = _on_device(ds, run.device)
    if teacher is not None:
        teacher = load_teacher(teacher, ds)
    keep_best = None
    if run.select is not None:  # scores on the data set where the run happens
        keep_best = _keep_best(ds, spec, run.select, run.seed)
    setup = Setup(ds, ipc, cfg, run.seed, method, iterations, experts, scores, run.resident_experts, teacher)
    return run_method(spec, setup, run, engine.deterministic, keep_best, extra)


def _apply_preset(
    name: str, ds: Dataset, ipc: int | None, iterations: int | None, options: dict[str, Any]
) -> tuple[str, int | None, int | None, dict[str, Any]]:
    """The preset's method, ipc, iterations and options, with the caller's given ones on top; ``ValueError``
    when the preset is for another data set or ZCA setting."""
    p = get_preset(name)
    if p.dataset != ds.name:
        raise ValueError(f"preset {name!r} is for {p.dataset}, not {ds.name}")
    if p.zca != (ds.zca is not None):
        raise ValueError(f"preset {name!r} trains {'with' if p.zca else 'without'} ZCA: load the data with zca={p.zca}")
    return (
        p.method,
        p.ipc if ipc is None else ipc,
        p.iterations if iterations is None else iterations,
        {**p.options, **options},
    )


def _on_device(ds: Dataset, device: str | torch.device) -> Dataset:
    """``ds`` on ``device`` (checked; ``"cuda"`` means the current CUDA device), moved only when elsewhere."""
    dev = check_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return ds if ds.device == dev else ds.to(dev)


def _run_config(run: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    """``run`` with the run keywords popped from ``options`` (``out=``, ``seed=``, ``select_every=``, ...)."""
    given = {k: options.pop(k) for k in list(options) if k in RUN_KEYWORDS}
    base = {**vars(run)} if run is not None else {}
    every = given.pop("select_every", None)
    protocol, sel_options = given.pop("select_protocol", "mtt"), given.pop("select_options", None)
    if every is not None:
        base["select"] = SelectConfig(every, protocol, dict(sel_options or {}))
    return RunConfig(**{**base, **given})


def _keep_best(ds: Dataset, spec: MethodSpec, select: SelectConfig, seed: int) -> KeepBest:
    if not spec.selection:
        raise ValueError(
            f"select_every is not available for method {spec.name!r} (it cannot be scored on a validation split)"
        )
    if ds.val is None:
        raise ValueError(
            "select_every scores sets on a validation split, and this data set has none: pass "
            "ds.with_validation(fraction, seed) (never select on the test split)"
        )
    protocol, opts = select.protocol, {"num_eval": 1, **select.options}
    if protocol == "dd":
        raise ValueError("select_protocol 'dd' replays a DD set's steps on the test split; use mtt, selmatch or soft")
    own = set(inspect.signature(evaluate).parameters)  # the rest are protocol settings: checked now, not at the
    resolve_protocol(protocol, **{k: v for k, v in opts.items() if k not in own})  # first scoring hours later

    def score(syn: SyntheticSet) -> float:
        res = evaluate(syn, ds, protocol, seed=seed, split="val", show_progress=False, **opts)
        assert isinstance(res, EvalResult)  # one architecture
        return res.mean

    return KeepBest(select.every, score, {"protocol": protocol, "options": opts, "split": "val"})


def __getattr__(name: str):
    if name == "METHODS":  # the registered names, as a tuple (kept for code written before the registry)
        return tuple(methods())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "distill",
    "methods",
    "register_method",
    "MethodSpec",
    "Setup",
    "RunConfig",
    "SelectConfig",
    "EngineConfig",
    "MTTConfig",
    "DDConfig",
    "DCConfig",
    "DMConfig",
    "PRESETS",
    "Preset",
    "get_preset",
]
