"""Which calls of a traced model are weighted layers, and with which shapes (graph_layers.find_weighted_layers)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from nncf.torch import create_compressed_model
from torch import nn

from nncf_tdplugin.config import TDConfigError
from nncf_tdplugin.layers.factorized import reconstruct_weight
from tests.nncf_helpers import make_config

SIZE = (1, 3, 16, 16)


class PaddedConvNet(nn.Module):
    """A reflect-padded conv: NNCF traces it as a pad node and a conv2d node inside the same module."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.conv = nn.Conv2d(32, 64, 3, padding=2, dilation=2, padding_mode="reflect")
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.conv(torch.relu(self.stem(x))).mean((2, 3)))


class SamePadConv(nn.Conv2d):
    """A conv whose forward pads itself (like timm's Conv2dSame): factor layers would lose that padding."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class CustomConvNet(PaddedConvNet):
    def __init__(self):
        super().__init__()
        self.conv = SamePadConv(32, 64, 2, stride=2)


def _compress(model, ranks=0.5):
    torch.manual_seed(0)
    block = {"algorithm": "tensor_decomposition", "layers": {"conv": {"ranks": ranks}}}
    return create_compressed_model(model, make_config(block, quantization=False, input_size=SIZE))


def test_a_reflect_padded_conv_is_one_layer_at_its_unpadded_input():
    """The pad node inside the conv's module is not a second call (the layer was skipped as "shared") and adds no
    MACs; the layer's input is the unpadded tensor, which the first factor sees."""
    torch.manual_seed(0)
    model = PaddedConvNet().eval()
    x = torch.randn(*SIZE)
    ctrl, compressed = _compress(PaddedConvNet().eval())
    plan = ctrl.plan
    assert "conv" in plan["layers"], plan["skipped"]
    entry = plan["layers"]["conv"]
    assert entry["method"] == "tucker2"
    dense_conv = 64 * 32 * 9 * 16 * 16
    assert entry["dense_macs"] == dense_conv
    stem, fc = 32 * 3 * 9 * 16 * 16, 64 * 10
    assert plan["model_macs"] == stem + dense_conv + fc
    # factors at half the ranks: a different, well-defined model that runs at the input's shape
    assert compressed.eval()(x).shape == model(x).shape


def test_the_factors_of_a_reflect_padded_conv_compute_the_reconstructed_conv():
    """The factor layers keep the reflect padding: the decomposed model equals the original with the conv's weight
    replaced by the factors' product."""
    model = PaddedConvNet().eval()
    x = torch.randn(*SIZE)
    ctrl, compressed = _compress(copy.deepcopy(model))
    layer = compressed.conv
    assert layer.method == "tucker2"
    with torch.no_grad():
        model.conv.weight.copy_(reconstruct_weight(layer))
    torch.testing.assert_close(compressed.eval()(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_conv_subclass_with_its_own_forward_stays_dense_and_says_why():
    torch.manual_seed(0)
    model = CustomConvNet().eval()
    x = torch.randn(*SIZE)
    expected = model(x)
    block = {"algorithm": "tensor_decomposition"}
    ctrl, compressed = create_compressed_model(model, make_config(block, quantization=False, input_size=SIZE))
    assert ctrl.plan["layers"] == {}
    assert ctrl.plan["skipped"]["conv"] == "custom forward (SamePadConv overrides Conv2d.forward)"
    torch.testing.assert_close(compressed.eval()(x), expected)
    with pytest.raises(TDConfigError, match=r"layers\['conv'\]: layer 'conv' cannot be decomposed: custom forward"):
        _compress(CustomConvNet())


class SignsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList([nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(7)])
        self.bn, self.relu6, self.hswish = nn.BatchNorm2d(8), nn.ReLU6(), nn.Hardswish()

    def forward(self, x):
        x = self.c[0](x)  # the model input: signed
        y = self.c[1](torch.relu(x))  # after a ReLU
        z = self.c[2](F.max_pool2d(torch.relu(y), 2))  # pooling keeps the sign
        z = self.c[3](self.bn(z))  # after a BatchNorm: signed
        z = self.c[4](torch.relu(z) + torch.relu(z))  # a sum of two non-negative tensors
        z = self.c[5](self.relu6(z))
        return self.c[6](self.hswish(z)).mean((2, 3))  # Hardswish goes below zero


def test_layers_know_whether_their_input_is_nonnegative():
    """What NNCF quantizes unsigned and OpenVINO runs on u8 (the INT8 latency cost model times it so)."""
    from nncf.torch.model_creation import wrap_model

    from nncf_tdplugin.nncf_integration.graph_layers import find_weighted_layers

    net = wrap_model(SignsNet().eval(), torch.randn(*SIZE), trace_parameters=False)
    flags = {layer.module_name: layer.input_nonnegative for layer in find_weighted_layers(net)}
    assert flags == {"c.0": False, "c.1": True, "c.2": True, "c.3": False, "c.4": True, "c.5": True, "c.6": False}
