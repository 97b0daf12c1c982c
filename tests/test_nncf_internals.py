"""Guards the one place that uses NNCF private attributes (nncf_integration/_internals.py): after the
decomposition, NNCF's original graph and module map must be what NNCF itself builds for an equivalent model."""

import copy

import torch

import nncf
from nncf.torch.model_creation import create_nncf_network

from nncf_tdplugin.layers import DecomposedConv2d, DecomposedLinear
from tests.models import LowRankCNN
from tests.nncf_helpers import compress


def _graph_signature(nncf_graph):
    nodes = sorted(n.node_name for n in nncf_graph.get_all_nodes())
    edges = sorted((e.from_node.node_name, e.to_node.node_name, tuple(e.tensor_shape)) for e in nncf_graph.get_all_edges())
    return nodes, edges


def test_refreshed_graph_and_module_map_match_a_fresh_trace():
    _, model = compress(quantization=False)
    # An equivalent model that already has the factor layers, wrapped by NNCF from scratch.
    reference = LowRankCNN()
    for name, module in model.named_modules():
        if isinstance(module, (DecomposedConv2d, DecomposedLinear)):
            setattr(reference, name, copy.deepcopy(module))
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]}})
    fresh = create_nncf_network(reference, config)

    assert _graph_signature(model.nncf.get_original_graph()) == _graph_signature(fresh.nncf.get_original_graph())
    ours = sorted(str(s) for scopes in model.nncf.get_nncf_module_scopes() for s in scopes)
    theirs = sorted(str(s) for scopes in fresh.nncf.get_nncf_module_scopes() for s in scopes)
    assert ours == theirs
    assert any("DecomposedConv2d[conv3]/NNCFConv2d[core]" in s for s in ours)


def test_batchnorm_that_follows_a_conv_gives_its_output_scale():
    from nncf_tdplugin.nncf_integration.graph_layers import find_weighted_layers

    model = LowRankCNN()
    with torch.no_grad():
        model.bn3.weight.uniform_(0.5, 2.0)
        model.bn3.running_var.uniform_(0.5, 2.0)
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]}})
    layers = {lyr.module_name: lyr for lyr in find_weighted_layers(create_nncf_network(model, config))}
    expected = model.bn3.weight.abs() / torch.sqrt(model.bn3.running_var + model.bn3.eps)
    assert torch.allclose(layers["conv3"].output_scale.float(), expected.detach(), rtol=1e-5)
    assert layers["conv1"].output_scale is not None  # conv1 -> bn1
    assert layers["conv2"].output_scale is None  # conv2 -> relu
    assert layers["fc1"].output_scale is None
