"""Exceptions fastdd raises for bad input. Each message names the argument or file at fault."""

from __future__ import annotations


class FastDDError(Exception):
    """Base class of fastdd's own errors."""


class DataNotFoundError(FastDDError, FileNotFoundError):
    """A data set's files are not where the user said they are."""


class CorruptFileError(FastDDError, ValueError):
    """A file fastdd wrote (or imports) is truncated, corrupt, or not in the expected format."""


class ModelMismatchError(FastDDError, ValueError):
    """Parameters (an expert file, a flat vector) do not belong to the model they are used with."""


class UnsafePathError(FastDDError, ValueError):
    """A file name read from a file (a manifest, ``checkpoint.json``, ...) would leave its folder: an absolute
    path, ``..``, or a symbolic link that points outside. The message names the JSON file and the field."""


class ResumeError(FastDDError, ValueError):
    """``resume=True`` found a checkpoint that this call cannot honestly continue (another seed, other
    settings, more iterations done than asked for). The message says what differs and how to proceed."""


class RunFailedError(FastDDError, RuntimeError):
    """A run ended without a usable result: its images stopped being finite or blew up far beyond the data's
    range, or it skipped more than its share of iterations. The last good checkpoint (if any) is kept."""


class RunInterrupted(FastDDError, KeyboardInterrupt):
    """A run stopped on SIGTERM or Ctrl-C after finishing an iteration (and writing a checkpoint when
    it has a run folder). ``signal``: the signal's number; ``iteration``: iterations done; ``folder``:
    where the checkpoint is (``None`` when none was written)."""

    def __init__(self, signum: int, iteration: int, folder: str | None):
        import signal as _signal

        self.signal, self.iteration, self.folder = int(signum), iteration, folder
        name = _signal.Signals(signum).name
        where = f"resume from the checkpoint in {folder}" if folder else "no checkpoint was written"
        super().__init__(f"stopped by {name} after iteration {iteration}; {where}")


class CheckpointWarning(UserWarning):
    """A checkpoint could not be written (the previous one is kept)."""


class UnverifiedFileWarning(UserWarning):
    """A file written by an older fastdd carries no SHA-256 record, so it was loaded without a check."""


class ExpertWarning(UserWarning):
    """Expert trajectories that look wrong, e.g. consecutive snapshots that are identical (a network that
    did not move, or a file that holds the same tensor in every snapshot)."""
