"""Experiment tracking, optional: TensorBoard, Weights & Biases or CSV files in the run folder.

A :class:`Logger` receives what a run reports: scalars per step (:meth:`Logger.log_scalars`), pictures
(:meth:`Logger.log_images`), the settings once (:meth:`Logger.log_config`) and the final numbers
(:meth:`Logger.log_summary`). fastdd has three, each also known by its name:

- ``"tensorboard"``, :class:`TensorBoardLogger`: event files in ``<run folder>/tensorboard/`` through
  ``torch.utils.tensorboard.SummaryWriter`` (extra ``fastdd[tensorboard]``);
- ``"wandb"``, :class:`WandbLogger`: a Weights & Biases run whose local files go to ``<run folder>/wandb/``;
  its id is kept in ``<run folder>/wandb_id.txt`` so a resumed run continues it; ``WANDB_MODE=offline``
  works without an account or a network (extra ``fastdd[wandb]``);
- ``"csv"``, :class:`CSVLogger`: ``<run folder>/csv/scalars.csv`` (``step,name,value``), ``config.json``,
  ``summary.json`` and PNGs in ``images/`` (no extra).

``fastdd.distill(..., loggers=["tensorboard", "csv"])``, ``fastdd.train_experts(..., loggers=...)`` and the
command line's ``--log`` take names or :class:`Logger` objects. A run calls :meth:`Logger.start` with its
folder and the first step it will log (0 for a fresh run, the checkpoint's iteration for a resumed one:
records of later steps from the interrupted process are stale, and TensorBoard and CSV drop them). Loggers
made from names are closed by the run; :class:`Logger` objects you pass stay open, for you to log more (e.g.
an evaluation, :meth:`Tracker.log_evaluation`) and close.

The third-party packages are imported only when a logger that needs them is made; a missing one is a
:class:`MissingExtraError` naming the extra to install. Nothing here draws random numbers from torch or
changes a tensor, and loggers are never part of a checkpoint or of a run's recorded settings.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import numbers
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import FastDDError
from .io import atomic_write_json, atomic_write_text

#: The logger names ``loggers=`` and ``--log`` accept.
LOGGER_NAMES = ("tensorboard", "wandb", "csv")
#: The file in a run folder that keeps its Weights & Biases run id (a resumed run continues that run).
WANDB_ID_FILE = "wandb_id.txt"


class MissingExtraError(FastDDError, ImportError):
    """A logger needs a package that is not installed; the message names the extra that installs it."""


def require(package: str, logger: str | None = None) -> Any:
    """Import ``package`` (``"tensorboard"`` or ``"wandb"``) or raise :class:`MissingExtraError` naming the
    extra, ``pip install "fastdd[<package>]"``."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise MissingExtraError(
            f'the "{logger or package}" logger needs the {package} package, which is not installed: '
            f'pip install "fastdd[{package}]"'
        ) from e


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The real numbers of ``values`` as floats (bools as 0/1); anything else (strings, ``None``, tensors) is
    left out, so logging never reads a tensor back from a device."""
    return {str(k): float(v) for k, v in values.items() if isinstance(v, numbers.Real)}


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


class Logger(ABC):
    """What a run reports to, e.g. :class:`TensorBoardLogger`. A subclass implements :meth:`log_scalars` and
    may override :meth:`open` (called once, by :meth:`start`), :meth:`log_images`, :meth:`log_config`,
    :meth:`log_summary` and :meth:`close`. A logger is also a context manager that closes it.

    Steps are a run's own count: the distillation iteration (as in ``log.csv``), ``expert × epochs + epoch``
    for expert training, the evaluation run's index for ``fastdd evaluate``; within a run they never
    decrease."""

    name: str = "logger"
    started: bool = False
    needs_folder: bool = False  # True: it writes into the run folder, so a run without one is refused up front

    def start(self, folder: str | os.PathLike | None, step: int = 0) -> None:
        """Open the logger for a run whose folder is ``folder`` (``None``: a run without one) and whose first
        record has step ``step``: 0 for a fresh run, the checkpoint's iteration for a resumed one (records of
        ``step`` and later left by an interrupted process are stale). A second call does nothing."""
        if self.started:
            return
        self.open(None if folder is None else Path(folder), int(step))
        self.started = True

    def open(self, folder: Path | None, step: int) -> None:
        """Called once by :meth:`start`; see there."""

    @abstractmethod
    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Record the named numbers ``values`` at ``step``."""

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        """Record a picture at ``step``: ``images`` is a float tensor in [0, 1] on the CPU, ``(C, H, W)``
        (one picture, e.g. a grid from :func:`fastdd.plots.image_grid`) or ``(N, C, H, W)``."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's settings (once per process)."""

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Record the run's final numbers (the last values, an evaluation's mean and spread, ...)."""

    def close(self) -> None:
        """Flush and release files and processes."""

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _folder_for(logger: Logger, given: str | os.PathLike | None, folder: Path | None, sub: str) -> Path:
    if given is not None:
        return Path(given)
    if folder is None:
        raise ValueError(
            f"the {logger.name!r} logger writes into the run folder: pass out= (--out), or give the logger "
            "its own folder"
        )
    return folder / sub


class CSVLogger(Logger):
    """Plain files, no extra: ``scalars.csv`` (``step,name,value``, one row per number, flushed at once),
    ``config.json``, ``summary.json`` and ``images/<name>_<step>.png`` in ``folder`` (default: the run
    folder's ``csv/``). A fresh run starts a fresh ``scalars.csv``; a resumed one drops its rows from the
    resumed step on."""

    name = "csv"

    def __init__(self, folder: str | os.PathLike | None = None):
        self.given = folder
        self.needs_folder = folder is None
        self.root: Path | None = None
        self._f: Any = None
        self._summary: dict[str, Any] = {}

    def open(self, folder: Path | None, step: int) -> None:
        root = self.root = _folder_for(self, self.given, folder, "csv")
        root.mkdir(parents=True, exist_ok=True)
        path = root / "scalars.csv"
        for png in (root / "images").glob("*_*.png"):  # pictures of the steps this run (re)does
            if png.stem.rsplit("_", 1)[-1].isdigit() and int(png.stem.rsplit("_", 1)[-1]) >= step:
                png.unlink()
        if step == 0:
            path.unlink(missing_ok=True)
            (root / "summary.json").unlink(missing_ok=True)
        elif path.exists():
            rows = list(csv.reader(path.read_text().splitlines()))
            keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < step]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(keep)
            atomic_write_text(path, text.getvalue())
            if (root / "summary.json").exists():
                self._summary = json.loads((root / "summary.json").read_text())
        new = not path.exists() or path.stat().st_size == 0
        self._f = open(path, "a", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")
        if new:
            self._w.writerow(["step", "name", "value"])
            self._f.flush()

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self._w.writerow([step, k, repr(float(v))])
        self._f.flush()

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        from torchvision.utils import make_grid, save_image

        assert self.root is not None
        picture = images if images.dim() == 3 else make_grid(images, padding=1, pad_value=1.0)
        path = self.root / "images" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}_{step:08d}.png"
        path.parent.mkdir(exist_ok=True)
        tmp = f"{path}.tmp.png"
        save_image(picture, tmp)
        os.replace(tmp, path)

    def log_config(self, config: Mapping[str, Any]) -> None:
        assert self.root is not None
        atomic_write_json(self.root / "config.json", _jsonable(dict(config)))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        assert self.root is not None
        self._summary.update(_jsonable(dict(summary)))
        atomic_write_json(self.root / "summary.json", self._summary)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __repr__(self) -> str:
        return f"CSVLogger({str(self.root or self.given or '')!r})"


class TensorBoardLogger(Logger):
    """TensorBoard event files in ``log_dir`` (default: the run folder's ``tensorboard/``) through
    ``torch.utils.tensorboard.SummaryWriter`` (extra ``fastdd[tensorboard]``). A run's first step is the
    writer's ``purge_step``: TensorBoard hides events of that step and later left by an interrupted process, so
    a resumed run shows every step once. Scalars are ``add_scalar``, pictures ``add_image(s)``, the settings
    and the summary text (``config``, ``summary``) and the summary's numbers ``summary/<name>`` at the last
    step logged. ``writer_kwargs`` go to ``SummaryWriter``."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike | None = None, **writer_kwargs: Any):
        require("tensorboard")
        self.given, self.writer_kwargs = log_dir, writer_kwargs
        self.needs_folder = log_dir is None
        self.log_dir: Path | None = None
        self.writer: Any = None
        self.last = 0

    def open(self, folder: Path | None, step: int) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = _folder_for(self, self.given, folder, "tensorboard")
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step, **self.writer_kwargs)
        self.last = step

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.last = max(self.last, step)

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        if images.dim() == 3:
            self.writer.add_image(name, images, step)
        else:
            self.writer.add_images(name, images, step)
        self.last = max(self.last, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.writer.add_text("config", _markdown(config), self.last)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for k, v in scalars(summary).items():
            self.writer.add_scalar(f"summary/{k}", v, self.last)
        self.writer.add_text("summary", _markdown(summary), self.last)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __repr__(self) -> str:
        return f"TensorBoardLogger({str(self.log_dir or self.given or '')!r})"


def _markdown(obj: Mapping[str, Any]) -> str:
    """``obj`` as indented JSON in a markdown code block (TensorBoard's text tab renders markdown)."""
    text = json.dumps(_jsonable(dict(obj)), indent=2)
    return "\n".join("    " + line for line in text.splitlines())


class WandbLogger(Logger):
    """A Weights & Biases run (extra ``fastdd[wandb]``), its local files in ``<run folder>/wandb/``.

    The run id is kept in ``<run folder>/wandb_id.txt`` (written atomically): a fresh run gets a new id, a
    resumed one reads it back and continues the same W&B run (``wandb.init(id=..., resume="allow")``). W&B's
    history only grows, so the steps an interrupted process had already logged past its checkpoint keep their
    first values (the resumed run computes the same ones: resume is bitwise). ``WANDB_MODE=offline`` (or
    ``mode="offline"``) needs no account or network; ``wandb sync <run folder>/wandb/offline-run-*`` uploads
    later. ``project`` defaults to ``$WANDB_PROJECT``, else ``"fastdd"``; ``init_kwargs`` (``entity``,
    ``name``, ``tags``, ``mode``, ...) go to ``wandb.init``."""

    name = "wandb"

    def __init__(self, project: str | None = None, **init_kwargs: Any):
        require("wandb")
        self.project, self.init_kwargs = project, init_kwargs
        self.run: Any = None
        self.run_id: str | None = None

    def open(self, folder: Path | None, step: int) -> None:
        wandb = require("wandb")
        kw = dict(self.init_kwargs)
        if folder is not None:
            self.run_id = kw.pop("id", None) or run_id(folder, resume=step > 0)
            kw.setdefault("dir", str(folder))
        else:
            self.run_id = kw.pop("id", None)
        project = self.project or os.environ.get("WANDB_PROJECT") or "fastdd"
        self.run = wandb.init(project=project, id=self.run_id, resume="allow", **kw)
        self.run_id = self.run.id

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        wandb = require("wandb")
        pics = [images] if images.dim() == 3 else list(images)
        arrays = [(p.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy() for p in pics]
        self.run.log({name: [wandb.Image(a) for a in arrays] if len(arrays) > 1 else wandb.Image(arrays[0])}, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(_jsonable(dict(config)), allow_val_change=True)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self.run.summary.update(_jsonable(dict(summary)))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def __repr__(self) -> str:
        return f"WandbLogger(id={self.run_id!r})"


def run_id(folder: str | os.PathLike, resume: bool) -> str:
    """The W&B run id of a run folder: with ``resume``, the one in ``wandb_id.txt`` (when there is one);
    otherwise a new one, written there atomically."""
    path = Path(folder) / WANDB_ID_FILE
    if resume and path.exists():
        text = path.read_text().strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
            return text
    new = secrets.token_hex(4)  # 8 characters like W&B's own ids; the OS's entropy, not torch's generators
    atomic_write_text(path, new + "\n")
    return new


_KINDS: dict[str, type[Logger]] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "csv": CSVLogger}


def make_logger(spec: str | Logger) -> Logger:
    """A :class:`Logger` from a name (``"tensorboard"``, ``"wandb"``, ``"csv"``: a new one, its extra checked
    now) or a :class:`Logger` (returned as it is)."""
    if isinstance(spec, Logger):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in _KINDS:
        return _KINDS[spec.strip().lower()]()
    raise ValueError(
        f"unknown logger {spec!r}: use one of {', '.join(repr(n) for n in LOGGER_NAMES)} or a fastdd.tracking.Logger"
    )


def make_loggers(specs: str | Logger | Iterable[str | Logger] | None) -> list[Logger]:
    """:func:`make_logger` of each of ``specs`` (one spec or several; ``None``: none)."""
    if specs is None:
        return []
    if isinstance(specs, (str, Logger)):
        specs = [specs]
    return [make_logger(s) for s in specs]


class Tracker:
    """The loggers of one run: made from names and objects (:func:`make_logger`, so a missing extra fails
    when the tracker is made, before the run writes anything), started together, each record sent to every
    started one. :meth:`close` closes the loggers it made from names and flushes nothing else: objects passed
    in belong to the caller. Without loggers every method does nothing."""

    def __init__(self, loggers: str | Logger | Iterable[str | Logger] | None = None):
        specs = [loggers] if isinstance(loggers, (str, Logger)) else list(loggers or [])
        self.loggers = [make_logger(s) for s in specs]
        self.own = [lg for lg, s in zip(self.loggers, specs) if not isinstance(s, Logger)]

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def _live(self) -> list[Logger]:
        return [lg for lg in self.loggers if lg.started]

    def check(self, folder: str | os.PathLike | None) -> Tracker:
        """``ValueError`` when a logger writes into the run folder and there is none (``folder`` is ``None``)."""
        if folder is None:
            for lg in self.loggers:
                if getattr(lg, "needs_folder", False) and not lg.started:
                    raise ValueError(
                        f"the {lg.name!r} logger writes into the run folder: pass out= (--out), or give the logger "
                        "its own folder"
                    )
        return self

    def start(self, folder: str | os.PathLike | None, step: int = 0) -> None:
        """:meth:`Logger.start` of every logger."""
        for lg in self.loggers:
            lg.start(folder, step)

    def log_scalars(self, step: int, values: Mapping[str, Any]) -> None:
        """The real numbers of ``values`` (:func:`scalars`) at ``step``."""
        live, numbers_ = self._live(), scalars(values)
        if numbers_:
            for lg in live:
                lg.log_scalars(step, numbers_)

    def log_images(self, step: int, name: str, images: torch.Tensor) -> None:
        for lg in self._live():
            lg.log_images(step, name, images)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for lg in self._live():
            lg.log_config(config)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for lg in self._live():
            lg.log_summary(summary)

    def log_evaluation(self, result: Any, runs: bool = True, prefix: str = "eval") -> None:
        """An evaluation's numbers (a :class:`~fastdd.evaluation.EvalResult` or a cross-architecture result, read
        through its ``to_dict()``): with ``runs``, each run's accuracy as the scalar ``<prefix>/accuracy``
        (``<prefix>/random/accuracy``, ``<prefix>/<model>/accuracy``, ...) at the run's index as step; and the
        means, spreads and DD-Ranking scores as the summary (``<prefix>/mean``, ``<prefix>/std``,
        ``<prefix>/ior``, ...)."""
        summary: dict[str, float] = {}
        per_run: dict[str, list[float]] = {}
        _flatten(result.to_dict(), prefix, summary, per_run)
        if runs:
            for i in range(max((len(v) for v in per_run.values()), default=0)):
                self.log_scalars(i, {k: v[i] for k, v in per_run.items() if i < len(v)})
        self.log_summary(summary)

    def close(self) -> None:
        """Close the loggers made from names (each once)."""
        for lg in self.own:
            lg.close()
        self.own = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _flatten(d: Mapping[str, Any], prefix: str, summary: dict[str, float], per_run: dict[str, list[float]]) -> None:
    for k, v in d.items():
        if k == "protocol":
            continue
        if isinstance(v, Mapping):
            _flatten(v, f"{prefix}/{k}", summary, per_run)
        elif k == "accuracies" and isinstance(v, list):
            per_run[f"{prefix}/accuracy"] = [float(a) for a in v]
        elif isinstance(v, numbers.Real) and math.isfinite(float(v)):
            summary[f"{prefix}/{k}"] = float(v)


__all__ = [
    "Logger",
    "CSVLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "Tracker",
    "MissingExtraError",
    "make_logger",
    "make_loggers",
    "require",
    "scalars",
    "run_id",
    "LOGGER_NAMES",
    "WANDB_ID_FILE",
]
