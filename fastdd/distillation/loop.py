"""The one distillation loop. Every method is a :class:`Policy` on it.

The loop owns what every method needs around its iterations: the run folder, checkpoint and resume
(:mod:`fastdd.distillation.state`), the CSV log, the progress bar, and the guard that skips (and reports)
an iteration whose loss or gradients are not finite or whose loss is above the policy's threshold.
A policy says what one iteration computes (:meth:`Policy.step`) and how it updates its tensors
(:meth:`Policy.apply`); its tensors, optimisers and random generators are what checkpoints hold.

One iteration reads one small tensor back to the host (:func:`read_back`): the loss and whether
everything is finite.

With a :class:`KeepBest`, the loop also scores the current set every ``every`` iterations (on a
validation split, never the test split: :func:`fastdd.distill` builds the scorer) and returns the best
scoring set instead of the last; the best tensors and score are part of every checkpoint, so a resumed
run selects exactly what an uninterrupted one does.

Faults: SIGTERM or Ctrl-C (SIGINT) lets the current iteration finish, writes a checkpoint and raises
:class:`~fastdd.errors.RunInterrupted` (a second signal stops at once); a checkpoint that cannot be
written (full disk, vanished folder) is reported and the previous one stays as it was.

Guards that end a run with :class:`~fastdd.errors.RunFailedError` instead of a useless set: the learned
images stop being finite or move more than :data:`PIXEL_LIMIT` standard deviations of the real training
images away from their mean (checked with the per-iteration read-back, and before every checkpoint, so
the last checkpoint written is always a good one), or more than :data:`MAX_SKIPPED_SHARE` of the
iterations were skipped.

Validate, then write: everything a run can check (a resumed checkpoint, its settings, seed and
iteration count) is checked before the run folder is created or any file in it changes.

Under torch.distributed (a policy with a :class:`~fastdd.distributed.Shard`), every rank runs the
loop on its rows; the per-iteration read-back is one all-reduce (so every rank skips, or stops, at
the same iteration), checkpoints gather the rows and rank 0 alone writes the run folder.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..distributed import Dist, Shard, all_reduce_
from ..errors import CheckpointWarning, ResumeError, RunFailedError, RunInterrupted
from ..io import check_out_folder
from ..runs import CSVLog, RunDir, progress
from ..tracking import Logger, Tracker
from .state import load_checkpoint, save_checkpoint

#: A run stops (:class:`~fastdd.errors.RunFailedError`) when a learned pixel lies more than this many standard
#: deviations of the real training images (in the space the run learns in: normalised or ZCA'd) from their
#: mean. Real images lie within a few; sets that train well stay within tens.
PIXEL_LIMIT = 1e3
#: A run that skipped more than this share of its iterations (non-finite loss or gradients, or a loss
#: gate) ends with :class:`~fastdd.errors.RunFailedError` after its last checkpoint, instead of a result.
MAX_SKIPPED_SHARE = 0.5


def data_scale(ds) -> tuple[float, float]:
    """``(mean, std)`` of a data set's training images, over all pixels: the pixel guard's yardstick."""
    x = ds.train.images
    return float(x.mean()), float(x.std())


@dataclass
class Step:
    """What one iteration computed, before any update.

    ``loss`` is 0-d; ``grads`` are checked finite before :meth:`Policy.apply` runs; ``info`` holds log
    fields known before the update (e.g. which expert); ``payload`` is whatever ``apply`` needs."""

    loss: torch.Tensor
    grads: tuple[torch.Tensor, ...]
    info: dict[str, Any] = field(default_factory=dict)
    payload: Any = None


class Policy(ABC):
    """One method on the distillation loop (the contract: docs/extending.md).

    A subclass sets the attributes below in ``__init__`` and implements :meth:`step` (what one iteration
    computes), :meth:`apply` (how it updates the tensors) and :meth:`result` (the set it returns); the
    other hooks are optional. Registered with :func:`fastdd.register_method`, it is built by
    :meth:`from_setup` from a :class:`~fastdd.distillation.registry.Setup`."""

    method: str  # e.g. "mtt"; names the progress bar and messages
    config: Any  # a dataclass; recorded in checkpoints (resume checks it)
    tensors: dict[str, torch.Tensor]  # learned tensors (checkpointed)
    optimizers: dict[str, torch.optim.Optimizer]
    generators: dict[str, torch.Generator]  # random streams (checkpointed: a resume continues them)
    log_fields: tuple[str, ...] = ()  # CSV columns between "loss" and "skipped"
    threshold: float | None = None  # skip the update when the loss is above this
    log_every: int = 1  # log rows every this many iterations (and every skip)
    shard: Shard | None = None  # torch.distributed: this rank's rows of the tensors in shard.names
    seed: int | None = None  # the run's seed (checkpoints record it: resume refuses another)
    pixel_lr: str = "lr_img"  # the option that sets the pixel step, named when images blow up
    pixel_scale: tuple[float, float] | None = None  # (mean, std) of the real images (data_scale); None: no guard
    steps_per_iteration: int = 1  # loop steps per method iteration (DC: pixel updates per network)
    num_iterations: int | None = None  # set by a policy that fixes its own count (rded: one per class)
    ds: Any  # the data set and the network (run_meta reads them)
    net: Any

    @classmethod
    def from_setup(cls, setup: Any) -> Policy:
        """Build the policy for a run (:class:`~fastdd.distillation.registry.Setup`: data, ipc, config, seed, method,
        iterations, experts, scores). The default calls ``cls(setup)``; fastdd's own policies map it onto
        their constructors."""
        return cls(setup)  # type: ignore[call-arg]

    def whole(self, t: torch.Tensor) -> torch.Tensor:
        """The whole of a split tensor (under torch.distributed gathered from every rank's rows; else ``t``)."""
        return t if self.shard is None else self.shard.gather(t)

    def pixel_excess(self) -> torch.Tensor | None:
        """0-d tensor on the device (no host sync): the largest ``|x − mean|`` over the learned images
        ``tensors["images"]``, in units of :data:`PIXEL_LIMIT` × std; above 1 (or not finite) the images
        have blown up. ``None`` without :attr:`pixel_scale`."""
        x = self.tensors.get("images")
        if self.pixel_scale is None or x is None or x.numel() == 0:
            return None
        mean, std = self.pixel_scale
        return (x.detach() - mean).abs().max() / (PIXEL_LIMIT * max(std, 1e-12))

    def run_meta(self, iterations: int, skipped: int, ipc: int, **more: Any) -> dict[str, Any]:
        """The metadata every method's set carries (for a policy with ``ds`` and ``net``): method, ipc, data
        set (name, ZCA, classes, normalisation), seed, iterations and skips, network and config; ``more``
        (the method's own fields, then the runner's) is appended."""
        from ..kernels import kernel_report

        ds, net = self.ds, self.net
        return {
            "method": self.method,
            "ipc": ipc,
            "dataset": ds.name,
            "zca": ds.zca is not None,
            "num_classes": ds.num_classes,
            "mean": list(ds.mean),
            "std": list(ds.std),
            "seed": self.seed,
            "iterations": iterations,
            "skipped_iterations": skipped,
            "model": net.name,
            "model_spec": net.spec,
            "config": self.config_dict(),
            "kernels": kernel_report(),  # the op layer's backend per op and its self-check (fastdd.kernels)
            **more,
        }

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

    @abstractmethod
    def step(self, it: int) -> Step:
        """Compute iteration ``it`` (loss, gradients, log info) without updating anything."""

    @abstractmethod
    def apply(self, step: Step) -> None:
        """Update the tensors from ``step`` (called only when its loss and gradients are finite)."""

    @abstractmethod
    def result(self, iterations: int, skipped: int, extra_meta: dict[str, Any] | None) -> Any:
        """The :class:`~fastdd.synthetic.SyntheticSet` of the current tensors (the whole set under
        torch.distributed); ``iterations`` and ``skipped`` for its metadata, ``extra_meta`` merged in."""

    def end_iteration(self, it: int) -> None:
        """After the update (or the skip) of iteration ``it``, e.g. a learning-rate schedule."""

    def log_values(self, step: Step) -> dict[str, Any]:
        """Values of :attr:`log_fields` after the update (``step.info`` is merged in first)."""
        return {}

    def postfix(self, loss: float, values: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{loss:.4f}"}


@dataclass
class KeepBest:
    """Keep the best set instead of the last: ``score_set(syn) -> float`` (higher is better; on a validation
    split, never the test split) rates the policy's current set every ``every`` iterations of the method and
    after the last. ``info`` is recorded in the set's metadata (:meth:`meta`)."""

    every: int
    score_set: Callable[[Any], float]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"select_every must be >= 1, got {self.every}")

    def meta(self, done: LoopResult, per: int = 1) -> dict[str, Any]:
        best = None if done.best_iteration is None else -(-done.best_iteration // per)
        return {"selection": {**self.info, "every": self.every, "kept_iteration": best, "val_score": done.best_score}}


@dataclass
class LoopResult:
    skipped: int  # iterations skipped over the whole run (resumed runs included)
    start: int  # the iteration this process started at (0, or the resumed checkpoint's)
    best_iteration: int | None = None  # with a KeepBest: the iteration count whose set was kept ...
    best_score: float | None = None  # ... and its score


def run_loop(
    policy: Policy,
    iterations: int,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
    show_progress: bool = True,
    desc: str | None = None,
    selection: KeepBest | None = None,
    per: int = 1,
    loggers: str | Logger | Sequence[str | Logger] | None = None,
    log_images_every: int | None = None,
) -> LoopResult:
    """Run ``policy`` for ``iterations`` iterations (continuing a checkpoint in ``out`` when ``resume``).

    With ``out``: ``log.csv`` gets a row per iteration (``iteration, loss, <policy fields>, skipped,
    seconds``; a fresh run starts a fresh log, a resumed one drops the rows it will redo) and an atomic
    checkpoint is written every ``checkpoint_every`` iterations and at the end. A resumed run gives
    bitwise the result of an uninterrupted one. With ``selection``, the policy's tensors hold the best
    scoring set when the loop returns (``selection.csv`` in ``out`` lists every score).

    SIGTERM or Ctrl-C: the iteration finishes, a checkpoint is written, then
    :class:`~fastdd.errors.RunInterrupted` is raised. A checkpoint that cannot be written warns
    (:class:`~fastdd.errors.CheckpointWarning`) and keeps the previous one. With ``policy.shard``
    (torch.distributed), every rank calls this; rank 0 alone writes ``out``. ``per``: loop iterations per
    method iteration (DC: pixel updates per network), for messages.

    Nothing in ``out`` changes before the resumed checkpoint (if any) was read and checked
    (:func:`check_resume`). Images that blow up, or more than :data:`MAX_SKIPPED_SHARE` of the iterations
    skipped, end the run with :class:`~fastdd.errors.RunFailedError`.

    ``loggers`` (names or :class:`~fastdd.tracking.Logger` objects; docs/tracking.md) get, on rank 0, the
    settings once, the log row's numbers of every logged iteration (``distill/<column>``, plus
    ``distill/grad_norm`` in one process, ``distill/images_per_s`` and, on CUDA, ``distill/peak_memory_mib``),
    the set's picture every ``log_images_every`` loop iterations (default: ``checkpoint_every``; 0: never) and
    a summary at the end; a resumed run starts them at the checkpoint's iteration. With no loggers the run
    computes exactly what it computes without this feature.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if log_images_every is not None and log_images_every < 0:
        raise ValueError(f"log_images_every must be >= 0, got {log_images_every}")
    run = _LoopRun(policy, iterations, out, selection, per, Tracker(loggers).check(out))
    run.images_every = checkpoint_every if log_images_every is None else log_images_every
    run.start(resume, desc or policy.method, show_progress)
    signals = _SignalCatcher()
    try:
        with signals:
            for it in run.bar:
                stop = run.iteration(it, stop=signals.caught is not None)
                last = it + 1 == iterations
                written = run.folder is not None and ((it + 1) % checkpoint_every == 0 or last or stop)
                written = written and run.checkpoint(it + 1)
                if stop and not last:
                    run.interrupted(it + 1, signals, written)
        if run.folder is None:  # with a folder the last checkpoint checked them
            run.check_pixels(iterations)
        run.summarize()
    finally:
        run.close()
    return run.finish()


class _LoopRun:
    """One run of :func:`run_loop`: the run folder and its logs, the progress bar, the skip count, the best
    set under a :class:`KeepBest`, and the checkpoint written last."""

    def __init__(
        self,
        policy: Policy,
        iterations: int,
        out: str | os.PathLike | None,
        selection: KeepBest | None,
        per: int,
        tracker: Tracker | None = None,
    ):
        self.policy, self.iterations, self.selection, self.per = policy, iterations, selection, per
        self.tracker = tracker if tracker is not None else Tracker()  # made on every rank; rank 0 starts it
        self.tracking = bool(self.tracker)  # the same on every rank: the pictures gather the set on all of them
        self.images_every = 0
        self.dist = policy.shard.dist if policy.shard is not None else None
        self.main = self.dist is None or self.dist.is_main
        self.folder = Path(out) if out is not None else None
        if self.folder is not None and self.main:
            check_out_folder(self.folder)
        self.start_it, self.skipped = 0, 0
        self.best = {k: v.detach().clone() for k, v in policy.tensors.items()} if selection is not None else {}
        self.best_score: float = -math.inf
        self.best_it: int | None = None
        self.saved = {**policy.tensors, **{f"best.{k}": v for k, v in self.best.items()}}  # what checkpoints hold
        self.gather, self.rows = _shard_transforms(policy, self.saved)
        self.last_saved: int | None = None
        self.reasons: dict[str, int] = {}
        self.log: CSVLog | None = None
        self.sel_log: CSVLog | None = None
        self.last_loss: float | None = None
        self.t_start = time.time()

    def start(self, resume: bool, desc: str, show_progress: bool) -> None:
        """Read and check the checkpoint to resume (the folder is not touched yet), begin the policy, then
        open the logs (fresh, or cut back to the checkpoint) and the progress bar."""
        policy, folder, meta = self.policy, self.folder, None
        if folder is not None and resume:
            meta = load_checkpoint(folder, self.saved, policy.optimizers, policy.generators, transform=self.rows)
            if meta is not None:
                check_resume(policy, meta, folder, self.iterations, self.per)
                self.start_it, self.skipped = meta["iteration"], meta["extra"].get("skipped", 0)
                if self.selection is not None:
                    self.best_score, self.best_it = meta["extra"]["best_score"], meta["extra"]["best_iteration"]
                    self.best_score = -math.inf if self.best_score is None else self.best_score
                policy.resume(self.start_it, meta["extra"])
        policy.begin()
        run = RunDir(folder) if folder is not None and self.main else None  # rank 0 alone writes the run folder
        if run is not None:
            if meta is None:  # a fresh start: fresh logs
                (run.path / "log.csv").unlink(missing_ok=True)
                (run.path / "selection.csv").unlink(missing_ok=True)
            else:
                _truncate_log(run.path / "log.csv", self.start_it)
                _truncate_log(run.path / "selection.csv", self.start_it + 1)
            self.log = run.csv("log.csv", ["iteration", "loss", *policy.log_fields, "skipped", "seconds"])
            if self.selection:
                self.sel_log = run.csv("selection.csv", ["iterations", "score", "best"])
        if self.tracking and self.main:  # after the checks: a resumed run continues its loggers at its iteration
            self.tracker.start(folder, self.start_it)
            self.tracker.log_config(self.tracked_config())
        self.bar = progress(
            range(self.start_it, self.iterations),
            desc=desc,
            disable=not (show_progress and self.main),
            initial=self.start_it,
            total=self.iterations,
        )
        if meta is not None and self.start_it == self.iterations and self.main:
            self.bar.write(
                f"{policy.method}: the checkpoint in {folder} has already done all {self.iterations // self.per} "
                "iterations; nothing to run, its set is returned as saved",
                file=sys.stderr,
            )
        self.last_saved = self.start_it if meta is not None and self.start_it else None

    def iteration(self, it: int, stop: bool) -> bool:
        """One iteration: step, read back, apply or skip, log, score. Returns whether every rank was asked
        to stop (a signal on any of them)."""
        policy, t0 = self.policy, time.time()
        step = policy.step(it)
        excess = policy.pixel_excess()  # the images this step ran on: a blow-up of an earlier update
        norm = self.tracking and self.main and self.dist is None  # grad norm: in the same read-back, one process
        loss, ok, stop, blown, grad_norm = _read_back(step.loss, step.grads, self.dist, stop, excess, norm)
        if blown is not None:
            raise _blown_up(policy, blown, it, self.folder, self.last_saved)
        reason = "" if ok else "non-finite loss or gradient"
        if ok and policy.threshold is not None and loss > policy.threshold:
            ok, reason = False, f"loss {loss:.3f} above threshold {policy.threshold}"
        if ok:
            policy.apply(step)
        else:
            self.skipped += 1
            kind = reason if reason.startswith("non-finite") else "loss above the threshold"
            self.reasons[kind] = self.reasons.get(kind, 0) + 1
            if self.main:
                self.bar.write(f"{policy.method}: iteration {it} skipped ({reason})")
        policy.end_iteration(it)
        values = {**step.info, **policy.log_values(step)}
        track = self.tracking and self.main
        if (self.log is not None or track) and (it % policy.log_every == 0 or not ok):
            fields_ = {k: values[k] for k in policy.log_fields}
            seconds = time.time() - t0
            if self.log is not None:
                self.log.log(iteration=it, loss=loss, **fields_, skipped=self.skipped, seconds=seconds)
            if track:
                self.track(it, loss, fields_, seconds, grad_norm)
        if track:
            self.last_loss = loss
        if self.tracking and self.images_every and ((it + 1) % self.images_every == 0 or it + 1 == self.iterations):
            self.track_images(it)
        self.bar.set_postfix(**policy.postfix(loss, values))
        sel = self.selection
        if sel is not None and ((it + 1) % (sel.every * self.per) == 0 or it + 1 == self.iterations):
            self.score(it + 1)
        return stop

    def score(self, done: int) -> None:
        """Score the current set (:class:`KeepBest`); keep a copy when it is the best so far."""
        assert self.selection is not None
        score = float(self.selection.score_set(self.policy.result(0, 0, None)))
        if score > self.best_score:
            self.best_score, self.best_it = score, done
            with torch.no_grad():
                for k, v in self.policy.tensors.items():
                    self.best[k].copy_(v)
        if self.sel_log is not None:
            self.sel_log.log(iterations=done, score=score, best=self.best_it)

    def tracked_config(self) -> dict[str, Any]:
        """What the loggers get as the run's settings: the policy's config, method, seed, iterations (and ipc)."""
        policy = self.policy
        run = {"method": policy.method, "seed": policy.seed, "iterations": self.iterations // self.per}
        ipc = getattr(policy, "ipc", None)
        if isinstance(ipc, int):
            run["ipc"] = ipc
        return {**policy.config_dict(), **run}

    def track(self, it: int, loss: float, fields_: dict[str, Any], seconds: float, grad_norm: float | None) -> None:
        """One logged iteration for the loggers (rank 0): the log row's numbers, the gradient norm (when read),
        synthetic images per second and, on CUDA, the peak memory allocated so far (host-side counters)."""
        values: dict[str, Any] = {"loss": loss, **fields_, "skipped": self.skipped, "seconds": seconds}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        x = self.policy.tensors.get("images")
        if x is not None and x.dim() >= 4 and seconds > 0:
            shard = self.policy.shard
            count = shard.m if shard is not None and "images" in shard.names else x.numel() // math.prod(x.shape[-3:])
            values["images_per_s"] = count / seconds
        if x is not None and x.is_cuda:
            values["peak_memory_mib"] = torch.cuda.max_memory_allocated(x.device) / 2**20
        self.tracker.log_scalars(it, {f"distill/{k}": v for k, v in values.items()})

    def track_images(self, it: int) -> None:
        """The current set's picture (one row per class) for the loggers, at step ``it``. On every rank (the
        whole set is gathered under torch.distributed); rank 0 logs it."""
        syn = self.policy.result(it + 1, self.skipped, None)
        images = getattr(syn, "images", None)
        if not self.main or not isinstance(images, torch.Tensor) or images.dim() != 4:
            return
        from ..plots import image_grid

        ds, channels = getattr(self.policy, "ds", None), images.shape[1]
        mean: list[float] | None = [0.0] * channels
        std: list[float] | None = [1.0] * channels
        if ds is not None and hasattr(ds, "denormalize"):
            images = ds.denormalize(images.detach())
        else:  # the set's own normalisation (or min-max scaling when it records none)
            mean, std = getattr(syn, "meta", {}).get("mean"), getattr(syn, "meta", {}).get("std")
        grid = image_grid(images, getattr(syn, "hard_labels", None), mean, std)
        self.tracker.log_images(it, "distill/images", grid)

    def summarize(self) -> None:
        """The run's final numbers for the loggers (rank 0)."""
        if not (self.tracking and self.main):
            return
        summary: dict[str, Any] = {
            "distill/iterations": self.iterations // self.per,
            "distill/skipped": self.skipped,
            "distill/seconds": time.time() - self.t_start,
        }
        if self.last_loss is not None:
            summary["distill/final_loss"] = self.last_loss
        if self.selection is not None and self.best_it is not None:
            summary.update({"distill/best_iteration": self.best_it // self.per, "distill/best_score": self.best_score})
        self.tracker.log_summary(summary)

    def check_pixels(self, done: int) -> None:
        """Stop with :class:`RunFailedError` when the images have blown up (one read-back, all-reduced)."""
        excess = self.policy.pixel_excess()
        if excess is None:
            return
        flag = excess.detach().double().reshape(1)
        if self.dist is not None:
            flag = all_reduce_(flag, self.dist, op="max")
        value = float(flag)
        if not value <= 1.0:  # NaN too
            raise _blown_up(self.policy, value, done, self.folder, self.last_saved)

    def checkpoint(self, done: int) -> bool:
        """Write the checkpoint after ``done`` iterations; False (and a warning) when it could not be written."""
        policy, folder = self.policy, self.folder
        assert folder is not None  # called only for a run with a folder
        self.check_pixels(done)  # never write a checkpoint of blown-up images: the last one written stays good
        extra = {"config": policy.config_dict(), "skipped": self.skipped, "seed": policy.seed, **policy.extra_state()}
        if self.selection is not None:
            extra.update(best_score=None if self.best_it is None else self.best_score, best_iteration=self.best_it)
        try:
            save_checkpoint(
                folder,
                done,
                self.saved,
                policy.optimizers,
                policy.generators,
                extra,
                transform=self.gather,
                write=self.main,
            )
        except OSError as e:
            if not folder.is_dir():
                msg = (
                    f"{policy.method}: could not write the checkpoint of iteration {done}: the run folder {folder} "
                    "has vanished (it is not re-created); the run goes on and still returns its result"
                )
            else:
                kept = f"iteration {self.last_saved}" if self.last_saved is not None else "none yet"
                msg = (
                    f"{policy.method}: could not write the checkpoint of iteration {done} to {folder} ({e}); the "
                    f"previous checkpoint ({kept}) is left as it was, and the run goes on"
                )
            self.bar.write(msg)
            warnings.warn(msg, CheckpointWarning, stacklevel=3)
            return False
        self.last_saved = done
        return True

    def interrupted(self, done: int, signals: _SignalCatcher, written: bool) -> None:
        """Say where the run stopped and raise :class:`RunInterrupted`."""
        folder = self.folder
        if written:
            where = f"checkpoint of iteration {done} written to {folder}; continue with resume=True (--resume)"
        else:
            where = "no checkpoint could be written" if folder is not None else "no run folder: nothing saved"
        if self.main:
            self.bar.write(f"{self.policy.method}: stopped by {signals.name} after iteration {done}; {where}")
        raise RunInterrupted(signals.caught or signal.SIGTERM, done, str(folder) if written else None)

    def close(self) -> None:
        self.bar.close()  # start() made it: run_loop closes only a started run
        for f in (self.log, self.sel_log):
            if f is not None:
                f.close()
        self.tracker.close()  # the loggers made from names; Logger objects passed in stay open for their owner

    def finish(self) -> LoopResult:
        """Fail a run that skipped too much; otherwise put the best set (if selecting) in the policy's tensors."""
        iterations, per, skipped, reasons = self.iterations, self.per, self.skipped, self.reasons
        if skipped > MAX_SKIPPED_SHARE * iterations:
            why = ", ".join(f"{n} for {k}" for k, n in reasons.items()) or "in earlier, resumed parts of the run"
            hint = (
                " A loss that is never finite means the start and target parameters coincide: check the experts "
                "(identical snapshots?) and the learning rates."
                if "non-finite loss or gradient" in reasons
                else ""
            )
            kept = f"; its last checkpoint is in {self.folder}" if self.folder is not None else ""
            raise RunFailedError(
                f"{self.policy.method}: {skipped // per} of {iterations // per} iterations were skipped ({why}), "
                f"more than {MAX_SKIPPED_SHARE:.0%}: the set learned nothing useful and is not returned"
                f"{kept}.{hint}"
            )
        if self.selection is not None and self.best_it is not None:
            with torch.no_grad():
                for k, v in self.policy.tensors.items():
                    v.copy_(self.best[k])
        return LoopResult(skipped, self.start_it, self.best_it, None if self.best_it is None else self.best_score)


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

    def __enter__(self) -> _SignalCatcher:
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
    state_prefixes = {
        f"o.{name}.{pid}."  # the optimiser state of a split tensor (per-row, e.g. momentum)
        for name, opt in policy.optimizers.items()
        for pid, p in enumerate(p for group in opt.param_groups for p in group["params"])
        if any(p is saved[k] for k in split)
    }

    def is_split(key: str, t: torch.Tensor) -> bool:
        return key in tensor_keys or (t.dim() > 0 and key[: key.rindex(".") + 1] in state_prefixes)

    def gather(key: str, t: torch.Tensor) -> torch.Tensor:
        return shard.gather(t) if is_split(key, t) else t

    def rows(key: str, t: torch.Tensor) -> torch.Tensor:
        return shard.rows(t) if is_split(key, t) else t

    return gather, rows


def read_back(
    loss: torch.Tensor,
    *grads: torch.Tensor,
    dist: Dist | None = None,
    stop: bool = False,
    excess: torch.Tensor | None = None,
) -> tuple[float, bool, bool, float | None]:
    """``(loss as a float, whether loss and every gradient are finite, whether to stop, the pixel excess when
    the images have blown up (else None))`` with one device→host read. ``excess``: :meth:`Policy.pixel_excess`.
    Under torch.distributed (``dist``) one all-reduce (max) first makes them the same on every rank: the
    gradients and images are each rank's rows, the stop request may reach one rank."""
    value, ok, halt, over, _ = _read_back(loss, grads, dist, stop, excess, False)
    return value, ok, halt, over


def _read_back(
    loss: torch.Tensor,
    grads: tuple[torch.Tensor, ...],
    dist: Dist | None,
    stop: bool,
    excess: torch.Tensor | None,
    norm: bool,
) -> tuple[float, bool, bool, float | None, float | None]:
    """:func:`read_back`, and with ``norm`` (one process only) the gradients' joint L2 norm read in the same
    transfer (else ``None``); without ``norm`` it computes exactly what it computed before tracking existed."""
    finite = torch.isfinite(loss)
    for g in grads:
        finite = finite & torch.isfinite(g).all()
    zero = loss.detach().double().new_zeros(())
    big = zero if excess is None else torch.nan_to_num(excess.detach().double(), nan=math.inf)
    parts = [loss.detach().double(), (~finite).double(), big]
    if norm and dist is None and grads:
        parts.append(torch.stack([torch.linalg.vector_norm(g.detach()).double() for g in grads]).norm())
    flags = torch.stack(parts)
    if dist is not None:
        flags = all_reduce_(torch.cat([flags, flags.new_tensor([float(stop)])]), dist, op="max")
    value, bad, over, *rest = flags.tolist()
    halt = bool(rest[0]) if dist is not None else stop
    grad_norm = rest[0] if len(parts) == 4 else None
    return value, not bad and math.isfinite(value), halt, over if not over <= 1.0 else None, grad_norm


def _blown_up(policy: Policy, excess: float, it: int, folder: Path | None, last_saved: int | None) -> RunFailedError:
    lr = getattr(policy.config, policy.pixel_lr, None)
    now = f"{lr:g}" if isinstance(lr, (int, float)) else repr(lr)
    std = (policy.pixel_scale or (0.0, 1.0))[1]
    size = (
        "are no longer finite"
        if not math.isfinite(excess)
        else f"lie up to {excess * PIXEL_LIMIT:.3g} standard deviations of the real images (std {std:.3g}) from "
        "their mean"
    )
    if folder is None:
        kept = "no run folder: nothing was saved"
    elif last_saved is None:
        kept = f"no checkpoint was written to {folder}"
    else:
        kept = f"the last good checkpoint (iteration {last_saved}) is kept in {folder}"
    return RunFailedError(
        f"{policy.method}: at iteration {it} the synthetic images {size}, more than the "
        f"{PIXEL_LIMIT:g} allowed: the pixel step is too large; lower {policy.pixel_lr} (now {now}). "
        f"The run stops without a set; {kept}"
    )


def config_diff(saved: dict | None, current: dict, cls) -> list[str] | None:
    """The fields in which a checkpoint's recorded config differs from ``current`` (``None`` when there is no
    recorded config to compare); fields the checkpoint predates (added later, e.g. ``theta_storage``) count as
    their defaults."""
    if not isinstance(saved, dict):
        return None
    filled = dict(saved)
    for f in fields(cls):
        if f.name not in filled and f.default is not MISSING:
            filled[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return sorted(k for k in set(filled) | set(current) if filled.get(k, MISSING) != current.get(k, MISSING))


def check_resume(policy: Policy, meta: dict[str, Any], folder: Path, iterations: int, per: int = 1) -> None:
    """Refuse (:class:`~fastdd.errors.ResumeError`) to continue a checkpoint that this run would not continue
    honestly: other settings (the differing fields named), another seed, or more iterations already done than
    ``iterations`` asks for."""
    extra = meta["extra"]
    current = policy.config_dict()
    diff = config_diff(extra.get("config"), current, type(policy.config))
    if diff is None:
        raise ResumeError(f"the checkpoint in {folder} records no settings of {policy.method}; use another folder")
    if diff:
        saved = extra["config"]
        what = "; ".join(f"{k} {saved.get(k, '(unset)')!r} there, {current.get(k, '(unset)')!r} now" for k in diff)
        raise ResumeError(
            f"the checkpoint in {folder} was made with other settings: {what}. Resume with the same "
            "settings, or use another folder for a new run"
        )
    if extra.get("seed") is not None and policy.seed is not None and extra["seed"] != policy.seed:
        raise ResumeError(
            f"the checkpoint in {folder} was made with seed {extra['seed']}, not {policy.seed}: its random "
            f"streams continue seed {extra['seed']}. Resume with seed={extra['seed']} (--seed "
            f"{extra['seed']}), or start the new seed in another folder"
        )
    done = meta["iteration"]
    if done > iterations:
        raise ResumeError(
            f"the checkpoint in {folder} has done {done // per} iterations, more than the {iterations // per} "
            f"asked for: pass iterations >= {done // per} to continue it (at {done // per} its set is "
            "returned as saved), or start a run of fewer iterations in another folder"
        )


def _truncate_log(path: Path, upto: int) -> None:
    """Drop log rows of iterations >= ``upto`` (they are re-run after a resume)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) < upto]  # first column: iteration
    path.write_text("\n".join(keep) + "\n")


__all__ = [
    "Policy",
    "Step",
    "KeepBest",
    "LoopResult",
    "run_loop",
    "read_back",
    "config_diff",
    "check_resume",
    "data_scale",
    "PIXEL_LIMIT",
    "MAX_SKIPPED_SHARE",
]
