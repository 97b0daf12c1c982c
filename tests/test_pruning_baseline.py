"""NNCF's filter_pruning made physically smaller in torch (nncf_tdplugin.materialize_pruned_model): the plain
model computes what the stripped NNCF model computes, with fewer channels, and can be decomposed again."""

import copy

import nncf
import pytest
import torch
from nncf.torch import create_compressed_model, register_default_init_args
from torch import nn

from benchmarks.data_models.fashion_mnist import ResNetFMNIST
from benchmarks.pruning import pruning_block
from nncf_tdplugin import materialize_pruned_model, td_controller


def _loader():
    data = [(torch.randn(1, 28, 28), int(torch.randint(0, 10, ()))) for _ in range(8)]
    return torch.utils.data.DataLoader(data, batch_size=4)


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    base = ResNetFMNIST((8, 16, 32, 64)).eval()
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]},
                                        "compression": [pruning_block(2.0)]})
    ctrl, _ = create_compressed_model(copy.deepcopy(base), register_default_init_args(config, _loader()))
    return base, ctrl


def test_the_materialized_model_is_smaller_plain_torch_and_computes_the_same(pruned):
    base, ctrl = pruned
    plain = materialize_pruned_model(ctrl, base).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = ctrl.strip(do_copy=True).eval()(x)
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    assert type(plain) is type(base) and not hasattr(plain, "nncf")
    assert {type(m) for m in plain.modules()} <= {type(m) for m in base.modules()}  # no NNCF module classes
    n_base, n_plain = (sum(p.numel() for p in m.parameters()) for m in (base, plain))
    assert n_plain < 0.6 * n_base
    narrower = [n for n, m in plain.named_modules()
                if isinstance(m, nn.Conv2d) and m.out_channels < base.get_submodule(n).out_channels]
    assert narrower, "no convolution lost channels"
    assert all(not b.requires_grad for m in plain.modules() if isinstance(m, nn.BatchNorm2d)
               for b in (m.running_mean, m.running_var))
    assert sum(p.numel() for p in base.parameters()) == n_base  # the original is untouched
    sizes = [getattr(m, a) for m in plain.modules() for a in ("in_channels", "out_channels", "in_features",
                                                             "out_features", "num_features") if hasattr(m, a)]
    assert sizes and all(type(v) is int for v in sizes)  # NNCF's cut leaves Linear.in_features a tensor


def test_the_pruned_model_can_be_decomposed_again(pruned):
    base, ctrl = pruned
    plain = materialize_pruned_model(ctrl, base)
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]}, "compression": [
        {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 1.5}}]})
    td_ctrl, model = create_compressed_model(plain, config)
    stats = td_controller(td_ctrl).statistics().tensor_decomposition
    assert stats.achieved_ratio >= 1.5 - 1e-6
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_materializing_needs_a_pruning_controller_and_the_original_model(pruned):
    base, ctrl = pruned
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]}, "compression": [
        {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 1.5}}]})
    td_ctrl, _ = create_compressed_model(copy.deepcopy(base), config)
    with pytest.raises(ValueError, match="'filter_pruning'.*tensor_decomposition"):
        materialize_pruned_model(td_ctrl, base)
    other = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(ValueError, match="layer '0' of the original model"):
        materialize_pruned_model(ctrl, other)


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.norm = nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(16, 16)
        self.conv2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.norm(self.conv1(x)))).mean((2, 3)))


def test_a_pruned_layer_that_cannot_be_rebuilt_is_named_not_copied_at_its_old_size():
    """NNCF's pruner also cuts GroupNorm; copying it unchanged gave a model that failed (or worse) at run time."""
    torch.manual_seed(0)
    base = GroupNormNet().eval()
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 1, 28, 28]}, "compression": [
        {"algorithm": "filter_pruning", "pruning_init": 0.5,
         "params": {"schedule": "baseline", "num_init_steps": 0, "prune_first_conv": True}}]})
    ctrl, _ = create_compressed_model(copy.deepcopy(base), register_default_init_args(config, _loader()))
    with pytest.raises(ValueError, match=r"layer 'norm' \(GroupNorm\) was pruned \(weight \(16,\) -> \(8,\)\)"):
        materialize_pruned_model(ctrl, base)
