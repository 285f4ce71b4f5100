"""Augmentation: DSA (differentiable siamese augmentation), crop + flip, SelMatch's combined scheme, random
resized crops, and batch mixing (CutMix, Mixup) with ShufflePatches.

All sampling uses an explicit ``torch.Generator``; every call's parameters are an object that can be
stored and replayed exactly. See :mod:`fastdd.augment.dsa`, :mod:`fastdd.augment.simple`,
:mod:`fastdd.augment.crops` and :mod:`fastdd.augment.mix`.
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
from .mix import (
    CutMixParams,
    MixupParams,
    ShufflePatchesParams,
    apply_cutmix,
    apply_mixup,
    apply_shuffle_patches,
    sample_beta,
    sample_cutmix,
    sample_mixup,
    sample_shuffle_patches,
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
    "CutMixParams",
    "MixupParams",
    "ShufflePatchesParams",
    "apply_cutmix",
    "apply_mixup",
    "apply_shuffle_patches",
    "sample_beta",
    "sample_cutmix",
    "sample_mixup",
    "sample_shuffle_patches",
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
