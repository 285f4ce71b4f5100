"""The one place that unrolls student training and computes meta-gradients (see :mod:`.unroll`)."""
from .unroll import (MODES, UnrollGrads, dd_grad, matching_loss, real_data_loss, student_loss,
                     trajectory_matching_grad, unroll_grad)

__all__ = ["MODES", "UnrollGrads", "unroll_grad", "trajectory_matching_grad", "dd_grad", "matching_loss",
           "real_data_loss", "student_loss"]
