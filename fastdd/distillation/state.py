"""Atomic checkpoints of a distillation run: tensors, optimiser states, generator states, iteration.

Layout in the run folder: ``checkpoint_<it>.safetensors`` (every tensor) and ``checkpoint.json``
(iteration, non-tensor optimiser state, the tensor file's name, size and SHA-256). The tensor file is
written first, then ``checkpoint.json`` is replaced atomically, then the previous tensor file is removed:
a crash at any point leaves a consistent checkpoint. A save that fails (a full disk, a vanished folder)
removes what it wrote and leaves the previous checkpoint as it was.

``checkpoint.json`` may have been edited or crafted: its file name must stay inside the run folder
(:func:`fastdd.io.inside`), the tensor file must match its recorded size and SHA-256 (older checkpoints
without the record load with a notice), and the only file a save ever deletes is a previous
``checkpoint_<n>.safetensors`` of the same folder, the name fastdd itself gives.

For a set split over processes (:mod:`fastdd.distributed`) the loop passes ``transform``: on save it
gathers the split tensors into the whole (every rank takes part, only the writer writes), on load it
takes this rank's rows; the files are the same as a single process writes.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CorruptFileError, UnverifiedFileWarning
from ..io import atomic_save_safetensors, atomic_write_json, check_file, inside, json_field, read_json_object

INDEX = "checkpoint.json"
_OWN_FILE = re.compile(r"checkpoint_\d+\.safetensors")  # the only names a save writes, and may delete


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    meta[prefix] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta[prefix]["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v
                meta[prefix]["state"][str(pid)][k] = "tensor"
            else:
                meta[prefix]["state"][str(pid)][k] = v


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    m = meta[prefix]
    state = {}
    for pid, st in m["state"].items():
        state[int(pid)] = {k: (tensors[f"{prefix}.{pid}.{k}"] if v == "tensor" else v) for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": m["param_groups"]})


Transform = Callable[[str, torch.Tensor], torch.Tensor]


def save_checkpoint(
    folder: str | Path,
    iteration: int,
    tensors: dict[str, torch.Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    extra: dict[str, Any],
    *,
    transform: Transform | None = None,
    write: bool = True,
) -> None:
    """Write the checkpoint of ``iteration``. ``transform(key, tensor)`` maps every tensor first (keys
    ``t.<name>``, ``o.<optimizer>.<param>.<state>``), in the same order on every process; with
    ``write=False`` only that happens (a rank that takes part in the gathers but does not write).

    Raises ``OSError`` when the folder has vanished or a file cannot be written; the previous
    checkpoint is then untouched."""
    folder = Path(folder)
    all_t = {f"t.{k}": v.detach() for k, v in tensors.items()}
    meta: dict[str, Any] = {"iteration": iteration, "extra": extra, "optimizers": {}}
    opt_t: dict[str, torch.Tensor] = {}
    for name, opt in optimizers.items():
        _flatten_optimizer(name, opt, opt_t, meta["optimizers"])
    all_t.update({f"o.{k}": v.detach() for k, v in opt_t.items()})
    if transform is not None:
        all_t = {k: transform(k, v) for k, v in all_t.items()}
    if not write:
        return
    for name, g in generators.items():
        all_t[f"g.{name}"] = g.get_state()
    fname = f"checkpoint_{iteration}.safetensors"
    old = _previous_file(folder)
    meta["file"] = fname
    meta["record"] = atomic_save_safetensors(folder / fname, all_t, create=False)  # never re-creates a vanished folder
    try:
        atomic_write_json(folder / INDEX, meta, create=False)
    except BaseException:
        if old != fname:  # the index still names the previous file: drop the new one
            (folder / fname).unlink(missing_ok=True)
        raise
    if old is not None and old != fname:
        (folder / old).unlink(missing_ok=True)


def _previous_file(folder: Path) -> str | None:
    """The tensor file the current ``checkpoint.json`` names, if it is one a save wrote (a
    ``checkpoint_<n>.safetensors`` directly in ``folder``); anything else is never deleted."""
    try:
        old = read_json_object(folder / INDEX, "checkpoint")
    except (OSError, CorruptFileError):
        return None
    name = old.get("file")
    if not isinstance(name, str) or not _OWN_FILE.fullmatch(name):
        return None
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return None
    return name


def read_index(folder: str | Path) -> dict[str, Any] | None:
    """``checkpoint.json`` of ``folder`` with its fields checked (``None`` when there is none): ``iteration``
    (int >= 0), ``file`` (a name inside the folder), ``optimizers`` and ``extra`` (objects). Reads only."""
    folder = Path(folder)
    path = folder / INDEX
    if not path.exists():
        return None
    meta = read_json_object(path, "checkpoint")
    it = json_field(meta, "iteration", int, path)
    if it < 0:
        raise CorruptFileError(f"{path}: 'iteration' must be >= 0, got {it}")
    inside(folder, json_field(meta, "file", str, path), source=path, field="file")
    json_field(meta, "optimizers", dict, path)
    json_field(meta, "extra", dict, path)
    json_field(meta, "record", dict, path, optional=True)
    return meta


def load_checkpoint(
    folder: str | Path,
    tensors: dict[str, torch.Tensor],
    optimizers: dict[str, torch.optim.Optimizer],
    generators: dict[str, torch.Generator],
    *,
    transform: Transform | None = None,
) -> dict[str, Any] | None:
    """Restore in place (tensors are copied into the given ones; ``transform(key, tensor)`` maps the
    saved tensors first, e.g. to this rank's rows). Returns the saved metadata (``iteration``,
    ``extra``), or ``None`` when the folder has no checkpoint."""
    folder = Path(folder)
    meta = read_index(folder)
    if meta is None:
        return None
    index = folder / INDEX
    f = inside(folder, meta["file"], source=index, field="file")
    if meta.get("record") is not None:
        check_file(f, meta["record"], index, "checkpoint")
    else:
        warnings.warn(
            f"{index} predates checksums: {f.name} is loaded without a SHA-256 check",
            UnverifiedFileWarning,
            stacklevel=2,
        )
    try:
        saved = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise CorruptFileError(f"checkpoint {f} is truncated or corrupt: {e}") from e
    if transform is not None:
        saved = {k: (transform(k, v) if k[:2] in ("t.", "o.") else v) for k, v in saved.items()}
    with torch.no_grad():
        for k, v in tensors.items():
            src = saved.get(f"t.{k}")
            if src is None or src.shape != v.shape:
                raise CorruptFileError(
                    f"checkpoint {f} does not match this run: tensor {k!r} "
                    f"{None if src is None else tuple(src.shape)} vs {tuple(v.shape)}"
                )
            v.copy_(src)
    device = next(iter(tensors.values())).device
    ots = {k[2:]: v.to(device) for k, v in saved.items() if k.startswith("o.")}
    try:
        for name, opt in optimizers.items():
            _restore_optimizer(name, opt, ots, meta["optimizers"])
        for name, g in generators.items():
            g.set_state(saved[f"g.{name}"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CorruptFileError(
            f"checkpoint {f} (with {index}) does not hold this run's optimiser or random-stream "
            f"state ({type(e).__name__}: {e}); use another folder or start without resume"
        ) from e
    return meta
