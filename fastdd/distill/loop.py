"""The one distillation loop. Every method is a :class:`Policy` on it.

The loop owns what every method needs around its iterations: the run folder, checkpoint and resume
(:mod:`fastdd.distill.state`), the CSV log, the progress bar, and the guard that skips (and reports)
an iteration whose loss or gradients are not finite or whose loss is above the policy's threshold.
A policy says what one iteration computes (:meth:`Policy.step`) and how it updates its tensors
(:meth:`Policy.apply`); its tensors, optimisers and random generators are what checkpoints hold.

One iteration reads one small tensor back to the host (:func:`read_back`): the loss and whether
everything is finite.

With a :class:`Selection`, the loop also scores the current set every ``every`` iterations (on a
validation split, never the test split: :func:`fastdd.distill` builds the scorer) and returns the best
scoring set instead of the last; the best tensors and score are part of every checkpoint, so a resumed
run selects exactly what an uninterrupted one does.

Faults: SIGTERM or Ctrl-C (SIGINT) lets the current iteration finish, writes a checkpoint and raises
:class:`~fastdd.errors.RunInterrupted` (a second signal stops at once); a checkpoint that cannot be
written (full disk, vanished folder) is reported and the previous one stays as it was.

Under torch.distributed (a policy with a :class:`~fastdd.distributed.Shard`), every rank runs the
loop on its rows; the per-iteration read-back is one all-reduce (so every rank skips, or stops, at
the same iteration), checkpoints gather the rows and rank 0 alone writes the run folder.
"""
from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..distributed import Dist, Shard, all_reduce_
from ..errors import CheckpointWarning, RunInterrupted
from ..runs import RunDir, progress
from .state import load_checkpoint, save_checkpoint


@dataclass
class Step:
    """What one iteration computed, before any update.

    ``loss`` is 0-d; ``grads`` are checked finite before :meth:`Policy.apply` runs; ``info`` holds log
    fields known before the update (e.g. which expert); ``payload`` is whatever ``apply`` needs."""

    loss: torch.Tensor
    grads: tuple[torch.Tensor, ...]
    info: dict[str, Any] = field(default_factory=dict)
    payload: Any = None


class Policy:
    """One method on the distillation loop. Subclasses set the attributes in ``__init__`` and
    implement :meth:`step`, :meth:`apply` and :meth:`result`."""

    method: str                                  # e.g. "mtt"; names the progress bar and messages
    config: Any                                  # a dataclass; recorded in checkpoints (resume checks it)
    tensors: dict[str, torch.Tensor]             # learned tensors (checkpointed)
    optimizers: dict[str, torch.optim.Optimizer]
    generators: dict[str, torch.Generator]       # random streams (checkpointed: a resume continues them)
    log_fields: tuple[str, ...] = ()             # CSV columns between "loss" and "skipped"
    threshold: float | None = None               # skip the update when the loss is above this
    log_every: int = 1                           # log rows every this many iterations (and every skip)
    shard: Shard | None = None                   # torch.distributed: this rank's rows of the tensors in shard.names

    def whole(self, t: torch.Tensor) -> torch.Tensor:
        """The whole of a split tensor (under torch.distributed gathered from every rank's rows; else ``t``)."""
        return t if self.shard is None else self.shard.gather(t)

    def config_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}

    def resume(self, iteration: int, extra: dict[str, Any]) -> None:
        """Called after a checkpoint of ``iteration`` was loaded into the tensors, optimisers and
        generators; ``extra`` is what :meth:`extra_state` returned when it was saved."""

    def begin(self) -> None:
        """Called once before the first iteration of this process (after any resume)."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state to keep in checkpoints beside the config (e.g. the gradient mode)."""
        return {}

    def step(self, it: int) -> Step:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, step: Step) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def end_iteration(self, it: int) -> None:
        """After the update (or the skip) of iteration ``it``, e.g. a learning-rate schedule."""

    def log_values(self, step: Step) -> dict[str, Any]:
        """Values of :attr:`log_fields` after the update (``step.info`` is merged in first)."""
        return {}

    def postfix(self, loss: float, values: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{loss:.4f}"}


@dataclass
class Selection:
    """Keep the best set by a score: ``score()`` (higher is better) is called every ``every`` loop
    iterations and after the last, on the policy's current tensors."""

    every: int
    score: Callable[[], float]

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"select_every must be >= 1, got {self.every}")


