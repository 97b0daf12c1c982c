"""NNCF's ``filter_pruning`` made physically smaller in torch, so that the pruned network can be decomposed next.

NNCF's ``strip()`` only zeroes pruned filters: the shapes stay dense, and so does a decomposition of them. Decomposing
a pruned network (pruning first, e.g. to 2x fewer FLOPs, then ``tensor_decomposition`` under a latency budget on the
smaller network) needs the pruned channels removed from the torch model itself. In ``benchmarks/finetune.py``
(``pruning+search_aa``; docs/rank_learning.md) that two-stage flow matches NNCF's pruning alone to 3x fewer FLOPs
in test accuracy, is ahead on a validation split and ~9% faster at the default precision on a no-AMX CPU;
in INT8 pruning alone stays faster:

    ctrl, model = create_compressed_model(model, config_with_filter_pruning)
    ...train...
    smaller = materialize_pruned_model(ctrl, original_model)    # plain torch, no NNCF wrapping
    td_ctrl, model = create_compressed_model(smaller, config_with_tensor_decomposition)
"""

import copy

import torch

from nncf_tdplugin.nncf_integration import controller_named, controllers
from nncf_tdplugin.nncf_integration._internals import free_kd_loss_storage

PRUNING_ALGO = "filter_pruning"


REBUILT = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)


def _check_unchanged(name: str, module: torch.nn.Module, cut: torch.nn.Module) -> None:
    """A module this function does not rebuild must have kept its shapes in the cut model (NNCF's pruner also cuts
    GroupNorm, BatchNorm1d, ConvTranspose...): copying it unchanged would give a model that fails or is wrong."""
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    if not own:
        return
    try:
        src = cut.get_submodule(name)
    except AttributeError:
        return  # not wrapped by NNCF under this name; nothing of it was cut
    for attr, tensor in own:
        cut_tensor = getattr(src, attr, None)
        if isinstance(cut_tensor, torch.Tensor) and tuple(cut_tensor.shape) != tuple(tensor.shape):
            raise ValueError(
                f"materialize_pruned_model: layer '{name}' ({type(module).__name__}) was pruned ({attr} "
                f"{tuple(tensor.shape)} -> {tuple(cut_tensor.shape)}), but only "
                f"{', '.join(t.__name__ for t in REBUILT)} layers can be rebuilt at the pruned size; exclude the "
                f"layers feeding it from pruning (filter_pruning.ignored_scopes)")


def materialize_pruned_model(ctrl, original: torch.nn.Module) -> torch.nn.Module:
    """A plain torch copy of ``original`` with the pruned channels of a ``filter_pruning`` controller removed.

    ``ctrl`` is what ``create_compressed_model`` returned for a config with ``filter_pruning`` (alone or with other
    algorithms), ``original`` the uncompressed model it was created from (its module names are those of the
    compressed model). NNCF's own ``ModelPruner`` with ``PrunType.CUT_WEIGHTS`` (its ``strip()`` uses
    ``FILL_ZEROS``) propagates the masks through the graph (residual adds included) and cuts the weights of a copy
    of the compressed model; each Conv2d / BatchNorm2d / Linear of ``original`` is then replaced by a fresh module
    of the cut shape carrying the cut weights, so the result has no NNCF wrapping and can be compressed again.
    Only weights, biases and batch-norm statistics come over: other algorithms of the same config (quantizers,
    sparsity masks) are not applied to the result.
    """
    from nncf.torch.pruning.operations import PT_PRUNING_OPERATOR_METATYPES, ModelPruner, PrunType

    if controller_named(ctrl, PRUNING_ALGO) is None:
        names = [getattr(c, "name", type(c).__name__) for c in controllers(ctrl)]
        raise ValueError(f"materialize_pruned_model needs the controller of a config with '{PRUNING_ALGO}'; this "
                         f"one controls {names}")
    free_kd_loss_storage(ctrl.model)  # after knowledge-distillation training, or the copy fails
    cut = copy.deepcopy(ctrl.model)
    ModelPruner(cut, cut.nncf.get_original_graph(), PT_PRUNING_OPERATOR_METATYPES, PrunType.CUT_WEIGHTS).prune_model()
    plain = copy.deepcopy(original)
    for name, module in list(plain.named_modules()):
        if not isinstance(module, REBUILT):
            _check_unchanged(name, module, cut)
            continue
        try:
            src = cut.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"layer '{name}' of the original model is not in the pruned model: pass the model "
                             f"create_compressed_model was called with") from e
        # sizes from the cut weights: NNCF sets some size attributes to tensors (Linear.in_features = sum(mask))
        shape = tuple(int(d) for d in src.weight.shape)
        if isinstance(module, torch.nn.Conv2d):
            new = torch.nn.Conv2d(shape[1] * src.groups, shape[0], src.kernel_size, src.stride, src.padding,
                                  src.dilation, src.groups, src.bias is not None, src.padding_mode)
        elif isinstance(module, torch.nn.Linear):
            new = torch.nn.Linear(shape[1], shape[0], src.bias is not None)
        else:
            new = torch.nn.BatchNorm2d(shape[0], src.eps, src.momentum, src.affine, src.track_running_stats)
            new.running_mean.copy_(src.running_mean.detach())  # CUT_WEIGHTS leaves them as frozen Parameters
            new.running_var.copy_(src.running_var.detach())
            new.num_batches_tracked.copy_(src.num_batches_tracked)
        with torch.no_grad():
            new.weight.copy_(src.weight)
            if new.bias is not None:
                new.bias.copy_(src.bias)
        parent, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, attr, new)
    return plain.train(original.training)
