"""Input whitening: decompose a layer for the error of its *outputs* on real inputs, not of its weights.

A layer computes ``y = W x`` (per kernel position for a convolution). With ``M = E[x x^T]`` the second moment of its
input channels (over samples and pixels; not centred, the mean is part of what the layer sees),

    E ||(W - W_hat) x||^2 = ||(W - W_hat) M^(1/2)||_F^2 .

So approximating ``W' = W M^(1/2)`` in the plain Frobenius norm (every decomposition here does that) and mapping
the input factor back by ``M^(-1/2)`` gives the factors that minimise the expected output error: directions of
the input that the data never excites cost nothing, strong ones cost in proportion. Exact at full rank, as
``W' M^(-1/2) = W``. Convolutions use the channel moment at one pixel (spatial correlations inside the kernel
window are ignored), which keeps ``M`` at ``C_in x C_in``.

``M`` is damped by ``damping * mean(diag(M))`` on its diagonal, so ``M^(-1/2)`` stays bounded for channels the
calibration data leaves (nearly) silent, and the weighting tends to the plain one as damping grows.
"""

from dataclasses import dataclass

import torch

from nncf_tdplugin.decomposition._threads import serial_lapack


@dataclass
class InputWhitening:
    """``sqrt`` = M^(1/2) and ``inv_sqrt`` = M^(-1/2) of the damped input moment (both symmetric, C_in x C_in)."""

    sqrt: torch.Tensor
    inv_sqrt: torch.Tensor

    @classmethod
    def from_moment(cls, moment: torch.Tensor, damping: float = 0.01) -> "InputWhitening":
        if moment.dim() != 2 or moment.shape[0] != moment.shape[1]:
            raise ValueError(f"input moment must be a square matrix, got shape {tuple(moment.shape)}")
        if not torch.isfinite(moment).all():
            raise ValueError("input moment has non-finite entries (inf/nan activations in the calibration data)")
        if damping <= 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        m = moment.double()
        m = 0.5 * (m + m.T)
        scale = float(torch.diagonal(m).mean())
        if scale <= 0:  # the layer's input is zero on every calibration sample: nothing to weight by
            eye = torch.eye(m.shape[0], dtype=moment.dtype)
            return cls(eye, eye.clone())
        m = m + damping * scale * torch.eye(m.shape[0], dtype=m.dtype)
        with serial_lapack():
            values, vectors = torch.linalg.eigh(m)
        values = values.clamp_min(damping * scale * 0.5)  # eigh round-off must not undo the damping
        root = (vectors * values.sqrt()) @ vectors.T
        inv_root = (vectors / values.sqrt()) @ vectors.T
        return cls(root.to(moment.dtype), inv_root.to(moment.dtype))


def weight_times_input(weight: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``W`` multiplied on its input-channel axis (dim 1) by ``matrix``: ``W'[t, s, ...] = sum_q W[t, q, ...]
    matrix[q, s]``; for a 2-D weight this is ``W @ matrix``. Used with ``M^(1/2)`` on a dense weight and with
    ``M^(-1/2)`` on a first factor (whose dim 1 is the input channel as well)."""
    m = matrix.to(weight)
    if weight.shape[1] != m.shape[0]:
        raise ValueError(f"weight has {weight.shape[1]} input channels, the whitening matrix {m.shape[0]}")
    return torch.einsum("tq...,qs->ts...", weight, m)
