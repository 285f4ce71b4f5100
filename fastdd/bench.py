"""Memory scaling of the gradient modes: ``fastdd bench memory-scaling``, and the pieces ``bench/`` reuses.

One *point* is one MTT meta-gradient (:func:`fastdd.engine.trajectory_matching_grad`, or any function with
its signature) on random CIFAR-like data: ``images`` synthetic images (``num_classes · ipc`` at a given
IPC), ``steps`` unrolled student steps of ``batch`` images each, a ConvNet, optionally DSA. Each point
runs in a fresh subprocess (:func:`measure`) so that peaks do not mix: on CUDA the peak of
``torch.cuda.max_memory_allocated`` above what was allocated before the call; on the CPU the process's
peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) above its
resident memory at that moment, with ``MALLOC_MMAP_THRESHOLD_`` fixed so that freed blocks go back to
the system and the resident size follows live tensors.

:func:`memory_scaling` measures a grid (modes × IPC or minibatch × steps) where it fits and predicts
the rest from a linear fit per mode (:func:`fit_memory`)::

    peak ≈ a + b · images_per_step · k + v(steps) · P · 4 bytes

with ``k = steps`` for BPTT (every step's graph is kept) and ``k = 1`` for the adjoint and TESLA (one
step's graph at a time); ``v(steps)`` is the number of parameter vectors the mode keeps (known, not
fitted: :func:`theta_vectors`) and ``P`` the number of parameters. ``a`` and ``b`` are fitted by least
squares on the measured points. The fit is checked against one measured point held out of it
(:func:`holdout_check`), and :meth:`MemoryFit.max_ipc` inverts it: the largest IPC whose meta-gradient
(batch = all images, as at high IPC) fits a memory budget.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Gradient modes of the engine that the benchmark measures, and the θ storages of adjoint / tesla.
BASE_MODES = ("bptt", "adjoint", "tesla")
THETA_STORAGES = ("auto", "checkpoint", "all", "host")
#: Modes whose memory grows with the number of unrolled steps (the whole graph is kept).
GROWING_MODES = ("bptt", "reference")
MIB = float(1 << 20)


def parse_mode(label: str, allow_reference: bool = False) -> tuple[str, str | None]:
    """A mode label → ``(mode, theta_storage)``.

    ``"bptt"`` → ``("bptt", None)``; ``"adjoint"`` / ``"tesla"`` → ``(mode, "auto")`` (the engine's
    default); ``"adjoint:all"``, ``"adjoint:checkpoint"``, ``"tesla:host"`` … pick the storage. ``"reference"``
    (the research-code style baseline of ``bench/reference_mtt.py``) only with ``allow_reference``.
    """
    base, _, storage = str(label).strip().partition(":")
    bases = BASE_MODES + (("reference",) if allow_reference else ())
    if base not in bases:
        raise ValueError(
            f"unknown mode {label!r}: give one of {', '.join(bases)}, optionally "
            f"adjoint:STORAGE / tesla:STORAGE with STORAGE in {', '.join(THETA_STORAGES)}"
        )
    if base in GROWING_MODES:
        if storage:
            raise ValueError(f"mode {label!r}: {base} keeps its whole graph, it has no theta storage")
        return base, None
    storage = storage or "auto"
    if storage not in THETA_STORAGES:
        raise ValueError(f"mode {label!r}: theta storage must be one of {', '.join(THETA_STORAGES)}")
    return base, storage


def mode_label(label: str, allow_reference: bool = False) -> str:
    """The canonical label: ``"adjoint:auto"`` → ``"adjoint"``, ``"adjoint:all"`` stays."""
    base, storage = parse_mode(label, allow_reference)
    return base if storage in (None, "auto") else f"{base}:{storage}"


def theta_vectors(mode: str, steps: int, device: str = "cpu", auto_storage: str = "checkpoint") -> float:
    """How many parameter vectors a mode keeps at its peak (the known part of the memory model).

    BPTT: ``steps`` (θ_1 .. θ_N live in the graph). Adjoint / TESLA: ``"all"`` keeps θ_0 .. θ_N; ``"host"``
    the same on a CPU student, about one on the device of a CUDA student (the rest is in host memory,
    which ``max_memory_allocated`` does not see); ``"checkpoint"`` every k-th (k = ⌈√N⌉) plus one
    recomputed segment of k during the backward walk; ``"auto"`` whichever of these two the engine picks
    (``auto_storage``, see :func:`fastdd.engine.auto_theta_storage`).
    """
    base, storage = parse_mode(mode, allow_reference=True)
    if storage == "auto":
        storage = auto_storage
    if base in GROWING_MODES:
        return float(steps)
    if storage == "all" or (storage == "host" and not str(device).startswith("cuda")):
        return float(steps + 1)
    if storage == "host":
        return 1.0
    from .engine import checkpoint_interval

    k = checkpoint_interval(steps)
    return float(-(-steps // k) + k - 1)


# ------------------------------------------------------------------------------------ one problem
@dataclass(frozen=True)
class Problem:
    """The inputs of one benchmark meta-gradient (built by :func:`build_problem`)."""

    steps: int
    batch: int  # images per unrolled step
    images: int | None = None  # synthetic images in the set (None: = batch)
    im_size: int = 32
    channels: int = 3
    num_classes: int = 10
    width: int = 128
    depth: int = 3
    dsa: bool = False
    seed: int = 0
    dtype: str = "float32"

    @property
    def num_images(self) -> int:
        return self.batch if self.images is None else self.images


def build_problem(p: Problem, device: str = "cpu") -> dict[str, Any]:
    """The net, data and augmentation of a :class:`Problem`, on ``device``: a dict with the arguments of
    :func:`fastdd.engine.trajectory_matching_grad` (``net, images, labels, syn_lr, start, target, batches,
    augment``). Step ``i`` uses images ``(i·batch + j) mod M``, j < batch (the set is cycled, every step
    full); labels are ``arange(M) mod num_classes``; the target is ``start + 0.01·noise``; DSA (when on)
    is a :class:`fastdd.augment.StepAugment` with every step's parameters drawn before the call."""
    import torch

    import fastdd
    from fastdd.augment import DSAConfig, StepAugment
    from fastdd.engine import to_device_once

    m, b = p.num_images, p.batch
    if not 1 <= b <= m:
        raise ValueError(f"batch must lie in 1 .. images ({m}), got {b}")
    dtype = getattr(torch, p.dtype)
    g = torch.Generator().manual_seed(p.seed)
    net = fastdd.build_model(
        "convnet",
        in_channels=p.channels,
        num_classes=p.num_classes,
        im_size=(p.im_size, p.im_size),
        width=p.width,
        depth=p.depth,
    )
    start = net.init(g, dtype=dtype)
    target = start + 0.01 * torch.randn(net.num_params, generator=g, dtype=dtype)
    x = torch.randn(m, p.channels, p.im_size, p.im_size, generator=g, dtype=dtype)
    y = torch.arange(m) % p.num_classes
    batches = [(torch.arange(b) + i * b) % m for i in range(p.steps)]
    start, target, x, y, *batches = to_device_once([start, target, x, y, *batches], device)
    aug = None
    if p.dsa:
        aug = StepAugment(DSAConfig(), torch.Generator().manual_seed(p.seed + 1)).prepare(
            [b] * p.steps, p.im_size, device
        )
    return {
        "net": net,
        "images": x,
        "labels": y,
        "syn_lr": torch.tensor(0.01, dtype=dtype, device=device),
        "start": start,
        "target": target,
        "batches": batches,
        "augment": aug,
    }


