"""SelMatch's search over the window start β: evaluate the window selection at every β of a grid.

For one IPC, :func:`sweep_window` selects the window ``[int(ipc·β), int(ipc·β) + ipc)`` of every class,
ranked hardest first by a difficulty score (:func:`fastdd.window_indices`), at each β of a grid, and
evaluates each selection under one protocol (:func:`fastdd.evaluate`); the test accuracy is reported per β.

The best β is chosen on the data set's validation split when it has one
(:meth:`fastdd.Dataset.with_validation`), so that nothing is selected on the test split. Without one, it is
the β with the best test accuracy, as SelMatch's own scripts choose it, and the result says so
(``best_beta_on == "test"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .data import Dataset
from .distributed import is_main
from .evaluation import EvalResult, Protocol, evaluate
from .io import atomic_write_json, check_out_folder
from .plots import save_curves
from .runs import RunDir, progress
from .scores import as_scores
from .selection import beta_grid, check_ipc, real_subset, window_indices
from .synthetic import SyntheticSet

#: ``on_result(beta, test_result, val_result)``: called after each β (``val_result`` is ``None`` without a
#: validation split).
OnResult = Callable[[float, EvalResult, EvalResult | None], None]


@dataclass
class WindowSweep:
    """The result of :func:`sweep_window`.

    Attributes:
        ipc: images per class (each window's length).
        betas: the grid, in evaluation order; the window of β starts at rank ``int(ipc * β)`` of each class.
        results: per β, the :class:`~fastdd.EvalResult` on the test split (accuracies are fractions in [0, 1]).
        best_beta: the β whose mean accuracy on the ``best_beta_on`` split is highest (the first one on ties).
        best_beta_on: ``"val"`` (the data set's validation split) or ``"test"`` (it had none).
        val_results: per β, the :class:`~fastdd.EvalResult` on the validation split; ``None`` without one.
        scores: the score file the ranking came from (``None`` for scores computed or given as a tensor).
        hardest: which end of the scores is hard, ``"low"`` or ``"high"``.
    """

    ipc: int
    betas: list[float]
    results: list[EvalResult]
    best_beta: float
    best_beta_on: str
    val_results: list[EvalResult] | None = None
    scores: str | None = None
    hardest: str = "low"

    @property
    def best(self) -> EvalResult:
        """The test-split result at ``best_beta``."""
        return self.results[self.betas.index(self.best_beta)]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``sweep.json``: the settings, the best β, the split that chose it, and one row per β
        (``beta``, ``start_rank``, the test result's ``mean`` / ``std`` / ``accuracies`` / ``protocol`` and,
        with a validation split, its result under ``val``)."""
        rows = []
        for i, (beta, res) in enumerate(zip(self.betas, self.results)):
            row = {"beta": beta, "start_rank": int(self.ipc * beta), **res.to_dict()}
            if self.val_results is not None:
                row["val"] = self.val_results[i].to_dict()
            rows.append(row)
        return {
            "ipc": self.ipc,
            "scores": self.scores,
            "hardest": self.hardest,
            "best_beta": self.best_beta,
            "best_beta_on": self.best_beta_on,
            "results": rows,
        }


def window_betas(
    ds: Dataset, ipc: int, betas: Sequence[float] | None = None, step: float = 0.1, beta_max: float | None = None
) -> list[float]:
    """The grid :func:`sweep_window` evaluates: ``betas`` as given, else ``0, step, 2·step, ...`` up to the
    largest β whose window fits in the smallest class of ``ds.train`` (and ``<= beta_max``;
    :func:`fastdd.selection.beta_grid`)."""
    if betas is None:
        return beta_grid(min(ds.class_counts()), ipc, step, beta_max)
    if len(betas) == 0:
        raise ValueError("betas is empty: give at least one beta, or None for the default grid")
    return [float(b) for b in betas]


def sweep_window(
    ds: Dataset,
    ipc: int,
    scores: Any,
    betas: Sequence[float] | None = None,
    *,
    hardest: str | None = None,
    beta_step: float = 0.1,
    beta_max: float | None = None,
    protocol: str | Protocol = "mtt",
    num_eval: int = 5,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    run_config: dict[str, Any] | None = None,
    show_progress: bool = True,
    on_result: OnResult | None = None,
    **overrides: Any,
) -> WindowSweep:
    """Evaluate SelMatch's window selection of ``ipc`` images per class at every β of a grid.

    Args:
        ds: the data set; windows are taken from ``ds.train``. With a validation split
            (:meth:`~fastdd.Dataset.with_validation`) every β is also scored on it (the same seeded networks
            trained again, so each β costs two evaluations) and the best β is chosen there.
        ipc: images per class.
        scores: a difficulty score per example of ``ds.train``: a :class:`fastdd.scores.Scores`
            (:func:`fastdd.load_scores`, :func:`fastdd.forgetting_scores`) or an ``(N,)`` tensor / array.
        betas: the window starts, in multiples of ``ipc``; ``None``: ``0, beta_step, ...`` up to the largest
            β whose window fits in the smallest class, capped at ``beta_max`` (:func:`window_betas`).
        hardest: ``"low"`` / ``"high"`` for plain arrays (default ``"low"``); a :class:`Scores` keeps its own.
        protocol, num_eval, seed: as :func:`fastdd.evaluate` (every β is evaluated with the same seeds).
        out: a run folder for ``sweep.csv`` (``beta, mean, std`` and, with a validation split, ``val_mean,
            val_std``; a row per β as soon as it is measured), ``sweep.json`` (:meth:`WindowSweep.to_dict`) and
            ``sweep.png`` (accuracy in % against β); ``None`` writes nothing.
        run_config: with ``out``, written to ``out/config.yaml``.
        show_progress: a progress bar over the β grid (on stderr).
        on_result: called as ``on_result(beta, test_result, val_result)`` after each β.
        overrides: :class:`~fastdd.Protocol` fields for :func:`fastdd.evaluate`, e.g. ``epochs=300``,
            ``model="convnet"``, ``model_kwargs={"width": 32}``; ``None`` values are ignored.

    Every window is checked against the class sizes before anything is trained or written. Returns a
    :class:`WindowSweep`.
    """
    check_ipc(ds, ipc)
    s = as_scores(scores, hardest=hardest, n=len(ds.train), what="scores")
    grid = window_betas(ds, ipc, betas, beta_step, beta_max)
    windows = [window_indices(ds.train.labels, s, ipc, beta) for beta in grid]
    if out is not None:
        check_out_folder(out)
    files = _SweepFiles(out, run_config, ds.val is not None) if out is not None and is_main() else None
    tests: list[EvalResult] = []
    vals: list[EvalResult] | None = None if ds.val is None else []
    try:
        bar = progress(grid, desc="beta sweep", disable=not show_progress)
        for beta, idx in zip(bar, windows):
            syn = real_subset(ds, idx, method="window", ipc=ipc, beta=beta)
            test = _evaluate(syn, ds, protocol, num_eval, seed, "test", overrides)
            tests.append(test)
            val = None
            if vals is not None:
                val = _evaluate(syn, ds, protocol, num_eval, seed, "val", overrides)
                vals.append(val)
            if files is not None:
                files.row(beta, test, val)
            bar.set_postfix(beta=beta, acc=f"{100 * test.mean:.2f}%")
            if on_result is not None:
                on_result(beta, test, val)
    finally:
        if files is not None:
            files.log.close()
    chosen = tests if vals is None else vals
    best = max(range(len(grid)), key=lambda i: chosen[i].mean)
    sweep = WindowSweep(ipc, grid, tests, grid[best], "test" if vals is None else "val", vals, s.source, s.hardest)
    if files is not None:
        files.finish(sweep, f"window selection on {ds.name}, protocol {getattr(protocol, 'name', protocol)}")
    return sweep


def _evaluate(
    syn: SyntheticSet,
    ds: Dataset,
    protocol: str | Protocol,
    num_eval: int,
    seed: int,
    split: str,
    overrides: dict[str, Any],
) -> EvalResult:
    """One β's evaluation on ``split`` (without a progress bar: the sweep has its own)."""
    res = evaluate(syn, ds, protocol, num_eval=num_eval, seed=seed, split=split, show_progress=False, **overrides)
    return cast(EvalResult, res)  # one architecture: evaluate returns a CrossArchResult only for models=[...]


class _SweepFiles:
    """The sweep's run folder: ``sweep.csv`` row by row (an interrupted sweep keeps what it measured), then
    ``sweep.json`` and ``sweep.png``."""

    def __init__(self, out: str | os.PathLike, run_config: dict[str, Any] | None, with_val: bool):
        self.run = RunDir(out, run_config)
        self.log = self.run.csv("sweep.csv", ["beta", "mean", "std"] + (["val_mean", "val_std"] if with_val else []))

    def row(self, beta: float, test: EvalResult, val: EvalResult | None) -> None:
        extra = {} if val is None else {"val_mean": val.mean, "val_std": val.std}
        self.log.log(beta=beta, mean=test.mean, std=test.std, **extra)

    def finish(self, sweep: WindowSweep, title: str) -> None:
        atomic_write_json(self.run / "sweep.json", sweep.to_dict())
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {
            f"ipc {sweep.ipc}": (sweep.betas, [100 * r.mean for r in sweep.results])
        }
        if sweep.val_results is not None:
            series[f"ipc {sweep.ipc} (validation)"] = (sweep.betas, [100 * r.mean for r in sweep.val_results])
        save_curves(
            self.run / "sweep.png",
            series,
            xlabel="beta (window start / ipc)",
            ylabel="test accuracy (%)" if sweep.val_results is None else "accuracy (%)",
            title=title,
        )


__all__ = ["sweep_window", "window_betas", "WindowSweep"]
