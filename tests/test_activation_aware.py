"""Activation-aware decomposition (``decomposition.activation_aware``): the input whitening math, the factor
layers it builds, and the NNCF integration (calibration data from register_default_init_args, resume without it)."""

import copy

import pytest
import torch
from nncf.torch import register_default_init_args
from torch import nn

from nncf_tdplugin import TDConfigError, td_controller
from nncf_tdplugin.decomposition import InputWhitening, weight_times_input
from nncf_tdplugin.layers import decompose_layer, relative_error
from tests.models import LowRankCNN, low_rank_conv_weight
from tests.nncf_helpers import compress, loader, make_config


def anisotropic_inputs(n, channels, hw=None, seed=0):
    """Inputs whose channels differ in scale by 100x and are correlated (as ReLU features are)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(channels, channels, generator=g) * torch.logspace(-1, 1, channels)[None, :]
    shape = (n, channels) if hw is None else (n, hw, hw, channels)
    x = torch.randn(*shape, generator=g) @ mix.T
    return x if hw is None else x.permute(0, 3, 1, 2).contiguous()


def moment_of(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]) if x.dim() == 2 else x.transpose(0, 1).reshape(x.shape[1], -1).T
    return flat.double().T @ flat.double() / flat.shape[0]


def test_whitening_is_the_damped_square_root_and_its_inverse():
    x = anisotropic_inputs(4000, 24)
    m = moment_of(x)
    w = InputWhitening.from_moment(m, damping=0.01)
    damped = m + 0.01 * torch.diagonal(m).mean() * torch.eye(24, dtype=m.dtype)
    assert torch.allclose(w.sqrt @ w.sqrt, damped, rtol=1e-6, atol=1e-8 * float(damped.abs().max()))
    assert torch.allclose(w.sqrt @ w.inv_sqrt, torch.eye(24, dtype=m.dtype), atol=1e-8)
    silent = torch.zeros(5, 5, dtype=torch.float64)  # an input that is zero on every sample: no weighting
    assert torch.equal(InputWhitening.from_moment(silent).sqrt, torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        InputWhitening.from_moment(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        InputWhitening.from_moment(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="input channels"):
        weight_times_input(torch.zeros(8, 6, 3, 3), torch.eye(5))


@pytest.mark.parametrize("method,ranks", [("svd", (6,)), ("tucker2", (8, 6)), ("cp", (10,))])
def test_whitened_factors_have_smaller_output_error_on_the_data_and_are_exact_at_full_rank(method, ranks):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 32, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(low_rank_conv_weight(32, 24, 3, 16, 16, noise=0.3))
    x = anisotropic_inputs(64, 24, hw=8)
    whitening = InputWhitening.from_moment(moment_of(x), damping=1e-4)
    plain = decompose_layer(conv, method, ranks)
    aware = decompose_layer(conv, method, ranks, input_whitening=whitening)
    with torch.no_grad():
        y = conv(x)
        err_plain = float((plain(x) - y).norm() / y.norm())
        err_aware = float((aware(x) - y).norm() / y.norm())
    assert err_aware < 0.95 * err_plain, (err_aware, err_plain)  # measured 0.92 (svd), 0.69 (tucker2), 0.77 (cp)
    # the weight-space error is what the plain decomposition minimises: there the aware one is worse
    assert relative_error(conv.weight, aware) > relative_error(conv.weight, plain)
    # the reported output error is the whitened weight error (per kernel position, so close to, not equal to,
    # the measured one on the data)
    reported = relative_error(conv.weight, aware, input_whitening=whitening)
    assert reported < relative_error(conv.weight, plain, input_whitening=whitening)
    if method != "cp":  # CP-ALS is not exact at any finite rank
        full = decompose_layer(conv, method, (32, 24) if method == "tucker2" else (32,), input_whitening=whitening)
        with torch.no_grad():
            assert torch.allclose(full(x), y, atol=1e-4 * float(y.abs().max()))


def test_whitened_svd_of_a_linear_layer_is_the_best_rank_r_on_the_data():
    """For a Linear layer the whitened SVD is the exact minimiser of E||(W - W_hat) x||^2 at rank r (up to the
    damping): it beats any other rank-r map, e.g. the plain SVD, on the data it was fitted to."""
    torch.manual_seed(1)
    fc = nn.Linear(40, 30, bias=False)
    x = anisotropic_inputs(5000, 40)
    whitening = InputWhitening.from_moment(moment_of(x), damping=1e-6)
    aware = decompose_layer(fc, "svd", (5,), input_whitening=whitening)
    plain = decompose_layer(fc, "svd", (5,))
    with torch.no_grad():
        y = fc(x)
        # the optimum from the normal equations: W_hat = W M^(1/2) projected on its top-r left singular vectors,
        # times M^(-1/2)
        w_white = fc.weight.double() @ whitening.sqrt
        u, _, _ = torch.linalg.svd(w_white, full_matrices=False)
        best = (u[:, :5] @ u[:, :5].T @ w_white @ whitening.inv_sqrt).float()
        assert torch.allclose(aware(x), x @ best.T, atol=1e-4 * float(y.abs().max()))
        assert (aware(x) - y).norm() < (plain(x) - y).norm()


def test_activation_aware_compression_uses_nncf_init_data_and_resumes_without_it():
    block = {"algorithm": "tensor_decomposition", "rank_selection": "fraction", "rank_fraction": 0.25,
             "decomposition": {"activation_aware": True, "activation_samples": 24}}
    base = LowRankCNN(noise=0.3)
    data = loader(n=32, batch_size=8)

    def build(section, with_data=True, state=None):
        from nncf.torch import create_compressed_model

        config = make_config(section, quantization=False)
        if with_data:
            config = register_default_init_args(config, data)
        return create_compressed_model(copy.deepcopy(base), config, compression_state=state)

    ctrl, model = build(block)
    plain_ctrl, plain_model = build({k: v for k, v in block.items() if k != "decomposition"})
    plan = td_controller(ctrl).plan
    plain_plan = td_controller(plain_ctrl).plan
    ranks = {n: e["ranks"] for n, e in plan["layers"].items()}
    assert ranks == {n: e["ranks"] for n, e in plain_plan["layers"].items()}
    assert plan["layers"] and all("activation_error" in e for e in plan["layers"].values())
    assert not any("activation_error" in e for e in plain_plan["layers"].values())
    assert "Output error (data)" in ctrl.statistics().to_str()
    assert "Output error (data)" not in plain_ctrl.statistics().to_str()
    # the whole network's outputs stay closer to the dense model's on the calibration data
    x = torch.cat([b for b, _ in data])
    with torch.no_grad():
        y = base.eval()(x)
        aware_err = float((model.eval()(x) - y).norm())
        plain_err = float((plain_model.eval()(x) - y).norm())
    assert aware_err < plain_err, (aware_err, plain_err)
    # resume: the plan rebuilds the structure and the state_dict fills it; no calibration data is needed
    ctrl2, model2 = build(block, with_data=False, state=ctrl.get_compression_state())
    model2.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model2.eval()(x), model.eval()(x))
    # a first build without calibration data says what to do
    with pytest.raises(TDConfigError, match=r"decomposition\.activation_aware: .*register_default_init_args"):
        build(block, with_data=False)


def test_activation_aware_composes_with_quantization():
    block = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 1.5},
             "decomposition": {"activation_aware": True, "activation_samples": 16}}
    ctrl, model = compress(td_block=block)
    td = td_controller(ctrl)
    assert td.plan["achieved_ratio"] >= 1.5 and all("activation_error" in e for e in td.plan["layers"].values())
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
