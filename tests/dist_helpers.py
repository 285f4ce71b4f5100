"""Run a function on K gloo ranks (spawned processes) and collect what each returns."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, args: tuple, out: str, timeout_s: float) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)  # K processes share the machine's cores
    import fastdd.distributed as fd

    fd.init("cpu", timeout_s=timeout_s)
    ok = False
    try:
        res = fn(*args)
        torch.save(res, Path(out) / f"rank{rank}.pt")
        ok = True
    finally:
        fd.shutdown(synchronize=ok)
    # A finished rank leaves without the interpreter's teardown: in CI a rank whose work was done (result
    # written, group left) twice aborted in C++ destructors at exit ("terminate called without an active
    # exception", SIGABRT), which spawn reports as a failure. A rank that raised never gets here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(fn, *args, world: int = 2, timeout_s: float = 60.0) -> list:
    """``fn(*args)`` on ``world`` processes in one gloo group (``fastdd.distributed.init`` already
    called, as under torchrun); returns each rank's return value (tensors, dicts of tensors, numbers),
    ``None`` for a rank that exited without returning."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, free_port(), fn, args, out, timeout_s), nprocs=world, join=True)
        return [
            torch.load(Path(out) / f"rank{r}.pt", weights_only=True) if (Path(out) / f"rank{r}.pt").exists() else None
            for r in range(world)
        ]
