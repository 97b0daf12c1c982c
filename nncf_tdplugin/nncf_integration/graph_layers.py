"""Find the Conv2d/Linear calls of an NNCFNetwork in its traced graph, with the shapes that costs need."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from nncf.torch.nncf_network import NNCFNetwork

from nncf_tdplugin.rank_selection.cost import LayerGeometry, dense_macs


@dataclass
class GraphLayer:
    """One weighted layer of the model, as the traced graph shows it."""

    module_name: str  # dotted name in the model, e.g. "layer1.0.conv1"
    node_name: str  # NNCF node name, e.g. "ResNet/Sequential[layer1]/.../NNCFConv2d[conv1]/conv2d_0"
    module: nn.Module
    geometry: Optional[LayerGeometry]  # None for layers whose cost is not analytic (grouped convs)
    macs: int  # dense MACs of this call (grouped convs included)
    calls: int  # how many graph nodes call this module (shared modules are not decomposed)


def find_weighted_layers(model: NNCFNetwork) -> list[GraphLayer]:
    """Every Conv2d/Linear call in topological order of the original graph."""
    graph = model.nncf.get_original_graph()
    names = {id(m): n for n, m in model.named_modules()}
    found: list[tuple] = []
    for node in graph.topological_sort():
        try:
            module = model.nncf.get_containing_module(node.node_name)
        except Exception:  # noqa: BLE001 - ops outside modules (functional calls) have no containing module
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or id(module) not in names:
            continue
        in_edges = [e for e in graph.get_input_edges(node) if e.input_port_id == 0]
        out_edges = graph.get_output_edges(node)
        if not in_edges or not out_edges:
            continue
        found.append((node, module, tuple(in_edges[0].tensor_shape), tuple(out_edges[0].tensor_shape)))
    calls: dict[int, int] = {}
    for _, module, _, _ in found:
        calls[id(module)] = calls.get(id(module), 0) + 1
    layers = []
    for node, module, in_shape, out_shape in found:
        geometry = LayerGeometry.of(module, in_shape, out_shape) if _is_plain(module) else None
        if geometry is not None:
            macs = dense_macs(geometry)
        else:  # grouped conv: every output pixel costs weight.numel() MACs
            macs = int(torch.tensor(out_shape[2:]).prod()) * module.weight.numel()
        layers.append(GraphLayer(names[id(module)], node.node_name, module, geometry, macs, calls[id(module)]))
    return layers


def _is_plain(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
