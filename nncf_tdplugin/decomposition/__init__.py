"""Decomposition math: pure functions from a weight tensor to its factors (no modules, no NNCF).

| function | layer | factors |
|---|---|---|
| :func:`tucker2_decompose` | k x k conv | 1x1 -> k x k core -> 1x1 |
| :func:`cp_decompose` | k x k conv | 1x1 -> kx1 depthwise -> 1xk depthwise -> 1x1 |
| :func:`svd_decompose` | 1x1 conv, Linear, k x k conv (channel SVD) | two layers |

:mod:`~nncf_tdplugin.decomposition.whitening` turns any of them into an output-error (activation-aware)
decomposition. The ``*_relative_errors`` functions give the error of every candidate rank at once, for rank selection.
"""

from nncf_tdplugin.decomposition.cp import CPFactors, cp_decompose
from nncf_tdplugin.decomposition.ranks import METHODS, max_ranks
from nncf_tdplugin.decomposition.svd import SVDFactors, svd_decompose, svd_relative_errors
from nncf_tdplugin.decomposition.tucker2 import Tucker2Factors, tucker2_decompose, tucker2_relative_errors
from nncf_tdplugin.decomposition.whitening import InputWhitening, weight_times_input

__all__ = [
    "METHODS",
    "CPFactors",
    "InputWhitening",
    "SVDFactors",
    "Tucker2Factors",
    "cp_decompose",
    "max_ranks",
    "svd_decompose",
    "svd_relative_errors",
    "tucker2_decompose",
    "tucker2_relative_errors",
    "weight_times_input",
]
