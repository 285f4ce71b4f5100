"""torch.distributed for fastdd: the process group, the split of a synthetic set, and the collectives.

Launch with ``torchrun`` (``torchrun --nproc-per-node=K -m fastdd distill ...``): :func:`init` reads
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
starts the process group (NCCL for CUDA devices, gloo otherwise) with a timeout, and picks
``LOCAL_RANK``'s GPU. Nothing here is home-made transport: every byte moves through torch.distributed.

What is split:

- **distillation** (MTT family): the synthetic set's rows (images, their labels, frozen mask, label
  logits and the optimiser state of those) are split in contiguous ranges (:func:`split_rows`, uneven
  when the set does not divide); every rank draws the same random numbers, each computes its rows'
  part of every unrolled step and the all-reduces make the step exact (:class:`Shard`);
- **DM**: each rank owns whole classes (their rows and pixel updates); only the loss is all-reduced;
- **experts**: each rank trains a disjoint subset of every output file's experts;
- **evaluation**: each rank trains a subset of the ``num_eval`` runs.

A failed collective (a rank died, or the group's timeout passed) raises :class:`DistributedError`
naming this rank, instead of hanging.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import FastDDError

#: Seconds a collective may wait for the other ranks before the run stops with an error.
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(FastDDError, RuntimeError):
    """A collective failed: another rank died, or it did not answer within the group's timeout."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group."""

    rank: int
    world: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    cpu_group: Any = field(default=None, compare=False)  # gloo group for host objects (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CURRENT: Dist | None = None


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(
    device: str | torch.device | None = None, backend: str | None = None, timeout_s: float | None = None
) -> Dist | None:
    """Join the process group torchrun described in the environment; ``None`` when not launched by it.

    ``device``: ``"cuda"`` becomes ``cuda:<LOCAL_RANK>`` (and is made the current device); the backend
    defaults to NCCL for CUDA and gloo otherwise. ``timeout_s`` (default :data:`DEFAULT_TIMEOUT_S`,
    or ``FASTDD_DIST_TIMEOUT``) bounds how long a collective waits for a rank that died or hangs.
    Calling it again returns the group already joined."""
    global _CURRENT
    import torch.distributed as dist

    if _CURRENT is not None:
        return _CURRENT
    if not launched():
        return None
    dev = resolve_device(device)
    if timeout_s is None:
        timeout_s = float(os.environ.get("FASTDD_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    backend = backend or ("nccl" if dev is not None and dev.type == "cuda" else "gloo")
    if dev is not None and dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    cpu_group = (
        dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        if dist.get_backend() != "gloo"
        else None
    )
    _CURRENT = Dist(dist.get_rank(), dist.get_world_size(), timeout_s, cpu_group)
    return _CURRENT


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked against what torch can see: ``ValueError`` naming it when it
    is no device name (``"gpu"``), or one torch has no such device of (``"cuda"`` without CUDA, ``"cuda:3"``
    on a machine with two GPUs)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a torch device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        extra = (
            f" (torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'})" if dev.type == "cuda" else ""
        )
        raise ValueError(f"device {str(device)!r}: torch sees no {dev.type} device here{extra}; use 'cpu'")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ValueError(
            f"device {str(device)!r}: torch sees {count()} {dev.type} device(s), {dev.type}:0..{dev.type}:{count() - 1}"
        )
    return dev


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """:func:`check_device`, and ``"cuda"`` without an index becomes ``cuda:<LOCAL_RANK>`` under torchrun."""
    if device is None:
        return None
    dev = check_device(device)
    if dev.type == "cuda" and dev.index is None and launched():
        dev = check_device(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))
    return dev


def current() -> Dist | None:
    """The group this process takes part in, when it has more than one process; else ``None``.

    A group started by :func:`init` or by the caller (``torch.distributed.init_process_group``)."""
    global _CURRENT
    import torch.distributed as dist

    if _CURRENT is not None:
        return _CURRENT if _CURRENT.world > 1 else None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    d = Dist(dist.get_rank(), dist.get_world_size())  # host objects go through the default group
    _CURRENT = d
    return d if d.world > 1 else None


def is_main() -> bool:
    """True on rank 0, and in a process that is not part of a group."""
    d = current()
    return d is None or d.is_main


def shutdown(synchronize: bool = False) -> None:
    """Leave the process group (if :func:`init` or the caller started one).

    ``synchronize=True`` first waits at a barrier until every rank gets here, so no rank tears down its
    gloo connections while another still talks to it (a rank leaving early can abort the other at exit).
    Use it only when this rank ended normally: after a failure the others are inside another collective
    and the barrier would wait for the timeout. A rank that has already exited fails the barrier; that is
    ignored."""
    global _CURRENT
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if synchronize:
            try:
                dist.barrier()
            except RuntimeError:  # a rank already gone (gloo: "connection closed by peer"): nothing to wait for
                pass
        dist.destroy_process_group()
    _CURRENT = None


def _failed(d: Dist, what: str, e: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {d.rank} of {d.world}: {what} failed ({type(e).__name__}: {e}). Another rank "
        f"probably died or stopped answering (timeout {d.timeout_s:g} s); this rank stops too"
    )


def all_reduce_(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """Sum (or ``op="max"``) ``t`` over the ranks, in place; returns ``t``."""
    import torch.distributed as dist

    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    except (RuntimeError, ValueError) as e:  # gloo / NCCL errors (DistBackendError is a RuntimeError)
        raise _failed(d, "all_reduce", e) from e
    return t


def all_gather_objects(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj`` (small host objects, e.g. accuracies) on every rank, in rank order."""
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    try:
        dist.all_gather_object(out, obj, group=d.cpu_group)
    except (RuntimeError, ValueError) as e:
        raise _failed(d, "all_gather_object", e) from e
    return out


def gather_objects(obj: Any, d: Dist) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, in rank order (``None`` on the others): large host objects only
    rank 0 writes, such as expert trajectories."""
    import torch.distributed as dist

    out: list[Any] | None = [None] * d.world if d.is_main else None
    try:
        dist.gather_object(obj, out, dst=0, group=d.cpu_group)
    except (RuntimeError, ValueError) as e:
        raise _failed(d, "gather_object", e) from e
    return out


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    try:
        dist.barrier(group=d.cpu_group)
    except (RuntimeError, ValueError) as e:
        raise _failed(d, "barrier", e) from e


def split_rows(m: int, world: int, what: str = "synthetic images") -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` row ranges of ``m`` rows over ``world`` ranks: the first ``m % world``
    ranks get one row more."""
    if m < world:
        raise ValueError(f"cannot split {m} {what} over {world} processes: use at most {m} processes")
    base, extra = divmod(m, world)
    out, lo = [], 0
    for r in range(world):
        hi = lo + base + (r < extra)
        out.append((lo, hi))
        lo = hi
    return out


@dataclass
class Shard:
    """This rank's rows ``[lo, hi)`` of a set of ``m`` rows split over the group (by default
    :func:`split_rows`; DM passes class-aligned ``bounds``).

    The policy keeps only its rows of the tensors named in ``names``; checkpoints and results hold the
    gathered whole."""

    dist: Dist
    m: int
    names: tuple[str, ...]
    bounds: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.bounds is None:
            self.bounds = split_rows(self.m, self.dist.world)
        los, his = [lo for lo, _ in self.bounds], [hi for _, hi in self.bounds]
        if len(self.bounds) != self.dist.world or los[0] != 0 or his[-1] != self.m or los[1:] != his[:-1]:
            raise ValueError(f"bounds {self.bounds} are not {self.dist.world} contiguous ranges covering {self.m} rows")

    @property
    def lo(self) -> int:
        return self.bounds[self.dist.rank][0]

    @property
    def hi(self) -> int:
        return self.bounds[self.dist.rank][1]

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole tensor (a copy)."""
        return t[self.lo : self.hi].clone()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The whole tensor from every rank's rows ``t``, on every rank (padded all-gather: the
        ranks' row counts may differ by one)."""
        import torch.distributed as dist

        most = max(hi - lo for lo, hi in self.bounds)
        pad = t.new_zeros((most, *t.shape[1:]))
        pad[: len(t)] = t.detach()
        parts = [torch.empty_like(pad) for _ in range(self.dist.world)]
        try:
            dist.all_gather(parts, pad)
        except (RuntimeError, ValueError) as e:
            raise _failed(self.dist, "all_gather", e) from e
        return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, self.bounds)])

    def localize(self, batches: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
        """Split host index batches into this rank's part: ``(local indices into its rows, their
        positions in the batch, weights |part| / |batch|)`` per step."""
        local, pos, weights = [], [], []
        for b in batches:
            mine = (b >= self.lo) & (b < self.hi)
            where = mine.nonzero().reshape(-1)
            local.append(b[where] - self.lo)
            pos.append(where)
            weights.append(len(where) / max(len(b), 1))
        return local, pos, weights


__all__ = [
    "Dist",
    "Shard",
    "DistributedError",
    "DEFAULT_TIMEOUT_S",
    "init",
    "current",
    "is_main",
    "launched",
    "check_device",
    "resolve_device",
    "shutdown",
    "all_reduce_",
    "all_gather_objects",
    "gather_objects",
    "barrier",
    "split_rows",
]
