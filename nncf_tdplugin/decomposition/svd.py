"""Truncated SVD of a weight matrix: ``W[T, N] ~= last[T, R] @ first[R, N]``.

Used for Linear layers and 1x1 convolutions (N = S input channels) and, as "channel SVD", for k x k convolutions
(N = S * kh * kw: a k x k conv S->R followed by a 1x1 conv R->T). The singular values are split evenly between the
two factors (``sqrt(s)`` each), which keeps both factors at similar scales, which matters for INT8 quantization.
"""

from dataclasses import dataclass

import torch
import tensorly as tl

from nncf_tdplugin.decomposition._tensorly import numpy_backend, to_numpy, to_torch
from nncf_tdplugin.decomposition._threads import serial_lapack


@dataclass
class SVDFactors:
    first: torch.Tensor  # [R, N]
    last: torch.Tensor  # [T, R]

    @property
    def rank(self) -> int:
        return self.first.shape[0]

    def reconstruct(self) -> torch.Tensor:
        return self.last @ self.first


def svd_decompose(matrix: torch.Tensor, rank: int) -> SVDFactors:
    """Best rank-``rank`` approximation of a 2-D ``matrix`` (Eckart-Young), computed with tensorly."""
    if matrix.dim() != 2:
        raise ValueError(f"svd_decompose expects a 2-D matrix, got shape {tuple(matrix.shape)}")
    full = min(matrix.shape)
    if not 1 <= rank <= full:
        raise ValueError(f"SVD rank must be in [1, {full}] for a matrix of shape {tuple(matrix.shape)}, got {rank}")
    with numpy_backend(), serial_lapack():
        u, s, vt = tl.svd_interface(to_numpy(matrix), n_eigenvecs=rank, method="truncated_svd")
    root = s**0.5
    return SVDFactors(first=to_torch(root[:, None] * vt, matrix), last=to_torch(u * root[None, :], matrix))


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) from the eigenvalues of the smaller Gram matrix (much faster than
    an SVD for the tall/wide unfoldings of conv kernels)."""
    m = matrix.detach().double().cpu()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    with serial_lapack():
        values = torch.linalg.eigvalsh(gram)
    return values.flip(0).clamp_min(0.0).sqrt()


def svd_relative_errors(matrix: torch.Tensor) -> torch.Tensor:
    """``err[r]`` = ||W - W_r||_F / ||W||_F for r = 0..min(T, N) (err[0] = 1, err[full] = 0)."""
    s = singular_values(matrix)
    tail = torch.flip(torch.cumsum(torch.flip(s**2, [0]), 0), [0])  # tail[r] = sum_{i >= r} s_i^2
    total = tail[0].clamp_min(1e-300)
    return torch.cat([tail, tail.new_zeros(1)]).div(total).sqrt()
