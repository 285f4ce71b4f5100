"""DD-Ranking's scores, on accuracies given as **fractions** in [0, 1].

- IOR (improvement over random) = acc(synthetic set, its recipe) − acc(random real subset of the same
  size, the same recipe). Higher is better.
- HLR (hard-label recovery) = acc(the real train split, hard labels) − acc(synthetic set, hard labels).
  Lower is better.
- LRS (label-robust score): α = w·IOR − (1 − w)·HLR, LRS = (e^α − e^−1) / (e − e^−1), w = 0.5 by default.
  With fractions α lies in [−1, 1], so LRS lies in [0, 1] (display it ×100).
- ARS (augmentation-robust score): β = γ·IOR_aug + (1 − γ)·IOR_no_aug, ARS = (e^β − e^−1) / (e − e^−1).

DD-Ranking's code feeds percentages (0–100) into the same normalisation, which assumes α in [−1, 1];
fastdd uses fractions, so its LRS is that formula on its intended range.
"""

from __future__ import annotations

import math


def _check(*accs: float) -> None:
    for a in accs:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"accuracies must be fractions in [0, 1], got {a} (divide percentages by 100)")


def ior(acc_syn: float, acc_random: float) -> float:
    """Improvement over a random real subset under the same protocol."""
    _check(acc_syn, acc_random)
    return acc_syn - acc_random


def hlr(acc_real: float, acc_syn_hard: float) -> float:
    """Hard-label recovery: the full real train split's accuracy minus the set's, both with hard labels."""
    _check(acc_real, acc_syn_hard)
    return acc_real - acc_syn_hard


def _squash(x: float) -> float:
    return (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def lrs(ior_value: float, hlr_value: float, weight: float = 0.5) -> float:
    """Label-robust score from IOR and HLR (fractions); in [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return _squash(weight * ior_value - (1.0 - weight) * hlr_value)


def ars(ior_aug: float, ior_no_aug: float, weight: float = 0.5) -> float:
    """Augmentation-robust score from the IOR with and without evaluation augmentation; in [0, 1]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    return _squash(weight * ior_aug + (1.0 - weight) * ior_no_aug)


__all__ = ["ior", "hlr", "lrs", "ars"]
