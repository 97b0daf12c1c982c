"""Singular-value spectra of the unfoldings a decomposition truncates (cached per layer for rank rules)."""

import torch

from nncf_tdplugin.decomposition.svd import singular_values
from nncf_tdplugin.rank_selection.base import LayerCandidate


def mode_spectra(candidate: LayerCandidate, method: str) -> list[torch.Tensor]:
    """Singular values (descending, float64) of each mode the method truncates: [mode-0, mode-1] unfoldings for
    Tucker-2; the [T, S*k*k] matrix for SVD; the mode-0 unfolding for CP (whose rank is set from it)."""
    w = candidate.weight.detach().double().cpu()
    t, s = w.shape[:2]
    out = singular_values(w.reshape(t, -1))
    if method == "tucker2":
        return [out, singular_values(w.transpose(0, 1).reshape(s, -1))]
    return [out]
