"""Physical truncation of gated factor layers to the channels they keep.

For every gate group: the gate (times its mask) is folded into the producer's weight, the producer's output
channels and the consumer's input channels are sliced to the kept channels, the producer's per-channel weight
quantizer (NNCF ``scale`` or ``input_low``/``input_range``, per output channel) is sliced alike, and the gate pre-op
is removed. Kept channels compute exactly what they computed before (the quantizer sees the same folded weight
rows); dropped channels were multiplied by zero. Works on any copy of the model (``strip(do_copy=True)``).

Activation quantizers between factors are per-tensor by default and need nothing; a per-channel one on a
truncated edge (NNCF places those e.g. before depthwise convs) is sliced along its channel axis too.
"""

from typing import Optional

import torch
from nncf.torch.module_operations import UpdateWeight
from nncf.torch.quantization.layers import BaseQuantizer
from torch import nn

from nncf_tdplugin.rank_learning.gates import GateGroup, remove_gate


def _slice_tensor(owner: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    """Replace a parameter by a new, sliced one (a leaf cannot change shape in place: autograd caches its shape);
    buffers are sliced in place. A parameter subclass (NNCF's ``CompressionParameter``) is kept, and so are the
    old parameter's gradient hooks: NNCF's ``compression_lr_multiplier`` lives only in such a hook."""
    value = getattr(owner, name)
    sliced = value.detach().index_select(dim, index.to(value.device)).contiguous()
    if not isinstance(value, nn.Parameter):
        value.data = sliced
        return
    new = type(value)(sliced, requires_grad=value.requires_grad)
    hooks = list((value._backward_hooks or {}).values())
    if hooks:
        new.requires_grad_(True)  # a hook can only be registered on a tensor that requires grad
        for hook in hooks:
            new.register_hook(hook)
        new.requires_grad_(value.requires_grad)
    setattr(owner, name, new)


def _weight_quantizers(module: nn.Module) -> list[BaseQuantizer]:
    return [op.op for op in getattr(module, "pre_ops", {}).values()
            if isinstance(op, UpdateWeight) and isinstance(op.op, BaseQuantizer)]


def _slice_quantizer(q: BaseQuantizer, old: int, index: torch.Tensor, axis: int = 0) -> None:
    """Slice a per-channel quantizer's parameters along ``axis`` (0: weight output channels, 1: activations)."""
    shape = tuple(q.scale_shape)
    if len(shape) <= axis or shape[axis] != old or all(s == 1 for s in shape):
        return  # per-tensor: nothing to slice
    for name, p in list(q.named_parameters(recurse=False)) + list(q.named_buffers(recurse=False)):
        if tuple(p.shape) == shape:
            _slice_tensor(q, name, axis, index)
    new_shape = shape[:axis] + (len(index),) + shape[axis + 1:]
    q._scale_shape = new_shape
    q._qspec.scale_shape = new_shape


def _set_out_channels(module: nn.Module, n: int) -> None:
    if isinstance(module, nn.Conv2d):
        module.out_channels = n
    else:
        module.out_features = n


def _set_in_channels(module: nn.Module, n: int) -> None:
    if isinstance(module, nn.Conv2d):
        module.in_channels = n
    else:
        module.in_features = n


@torch.no_grad()
def truncate_groups(groups: list[GateGroup], keep: Optional[dict[str, torch.Tensor]] = None,
                    edge_quantizers: Optional[dict[str, list[BaseQuantizer]]] = None) -> dict[str, list[int]]:
    """Truncate every group to its kept channels (``keep[group.key]``, default: the gate's mask); returns the new
    ranks of each truncated layer. The gates are removed. ``edge_quantizers[group.key]``: per-channel activation
    quantizers on the group's channels (sliced along dim 1)."""
    new_ranks: dict[str, list[int]] = {}
    # fold every gate first: the consumer of one group is the producer of the next (Tucker-2's core)
    plans = []
    for group in groups:
        gate = group.gate
        kept = keep[group.key] if keep is not None else gate.mask
        index = torch.nonzero(kept > 0.5).flatten()
        if index.numel() == 0:
            index = torch.argmax(gate.gate.abs() * gate.scale).reshape(1)
        w = group.producer.weight
        w.data.mul_(gate.effective().to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1)))
        plans.append((group, index))
    for group, index in plans:
        old = group.gate.channels
        producer, consumer = group.producer, group.consumer
        _slice_tensor(producer, "weight", 0, index)
        _set_out_channels(producer, len(index))
        for q in _weight_quantizers(producer):
            _slice_quantizer(q, old, index)
        _slice_tensor(consumer, "weight", 1, index)
        _set_in_channels(consumer, len(index))
        for q in (edge_quantizers or {}).get(group.key, ()):
            _slice_quantizer(q, old, index, axis=1)
        remove_gate(producer)
        ranks = new_ranks.setdefault(group.layer, list(group.container.ranks))
        ranks[group.rank_index] = len(index)
    for group, _ in plans:
        group.container.ranks = tuple(new_ranks[group.layer])
    return new_ranks