def load_impl(impl: str | None) -> Callable:
    """``None`` → :func:`fastdd.engine.trajectory_matching_grad`; ``"path/file.py:function"`` → that function
    (same signature: ``(net, images, labels, syn_lr, start, target, batches, augment, mode=..., **kw)``)."""
    if impl is None:
        from fastdd.engine import trajectory_matching_grad

        return trajectory_matching_grad
    import importlib.util

    path, _, name = str(impl).rpartition(":")
    if not path or not name:
        raise ValueError(f"impl must be 'path/to/file.py:function', got {impl!r}")
    spec = importlib.util.spec_from_file_location(f"_fastdd_bench_impl_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def call_problem(fn: Callable, prob: dict[str, Any], mode: str) -> Any:
    """One meta-gradient of a built problem with ``fn`` in mode label ``mode`` (e.g. ``"adjoint:all"``)."""
    base, storage = parse_mode(mode, allow_reference=True)
    kw = {} if storage is None else {"theta_storage": storage}
    return fn(
        prob["net"],
        prob["images"],
        prob["labels"],
        prob["syn_lr"],
        prob["start"],
        prob["target"],
        prob["batches"],
        prob["augment"],
        mode=base,
        **kw,
    )


def _status_bytes(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` → ``m.peak`` (bytes) and ``m.seconds``: on CUDA the peak of
    ``torch.cuda.max_memory_allocated`` above what was allocated at entry (synchronised at both ends); on the CPU
    the process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` at entry) above its
    resident memory then. Meant for a fresh process (:func:`measure`) with ``MALLOC_MMAP_THRESHOLD_`` fixed."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.base = self.peak = 0
        self.seconds = 0.0

    def __enter__(self) -> PeakMemory:
        import time

        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _status_bytes("VmRSS:")
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import time

        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._t
        self.peak = (torch.cuda.max_memory_allocated() if self.cuda else _status_bytes("VmHWM:")) - self.base


def _child(spec_json: str) -> None:
    """Run in the measuring subprocess: build the problem, reset the peak, run it once, print JSON."""
    spec = json.loads(spec_json)
    device, mode = spec.pop("device"), spec.pop("mode")
    fn = load_impl(spec.pop("impl"))
    prob = build_problem(Problem(**spec), device)
    with PeakMemory(device) as m:
        call_problem(fn, prob, mode)
    print(json.dumps({"peak": m.peak, "seconds": m.seconds, "base": m.base}))


_CHILD = "import sys, fastdd.bench as b; b._child(sys.argv[1])"


# ------------------------------------------------------------------------------------ measuring
@dataclass
class MemoryPoint:
    mode: str  # label, e.g. "bptt", "adjoint", "adjoint:all"
    steps: int
    batch: int  # images per unrolled step
    peak_mib: float | None  # measured peak; None: not measured (predicted, or failed)
    seconds: float | None  # the measured call's time (in its subprocess)
    device: str
    note: str = ""
    images: int | None = None  # images in the set (None: = batch)
    ipc: int | None = None  # images per class, when the point was given by IPC
    source: str = "measured"  # "measured" | "predicted" | "failed"
    predicted_mib: float | None = None  # the final fit's value at this point (measured or not)

    @property
    def num_images(self) -> int:
        return self.batch if self.images is None else self.images


def measure(
    mode: str,
    steps: int,
    batch: int = 100,
    im_size: int = 32,
    channels: int = 3,
    width: int = 128,
    device: str = "cpu",
    timeout: float = 1800,
    *,
    images: int | None = None,
    ipc: int | None = None,
    num_classes: int = 10,
    depth: int = 3,
    dsa: bool = False,
    seed: int = 0,
    dtype: str = "float32",
    impl: str | None = None,
) -> MemoryPoint:
    """Peak memory (MiB) and time of one meta-gradient, in a fresh subprocess.

    ``mode`` is a label (``"bptt"``, ``"adjoint"``, ``"adjoint:all"``, …; ``"reference"`` with ``impl``),
    ``images`` the set size (default ``batch``; ``num_classes · ipc`` when ``ipc`` is given), ``impl`` an
    alternative implementation ``"file.py:function"`` (see :func:`load_impl`). A failed subprocess
    (e.g. out of memory) gives a point with ``source="failed"`` and the end of its error output.
    """
    label = mode_label(mode, allow_reference=impl is not None)
    if images is None and ipc is not None:
        images = num_classes * ipc
    spec = {
        "mode": label,
        "device": device,
        "impl": None if impl is None else str(impl),
        **asdict(Problem(steps, batch, images, im_size, channels, num_classes, width, depth, dsa, seed, dtype)),
    }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    point = MemoryPoint(label, steps, batch, None, None, device, images=images, ipc=ipc)
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        point.source, point.note = "failed", f"failed: no result within {timeout:.0f} s"
        return point
    if out.returncode != 0:
        err = out.stderr.strip()[-300:] or f"exit status {out.returncode} (killed: out of memory?)"
        point.source, point.note = "failed", f"failed: {err}"
        return point
    r = json.loads(out.stdout.strip().splitlines()[-1])
    point.peak_mib, point.seconds = r["peak"] / MIB, r["seconds"]
    return point


# ------------------------------------------------------------------------------------ the model
def _x(mode: str, steps: int, batch: int) -> float:
    """The fitted variable: images per step, times the steps for modes that keep every step's graph."""
    base, _ = parse_mode(mode, allow_reference=True)
    return float(batch * (steps if base in GROWING_MODES else 1))


@dataclass
class MemoryFit:
    """``peak_mib ≈ intercept + per_image_step · x + theta_vectors(steps) · theta_mib`` for one mode, with
    ``x = batch · steps`` (BPTT) or ``batch`` (adjoint, TESLA). ``per_image_step_mib`` is ``None`` when the
    measured points have a single ``x`` (then only points with that ``x`` can be predicted)."""

    mode: str
    intercept_mib: float
    per_image_step_mib: float | None
    theta_mib: float  # one parameter vector (known: P × element size), not fitted
    device: str
    act_per_image_mib: float | None  # one step's first-order activations per image: decides "auto" storage
    points: int  # measured points the fit used
    xs: list[float] = field(default_factory=list)
    max_residual_pct: float = 0.0

    def theta_term(self, steps: int, batch: int) -> float:
        return (
            theta_vectors(
                self.mode, steps, self.device, auto_storage(steps, batch, self.theta_mib, self.act_per_image_mib)
            )
            * self.theta_mib
        )

    def predict(self, steps: int, batch: int) -> float | None:
        """Predicted peak MiB of ``steps`` steps of ``batch`` images, or ``None`` when undetermined."""
        x = _x(self.mode, steps, batch)
        if self.per_image_step_mib is None:
            if not any(abs(x - v) <= 1e-9 * max(1.0, abs(v)) for v in self.xs):
                return None
            slope = 0.0
        else:
            slope = self.per_image_step_mib
        return self.intercept_mib + slope * x + self.theta_term(steps, batch)

    def max_ipc(self, gib: float, steps: int, num_classes: int = 10) -> int | None:
        """The largest IPC whose meta-gradient (``steps`` steps, batch = all ``num_classes · IPC`` images)
        is predicted to fit ``gib`` GiB; 0 when not even IPC 1 fits, ``None`` when the fit cannot say
        (no slope measured, or a slope ≤ 0)."""
        b = self.per_image_step_mib
        if b is None or b <= 0:
            return None
        k = steps if parse_mode(self.mode, allow_reference=True)[0] in GROWING_MODES else 1
        budget = gib * 1024.0
        room = budget - self.intercept_mib - self.theta_term(steps, num_classes)
        ipc = max(0, int(math.floor(room / (b * num_classes * k))))
        # guard the rounding of the division: the answer must fit, the next must not
        while ipc > 0 and self.predict(steps, num_classes * ipc) > budget:
            ipc -= 1
        while self.predict(steps, num_classes * (ipc + 1)) <= budget:
            ipc += 1
        return ipc

    def describe(self) -> str:
        theta = f"θ storage ({self.theta_mib:.2f} MiB per parameter vector kept)"
        if self.per_image_step_mib is None:
            return (
                f"{self.mode}: peak ≈ {self.intercept_mib:.1f} MiB + {theta}; one images-per-step value "
                f"measured, so no per-image slope; {self.points} points, largest residual {self.max_residual_pct:.1f} %"
            )
        per = "image·step" if parse_mode(self.mode, allow_reference=True)[0] in GROWING_MODES else "image per step"
        return (
            f"{self.mode}: peak ≈ {self.intercept_mib:.1f} MiB + {self.per_image_step_mib:.4f} MiB per {per}"
            f" + {theta}; {self.points} points, largest residual {self.max_residual_pct:.1f} %"
        )


def auto_storage(steps: int, batch: int, theta_mib: float, act_per_image_mib: float | None) -> str:
    """The θ storage ``theta_storage="auto"`` picks for ``steps`` steps of ``batch`` images ("checkpoint" when
    the activations per image are unknown)."""
    if act_per_image_mib is None:
        return "checkpoint"
    from .engine import auto_theta_storage

    return auto_theta_storage(steps, theta_mib, act_per_image_mib * batch)


def activations_per_image_mib(
    in_channels: int, num_classes: int, im_size: int, width: int, depth: int, probe_batch: int = 8
) -> float:
    """MiB autograd saves per image for one first-order student step of the ConvNet (what the engine's
    ``theta_storage="auto"`` measures on its first step), from one probe step on random images."""
    import torch

    from .engine import saved_bytes, student_loss
    from .models import build_model

    net = build_model(
        "convnet",
        in_channels=in_channels,
        num_classes=num_classes,
        im_size=(im_size, im_size),
        width=width,
        depth=depth,
    )
    g = torch.Generator().manual_seed(0)
    theta = net.init(g).requires_grad_(True)
    x = torch.randn(probe_batch, in_channels, im_size, im_size, generator=g)
    with saved_bytes() as saved:
        torch.autograd.grad(student_loss(net(x, theta), torch.arange(probe_batch) % num_classes), theta)
    return saved[0] / probe_batch / MIB


def inner_step(net, theta, x, y, v):
    """One unrolled student step as the meta-gradient sees it: forward, ``autograd.grad(create_graph=True)``
    w.r.t. θ, then the double backward of ``⟨g, v⟩`` w.r.t. θ and the images. Returns that last pair of
    gradients. The unit the benchmark scripts time and count FLOPs of."""
    import torch
    import torch.nn.functional as F

    th = theta.detach().requires_grad_(True)
    xx = x.detach().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(net(xx, th), y), th, create_graph=True)[0]
    return torch.autograd.grad((g * v).sum(), [th, xx])


