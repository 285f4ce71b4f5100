"""fastdd: fast, memory-scalable dataset distillation.

The data's path: ``load_dataset`` → ``train_experts`` → (distill) → ``evaluate`` → (analyse).
"""
from __future__ import annotations

__version__ = "0.1.0"

from .data import Dataset, Split, load_dataset
from .errors import CorruptFileError, DataNotFoundError, FastDDError, ModelMismatchError
from .evaluate import PROTOCOLS, EvalResult, Protocol, evaluate
from .experts import ExpertBuffer, import_reference_buffer, train_experts
from .models import FunctionalNet, build_model
from .select import real_subset, select
from .synthetic import SyntheticSet

__all__ = [
    "__version__", "Dataset", "Split", "load_dataset", "FastDDError", "DataNotFoundError", "CorruptFileError",
    "ModelMismatchError", "build_model", "FunctionalNet", "train_experts", "ExpertBuffer", "import_reference_buffer",
    "evaluate", "EvalResult", "Protocol", "PROTOCOLS", "select", "real_subset", "SyntheticSet",
]
