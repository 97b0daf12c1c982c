import pytest
import tensorly as tl
import torch

from nncf_tdplugin.decomposition import (
    cp_decompose,
    max_ranks,
    svd_decompose,
    svd_relative_errors,
    tucker2_decompose,
    tucker2_relative_errors,
)
from tests.models import low_rank_conv_weight, low_rank_matrix


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_tucker2_shapes_and_exact_at_full_rank():
    w = torch.randn(24, 10, 3, 5)
    f = tucker2_decompose(w, (24, 10))
    assert f.first.shape == (10, 10) and f.core.shape == (24, 10, 3, 5) and f.last.shape == (24, 24)
    assert rel(f.reconstruct(), w) < 1e-5


def test_tucker2_exact_at_true_rank_and_error_decreases_with_rank():
    w = low_rank_conv_weight(32, 16, 3, 8, 4)
    assert rel(tucker2_decompose(w, (8, 4)).reconstruct(), w) < 1e-5
    errors = [rel(tucker2_decompose(w, (r, r)).reconstruct(), w) for r in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


def test_tucker2_error_table_matches_truncated_hosvd():
    w = torch.randn(20, 12, 3, 3)
    table = tucker2_relative_errors(w)
    assert table.shape == (21, 13)
    assert table[0, 0] == pytest.approx(1.0) and table[20, 12] == pytest.approx(0.0, abs=1e-6)
    for r_out, r_in in [(5, 3), (10, 12), (20, 6)]:
        hosvd = tucker2_decompose(w, (r_out, r_in), n_iter_max=0)
        assert float(table[r_out, r_in]) == pytest.approx(rel(hosvd.reconstruct(), w), rel=1e-4)
        hooi = tucker2_decompose(w, (r_out, r_in))
        assert rel(hooi.reconstruct(), w) <= float(table[r_out, r_in]) + 1e-6  # HOOI never worse than HOSVD
    assert torch.all(table[1:, :].diff(dim=1) <= 1e-12) and torch.all(table[:, 1:].diff(dim=0) <= 1e-12)


@pytest.mark.parametrize(
    "shape, ranks",
    [((48, 40, 3, 3), (12, 10)), ((64, 16, 3, 3), (30, 8)), ((8, 96, 3, 3), (8, 80)), ((32, 24, 1, 5), (32, 24)),
     ((96, 8, 3, 3), (40, 6))],
)
def test_tucker2_hooi_matches_tensorlys_partial_tucker(shape, ranks):
    """Our HOOI only swaps the per-mode SVD for a Gram eigendecomposition: the sweeps, the errors and (where the
    ranks do not exceed an unfolding's rank) the subspaces must be tensorly's. (8, 96, 3, 3) at R_in 80 makes the
    mode-1 unfolding tall and rank-deficient (80 > 8 * 9), the completed case; (96, 8, 3, 3) at (40, 6) makes the
    projected mode-0 unfolding tall (96 x 54), the thin-SVD case."""
    from tensorly.decomposition import partial_tucker

    from nncf_tdplugin.decomposition._tensorly import numpy_backend
    from nncf_tdplugin.decomposition.tucker2 import hooi

    torch.manual_seed(0)
    u, s, v = torch.linalg.svd(torch.randn(shape[0], shape[1] * shape[2] * shape[3], dtype=torch.float64), False)
    w = ((u * s * torch.exp(-torch.arange(len(s)) / 6.0)) @ v).reshape(shape).numpy()  # a decaying spectrum
    with numpy_backend():
        (ref_core, ref_factors), ref_errors = partial_tucker(
            w, rank=list(ranks), modes=[0, 1], init="svd", n_iter_max=10, tol=1e-6
        )
        core, factors, errors = hooi(w, ranks, modes=(0, 1), n_iter_max=10, tol=1e-6)
    assert len(errors) == len(ref_errors)
    # abs 1e-7: at an exact fit both errors are sqrt(|‖X‖² - ‖core‖²|) of rounding noise, ~sqrt(eps) = 1e-8
    assert errors == pytest.approx([float(e) for e in ref_errors], abs=1e-7)
    for mode, (ours, ref) in enumerate(zip(factors, ref_factors)):
        assert ours.shape == ref.shape
        assert torch.allclose(torch.from_numpy(ours.T @ ours), torch.eye(ranks[mode], dtype=torch.float64), atol=1e-10)
        if ranks[mode] <= min(tl.unfold(w, mode).shape) and ranks[mode] < shape[mode]:
            assert abs(ours @ ours.T - ref @ ref.T).max() < 1e-8, f"mode {mode}: not tensorly's subspace"
    ours_w = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
    ref_w = tl.tenalg.multi_mode_dot(ref_core, ref_factors, modes=[0, 1])
    assert abs(ours_w - ref_w).max() < 1e-8 * abs(w).max()


def test_tucker2_factors_are_deterministic_with_a_sign_convention():
    w = torch.randn(40, 24, 3, 3)
    a, b = tucker2_decompose(w, (10, 8)), tucker2_decompose(w.clone(), (10, 8))
    assert torch.equal(a.first, b.first) and torch.equal(a.core, b.core) and torch.equal(a.last, b.last)
    for factor in (a.last, a.first.T):  # each column's largest-magnitude entry is positive
        assert torch.all(factor.gather(0, factor.abs().argmax(0, keepdim=True)) > 0)


def test_svd_factors_errors_and_eckart_young():
    m = low_rank_matrix(30, 50, 7, noise=0.05)
    errors = svd_relative_errors(m)
    assert errors.shape == (31,)
    for r in (1, 7, 30):
        f = svd_decompose(m, r)
        assert f.first.shape == (r, 50) and f.last.shape == (30, r)
        assert rel(f.reconstruct(), m) == pytest.approx(float(errors[r]), abs=1e-5)
    assert float(errors[30]) < 1e-6 and float(errors[6]) > float(errors[7]) > float(errors[8])


def test_cp_recovers_a_low_rank_kernel():
    w = torch.einsum("tr,rs,ri,rj->tsij", torch.randn(16, 5), torch.randn(5, 8), torch.randn(5, 3), torch.randn(5, 3))
    f = cp_decompose(w, 5)
    assert f.first.shape == (5, 8) and f.vertical.shape == (5, 3) and f.horizontal.shape == (5, 3)
    assert f.last.shape == (16, 5)
    assert rel(f.reconstruct(), w) < 1e-3
    norms = torch.stack([f.first.norm(dim=1), f.vertical.norm(dim=1), f.horizontal.norm(dim=1), f.last.norm(dim=0)])
    assert torch.allclose(norms, norms[0:1].expand_as(norms), rtol=1e-3)  # balanced components


def test_cp_error_decreases_with_rank_and_is_deterministic():
    w = torch.randn(16, 8, 3, 3)
    errors = [rel(cp_decompose(w, r).reconstruct(), w) for r in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]
    a, b = cp_decompose(w, 6, random_state=3), cp_decompose(w, 6, random_state=3)
    assert torch.equal(a.first, b.first)


@pytest.mark.parametrize("backend", ["numpy", "pytorch"])
def test_user_tensorly_backend_is_untouched(backend):
    previous = tl.get_backend()
    tl.set_backend(backend)
    try:
        tucker2_decompose(torch.randn(8, 4, 3, 3), (4, 2))
        cp_decompose(torch.randn(8, 4, 3, 3), 3)
        svd_decompose(torch.randn(8, 4), 2)
        assert tl.get_backend() == backend
    finally:
        tl.set_backend(previous)


def test_bad_ranks_raise():
    with pytest.raises(ValueError, match="Tucker-2 ranks"):
        tucker2_decompose(torch.randn(8, 4, 3, 3), (9, 2))
    with pytest.raises(ValueError, match="SVD rank"):
        svd_decompose(torch.randn(8, 4), 0)
    with pytest.raises(ValueError, match="unknown decomposition method"):
        max_ranks((8, 4, 3, 3), "tt")


def test_serial_lapack_limits_both_thread_pools_and_restores_them():
    from threadpoolctl import threadpool_info

    from nncf_tdplugin.decomposition._threads import serial_lapack

    before_torch = torch.get_num_threads()
    before_blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    with pytest.raises(RuntimeError, match="inside"):
        with serial_lapack():
            assert torch.get_num_threads() == 1
            assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before_torch
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before_blas