def fit_memory(
    points: Sequence[MemoryPoint], num_params: int, bytes_per_param: int = 4, act_per_image_mib: float | None = None
) -> MemoryFit | None:
    """Least-squares fit of :class:`MemoryFit` to the measured points (all of one mode and device);
    ``None`` when none is measured."""
    pts = [p for p in points if p.peak_mib is not None]
    if not pts:
        return None
    mode, device = pts[0].mode, pts[0].device
    if any(p.mode != mode for p in pts):
        raise ValueError(f"fit_memory: points of several modes ({sorted({p.mode for p in pts})}); fit one at a time")
    theta_mib = num_params * bytes_per_param / MIB
    xs = [_x(mode, p.steps, p.batch) for p in pts]
    ys = [
        p.peak_mib
        - theta_vectors(mode, p.steps, device, auto_storage(p.steps, p.batch, theta_mib, act_per_image_mib)) * theta_mib
        for p in pts
    ]
    n = len(pts)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12 * max(1.0, mx * mx):
        a, b = my, None
    else:
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        a = my - b * mx
    fit = MemoryFit(mode, a, b, theta_mib, device, act_per_image_mib, n, sorted(set(xs)))
    res = [abs(fit.predict(p.steps, p.batch) - p.peak_mib) / max(p.peak_mib, 1e-9) for p in pts]
    fit.max_residual_pct = 100.0 * max(res)
    return fit


