"""Run folders (config, CSV log, outputs) and progress bars."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .io import atomic_write_text
from .version import __version__


def progress(iterable=None, *, total: int | None = None, desc: str = "", disable: bool = False, **kw):
    """A tqdm bar on stderr; hidden when ``disable`` or when stderr is not a terminal (logs stay clean)."""
    return tqdm(
        iterable, total=total, desc=desc, disable=True if disable else None, dynamic_ncols=True, file=sys.stderr, **kw
    )


class CSVLog:
    """Append-only CSV: the header is written once; every row is flushed so a crash loses nothing."""

    def __init__(self, path: str | os.PathLike, fields: list[str]):
        self.path, self.fields = Path(path), list(fields)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fields, extrasaction="raise")
        if new:
            self._w.writeheader()
            self._f.flush()

    def log(self, **row: Any) -> None:
        self._w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class RunDir:
    """A folder for one run: ``config.yaml``, ``log.csv`` and whatever outputs the run writes."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any] | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        if config is not None:
            self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        safe = json.loads(json.dumps({**config, "fastdd_version": __version__}, default=str))
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(safe, sort_keys=False))

    def csv(self, name: str, fields: list[str]) -> CSVLog:
        return CSVLog(self.path / name, fields)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def elapsed(self) -> float:
        return time.time() - self.started
