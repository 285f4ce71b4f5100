"""Augmentation: DSA (differentiable siamese augmentation), crop + flip, SelMatch's combined scheme.

All sampling uses an explicit ``torch.Generator``; every call's parameters are an object that can be
stored and replayed exactly. See :mod:`fastdd.augment.dsa` and :mod:`fastdd.augment.simple`.
"""

from __future__ import annotations

from .crops import ResizedCrops, apply_resized_crops, bilinear_matrix, sample_resized_crops
from .dsa import (
    DSA,
    FAMILIES,
    FULL_STRATEGY,
    NO_FLIP_STRATEGY,
    PER_SAMPLE,
    DSAConfig,
    DSAParams,
    apply_dsa,
    sample_dsa,
    siamese_dsa,
    strategy_for,
)
from .replay import StepAugment
from .simple import (
    CombinedParams,
    CropFlipParams,
    apply_combined,
    apply_crop_flip,
    combined_augment,
    crop_flip,
    sample_combined,
    sample_crop_flip,
)

__all__ = [
    "ResizedCrops",
    "apply_resized_crops",
    "bilinear_matrix",
    "sample_resized_crops",
    "StepAugment",
    "FAMILIES",
    "FULL_STRATEGY",
    "NO_FLIP_STRATEGY",
    "PER_SAMPLE",
    "DSA",
    "DSAConfig",
    "DSAParams",
    "apply_dsa",
    "sample_dsa",
    "siamese_dsa",
    "strategy_for",
    "CombinedParams",
    "CropFlipParams",
    "apply_combined",
    "apply_crop_flip",
    "combined_augment",
    "crop_flip",
    "sample_combined",
    "sample_crop_flip",
]
