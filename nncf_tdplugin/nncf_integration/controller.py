"""The ``tensor_decomposition`` controller: loss, scheduler, statistics, stage and stripping."""

from typing import Any, Optional

import torch
from nncf.api.compression import CompressionStage
from nncf.common.schedulers import BaseCompressionScheduler
from nncf.common.statistics import NNCFStatistics
from nncf.torch.compression_method_api import PTCompressionAlgorithmController, PTCompressionLoss
from nncf.torch.nncf_network import NNCFNetwork
from torch import nn

from nncf_tdplugin.config import ALGO_NAME, TDConfig
from nncf_tdplugin.nncf_integration.statistics import (
    TensorDecompositionStatistics,
    additional_budget_rows,
    latency_rows,
)


class TensorDecompositionLoss(PTCompressionLoss):
    """The compression loss. With a fixed decomposition (ranks chosen before training) there is nothing to
    regularise, and the loss is an exact zero on the model's device, so ``task_loss + ctrl.loss()`` works as is."""

    def __init__(self, device: torch.device):
        super().__init__()
        self._device = device

    def calculate(self) -> torch.Tensor:
        return torch.zeros([], device=self._device)


class TensorDecompositionScheduler(BaseCompressionScheduler):
    """Counts steps and epochs (state survives checkpoints). A fixed decomposition is complete from the start."""

    def __init__(self, controller: "TensorDecompositionController"):
        super().__init__()
        self._controller = controller


class TensorDecompositionController(PTCompressionAlgorithmController):
    def __init__(self, target_model: NNCFNetwork, td_config: TDConfig, plan: dict[str, Any]):
        super().__init__(target_model)
        self.td_config = td_config
        self.plan = plan
        device = next((p.device for p in target_model.parameters()), torch.device("cpu"))
        self._loss = TensorDecompositionLoss(device)
        self._scheduler = TensorDecompositionScheduler(self)

    @property
    def loss(self) -> TensorDecompositionLoss:
        return self._loss

    @property
    def scheduler(self) -> TensorDecompositionScheduler:
        return self._scheduler

    @property
    def name(self) -> str:
        return ALGO_NAME

    def compression_stage(self) -> CompressionStage:
        if not self.plan["layers"]:
            return CompressionStage.UNCOMPRESSED
        return CompressionStage.FULLY_COMPRESSED

    @property
    def compression_rate(self) -> float:
        """Fraction of the budget metric removed, in the budget's scope: 1 - 1/ratio (0.5 for a model twice smaller),
        the ratio being the one the plan reached (``achieved_ratio``: parameters, MACs or the latency cost model's
        milliseconds, over the whole model or the decomposable layers as ``budget.scope`` says)."""
        ratio = self.plan.get("achieved_ratio")
        if ratio is None:  # a plan saved before achieved_ratio was recorded
            stats = self._collect()
            ratio = stats.params_ratio if self.plan["metric"] == "params" else stats.macs_ratio
        return 1.0 - 1.0 / max(float(ratio), 1e-12)

    @compression_rate.setter
    def compression_rate(self, value: float) -> None:
        """Not settable: the ranks are fixed before training. (This controller is not registered as an adaptive one,
        so NNCF's adaptive accuracy-aware loop never sets it; the early-exit loop only reads the getter.)"""
        raise AttributeError(
            f"{ALGO_NAME}: the compression rate of a fixed decomposition ({self.compression_rate:.4f} of the "
            f"{self.plan['metric']} in budget.scope {self.plan.get('budget_scope', 'model')!r}) is set by "
            f"'budget.target_ratio' in the config before the model is built; it cannot change during training "
            f"(use 'rank_learning' for a settable one)."
        )

    def _collect(self) -> TensorDecompositionStatistics:
        plan = self.plan
        return self._statistics(plan["layers"], plan["target_ratio"], plan.get("achieved_ratio"),
                                {**additional_budget_rows(plan.get("additional"), plan.get("budget_scope", "model")),
                                 **latency_rows(plan.get("latency"))})

    def _statistics(self, layers: dict, target_ratio: float, achieved_ratio, extra) -> TensorDecompositionStatistics:
        """The statistics of ``layers`` (plan entries with their current ranks and costs)."""
        plan = self.plan
        return TensorDecompositionStatistics(
            layers=layers,
            skipped=plan["skipped"],
            budget_metric=plan["metric"],
            target_ratio=target_ratio,
            params_before=plan["model_params"],
            params_after=plan["model_params"] - sum(e["dense_params"] - e["params"] for e in layers.values()),
            macs_before=plan["model_macs"],
            macs_after=plan["model_macs"] - sum(e["dense_macs"] - e["macs"] for e in layers.values()),
            stage=self.compression_stage().name,
            budget_scope=plan.get("budget_scope", "model"),
            achieved_ratio=achieved_ratio,
            extra=extra,
        )

    def statistics(self, quickly_collected_only: bool = False) -> NNCFStatistics:
        stats = NNCFStatistics()
        stats.register(ALGO_NAME, self._collect())
        return stats

    def strip_model(self, model: NNCFNetwork, do_copy: bool = False, strip_format=None) -> NNCFNetwork:
        """Factor layers are plain layers already: nothing to strip; a copy of ``model`` when ``do_copy``."""
        if do_copy:
            from nncf.common.utils.backend import copy_model

            model = copy_model(model)
        return model
