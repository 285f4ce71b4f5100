"""Files: atomic writes (a crash never leaves a half-written file under its final name), checksums, and the
checks on what is read back (file names from JSON stay inside their folder, JSON fields have their types).

Written files get the mode an ordinary ``open`` would give them (``0o666`` less the umask: 0644 under
umask 022), so a shared run folder stays readable by the group."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePath
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import CorruptFileError, UnsafePathError
from .options import describe, json_name

PathLike = str | os.PathLike


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the /proc path first)
    os.umask(old)
    return old


def file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


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
    os.chmod(tmp, file_mode())  # mkstemp made it 0600; the final file follows the umask like any other
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


def atomic_save_safetensors(
    path: PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, create: bool = True
) -> dict[str, Any]:
    """``safetensors.torch.save_file`` made atomic. Tensors are made contiguous and moved to the CPU.
    Returns the file's record (:func:`file_record`: size and SHA-256) for the index that names it."""
    path, tmp = _atomic_target(path, create)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        record = file_record(tmp)
        _commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: PathLike) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of a file, as indexes (manifests, ``checkpoint.json``,
    ``synthetic.json``) record the files they name."""
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}


def check_file(path: PathLike, record: Any, index: PathLike, what: str = "file") -> None:
    """Raise :class:`CorruptFileError` naming ``path`` unless its size and SHA-256 equal ``record`` (the
    entry of ``index`` that names it). The size is compared first (cheap: a truncated file)."""
    path = Path(path)
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("bytes"), int)
        or not isinstance(record.get("sha256"), str)
    ):
        raise CorruptFileError(
            f'{index}: the record of {path.name} must be {{"bytes": int, "sha256": str}}, got {record!r}'
        )
    if not path.is_file():
        raise CorruptFileError(f"{what} {path} named in {index} is missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptFileError(f"{what} {path} is truncated or corrupt: {size} bytes, {index} says {record['bytes']}")
    if sha256_file(path) != record["sha256"]:
        raise CorruptFileError(f"{what} {path} is corrupt: its SHA-256 does not match the one in {index}")


def inside(folder: PathLike, name: Any, *, source: PathLike, field: str) -> Path:
    """``folder / name`` for a file name read from the JSON file ``source`` (its field ``field``), refused
    with :class:`UnsafePathError` unless it stays inside ``folder``: no absolute path, no ``..``, and no
    symbolic link on the way that points outside (the resolved path must lie under the resolved folder)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{source}: field {field!r} must be a file name inside {folder}, got {name!r}")
    pure = PurePath(name)
    if pure.is_absolute() or ".." in pure.parts or name.startswith("~"):
        raise UnsafePathError(
            f"{source}: field {field!r} = {name!r} points outside {folder}; file names there must "
            "stay inside the folder (no absolute path, no '..')"
        )
    base = Path(folder).resolve()
    full = (base / pure).resolve()
    if full == base or base not in full.parents:
        raise UnsafePathError(
            f"{source}: field {field!r} = {name!r} resolves to {full}, outside {base} (a symbolic "
            "link that points out of the folder?)"
        )
    return Path(folder) / pure


def read_json_object(path: PathLike, what: str = "file") -> dict[str, Any]:
    """The JSON object (a dict) in ``path``; :class:`CorruptFileError` naming the file when it is not valid
    JSON or not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON ({e}); the {what} is damaged") from e
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} must hold a JSON object ({{...}}), got {json_name(obj)}; the {what} is damaged")
    return obj


def json_field(
    obj: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    source: PathLike,
    *,
    optional: bool = False,
    where: str = "",
) -> Any:
    """``obj[key]`` checked to be of ``kind`` (JSON booleans never count as integers); a missing key (unless
    ``optional``: then ``None``) or a wrong type raises :class:`CorruptFileError` naming ``source`` and the key
    (``where`` prefixes it, e.g. ``"shards[2]."``)."""
    if key not in obj or (optional and obj[key] is None):
        if optional:
            return None
        raise CorruptFileError(f"{source}: missing key {where + key!r}")
    v = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
        want = " or ".join(describe(k) for k in kinds)
        raise CorruptFileError(f"{source}: {where + key!r} must be {want}, got {json_name(v)} {v!r:.60}")
    return v


def check_out_folder(path: PathLike, flag: str = "out") -> None:
    """Before a run writes anything: ``path`` is (or can become) a folder this process may write. Raises
    ``NotADirectoryError`` / ``PermissionError`` naming ``flag`` and the path at fault; creates nothing."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: writing would create its target elsewhere
            raise NotADirectoryError(f"{flag} {path}: {probe} is a dangling symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: cannot write in {probe} (permission denied)")
