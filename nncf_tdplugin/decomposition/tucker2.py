"""Tucker-2 decomposition of a convolution kernel over its two channel modes.

``W[T, S, kh, kw] ~= core[R_out, R_in, kh, kw] x_0 last[T, R_out] x_1 first[R_in, S]^T``, which runs as
1x1 conv S->R_in (``first``), k x k conv R_in->R_out (``core``, the original stride/padding/dilation) and
1x1 conv R_out->T (``last``, the original bias). Kim et al., ICLR 2016.

The factors are computed by HOOI initialised with HOSVD: the algorithm and stopping rule of tensorly's
``partial_tucker``, with tensorly's mode products and unfoldings, but each mode basis taken from the eigenvectors
of the unfolding's short-side Gram matrix instead of an SVD of the unfolding. tensorly 0.10's HOOI loop always
calls its default SVD (``partial_tucker``'s ``svd=`` only reaches the initialisation), and on wide kernels
(512 x 512 x 3 x 3) those SVDs were 90% of the build time; the Gram route is 10-15x faster per basis with the
same subspaces (tests/test_decomposition.py checks the factors against ``partial_tucker``'s). The factor matrices
are orthonormal and their columns are ordered by decreasing singular value of the mode unfolding, so truncating a
decomposition to smaller ranks keeps its most important components.
"""

from dataclasses import dataclass

import numpy as np
import tensorly as tl
import torch
from tensorly.tenalg import mode_dot, multi_mode_dot

from nncf_tdplugin.decomposition._tensorly import numpy_backend, to_numpy, to_torch
from nncf_tdplugin.decomposition._threads import serial_lapack


@dataclass
class Tucker2Factors:
    first: torch.Tensor  # [R_in, S]
    core: torch.Tensor  # [R_out, R_in, kh, kw]
    last: torch.Tensor  # [T, R_out]

    @property
    def ranks(self) -> tuple[int, int]:
        """(R_out, R_in)."""
        return self.core.shape[0], self.core.shape[1]

    def reconstruct(self) -> torch.Tensor:
        return torch.einsum("ab,bcij,cd->adij", self.last, self.core, self.first)


def tucker2_decompose(weight: torch.Tensor, ranks: tuple[int, int], n_iter_max: int = 10) -> Tucker2Factors:
    """Tucker-2 of a 4-D kernel at ``ranks = (R_out, R_in)``; ``n_iter_max`` HOOI sweeps after HOSVD."""
    if weight.dim() != 4:
        raise ValueError(f"tucker2_decompose expects a 4-D conv kernel, got shape {tuple(weight.shape)}")
    t, s = weight.shape[:2]
    r_out, r_in = int(ranks[0]), int(ranks[1])
    if not (1 <= r_out <= t and 1 <= r_in <= s):
        raise ValueError(f"Tucker-2 ranks (R_out, R_in) must be in [1, {t}] x [1, {s}], got {(r_out, r_in)}")
    with numpy_backend():
        core, (u_out, u_in), _ = hooi(to_numpy(weight), (r_out, r_in), modes=(0, 1), n_iter_max=n_iter_max, tol=1e-6)
    return Tucker2Factors(first=to_torch(u_in.T, weight), core=to_torch(core, weight), last=to_torch(u_out, weight))