@dataclass
class HoldoutCheck:
    """The fit's error at one measured point left out of it (the largest: the farthest extrapolation)."""

    mode: str
    steps: int
    batch: int
    images: int
    ipc: int | None
    measured_mib: float
    predicted_mib: float
    error_pct: float  # 100 · (predicted − measured) / measured
    fitted_on: int  # measured points in the fit


def holdout_check(
    points: Sequence[MemoryPoint], num_params: int, bytes_per_param: int = 4, act_per_image_mib: float | None = None
) -> HoldoutCheck | str:
    """Leave the measured point with the largest ``x`` (ties: most steps) out, fit the rest, predict it.
    Returns the check, or a string saying why there is none (fewer than 3 measured points, or the rest
    cannot predict it)."""
    pts = [p for p in points if p.peak_mib is not None]
    if len(pts) < 3:
        return f"needs 3 measured points, has {len(pts)}"
    held = max(pts, key=lambda p: (_x(p.mode, p.steps, p.batch), p.steps, p.num_images))
    rest = [p for p in pts if p is not held]
    fit = fit_memory(rest, num_params, bytes_per_param, act_per_image_mib)
    pred = fit.predict(held.steps, held.batch) if fit is not None else None
    if pred is None:
        return "the other measured points have one images-per-step value: no slope to extrapolate with"
    return HoldoutCheck(
        held.mode,
        held.steps,
        held.batch,
        held.num_images,
        held.ipc,
        held.peak_mib,
        pred,
        100.0 * (pred - held.peak_mib) / held.peak_mib,
        len(rest),
    )


