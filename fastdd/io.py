"""Atomic file writes and checksums: a crash never leaves a half-written file under its final name."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

PathLike = str | os.PathLike


def _atomic_target(path: PathLike, create: bool = True) -> tuple[Path, str]:
    path = Path(path)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return path, tmp


def _commit(tmp: str, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: PathLike, data: bytes, create: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename
    (``create``: make the folder when missing; else a missing folder raises ``FileNotFoundError``)."""
    path, tmp = _atomic_target(path, create)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str, create: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), create)


def atomic_write_json(path: PathLike, obj: Any, create: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", create)


def atomic_save_safetensors(path: PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                            create: bool = True) -> None:
    """``safetensors.torch.save_file`` made atomic. Tensors are made contiguous and moved to the CPU."""
    path, tmp = _atomic_target(path, create)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
