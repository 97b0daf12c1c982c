"""Rank gates: one learnable scale per rank channel, applied to the output channels of the factor that produces it.

A gate is a weight pre-op (NNCF's ``UpdateWeight`` wraps it when it is inserted at ``OPERATION_WITH_WEIGHTS``),
inserted with sparsity's priority so it runs before NNCF's weight quantizer: the quantizer sees the gated weight and
OpenVINO gets ordinary convolutions. All the per-channel state of rank learning lives in the gate's parameter and
buffers, so it travels with ``state_dict()`` and with copies of the model (``strip(do_copy=True)``).

Which factors are gated (``ranks`` as in the plan: Tucker-2 ``[R_out, R_in]``, SVD ``[R]``):

| method | producer (gated) | consumer | rank index |
|---|---|---|---|
| tucker2 | ``in_proj`` (R_in outputs) | ``core`` | 1 |
| tucker2 | ``core`` (R_out outputs) | ``out_proj`` | 0 |
| svd | ``in_proj`` (R outputs) | ``out_proj`` | 0 |
"""

from dataclasses import dataclass
from typing import Optional

import torch
from nncf.torch.module_operations import UpdateWeight
from torch import nn

GATED_FACTORS = {"tucker2": (("in_proj", "core", 1), ("core", "out_proj", 0)), "svd": (("in_proj", "out_proj", 0),)}


class RankGate(nn.Module):
    """Gate of the ``channels`` output channels of one factor layer.

    ``gate`` (learned) and ``mask`` (0/1) scale output channel c of the weight by ``gate[c] * mask[c]``. The other
    buffers are the ADMM state of :class:`~nncf_tdplugin.rank_learning.controller.RankLearningController`:
    ``keep`` (0/1, support of the latest budget projection), ``z`` (the projection), ``u`` (scaled dual variable),
    ``cost_weight`` (marginal cost of one channel, relative to the mean over all gates), ``scale`` (the norm a
    channel carries without its gate, for the ``magnitude`` importance) and ``fisher`` / ``fisher_weight`` (for the
    ``fisher`` importance: an exponentially decayed sum of the squared gradient of the training loss with respect
    to the gate's effective value, and the decayed count of backward passes it sums).

    With ``track_fisher`` set (by the controller, from ``rank_learning.importance``), every forward pass with
    gradients on registers a hook on the effective gate, so the sums see only the gradient that flows through the
    model (the task loss and any distillation loss), not the gradient of the compression loss on the gate parameter.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Parameter(torch.ones(channels))
        for name, value in (("mask", 1.0), ("keep", 1.0), ("z", 1.0), ("u", 0.0), ("cost_weight", 1.0),
                            ("scale", 1.0), ("fisher", 0.0)):
            self.register_buffer(name, torch.full((channels,), value))
        self.register_buffer("fisher_weight", torch.zeros(()))
        self.track_fisher = False
        self.fisher_decay = 1.0

    def _accumulate_fisher(self, grad: torch.Tensor) -> None:
        with torch.no_grad():
            self.fisher.mul_(self.fisher_decay).add_(grad.detach().to(self.fisher.dtype).pow(2))
            self.fisher_weight.mul_(self.fisher_decay).add_(1.0)

    def fisher_information(self) -> Optional[torch.Tensor]:
        """Per channel: the decayed mean of the squared gradient (None before the first backward pass)."""
        if float(self.fisher_weight) <= 0:
            return None
        return self.fisher / self.fisher_weight

    @property
    def channels(self) -> int:
        return self.gate.numel()

    def effective(self) -> torch.Tensor:
        return self.gate * self.mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        g = self.effective().to(weight.dtype)
        if self.track_fisher and g.requires_grad and not torch.jit.is_tracing():
            g.register_hook(self._accumulate_fisher)
        return weight * g.reshape((-1,) + (1,) * (weight.dim() - 1))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kept={int(self.mask.sum())}"


def gate_of(module: nn.Module) -> Optional[RankGate]:
    """The :class:`RankGate` among an NNCF module's weight pre-ops, if any."""
    for op in getattr(module, "pre_ops", {}).values():
        if isinstance(op, UpdateWeight) and isinstance(op.op, RankGate):
            return op.op
    return None


def remove_gate(module: nn.Module) -> None:
    """Drop the gate pre-op and renumber the others from "0" (the keys NNCF gives them when the module is built
    without a gate, as it is when a truncated model is restored), so that ``state_dict`` keys match on resume."""
    ops = [op for op in module.pre_ops.values() if not (isinstance(op, UpdateWeight) and isinstance(op.op, RankGate))]
    if len(ops) == len(module.pre_ops):
        return
    module.pre_ops.clear()
    for i, op in enumerate(ops):
        module.pre_ops[str(i)] = op


@dataclass
class GateGroup:
    """One gated rank mode of one decomposed layer."""

    layer: str  # the decomposed layer's module name (a key of the plan's layers)
    method: str
    factor: str  # name of the producer inside the container
    rank_index: int  # index into the layer's ranks
    container: nn.Module
    producer: nn.Module
    consumer: nn.Module
    gate: RankGate

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.factor}"


def find_groups(model: nn.Module, plan_layers: dict) -> list[GateGroup]:
    """The gate groups of ``model`` (any copy of it), in plan order; empty once the model is truncated."""
    groups = []
    for name, entry in plan_layers.items():
        container = model.get_submodule(name)
        for producer, consumer, index in GATED_FACTORS.get(entry["method"], ()):
            p, c = getattr(container, producer), getattr(container, consumer)
            gate = gate_of(p)
            if gate is not None:
                groups.append(GateGroup(name, entry["method"], producer, index, container, p, c, gate))
    return groups
