"""ZCA whitening fitted once on a training set (the transform MTT / TESLA / DATM train in).

For flattened images X (N×D) with per-feature mean μ and unbiased covariance
Σ = (X−μ)ᵀ(X−μ)/(N−1) = U S Uᵀ:  T = U diag((S+ε)^-½) Uᵀ,  x_zca = (x−μ) T,
and the inverse x = x_zca T⁻¹ + μ with T⁻¹ = U diag((S+ε)^½) Uᵀ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ZCA:
    mean: torch.Tensor  # (D,)
    transform: torch.Tensor  # (D, D)
    inverse_transform: torch.Tensor  # (D, D)
    shape: tuple[int, int, int]  # (C, H, W)
    eps: float

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> ZCA:
        """Fit on ``images`` ``(N, C, H, W)``. The eigen-decomposition runs in float64."""
        if images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"ZCA needs at least 2 images of shape (N, C, H, W), got {tuple(images.shape)}")
        x = images.reshape(images.shape[0], -1).to(torch.float64)
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / (x.shape[0] - 1)
        s, u = torch.linalg.eigh(cov)
        s = s.clamp_min(0)
        t = (u * (s + eps).rsqrt()) @ u.T
        t_inv = (u * (s + eps).sqrt()) @ u.T
        return cls(mean.float(), t.float(), t_inv.float(), tuple(images.shape[1:]), eps)

    def _flat(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"ZCA was fitted on images of shape {self.shape}, got {tuple(images.shape[1:])}")
        return images.reshape(images.shape[0], -1)

    def __call__(self, images: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """Whiten ``images`` ``(N, C, H, W)`` (in chunks of ``batch`` to bound memory)."""
        x = self._flat(images)
        m, t = self.mean.to(x), self.transform.to(x)
        out = torch.cat([(c - m) @ t for c in x.split(batch)]) if len(x) else x
        return out.reshape(images.shape)

    def inverse(self, images: torch.Tensor) -> torch.Tensor:
        """Map whitened images back to the pixel space the ZCA was fitted in."""
        x = self._flat(images)
        out = x @ self.inverse_transform.to(x) + self.mean.to(x)
        return out.reshape(images.shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"zca.mean": self.mean, "zca.transform": self.transform, "zca.inverse_transform": self.inverse_transform}
