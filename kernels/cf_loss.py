"""The characteristic-function discrepancy of NCFM (Wang et al., CVPR 2025): how far apart two sets of
feature vectors are, measured through their empirical characteristic functions at sampled frequencies.

For features ``z_i ∈ R^d`` (rows; NCFM passes L2-normalised penultimate features) the empirical
characteristic function at a frequency ``t ∈ R^d`` is ``Φ(t) = (1/n) Σ_i exp(j⟨t, z_i⟩)``, i.e.
``Re Φ = mean_i cos⟨t, z_i⟩`` and ``Im Φ = mean_i sin⟨t, z_i⟩``. Per frequency::

    Chf(t) = α (|Φ_x| − |Φ_x̃|)² + β · 2 (|Φ_x| |Φ_x̃| − Re Φ_x Re Φ_x̃ − Im Φ_x Im Φ_x̃)

the amplitude term (weight ``α``) and the phase term (weight ``β``; it equals
``2 |Φ_x| |Φ_x̃| (1 − cos(arg Φ_x − arg Φ_x̃))``). With ``α = β = 1`` the sum is ``|Φ_x − Φ_x̃|²``.
The discrepancy is ``mean_t √Chf(t)``.

Torch only (no Triton path): one ``(n, d) @ (d, F)`` product per set, then elementwise work, so the cost is
linear in frequencies × rows and autograd's backward is already two matrix products.
"""

from __future__ import annotations

from torch import Tensor


def characteristic_function(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(Re Φ, Im Φ)``, each ``(F,)``: the empirical characteristic function of the rows of ``z`` ``(n, d)``
    at the rows of ``t`` ``(F, d)`` (``Φ(t) = mean_i exp(j⟨t, z_i⟩)``; ``⟨t, z⟩`` in radians)."""
    phase = z @ t.T  # (n, F)
    return phase.cos().mean(0), phase.sin().mean(0)


def cf_discrepancy(
    z_real: Tensor, z_syn: Tensor, t: Tensor, alpha: float = 0.5, beta: float = 0.5, eps: float = 1e-12
) -> Tensor:
    """NCFM's characteristic-function discrepancy, a 0-d tensor differentiable in all three inputs.

    Args:
        z_real: ``(n, d)`` features of the real batch.
        z_syn: ``(m, d)`` features of the synthetic batch (same dtype and device).
        t: ``(F, d)`` frequencies.
        alpha: weight of the amplitude term ``(|Φ_x| − |Φ_x̃|)²`` (diversity).
        beta: weight of the phase term ``2(|Φ_x||Φ_x̃| − ReΦ_x ReΦ_x̃ − ImΦ_x ImΦ_x̃)`` (realism).
        eps: the phase term is clamped at ``>= eps`` (as NCFM's code does: round-off can make it slightly
            negative), and so is ``Chf(t)`` before the square root (which keeps √ differentiable when both
            terms vanish, e.g. ``beta = 0`` and equal amplitudes). Identical sets give ``√eps``, 1e-6 by default.

    Returns ``mean_t √Chf(t)`` (unscaled; NCFM's code multiplies it by 300).
    """
    if z_real.dim() != 2 or z_syn.dim() != 2 or t.dim() != 2:
        raise ValueError(
            f"cf_discrepancy takes (n, d), (m, d) and (F, d) tensors, got {tuple(z_real.shape)}, "
            f"{tuple(z_syn.shape)} and {tuple(t.shape)}"
        )
    if not z_real.shape[1] == z_syn.shape[1] == t.shape[1]:
        raise ValueError(
            f"cf_discrepancy: the feature dimensions differ: {z_real.shape[1]}, {z_syn.shape[1]} and {t.shape[1]}"
        )
    re_x, im_x = characteristic_function(z_real, t)
    re_s, im_s = characteristic_function(z_syn, t)
    amp_x = (re_x.square() + im_x.square()).sqrt()
    amp_s = (re_s.square() + im_s.square()).sqrt()
    amplitude = (amp_x - amp_s).square()
    phase = (2 * (amp_x * amp_s - re_x * re_s - im_x * im_s)).clamp_min(eps)
    return (alpha * amplitude + beta * phase).clamp_min(eps).sqrt().mean()


__all__ = ["characteristic_function", "cf_discrepancy"]
