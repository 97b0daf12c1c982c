"""Factor layers: dense layer -> plain factor modules (and back, for error reports)."""

from nncf_tdplugin.layers.factorized import (
    METHODS,
    DecomposedConv2d,
    DecomposedLayer,
    DecomposedLinear,
    build_factorized,
    check_ranks,
    decompose_layer,
    full_ranks,
    importance_weighted,
    is_decomposable,
    reconstruct_weight,
    relative_error,
    weighted_weight,
)

__all__ = [
    "METHODS",
    "DecomposedConv2d",
    "DecomposedLayer",
    "DecomposedLinear",
    "build_factorized",
    "check_ranks",
    "decompose_layer",
    "full_ranks",
    "importance_weighted",
    "is_decomposable",
    "reconstruct_weight",
    "relative_error",
    "weighted_weight",
]