def edge_activation_quantizers(model, groups: list[GateGroup], node_of: dict[int, str]) -> dict[str, list]:
    """Per-channel activation quantizers on the gated edges (producer output / consumer input), by group key."""
    from nncf.torch.graph.transformations.commands import ExtraCompressionModuleType

    try:
        quantizers = model.nncf.get_compression_modules_by_type(ExtraCompressionModuleType.EXTERNAL_QUANTIZER)
    except Exception:  # noqa: BLE001 - no quantization in this model
        return {}
    found: dict[str, list] = {}
    for key, q in quantizers.items():
        if not (isinstance(q, BaseQuantizer) and q.per_channel):
            continue
        for part in str(key).split(";"):  # unified-scale quantizers name every point, ';'-separated
            node, _, port = part.partition("|")
            for group in groups:
                if (node == node_of.get(id(group.producer)) and port.startswith("OUTPUT")) or \
                        (node == node_of.get(id(group.consumer)) and port.startswith("INPUT")):
                    found.setdefault(group.key, []).append(q)
    return found


def patch_quantization_state(model, groups: list[GateGroup], node_of: dict[int, str]) -> None:
    """Keep the quantization builder's saved setup in step with the sliced weight quantizers, so that a compression
    state saved after truncation rebuilds quantizers of the new shapes on resume. The builder state is the dict the
    composite controller returns from ``get_compression_state()``; it is edited in place."""
    ctrl = getattr(model.nncf, "compression_controller", None)
    if ctrl is None:
        return
    try:
        builder_state = ctrl.get_compression_state()["builder_state"]
    except Exception:  # noqa: BLE001 - no state yet
        return
    qstate = builder_state.get("quantization")
    if not qstate:
        return
    points = qstate.get("state", qstate).get("quantizer_setup", {}).get("quantization_points", {})
    weight_shapes, channels = {}, {}
    for group in groups:
        quantizers = _weight_quantizers(group.producer)
        if quantizers:
            weight_shapes[node_of.get(id(group.producer))] = list(quantizers[0].scale_shape)
        count = group.producer.weight.shape[0]
        channels[("OPERATOR_POST_HOOK", node_of.get(id(group.producer)))] = count
        channels[("OPERATOR_PRE_HOOK", node_of.get(id(group.consumer)))] = count
    for point in points.values():
        target = point.get("target_point", {})
        kind = (target.get("target_type") or {}).get("name")
        node = target.get("target_node_name")
        qspec = point.get("qspec", {})
        shape = qspec.get("scale_shape")
        if shape is None:
            continue
        if kind == "OPERATION_WITH_WEIGHTS" and node in weight_shapes:
            qspec["scale_shape"] = weight_shapes[node]
        elif (kind, node) in channels and len(shape) > 1 and shape[1] > 1:  # a per-channel activation quantizer
            qspec["scale_shape"] = [shape[0], channels[(kind, node)], *shape[2:]]
