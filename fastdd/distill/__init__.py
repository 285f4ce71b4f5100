"""``fastdd.distill(ds, method=...)``: every method is a thin policy on the engine (:mod:`fastdd.engine`).

Methods: ``"dd"`` (Wang et al.), ``"mtt"``, ``"selmatch"``, ``"tesla"`` (MTT with the direct-term
gradient and, with ``soft_labels="tesla"``, the target expert's soft labels), ``"datm"`` (MTT with
learnable soft labels, the start-epoch schedule and the loss gate).
"""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from ..data import Dataset
from ..experts import ExpertBuffer
from ..synthetic import SyntheticSet
from .dd import DDConfig, run_dd
from .mtt import MTTConfig, run_mtt
from .presets import PRESETS, Preset, get_preset

METHODS = ("dd", "mtt", "selmatch", "tesla", "datm")
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
            show_progress: bool = True, **options: Any) -> SyntheticSet:
    """Distil ``ds`` into a :class:`SyntheticSet` of ``ipc`` images per class.

    Args:
        method: one of :data:`METHODS` (ignored when ``preset`` names one).
        ipc: images per class (DD: images per class per step × steps; taken from the preset if given).
        experts: an :class:`ExpertBuffer` or the folder it was saved to (MTT family; DD pretrained).
        iterations: outer iterations (default: the preset's, else 1000).
        preset: a name from :data:`PRESETS`; its data set and ZCA setting must match ``ds``.
        scores: difficulty scores ``(len(ds.train),)`` for SelMatch's window initialisation.
        out: run folder for the CSV log and atomic checkpoints every ``checkpoint_every`` iterations;
            with ``resume=True`` a run continues from its last checkpoint to the same result.
        options: fields of :class:`MTTConfig` or :class:`DDConfig` (e.g. ``syn_steps=20``, ``mode="adjoint"``).
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
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if isinstance(experts, (str, os.PathLike)):
        experts = ExpertBuffer(experts)
    if method == "dd":
        cfg = _make(DDConfig, options, method)
        if ipc is not None and ipc != cfg.steps * cfg.images_per_class:
            if ipc % cfg.steps:
                raise ValueError(f"dd: ipc {ipc} is not a multiple of steps={cfg.steps}")
            cfg.images_per_class = ipc // cfg.steps
        return run_dd(ds, cfg, iterations, seed, experts, out, resume, checkpoint_every, show_progress, extra)
    if ipc is None:
        raise ValueError(f"{method}: pass ipc= (images per class)")
    if experts is None:
        raise ValueError(f"{method} matches expert trajectories: pass experts= (a buffer or its folder); "
                         "make them with fastdd.train_experts or `fastdd experts`")
    cfg = _make(MTTConfig, {**_METHOD_DEFAULTS[method], **options}, method)
    return run_mtt(ds, ipc, experts, cfg, iterations, seed, method, scores, out, resume, checkpoint_every,
                   show_progress, extra_meta=extra)


def _make(cls, options: dict[str, Any], method: str):
    names = {f.name for f in fields(cls)}
    bad = sorted(set(options) - names)
    if bad:
        raise TypeError(f"{method} has no option(s) {', '.join(bad)}; its options: {', '.join(sorted(names))}")
    return cls(**options)


__all__ = ["distill", "METHODS", "MTTConfig", "DDConfig", "PRESETS", "Preset", "get_preset"]
