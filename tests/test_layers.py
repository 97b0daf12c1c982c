import pytest
import torch
from torch import nn

from nncf_tdplugin.layers import (
    DecomposedConv2d,
    DecomposedLinear,
    build_factorized,
    check_ranks,
    decompose_layer,
    is_decomposable,
    reconstruct_weight,
    relative_error,
)
from tests.models import low_rank_conv_weight, low_rank_matrix

GEOMETRIES = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(2, 0), dilation=(1, 2)),
    dict(padding="same", dilation=2),
    dict(padding="valid"),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=(1, 2), padding_mode="replicate", stride=(1, 2)),
    dict(padding=2, padding_mode="circular", dilation=2),
    dict(padding=1, bias=False),
]


def low_rank_weight_for(method, t, s, kh, kw):
    if method == "tucker2":
        core = torch.randn(5, 3, kh, kw)
        return torch.einsum("ab,bcij,cd->adij", torch.randn(t, 5), core, torch.randn(3, s)), (5, 3)
    if method == "svd":
        return (torch.randn(t, 4) @ torch.randn(4, s * kh * kw)).reshape(t, s, kh, kw), (4,)
    return torch.einsum("tr,rs,ri,rj->tsij", torch.randn(t, 4), torch.randn(4, s), torch.randn(4, kh),
                        torch.randn(4, kw)), (4,)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()) or "plain")
@pytest.mark.parametrize("method", ["tucker2", "svd", "cp"])
@pytest.mark.parametrize("kernel", [(3, 3), (3, 5)])
def test_factor_layers_match_dense_conv_on_low_rank_weights(method, geometry, kernel):
    dense = nn.Conv2d(8, 12, kernel, **geometry)
    weight, ranks = low_rank_weight_for(method, 12, 8, *kernel)
    with torch.no_grad():
        dense.weight.copy_(weight)
    layer = decompose_layer(dense, method, ranks)
    assert isinstance(layer, DecomposedConv2d) and layer.method == method and layer.ranks == ranks
    assert all(type(child) in (nn.Conv2d,) for child in layer.children())  # plain, exportable layers
    assert (layer.out_proj.bias is not None) == (dense.bias is not None)
    x = torch.randn(2, 8, 13, 11)
    expected = dense(x)
    got = layer(x)
    assert got.shape == expected.shape
    tol = 2e-3 if method == "cp" else 1e-5
    assert float((got - expected).norm() / expected.norm()) < tol
    assert relative_error(dense.weight, layer) < tol


@pytest.mark.parametrize("method,ranks", [("tucker2", (12, 8)), ("svd", (12,))])
def test_full_rank_is_exact_on_random_weights(method, ranks):
    dense = nn.Conv2d(8, 12, 3, padding=1, stride=2)
    layer = decompose_layer(dense, method, ranks)
    x = torch.randn(1, 8, 9, 9)
    assert torch.allclose(layer(x), dense(x), atol=1e-5)


def test_error_decreases_with_rank():
    dense = nn.Conv2d(16, 32, 3)
    with torch.no_grad():
        dense.weight.copy_(low_rank_conv_weight(32, 16, 3, 8, 8, noise=0.3))
    errs = [relative_error(dense.weight, decompose_layer(dense, "tucker2", (r, r))) for r in (2, 4, 8, 16)]
    assert errs == sorted(errs, reverse=True) and errs[0] > errs[-1]


def test_linear_svd_on_sequence_input():
    dense = nn.Linear(40, 24)
    with torch.no_grad():
        dense.weight.copy_(low_rank_matrix(24, 40, 6))
    layer = decompose_layer(dense, "svd", (6,))
    assert isinstance(layer, DecomposedLinear)
    assert layer.in_proj.weight.shape == (6, 40) and layer.out_proj.weight.shape == (24, 6)
    x = torch.randn(3, 7, 40)
    assert torch.allclose(layer(x), dense(x), atol=1e-5)
    assert reconstruct_weight(layer).shape == (24, 40)


def test_build_factorized_shapes_without_decomposing():
    conv = nn.Conv2d(16, 32, 3, padding=1)
    t = build_factorized(conv, "tucker2", (10, 6))
    assert [tuple(m.weight.shape) for m in t.children()] == [(6, 16, 1, 1), (10, 6, 3, 3), (32, 10, 1, 1)]
    c = build_factorized(conv, "cp", (7,))
    assert [tuple(m.weight.shape) for m in c.children()] == [(7, 16, 1, 1), (7, 1, 3, 1), (7, 1, 1, 3), (32, 7, 1, 1)]
    s = build_factorized(conv, "svd", (5,))
    assert [tuple(m.weight.shape) for m in s.children()] == [(5, 16, 3, 3), (32, 5, 1, 1)]


def test_rank_validation_messages():
    conv = nn.Conv2d(16, 32, 3)
    with pytest.raises(ValueError, match=r"rank 33 is out of range for 'tucker2'.*\[1, 32\]"):
        check_ranks(conv, "tucker2", (33, 4))
    with pytest.raises(ValueError, match="takes 2 rank"):
        check_ranks(conv, "tucker2", (3,))
    with pytest.raises(ValueError, match="only be decomposed with 'svd'"):
        check_ranks(nn.Linear(4, 4), "tucker2", (2, 2))
    with pytest.raises(ValueError, match="1x1 conv is a matrix"):
        check_ranks(nn.Conv2d(4, 4, 1), "cp", (2,))
    with pytest.raises(ValueError, match="unknown decomposition method 'tt'"):
        check_ranks(conv, "tt", (2,))


def test_grouped_convs_are_not_decomposable():
    assert is_decomposable(nn.Conv2d(8, 8, 3, groups=8)) == "grouped conv (groups=8)"
    assert is_decomposable(nn.Conv2d(8, 8, 3)) is None
    assert is_decomposable(nn.Linear(3, 3)) is None


def test_output_weighted_decomposition_is_exact_at_full_rank_and_better_where_it_matters():
    dense = nn.Conv2d(16, 32, 3, padding=1)
    scale = torch.rand(32, dtype=torch.float64) ** 4 + 0.01  # a few output channels matter much more
    full = decompose_layer(dense, "tucker2", (32, 16), output_scale=scale)
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(full(x), dense(x), atol=1e-5)
    plain = decompose_layer(dense, "tucker2", (8, 8))
    weighted = decompose_layer(dense, "tucker2", (8, 8), output_scale=scale)
    assert relative_error(dense.weight, weighted, scale) < relative_error(dense.weight, plain, scale)
    assert relative_error(dense.weight, weighted) > relative_error(dense.weight, plain)  # the trade-off
