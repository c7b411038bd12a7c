"""Layers chosen by name: normalizations and activations (see their modules for the papers)."""

from bnresearch.layers.activations import ACTIVATIONS, get_activation
from bnresearch.layers.normalization import (
    NORMALIZATIONS,
    check_normalization_features,
    get_normalization,
)

__all__ = [
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "check_normalization_features",
    "get_activation",
    "get_normalization",
]