# ------------------------------------------------------------------------------------ the experiment
@dataclass
class ScalingResult:
    """What :func:`memory_scaling` returns (iterates over its points)."""

    points: list[MemoryPoint]
    fits: dict[str, MemoryFit]
    holdout: dict[str, HoldoutCheck | str]
    max_ipc: dict[str, dict[int, int | None]]  # mode -> steps -> largest IPC fitting max_gib
    max_gib: float | None
    config: dict[str, Any]

    def __iter__(self):
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "points": [asdict(p) for p in self.points],
            "fits": {m: asdict(f) for m, f in self.fits.items()},
            "holdout": {m: asdict(h) if isinstance(h, HoldoutCheck) else {"none": h} for m, h in self.holdout.items()},
            "max_gib": self.max_gib,
            "max_ipc": {m: {str(s): v for s, v in d.items()} for m, d in self.max_ipc.items()},
        }


def grid(
    steps: Sequence[int],
    batch: int | Sequence[int] | None = None,
    ipc: Sequence[int] | None = None,
    num_classes: int = 10,
) -> list[tuple[int, int, int | None, int]]:
    """The points ``(images, batch, ipc, steps)`` of an experiment. With ``ipc``: ``num_classes · ipc``
    images, each step a minibatch of ``batch`` (capped at the set) or, without ``batch``, all of them.
    Without ``ipc``: a set of ``batch`` images (default 100), all used at every step."""
    batches = [batch] if isinstance(batch, int) else (list(batch) if batch else [])
    if any(b < 1 for b in batches) or any(s < 1 for s in steps) or any(i < 1 for i in (ipc or [])):
        raise ValueError("steps, batch and ipc must be >= 1")
    sets: list[tuple[int, int, int | None]] = []
    if ipc:
        for i in ipc:
            m = num_classes * i
            sets += [(m, m, i)] if not batches else [(m, min(b, m), i) for b in batches]
    else:
        sets += [(b, b, None) for b in (batches or [100])]
    out = []
    for s in dict.fromkeys(sets):
        for n in dict.fromkeys(steps):
            out.append((*s, n))
    return out