@dataclass
class KeepBest:
    """What :func:`fastdd.distill` hands a method's runner to keep the best set: score a set
    (``score_set(syn) -> float``, on a validation split) every ``every`` iterations of the method."""

    every: int
    score_set: Callable[[Any], float]
    info: dict[str, Any] = field(default_factory=dict)

    def selection(self, policy: "Policy", per: int = 1) -> Selection:
        """The loop's :class:`Selection` for ``policy`` (``per`` loop steps make one method iteration)."""
        return Selection(self.every * per, lambda: self.score_set(policy.result(0, 0, None)))

    def meta(self, done: "LoopResult", per: int = 1) -> dict[str, Any]:
        best = None if done.best_iteration is None else -(-done.best_iteration // per)
        return {"selection": {**self.info, "every": self.every, "kept_iteration": best, "val_score": done.best_score}}


@dataclass
class LoopResult:
    skipped: int                        # iterations skipped over the whole run (resumed runs included)
    start: int                          # the iteration this process started at (0, or the resumed checkpoint's)
    best_iteration: int | None = None   # with a Selection: the iteration count whose set was kept ...
    best_score: float | None = None     # ... and its score


def run_loop(policy: Policy, iterations: int, *, out: str | Path | None = None, resume: bool = False,
             checkpoint_every: int = 100, show_progress: bool = True, desc: str | None = None,
             selection: Selection | None = None) -> LoopResult:
    """Run ``policy`` for ``iterations`` iterations (continuing a checkpoint in ``out`` when ``resume``).

    With ``out``: ``log.csv`` gets a row per iteration (``iteration, loss, <policy fields>, skipped,
    seconds``; a fresh run starts a fresh log, a resumed one drops the rows it will redo) and an atomic
    checkpoint is written every ``checkpoint_every`` iterations and at the end. A resumed run gives
    bitwise the result of an uninterrupted one. With ``selection``, the policy's tensors hold the best
    scoring set when the loop returns (``selection.csv`` in ``out`` lists every score).

    SIGTERM or Ctrl-C: the iteration finishes, a checkpoint is written, then
    :class:`~fastdd.errors.RunInterrupted` is raised. A checkpoint that cannot be written warns
    (:class:`~fastdd.errors.CheckpointWarning`) and keeps the previous one. With ``policy.shard``
    (torch.distributed), every rank calls this; rank 0 alone writes ``out``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    d = policy.shard.dist if policy.shard is not None else None
    main = d is None or d.is_main
    folder = Path(out) if out is not None else None
    run = RunDir(out) if out is not None and main else None   # rank 0 alone writes the run folder
    start_it, skipped = 0, 0
    best = {k: v.detach().clone() for k, v in policy.tensors.items()} if selection is not None else {}
    best_score, best_it = -math.inf, None
    saved = {**policy.tensors, **{f"best.{k}": v for k, v in best.items()}}  # what checkpoints hold
    gather, rows = _shard_transforms(policy, saved)
    if run is not None and not resume:
        (run.path / "log.csv").unlink(missing_ok=True)
        (run.path / "selection.csv").unlink(missing_ok=True)
    if folder is not None and resume:
        meta = load_checkpoint(folder, saved, policy.optimizers, policy.generators, transform=rows)
        if meta is not None:
            if not config_matches(meta["extra"].get("config"), policy.config_dict(), type(policy.config)):
                raise ValueError(f"the checkpoint in {folder} was made with other settings; use another folder")
            start_it, skipped = meta["iteration"], meta["extra"].get("skipped", 0)
            if selection is not None:
                best_score, best_it = meta["extra"]["best_score"], meta["extra"]["best_iteration"]
                best_score = -math.inf if best_score is None else best_score
            policy.resume(start_it, meta["extra"])
            if run is not None:
                _truncate_log(run.path / "log.csv", start_it)
                _truncate_log(run.path / "selection.csv", start_it + 1)
    policy.begin()
    log = run.csv("log.csv", ["iteration", "loss", *policy.log_fields, "skipped", "seconds"]) \
        if run is not None else None
    sel_log = run.csv("selection.csv", ["iterations", "score", "best"]) if run is not None and selection else None
    bar = progress(range(start_it, iterations), desc=desc or policy.method, disable=not (show_progress and main),
                   initial=start_it, total=iterations)
    last_saved = start_it if folder is not None and resume and start_it else None

    def checkpoint(done: int) -> bool:
        """Write the checkpoint after ``done`` iterations; False (and a warning) when it could not be written."""
        nonlocal last_saved
        extra = {"config": policy.config_dict(), "skipped": skipped, **policy.extra_state()}
        if selection is not None:
            extra.update(best_score=None if best_it is None else best_score, best_iteration=best_it)
        try:
            save_checkpoint(folder, done, saved, policy.optimizers, policy.generators, extra, transform=gather,
                            write=main)
        except OSError as e:
            if not folder.is_dir():
                msg = (f"{policy.method}: could not write the checkpoint of iteration {done}: the run folder {folder} "
                       "has vanished (it is not re-created); the run goes on and still returns its result")
            else:
                kept = f"iteration {last_saved}" if last_saved is not None else "none yet"
                msg = (f"{policy.method}: could not write the checkpoint of iteration {done} to {folder} ({e}); the "
                       f"previous checkpoint ({kept}) is left as it was, and the run goes on")
            bar.write(msg)
            warnings.warn(msg, CheckpointWarning, stacklevel=3)
            return False
        last_saved = done
        return True

    signals = _SignalCatcher()
    try:
        with signals:
            for it in bar:
                t0 = time.time()
                step = policy.step(it)
                loss, ok, stop = read_back(step.loss, *step.grads, dist=d, stop=signals.caught is not None)
                reason = "" if ok else "non-finite loss or gradient"
                if ok and policy.threshold is not None and loss > policy.threshold:
                    ok, reason = False, f"loss {loss:.3f} above threshold {policy.threshold}"
                if ok:
                    policy.apply(step)
                else:
                    skipped += 1
                    if main:
                        bar.write(f"{policy.method}: iteration {it} skipped ({reason})")
                policy.end_iteration(it)
                values = {**step.info, **policy.log_values(step)}
                if log is not None and (it % policy.log_every == 0 or not ok):
                    log.log(iteration=it, loss=loss, **{k: values[k] for k in policy.log_fields}, skipped=skipped,
                            seconds=time.time() - t0)
                bar.set_postfix(**policy.postfix(loss, values))
                if selection is not None and ((it + 1) % selection.every == 0 or it + 1 == iterations):
                    score = float(selection.score())
                    if score > best_score:
                        best_score, best_it = score, it + 1
                        with torch.no_grad():
                            for k, v in policy.tensors.items():
                                best[k].copy_(v)
                    if sel_log is not None:
                        sel_log.log(iterations=it + 1, score=score, best=best_it)
                last = it + 1 == iterations
                if folder is not None and ((it + 1) % checkpoint_every == 0 or last or stop):
                    written = checkpoint(it + 1)
                else:
                    written = False
                if stop and not last:
                    where = (f"checkpoint of iteration {it + 1} written to {folder}; continue with resume=True "
                             "(--resume)") if written else \
                        ("no checkpoint could be written" if folder is not None else "no run folder: nothing saved")
                    if main:
                        bar.write(f"{policy.method}: stopped by {signals.name} after iteration {it + 1}; {where}")
                    raise RunInterrupted(signals.caught or signal.SIGTERM, it + 1, str(folder) if written else None)
    finally:
        bar.close()
        for f in (log, sel_log):
            if f is not None:
                f.close()
    if selection is not None and best_it is not None:
        with torch.no_grad():
            for k, v in policy.tensors.items():
                v.copy_(best[k])
    return LoopResult(skipped, start_it, best_it, None if best_it is None else best_score)


class _SignalCatcher:
    """Inside the block, SIGTERM and SIGINT are recorded (``caught``) instead of stopping the process
    at once. A second Ctrl-C (SIGINT) restores the previous handlers and stops at once; further
    SIGTERMs are absorbed (torchrun follows a Ctrl-C with SIGTERM to every worker, and kills with
    SIGKILL after its grace period). Only in the main thread (elsewhere Python allows no handlers)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.caught: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.caught).name if self.caught is not None else "a signal"

    def _handle(self, signum, frame) -> None:
        if self.caught is not None:
            if signum == signal.SIGINT:  # Ctrl-C again: back to the previous behaviour, and act on it now
                self._restore()
                signal.raise_signal(signum)
            return
        self.caught = signum

    def _restore(self) -> None:
        for sig, h in self._previous.items():
            signal.signal(sig, h)
        self._previous.clear()

    def __enter__(self) -> "_SignalCatcher":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()


