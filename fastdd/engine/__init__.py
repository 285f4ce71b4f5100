"""The one place that unrolls student training and computes meta-gradients (see :mod:`.unroll`)."""
from .config import ENGINE_FIELDS, EngineConfig
from .unroll import (AUTO_THETA_FRACTION, DEFAULT_MEMORY_BUDGET, MODES, THETA_STORAGE, StepReduce, UnrollGrads,
                     auto_theta_storage, choose_mode, dd_grad, deterministic_algorithms, matching_loss, parse_bytes,
                     predict_bptt_bytes, real_data_loss, saved_bytes, student_loss, to_device_once,
                     trajectory_matching_grad, unroll_grad)

__all__ = ["EngineConfig", "ENGINE_FIELDS", "MODES", "THETA_STORAGE", "DEFAULT_MEMORY_BUDGET", "AUTO_THETA_FRACTION", "UnrollGrads", "StepReduce", "unroll_grad",
           "trajectory_matching_grad", "dd_grad", "matching_loss", "real_data_loss", "student_loss", "choose_mode",
           "auto_theta_storage", "predict_bptt_bytes", "saved_bytes", "parse_bytes", "to_device_once", "deterministic_algorithms"]