def leading_left_basis(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading left singular vectors of ``matrix`` [m, n] (float64), from ``eigh`` of the m x m Gram
    matrix when m <= n (a thin SVD otherwise), with a deterministic sign (each column's largest entry positive, as
    tensorly's ``svd_flip``). Where ``rank`` exceeds the matrix's rank the extra columns are an orthonormal basis of
    the rest of R^m (tensorly completes with random vectors there); they carry no energy either way."""
    m, n = matrix.shape
    if m <= n:
        gram = matrix @ matrix.T
        with serial_lapack():
            basis = np.linalg.eigh(gram)[1][:, ::-1][:, :rank]
    else:  # a tall unfolding: its thin SVD is the cheap one, completed by a complete QR where rank > n
        with serial_lapack():
            basis = np.linalg.svd(matrix, full_matrices=False)[0][:, :rank]
            if rank > n:
                basis = np.concatenate([basis, np.linalg.qr(basis, mode="complete")[0][:, n:rank]], axis=1)
    signs = np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(rank)])
    return np.ascontiguousarray(basis * np.where(signs == 0, 1.0, signs))


def hooi(
    tensor: np.ndarray, ranks: tuple[int, ...], modes: tuple[int, ...], n_iter_max: int, tol: float
) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """Partial Tucker by HOOI from an HOSVD start; returns ``(core, factors, relative errors per sweep)``.

    The sweep and the stopping rule are ``tensorly.decomposition.partial_tucker``'s (0.10): every sweep
    re-fits each mode's basis to the tensor projected on the other modes' bases, the error is
    ``sqrt(|‖X‖² - ‖core‖²|) / ‖X‖``, and it stops after ``n_iter_max`` sweeps or when the error changed by less
    than ``tol`` (checked from the third sweep on). Only the basis computation differs (see the module's doc).
    Call under :func:`numpy_backend`.
    """
    factors = [leading_left_basis(tl.unfold(tensor, mode), rank) for mode, rank in zip(modes, ranks)]
    norm = float(np.linalg.norm(tensor))
    errors: list[float] = []
    core = None
    for iteration in range(n_iter_max):
        for index, mode in enumerate(modes):
            projected = multi_mode_dot(tensor, factors, modes=list(modes), skip=index, transpose=True)
            factors[index] = leading_left_basis(tl.unfold(projected, mode), ranks[index])
        # the last mode's projection times its new basis is the core (tensorly projects the tensor once more)
        core = mode_dot(projected, factors[-1], modes[-1], transpose=True)
        errors.append(abs(norm**2 - float(np.linalg.norm(core)) ** 2) ** 0.5 / max(norm, 1e-300))
        if iteration > 1 and tol and abs(errors[-2] - errors[-1]) < tol:
            break
    if core is None:  # no sweep: the HOSVD core
        core = multi_mode_dot(tensor, factors, modes=list(modes), transpose=True)
    return core, factors, errors


def _gram_basis(matrix: torch.Tensor) -> torch.Tensor:
    """All left singular vectors of ``matrix`` [m, n] (float64), by decreasing singular value, from ``eigh`` of
    the m x m Gram matrix (the m - n extra columns of a tall matrix span the rest of R^m)."""
    gram = matrix @ matrix.T
    with serial_lapack():
        _, vectors = torch.linalg.eigh(gram)
    return vectors.flip(1)


def tucker2_relative_errors(weight: torch.Tensor) -> torch.Tensor:
    """Relative error of truncated HOSVD for every rank pair: ``err[r_out, r_in]`` for r in 0..T, 0..S.

    With orthonormal mode bases U_out (left singular vectors of the mode-0 unfolding) and U_in (mode-1), the
    projected kernel G = W x_0 U_out^T x_1 U_in^T keeps all the energy, and the truncated core G[:r_out, :r_in]
    keeps sum_{i<r_out, j<r_in} ||G[i, j]||^2 of it. One 2-D cumulative sum therefore gives the error of every
    candidate at once, which is what makes rank search over whole networks take seconds. (HOOI refinement, used
    for the final factors, is slightly better than these HOSVD errors, never worse.)
    """
    w = weight.detach().double().cpu()
    t, s = w.shape[:2]
    # torch, not numpy: the latency budget's worker threads start subprocesses while the search runs, and numpy's
    # OpenBLAS deadlocked in a matrix product there (a test hung in this Gram matrix); torch's BLAS does not
    u_out = _gram_basis(w.reshape(t, -1))  # [T, T]
    u_in = _gram_basis(w.transpose(0, 1).reshape(s, -1))  # [S, S]
    g = torch.einsum("ai,abxy,bj->ijxy", u_out, w, u_in)
    energy = g.pow(2).sum(dim=(2, 3))  # [min(T,.), min(S,.)]
    kept = torch.zeros(t + 1, s + 1, dtype=torch.float64)
    kept[1 : energy.shape[0] + 1, 1 : energy.shape[1] + 1] = energy.cumsum(0).cumsum(1)
    kept[energy.shape[0] + 1 :, :] = kept[energy.shape[0] : energy.shape[0] + 1, :]
    kept[:, energy.shape[1] + 1 :] = kept[:, energy.shape[1] : energy.shape[1] + 1]
    total = w.pow(2).sum().clamp_min(1e-300)
    return (1.0 - kept / total).clamp_min(0.0).sqrt()