def _fmt_point(p: MemoryPoint) -> str:
    where = f"ipc={p.ipc:<4d} " if p.ipc is not None else ""
    head = f"{p.mode:12s} {where}images={p.num_images:<5d} batch={p.batch:<5d} steps={p.steps:<4d}"
    if p.source == "measured":
        return f"{head} peak {p.peak_mib:10.1f} MiB  measured ({p.seconds:.1f} s)"
    if p.source == "predicted":
        pred = "?" if p.predicted_mib is None else f"{p.predicted_mib:10.1f}"
        return f"{head} peak {pred} MiB  predicted ({p.note})"
    return f"{head} {p.note}"


@dataclass
class _Sweep:
    """What every point of one :func:`memory_scaling` call shares: the problem's shape, where and how it is
    measured, and the network's size."""

    im_size: int
    channels: int
    width: int
    depth: int
    num_classes: int
    dsa: bool
    device: str
    timeout: float  # seconds per measured point
    max_mib: float | None  # points predicted above this are not measured
    measure_fn: Callable[..., MemoryPoint]
    num_params: int = field(init=False)  # of the ConvNet
    act_per_image_mib: float = field(init=False)  # decides the "auto" θ storage of the fit

    def __post_init__(self) -> None:
        from .models import build_model

        c, k, s, w, d = self.channels, self.num_classes, self.im_size, self.width, self.depth
        self.num_params = build_model(
            "convnet", in_channels=c, num_classes=k, im_size=(s, s), width=w, depth=d
        ).num_params
        self.act_per_image_mib = activations_per_image_mib(c, k, s, w, d)

    def config(
        self, steps: Sequence[int], labels: list[str], batch: int | Sequence[int] | None, ipc: Sequence[int] | None
    ) -> dict[str, Any]:
        """The settings of the experiment, as :class:`ScalingResult` records them."""
        return {
            "steps": list(steps),
            "modes": labels,
            "batch": batch if batch is None or isinstance(batch, int) else list(batch),
            "ipc": None if ipc is None else list(ipc),
            "num_classes": self.num_classes,
            "im_size": self.im_size,
            "channels": self.channels,
            "width": self.width,
            "depth": self.depth,
            "dsa": self.dsa,
            "device": self.device,
            "max_mib": self.max_mib,
            "num_params": self.num_params,
            "model": "peak ≈ a + b · images_per_step · (steps for bptt | 1 for adjoint/tesla) "
            "+ theta_vectors(mode, steps) · num_params · 4 bytes",
        }


def memory_scaling(
    steps: Sequence[int],
    modes: Sequence[str],
    batch: int | Sequence[int] | None = None,
    im_size: int = 32,
    channels: int = 3,
    width: int = 128,
    device: str = "cpu",
    max_mib: float | None = None,
    out: str | os.PathLike | None = None,
    echo: Callable[[str], Any] = print,
    *,
    ipc: Sequence[int] | None = None,
    num_classes: int = 10,
    depth: int = 3,
    dsa: bool = False,
    max_gib: float | None = None,
    max_ipc_steps: Sequence[int] | None = None,
    timeout: float = 3600,
    measure_fn: Callable[..., MemoryPoint] | None = None,
) -> ScalingResult:
    """Measure the grid :func:`grid` (``steps`` × ``ipc`` or ``batch``) for every mode label in ``modes``
    where it fits, predict the rest, check the prediction, and write the results.

    Per mode, points are measured cheapest first (by ``x`` of :class:`MemoryFit`). Once two points are
    measured, a point that the fit of the points measured so far predicts above ``max_mib`` MiB is not
    measured but predicted (``source="predicted"``). Afterwards every mode is fitted on all its measured
    points (:func:`fit_memory`), the fit is checked on a held-out point (:func:`holdout_check`), every
    point gets the fit's value (``predicted_mib``) and, with ``max_gib``, the largest IPC that fits that
    many GiB is found per mode and step count (``max_ipc_steps``, default ``steps``). ``out``: writes
    ``memory_scaling.csv``, ``.md``, ``.json``
    and ``.png`` there. ``measure_fn`` replaces :func:`measure` (same arguments; for tests).
    """
    labels = list(dict.fromkeys(mode_label(m) for m in modes))
    if not labels:
        raise ValueError("no modes to measure")
    points_spec = grid(steps, batch, ipc, num_classes)
    sweep = _Sweep(im_size, channels, width, depth, num_classes, dsa, device, timeout, max_mib, measure_fn or measure)
    points: list[MemoryPoint] = []
    for label in labels:
        points += _sweep_mode(sweep, label, points_spec, echo)
    fits, holdout, max_ipc = _fit_modes(sweep, labels, points, max_gib, list(dict.fromkeys(max_ipc_steps or steps)))
    config = sweep.config(steps, labels, batch, ipc)
    res = ScalingResult(points, fits, holdout, max_ipc, max_gib, config)
    for line in summary_lines(res):
        echo(line)
    if out is not None:
        write_results(res, Path(out))
    return res