def _shard_transforms(policy: Policy, saved: dict[str, torch.Tensor]):
    """``(gather, rows)`` checkpoint transforms for a sharded policy (``(None, None)`` otherwise):
    the checkpoint keys of its split tensors, their best copies and their optimisers' state."""
    shard = policy.shard
    if shard is None:
        return None, None
    split = {k for k in saved if k in shard.names or (k.startswith("best.") and k[5:] in shard.names)}
    tensor_keys = {f"t.{k}" for k in split}
    state_prefixes = {f"o.{name}.{pid}."  # the optimiser state of a split tensor (per-row, e.g. momentum)
                      for name, opt in policy.optimizers.items()
                      for pid, p in enumerate(p for group in opt.param_groups for p in group["params"])
                      if any(p is saved[k] for k in split)}

    def is_split(key: str, t: torch.Tensor) -> bool:
        return key in tensor_keys or (t.dim() > 0 and key[:key.rindex(".") + 1] in state_prefixes)

    def gather(key: str, t: torch.Tensor) -> torch.Tensor:
        return shard.gather(t) if is_split(key, t) else t

    def rows(key: str, t: torch.Tensor) -> torch.Tensor:
        return shard.rows(t) if is_split(key, t) else t

    return gather, rows


def read_back(loss: torch.Tensor, *grads: torch.Tensor, dist: Dist | None = None, stop: bool = False
              ) -> tuple[float, bool, bool]:
    """``(loss as a float, whether loss and every gradient are finite, whether to stop)`` with one
    device→host read. Under torch.distributed (``dist``) one all-reduce (max) first makes the three
    the same on every rank: the gradients are each rank's rows, the stop request may reach one rank."""
    finite = torch.isfinite(loss)
    for g in grads:
        finite = finite & torch.isfinite(g).all()
    flags = torch.stack([loss.detach().double(), (~finite).double()])
    if dist is not None:
        flags = all_reduce_(torch.cat([flags, flags.new_tensor([float(stop)])]), dist, op="max")
    value, bad, *halt = flags.tolist()
    return value, not bad and math.isfinite(value), bool(halt[0]) if halt else stop


def config_matches(saved: dict | None, current: dict, cls) -> bool:
    """Whether a checkpoint's recorded config equals ``current``; fields the checkpoint predates
    (added later, e.g. ``theta_storage``) count as their defaults."""
    if not isinstance(saved, dict):
        return False
    filled = dict(saved)
    for f in fields(cls):
        if f.name not in filled and f.default is not MISSING:
            filled[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return filled == current


def _truncate_log(path: Path, upto: int) -> None:
    """Drop log rows of iterations >= ``upto`` (they are re-run after a resume)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) < upto]  # first column: iteration
    path.write_text("\n".join(keep) + "\n")


__all__ = ["Policy", "Step", "Selection", "KeepBest", "LoopResult", "run_loop", "read_back", "config_matches"]
