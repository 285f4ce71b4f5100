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
