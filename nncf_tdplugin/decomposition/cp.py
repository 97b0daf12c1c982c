"""CP (CANDECOMP/PARAFAC) decomposition of a convolution kernel, run as four thin layers (CP-4).

``W[t, s, i, j] ~= sum_r last[t, r] * first[r, s] * vertical[r, i] * horizontal[r, j]`` runs as
1x1 conv S->R, (kh x 1) depthwise conv, (1 x kw) depthwise conv, 1x1 conv R->T (Lebedev et al., ICLR 2015).

CP by alternating least squares is prone to degenerate solutions (large components that cancel). We initialise
from the SVD (tensorly's ``init="svd"``), add a small L2 regulariser and then balance the norms of the four
factors of each component, so no layer carries a huge scale (which also keeps the factors INT8-friendly).
"""

from dataclasses import dataclass

import warnings

import numpy as np
import torch
from tensorly.decomposition import parafac

from nncf_tdplugin.decomposition._tensorly import numpy_backend, to_numpy, to_torch
from nncf_tdplugin.decomposition._threads import serial_lapack


@dataclass
class CPFactors:
    first: torch.Tensor  # [R, S]
    vertical: torch.Tensor  # [R, kh]
    horizontal: torch.Tensor  # [R, kw]
    last: torch.Tensor  # [T, R]

    @property
    def rank(self) -> int:
        return self.first.shape[0]

    def reconstruct(self) -> torch.Tensor:
        return torch.einsum("tr,rs,ri,rj->tsij", self.last, self.first, self.vertical, self.horizontal)


def cp_decompose(
    weight: torch.Tensor, rank: int, n_iter_max: int = 200, l2_reg: float = 1e-6, random_state: int = 0
) -> CPFactors:
    """Rank-``rank`` CP of a 4-D kernel ``[T, S, kh, kw]`` (deterministic for a given ``random_state``)."""
    if weight.dim() != 4:
        raise ValueError(f"cp_decompose expects a 4-D conv kernel, got shape {tuple(weight.shape)}")
    if rank < 1:
        raise ValueError(f"CP rank must be >= 1, got {rank}")
    w = to_numpy(weight)
    scale = float(np.linalg.norm(w)) or 1.0
    # tensorly pads an SVD init whose rank exceeds a mode's size with random columns, and warns; that is expected.
    # one thread: CP-ALS is many small products and solves, 10x slower with two threads on a busy 2-core host
    with numpy_backend(), serial_lapack(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        cp = parafac(
            w / scale,
            rank=rank,
            n_iter_max=n_iter_max,
            init="svd",
            l2_reg=l2_reg,
            normalize_factors=True,
            random_state=random_state,
            tol=1e-9,
        )
    weights, (a_out, b_in, c_h, d_w) = cp.weights, cp.factors
    # Balance: every component's scale is spread evenly over its four factor vectors.
    norms = [np.linalg.norm(f, axis=0) + 1e-30 for f in (a_out, b_in, c_h, d_w)]
    total = np.abs(weights * scale) * np.prod(norms, axis=0)
    per_factor = total**0.25
    sign = np.sign(weights)
    a_out = a_out / norms[0] * per_factor * sign
    b_in = b_in / norms[1] * per_factor
    c_h = c_h / norms[2] * per_factor
    d_w = d_w / norms[3] * per_factor
    return CPFactors(
        first=to_torch(b_in.T, weight),
        vertical=to_torch(c_h.T, weight),
        horizontal=to_torch(d_w.T, weight),
        last=to_torch(a_out, weight),
    )
