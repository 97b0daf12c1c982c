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
    output_scale: Optional[torch.Tensor] = None  # |gamma| / sigma of a BatchNorm that alone consumes the output
    in_shape: tuple = ()  # input tensor shape of this call (batch first)
    out_shape: tuple = ()
    # the input is non-negative by construction (after a ReLU, through pooling...): NNCF quantizes it unsigned, and
    # OpenVINO runs such a layer on u8 (the INT8 latency cost model times it so)
    input_nonnegative: bool = False
    # other modules holding one of this layer's parameters (tied weights): decomposing one would untie them
    tied_to: tuple = ()


def find_weighted_layers(model: NNCFNetwork) -> list[GraphLayer]:
    """Every Conv2d/Linear call in topological order of the original graph."""
    graph = model.nncf.get_original_graph()
    names = {id(m): n for n, m in model.named_modules()}
    found: list[tuple] = []
    signs: dict = {}  # node id -> non-negative output (shared by every layer's walk back)
    for node in graph.topological_sort():
        module = _containing(model, node)
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or id(module) not in names:
            continue
        if node.node_type not in _WEIGHTED_OPS:  # e.g. the pad_0 node of a conv with padding_mode="reflect"
            continue
        in_edges = [e for e in graph.get_input_edges(node) if e.input_port_id == 0]
        out_edges = graph.get_output_edges(node)
        if not in_edges or not out_edges:
            continue
        entering = _module_input_edge(model, graph, module, in_edges[0])
        found.append((node, module, tuple(entering.tensor_shape), tuple(out_edges[0].tensor_shape),
                      _nonnegative(model, graph, entering.from_node, signs)))
    calls: dict[int, int] = {}
    for _, module, _, _, _ in found:
        calls[id(module)] = calls.get(id(module), 0) + 1
    owners = _parameter_owners(model)
    layers = []
    for node, module, in_shape, out_shape, nonnegative in found:
        geometry = LayerGeometry.of(module, in_shape, out_shape) if _is_plain(module) else None
        if geometry is not None:
            macs = dense_macs(geometry)
        else:  # grouped conv: every output pixel costs weight.numel() MACs
            macs = int(torch.tensor(out_shape[2:]).prod()) * module.weight.numel()
        tied = sorted({owner for p in module.parameters(recurse=False) for owner in owners[id(p)]
                       if owner != names[id(module)]})
        layers.append(GraphLayer(names[id(module)], node.node_name, module, geometry, macs, calls[id(module)],
                                 _following_batchnorm_scale(model, graph, node), in_shape, out_shape, nonnegative,
                                 tuple(tied)))
    return layers


def _parameter_owners(model: nn.Module) -> dict[int, set]:
    """id(parameter) -> the (first) names of the modules holding it directly; a parameter assigned to two modules
    (tied weights) has two owners, a module registered under two names (an alias) counts once."""
    owners: dict[int, set] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    return owners


def replace_module(model: nn.Module, module: nn.Module, new: nn.Module) -> None:
    """Put ``new`` in place of ``module`` under every name it is registered as: a module registered twice (an alias
    such as ``self.head = self.blocks[-1]``) appears once in ``named_modules()``, and replacing only that name would
    leave the alias calling the old module."""
    for path in [name for name, m in model.named_modules(remove_duplicate=False) if m is module]:
        model.set_submodule(path, new)


_WEIGHTED_OPS = ("conv2d", "linear")


def _module_input_edge(model: NNCFNetwork, graph, module: nn.Module, edge):
    """The edge whose tensor enters ``module``: a conv with a non-zero ``padding_mode`` pads in its own pad node
    first, and the factor layers (whose first factor runs before any padding) see the unpadded input."""
    while True:
        source = edge.from_node
        earlier = [e for e in graph.get_input_edges(source) if e.input_port_id == 0] \
            if _containing(model, source) is module else []
        if not earlier:
            return edge
        edge = earlier[0]


def _containing(model: NNCFNetwork, node) -> Optional[nn.Module]:
    """The module a traced node runs in, or None (ops outside modules, functional calls, have none)."""
    try:
        return model.nncf.get_containing_module(node.node_name)
    except Exception:  # noqa: BLE001 - a functional op outside modules
        return None


_NONNEGATIVE_OPS = {"relu", "relu_", "sigmoid", "hardsigmoid", "softmax"}
# ops whose output is non-negative when all their tensor inputs are (adds only of two tensors: a scalar operand
# is not in the graph and may be negative)
_SIGN_PRESERVING_OPS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "flatten", "view",
                        "reshape", "dropout", "squeeze", "unsqueeze", "contiguous", "cat", "upsample_nearest2d",
                        "upsample_bilinear2d"}
_ADD_OPS = {"__add__", "__iadd__", "add", "__radd__"}


def _nonnegative(model: NNCFNetwork, graph, node, memo: dict, depth: int = 0) -> bool:
    """Whether ``node``'s output is non-negative by construction: a ReLU, sigmoid, ReLU6 (a Hardtanh module with
    min_val >= 0)..., or pooling, reshapes, adds and concatenations of such. Anything else (a conv, a BatchNorm, the
    model input, an op not listed) counts as signed."""
    if node.node_id in memo:
        return memo[node.node_id]
    memo[node.node_id] = False  # cycles cannot occur in a traced graph; this also bounds the recursion
    kind = node.node_type
    if kind in _NONNEGATIVE_OPS:
        result = True
    elif kind == "hardtanh":
        module = _containing(model, node)
        result = isinstance(module, nn.Hardtanh) and module.min_val >= 0
    elif (kind in _SIGN_PRESERVING_OPS or kind in _ADD_OPS) and depth < 64:
        inputs = graph.get_input_edges(node)
        enough = len(inputs) >= (2 if kind in _ADD_OPS else 1)
        result = enough and all(_nonnegative(model, graph, e.from_node, memo, depth + 1) for e in inputs)
    else:
        result = False
    memo[node.node_id] = result
    return result


def _following_batchnorm_scale(model: NNCFNetwork, graph, node) -> Optional[torch.Tensor]:
    """Per-channel |gamma| / sqrt(running_var + eps) of the BatchNorm that is the only consumer of ``node``'s
    output, floored at 5% of its median (a dead channel still gets a sane weight scale after division)."""
    consumers = graph.get_output_edges(node)
    if len(consumers) != 1:
        return None
    bn = _containing(model, consumers[0].to_node)
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None or not bn.affine:
        return None
    scale = (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps)).double().cpu()
    return scale.clamp_min(0.05 * float(scale.median()) + 1e-12)


def _is_plain(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