def _sweep_mode(
    sweep: _Sweep, label: str, points_spec: list[tuple[int, int, int | None, int]], echo: Callable[[str], Any]
) -> list[MemoryPoint]:
    """The points ``points_spec`` (``(images, batch, ipc, steps)``, see :func:`grid`) of mode ``label``,
    cheapest first: measured, or predicted when the fit of the points measured so far (two at least) puts
    them above ``sweep.max_mib``. Each is echoed as it is found."""
    todo = sorted(points_spec, key=lambda s: (_x(label, s[3], s[1]), s[3], s[0]))
    measured: list[MemoryPoint] = []
    points: list[MemoryPoint] = []
    for images, b, i, n in todo:
        fit = fit_memory(measured, sweep.num_params, act_per_image_mib=sweep.act_per_image_mib)
        pred = fit.predict(n, b) if fit is not None else None
        if sweep.max_mib is not None and len(measured) >= 2 and pred is not None and pred > sweep.max_mib:
            note = f"{pred:.0f} MiB > {sweep.max_mib:.0f} MiB: not measured"
            p = MemoryPoint(
                label,
                n,
                b,
                None,
                None,
                sweep.device,
                note,
                images=images,
                ipc=i,
                source="predicted",
                predicted_mib=pred,
            )
        else:
            p = sweep.measure_fn(
                label,
                n,
                b,
                sweep.im_size,
                sweep.channels,
                sweep.width,
                sweep.device,
                sweep.timeout,
                images=images,
                ipc=i,
                num_classes=sweep.num_classes,
                depth=sweep.depth,
                dsa=sweep.dsa,
            )
            if p.peak_mib is not None:
                measured.append(p)
        points.append(p)
        echo(_fmt_point(p))
    return points


def _fit_modes(
    sweep: _Sweep, labels: list[str], points: list[MemoryPoint], max_gib: float | None, max_ipc_steps: list[int]
) -> tuple[dict[str, MemoryFit], dict[str, HoldoutCheck | str], dict[str, dict[int, int | None]]]:
    """Per mode: the fit on all its measured points (which also sets every point's ``predicted_mib``), the
    held-out check, and, with ``max_gib``, the largest IPC fitting that many GiB at each of ``max_ipc_steps``."""
    fits: dict[str, MemoryFit] = {}
    holdout: dict[str, HoldoutCheck | str] = {}
    max_ipc: dict[str, dict[int, int | None]] = {}
    for label in labels:
        mine = [p for p in points if p.mode == label]
        fit = fit_memory(mine, sweep.num_params, act_per_image_mib=sweep.act_per_image_mib)
        holdout[label] = holdout_check(mine, sweep.num_params, act_per_image_mib=sweep.act_per_image_mib)
        if fit is None:
            continue
        fits[label] = fit
        for p in mine:
            p.predicted_mib = fit.predict(p.steps, p.batch)
        if max_gib is not None:
            max_ipc[label] = {n: fit.max_ipc(max_gib, n, sweep.num_classes) for n in max_ipc_steps}
    return fits, holdout, max_ipc


def summary_lines(res: ScalingResult) -> list[str]:
    """The fit, the held-out check and the max-IPC answer, as lines of text."""
    lines = ["", "fit (measured points only):"]
    for label in res.config["modes"]:
        fit = res.fits.get(label)
        lines.append("  " + (fit.describe() if fit is not None else f"{label}: nothing measured"))
    lines.append("held-out check (largest measured point left out of the fit, then predicted):")
    for label, h in res.holdout.items():
        if isinstance(h, HoldoutCheck):
            lines.append(
                f"  {label}: steps={h.steps} batch={h.batch} images={h.images}: measured "
                f"{h.measured_mib:.1f} MiB, predicted {h.predicted_mib:.1f} MiB from {h.fitted_on} points: "
                f"error {h.error_pct:+.1f} %"
            )
        else:
            lines.append(f"  {label}: none ({h})")
    if res.max_gib is not None:
        lines.append(
            f"largest IPC fitting {res.max_gib:g} GiB (batch = all {res.config['num_classes']}·IPC images, "
            "from the fit):"
        )
        for label in res.config["modes"]:
            d = res.max_ipc.get(label)
            if not d:
                lines.append(f"  {label}: unknown (nothing measured)")
                continue
            parts = [
                f"{n} steps: {'unknown (no slope: measure two IPCs / batches)' if v is None else v}"
                for n, v in d.items()
            ]
            lines.append(f"  {label}: " + ", ".join(parts))
    return lines


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "" if v is None else format(v, fmt)


