"""fastdd: fast, memory-scalable dataset distillation.

The data's path: ``load_dataset`` → ``train_experts`` → (distill) → ``evaluate`` → (analyse).
"""

from __future__ import annotations

from .data import Dataset, Split, load_dataset
from .distillation import PRESETS, distill
from .distillation.registry import methods, register_method
from .engine import trajectory_matching_grad
from .errors import (
    CorruptFileError,
    DataNotFoundError,
    FastDDError,
    ModelMismatchError,
    ResumeError,
    RunFailedError,
    UnsafePathError,
)
from .evaluation import PROTOCOLS, EvalResult, Protocol, evaluate
from .experts import Curriculum, ExpertBuffer, ExpertConfig, import_reference_buffer, train_experts
from .kernels import use_backend
from .knn_coverage import coverage, coverage_of
from .models import FunctionalNet, build_model
from .scores import el2n_scores, forgetting_scores, grand_scores, load_scores, save_scores
from .selection import real_subset, select, window_indices
from .synthetic import SyntheticSet
from .teacher import Teacher, TeacherConfig, train_teacher
from .version import __version__
from .window_sweep import sweep_window

__all__ = [
    "__version__",
    "Dataset",
    "Split",
    "load_dataset",
    "FastDDError",
    "DataNotFoundError",
    "CorruptFileError",
    "ModelMismatchError",
    "ResumeError",
    "RunFailedError",
    "UnsafePathError",
    "build_model",
    "FunctionalNet",
    "train_experts",
    "ExpertConfig",
    "Curriculum",
    "ExpertBuffer",
    "import_reference_buffer",
    "evaluate",
    "EvalResult",
    "Protocol",
    "PROTOCOLS",
    "select",
    "real_subset",
    "SyntheticSet",
    "Teacher",
    "TeacherConfig",
    "train_teacher",
    "window_indices",
    "sweep_window",
    "coverage",
    "coverage_of",
    "forgetting_scores",
    "el2n_scores",
    "grand_scores",
    "load_scores",
    "save_scores",
    "distill",
    "methods",
    "register_method",
    "PRESETS",
    "trajectory_matching_grad",
    "use_backend",
]