def write_results(res: ScalingResult, out: Path) -> None:
    """``memory_scaling.csv`` / ``.md`` / ``.json`` / ``.png`` into ``out``."""
    from .io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    rows = ["mode,steps,batch,images,ipc,peak_mib,predicted_mib,source,seconds,device,note"]
    rows += [
        f"{p.mode},{p.steps},{p.batch},{p.num_images},{'' if p.ipc is None else p.ipc},{_num(p.peak_mib)},"
        f"{_num(p.predicted_mib)},{p.source},{_num(p.seconds)},{p.device},{p.note.replace(',', ';')}"
        for p in res.points
    ]
    atomic_write_text(out / "memory_scaling.csv", "\n".join(rows) + "\n")
    md = [
        "| mode | IPC | images | batch | steps | peak (MiB) | source | fit (MiB) | seconds |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in res.points:
        peak = f"{p.peak_mib:,.1f}" if p.peak_mib is not None else ""
        src = p.source if p.source != "failed" else f"failed: {p.note[8:80]}"
        md.append(
            f"| {p.mode} | {'' if p.ipc is None else p.ipc} | {p.num_images} | {p.batch} | {p.steps} | {peak} "
            f"| {src} | {'' if p.predicted_mib is None else f'{p.predicted_mib:,.1f}'} | {_num(p.seconds)} |"
        )
    md += ["", "```", *[line for line in summary_lines(res) if line], "```", ""]
    atomic_write_text(out / "memory_scaling.md", "\n".join(md))
    atomic_write_json(out / "memory_scaling.json", res.to_dict())
    _plot(res, out / "memory_scaling.png")


def _plot(res: ScalingResult, path: Path) -> None:
    from .plots import _pyplot, save_figure

    plt = _pyplot()
    pts = res.points
    by_steps = len({p.steps for p in pts}) > 1
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    series: dict[tuple, list[MemoryPoint]] = {}
    for p in pts:
        key = (p.mode, p.num_images, p.batch) if by_steps else (p.mode, p.steps)
        series.setdefault(key, []).append(p)
    for key, ps in series.items():
        ps = sorted(ps, key=lambda p: p.steps if by_steps else p.batch)
        xs = [p.steps if by_steps else p.batch for p in ps]
        name = (
            (f"{key[0]}, {key[2]} img/step" + (f" of {key[1]}" if key[1] != key[2] else ""))
            if by_steps
            else f"{key[0]}, {key[1]} steps"
        )
        fit_x = [x for x, p in zip(xs, ps) if p.predicted_mib is not None]
        fit_y = [p.predicted_mib for p in ps if p.predicted_mib is not None]
        line = ax.plot(fit_x, fit_y, linestyle="--", linewidth=1)[0] if fit_x else None
        color = line.get_color() if line is not None else None
        mx = [x for x, p in zip(xs, ps) if p.peak_mib is not None]
        ax.plot(
            mx,
            [p.peak_mib for p in ps if p.peak_mib is not None],
            marker="o",
            linestyle="-",
            color=color,
            label=f"{name} (measured)",
        )
        px = [x for x, p in zip(xs, ps) if p.peak_mib is None and p.predicted_mib is not None]
        if px:
            ax.plot(
                px,
                [p.predicted_mib for p in ps if p.peak_mib is None and p.predicted_mib is not None],
                marker="o",
                markerfacecolor="none",
                linestyle="none",
                color=color,
                label=f"{name} (predicted)",
            )
    values = [v for p in pts for v in (p.peak_mib, p.predicted_mib) if v is not None and v > 0]
    if res.max_gib is not None and values and res.max_gib * 1024 <= 2 * max(values):
        ax.axhline(res.max_gib * 1024, color="grey", linewidth=0.8, linestyle=":", label=f"{res.max_gib:g} GiB")
    if values and max(values) > 20 * min(values):
        ax.set_yscale("log")
    ax.set_xlabel("unrolled steps" if by_steps else "images per step")
    ax.set_ylabel("peak memory (MiB)")
    ax.set_title("meta-gradient peak memory (filled: measured, hollow: predicted)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)
