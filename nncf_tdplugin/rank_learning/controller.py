"""The controller of the rank-learning mode: Z-steps, freeze, truncation, statistics and a settable rate.

Registered in NNCF's ``ADAPTIVE_COMPRESSION_CONTROLLERS`` (as ``pt_tensor_decomposition``), so the accuracy-aware
training loop in its adaptive compression level mode can set ``compression_rate`` (the fraction of the budget
metric removed, ``1 - 1/ratio``) and search the largest budget within the accuracy drop. The fixed-ranks controller
is not registered and keeps refusing a rate.
"""

from typing import Any, Optional

import numpy as np
import torch
from nncf.api.compression import CompressionStage
from nncf.common.accuracy_aware_training.training_loop import ADAPTIVE_COMPRESSION_CONTROLLERS
from nncf.common.logging import nncf_logger

from nncf_tdplugin.config import ALGO_NAME, TDConfig, scaled_additional_ratio
from nncf_tdplugin.nncf_integration.controller import TensorDecompositionController
from nncf_tdplugin.nncf_integration.statistics import TensorDecompositionStatistics, latency_rows
from nncf_tdplugin.rank_learning.allocation import GroupSpec, allocate
from nncf_tdplugin.rank_learning.gates import GateGroup, find_groups
from nncf_tdplugin.rank_learning.loss import RankLearningLoss
from nncf_tdplugin.rank_learning.schedules import RankLearningScheduler
from nncf_tdplugin.rank_learning.setup import factor_nodes, geometry_of, plan_cost, rank_key, reachable_ratio
from nncf_tdplugin.rank_learning.truncation import (
    edge_activation_quantizers,
    patch_quantization_state,
    truncate_groups,
)
from nncf_tdplugin.rank_selection.cost import factorized_macs, factorized_params


class RankLearningController(TensorDecompositionController):
    def __init__(self, target_model, td_config: TDConfig, plan: dict[str, Any]):
        super().__init__(target_model, td_config, plan)
        self.info = plan["rank_learning"]
        # the initial ratio the plan was decomposed at (raised from the default if that was unreachable; a resumed
        # run reads it from the saved plan)
        self.rl = {**td_config.rank_learning,
                   "initial_ratio": self.info.get("initial_ratio", td_config.rank_learning["initial_ratio"])}
        self.groups: list[GateGroup] = find_groups(target_model, plan["layers"])
        device = next((p.device for p in target_model.parameters()), torch.device("cpu"))
        self._loss = RankLearningLoss(self, self.rl["regularization"], self.rl["admm_rho"], device)
        self._scheduler = RankLearningScheduler(self, self.rl)
        self._node_of = factor_nodes(target_model)
        for g in self.groups:  # the data-driven importance: a window of about update_every backward passes
            g.gate.track_fisher = self.rl["importance"] == "fisher"
            g.gate.fisher_decay = 1.0 - 1.0 / self.rl["update_every"]
        if self.groups:
            self.z_step(self.rl["initial_ratio"], dual=False)  # z = g, u = 0, cost weights and scales

    # --- state ---------------------------------------------------------------------------------------------------
    @property
    def truncated(self) -> bool:
        return bool(self.info.get("truncated"))

    @property
    def frozen(self) -> bool:
        sched = self._scheduler
        return self.truncated or sched.frozen or sched.override_ratio is not None

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        if self.name in state:  # the scheduler first, so the stage check below compares like with like
            self.scheduler.load_state(state[self.name][self._state_names.SCHEDULER])
        super().load_state(state)

    # --- budget bookkeeping --------------------------------------------------------------------------------------
    def _layer_cost(self, name: str, ranks, measured: bool = True) -> float:
        """The layer's cost at ``ranks`` (latency: the grid's prediction, or the freeze's measurement if any and
        ``measured``)."""
        return plan_cost(self.info, name, self.plan["layers"][name]["method"], ranks, measured)

    def current_ranks(self) -> dict[str, list[int]]:
        """Ranks of every decomposed layer now: the channels kept by the latest projection (truncated: actual)."""
        ranks = {name: list(e["ranks"]) for name, e in self.plan["layers"].items()}
        for g in self.groups:
            ranks[g.layer][g.rank_index] = int(g.gate.keep.sum().item())
        return ranks

    def current_cost(self, measured: bool = True) -> float:
        return self.info["fixed_cost"] + sum(self._layer_cost(n, r, measured) for n, r in self.current_ranks().items())

    @property
    def achieved_ratio(self) -> float:
        return self.info["dense_total"] / self.current_cost()

    def _additional_cost(self, extra: dict, name: str, ranks) -> float:
        """The layer's cost at ``ranks`` in the metric of ``extra`` (an entry of the plan's additional budgets)."""
        return plan_cost(self.info, name, self.plan["layers"][name]["method"], ranks, metric=extra["metric"])

    def additional_status(self, ratio: Optional[float] = None) -> list[dict]:
        """Per budget.additional: its target, the ratio it is scheduled at while the primary budget is at ``ratio``
        (default: the scheduler's), and the ratio reached at the current ranks."""
        ratio = self.current_ratio_value() if ratio is None else ratio
        ranks = self.current_ranks()
        out = []
        for extra in self.info.get("additional", []):
            cost = extra["fixed_cost"] + sum(self._additional_cost(extra, n, r) for n, r in ranks.items())
            out.append({"metric": extra["metric"], "target_ratio": extra["target_ratio"],
                        "scheduled_ratio": scaled_additional_ratio(extra["target_ratio"], ratio,
                                                                   self.rl["target_ratio"]),
                        "achieved_ratio": extra["dense_total"] / cost})
        return out

    # --- the Z-step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _refresh_scales(self) -> None:
        """Per channel: ||row c of the producer|| * ||column c of the consumer (with its own gate)||."""
        gates = {id(g.producer): g.gate for g in self.groups}
        for g in self.groups:
            p = g.producer.weight.detach().flatten(1).norm(dim=1)
            cw = g.consumer.weight.detach()
            consumer_gate = gates.get(id(g.consumer))
            if consumer_gate is not None:
                cw = cw * consumer_gate.effective().reshape((-1,) + (1,) * (cw.dim() - 1))
            c = cw.transpose(0, 1).flatten(1).norm(dim=1)
            g.gate.scale.copy_((p * c).to(g.gate.scale))

    def _importance(self, g: GateGroup, values: torch.Tensor, fisher: bool) -> np.ndarray:
        """Per channel, a value whose square is what dropping the channel loses (squares add up over channels).

        ``magnitude``: |value| * scale, relative to the group's norm (the share of the layer's energy).
        ``fisher``: |value| * sqrt(F), F the decayed mean squared gradient of the training loss with respect to the
        gate: F * value^2 / 2 is the second-order estimate of the loss increase when the channel is zeroed, in the
        same unit for every layer."""
        if fisher:
            return (values.abs() * g.gate.fisher_information().sqrt()).double().cpu().numpy()
        s = g.gate.scale
        norm = (g.gate.gate.abs() * s).norm().clamp_min(1e-12)
        return (values.abs() * s / norm).double().cpu().numpy()

    def uses_fisher(self) -> bool:
        """Whether the next Z-step ranks channels by the data-driven importance: ``importance: "fisher"`` and every
        gate has seen a backward pass (before that, e.g. at the initial projection, ``magnitude``)."""
        return self.rl["importance"] == "fisher" and bool(self.groups) and \
            all(g.gate.fisher_information() is not None for g in self.groups)

    @torch.no_grad()
    def z_step(self, ratio: float, dual: bool = True, hard: bool = False, margin: float = 0.0) -> None:
        """Project g + u onto the budget ``dense_total / ratio - margin`` (greedy allocation on the predicted costs),
        update z, u, keep, masks (progressive masking, or ``hard``) and the cost weights of the loss."""
        if not self.groups:
            return
        self._refresh_scales()
        values = [g.gate.gate + g.gate.u for g in self.groups]
        fisher = self.uses_fisher()
        specs = [GroupSpec(g.layer, g.rank_index, self._importance(g, v, fisher), self.info["min_rank"])
                 for g, v in zip(self.groups, values)]
        full = {name: list(e["ranks"]) for name, e in self.plan["layers"].items()}
        extras = self.info.get("additional", [])
        fixed = [self.info["fixed_cost"]] + [e["fixed_cost"] for e in extras]
        # every budget.additional tightens with the primary one (config.scaled_additional_ratio)
        budgets = [self.info["dense_total"] / ratio - margin] + [
            e["dense_total"] / scaled_additional_ratio(e["target_ratio"], ratio, self.rl["target_ratio"])
            for e in extras]

        def costs(n, r):
            return [self._layer_cost(n, r, measured=False)] + [self._additional_cost(e, n, r) for e in extras]

        result = allocate(specs, full, costs, fixed, budgets, self.info["rank_multiple"])
        if not result.met:
            also = " (with budget.additional)" if extras else ""
            nncf_logger.warning(f"{ALGO_NAME}.rank_learning: budget ratio {ratio:.3f}{also} is not reachable; the "
                                f"ranks are at their minimum ({self.info['dense_total'] / result.cost:.3f}x)")
        progressive = self.rl["masking"] == "progressive"
        for g, v, keep in zip(self.groups, values, result.keep):
            k = torch.as_tensor(keep, dtype=g.gate.keep.dtype, device=g.gate.keep.device)
            z = v * k
            if dual:
                g.gate.u.add_(g.gate.gate - z)
            if progressive:  # a masked channel is out of the forward and of the loss: no dual to accumulate
                g.gate.u.mul_(k)
            g.gate.z.copy_(z)
            g.gate.keep.copy_(k)
            if progressive or hard:
                g.gate.mask.copy_(k)
        self._update_cost_weights(result.ranks)

    def _update_cost_weights(self, ranks: dict[str, list[int]]) -> None:
        savings = []
        for g in self.groups:
            r = list(ranks[g.layer])
            trial = list(r)
            trial[g.rank_index] = max(r[g.rank_index] - 1, 0)
            savings.append(max(self._layer_cost(g.layer, r, False) - self._layer_cost(g.layer, trial, False), 0.0))
        mean = float(np.mean(savings)) if savings else 1.0
        for g, s in zip(self.groups, savings):
            g.gate.cost_weight.fill_(s / mean if mean > 0 else 1.0)

    def freeze(self) -> None:
        """Final projection onto the target budget with hard masks; the loss becomes zero. Under a latency budget
        the frozen ranks are measured, and projected again while the measurement misses the target."""
        self.z_step(self.rl["target_ratio"], dual=False, hard=True)
        self._scheduler.frozen = True
        if self.info["metric"] == "latency":
            self._measure_and_reproject()
        nncf_logger.info(f"{ALGO_NAME}.rank_learning: ranks frozen at {self.achieved_ratio:.3f}x "
                         f"(target {self.rl['target_ratio']:.3f}x)")
        if self.rl["truncate_at_freeze"]:
            self.truncate()

    def _measure_and_reproject(self) -> None:
        """Measure the frozen ranks; while the measured ratio misses the target, project again onto a budget
        tightened by the prediction's error at the last measured ranks (measured - predicted), and measure the new
        ranks: at most ``latency.verify_rounds`` projections, the bound of the fixed-ranks mode's measure-select
        loop."""
        target, rounds = self.rl["target_ratio"], int(self.td_config.latency["verify_rounds"])
        for attempt in range(rounds + 1):
            result = self.measure_final_latency()
            if result is None or result["measured_ratio"] >= target * (1 - 1e-9):
                return
            if attempt == rounds:
                break
            margin = result["measured_ms"] - result["predicted_ms"]
            nncf_logger.info(f"{ALGO_NAME}.rank_learning: frozen ranks measured at {result['measured_ratio']:.3f}x "
                             f"< target {target:.3f}x, {margin:.4f} ms over the grid's prediction; projecting again "
                             f"onto a budget that much tighter")
            self.z_step(target, dual=False, hard=True, margin=max(margin, 0.0))
            if self.current_ranks() == result["ranks"]:  # already at the smallest ranks the allocation reaches
                break
        nncf_logger.warning(f"{ALGO_NAME}.rank_learning: latency budget NOT met by the frozen ranks after "
                            f"measuring: {self.info['final_latency']['measured_ratio']:.3f}x, target {target:.3f}x")

    def measure_final_latency(self) -> Optional[dict]:
        """Latency budget: measure the decomposed layers at the current ranks with the cost model (its settings and
        cache; on this CPU) and record the measured and the predicted cost in ``plan["rank_learning"]
        ["final_latency"]``, and each layer's measurement in ``plan["rank_learning"]["measured_ms"]``, which the
        reported cost (``current_cost``, ``achieved_ratio``) reads at those ranks from then on; the Z-step keeps
        projecting on the grid. A failed measurement is logged and leaves the prediction alone."""
        from nncf_tdplugin.latency_model import LatencyCostModel, LayerSpec
        from nncf_tdplugin.nncf_integration.latency_budget import settings_from

        # the settings the grid was measured with (INT8 or not as the plan recorded it)
        settings = settings_from(self.td_config, None, int8=self.plan["latency"]["int8"])
        ranks = self.current_ranks()
        predicted = self.current_cost(measured=False)
        try:
            model = LatencyCostModel(settings, progress=False)
            for name in ranks:
                model.add_layer(name, LayerSpec.from_json(self.info["latency_grid"][name]["spec"]))
            chosen = {n: (self.plan["layers"][n]["method"], r) for n, r in ranks.items()}
            model.measure_choices(chosen)
            layer_ms = {n: float(model.cost(n, m, r)) for n, (m, r) in chosen.items()}
        except Exception as e:  # noqa: BLE001 - training goes on with the prediction
            nncf_logger.warning(f"{ALGO_NAME}.rank_learning: could not measure the latency of the frozen ranks "
                                f"({type(e).__name__}: {e}); the budget rests on the cost model's prediction")
            return None
        measured = self.info["fixed_cost"] + sum(layer_ms.values())
        for n, ms in layer_ms.items():
            self.info.setdefault("measured_ms", {}).setdefault(n, {})[rank_key(ranks[n])] = ms
        result = {"ranks": ranks, "predicted_ms": predicted, "measured_ms": measured,
                  "measured_ratio": self.info["dense_total"] / measured}
        self.info["final_latency"] = result
        nncf_logger.info(f"{ALGO_NAME}.rank_learning: frozen ranks measured at {measured:.4f} ms "
                         f"({result['measured_ratio']:.3f}x; the grid predicted {predicted:.4f} ms)")
        return result

    # --- truncation ----------------------------------------------------------------------------------------------
    def _truncate_model(self, model) -> dict[str, list[int]]:
        groups = find_groups(model, self.plan["layers"])
        if not groups:
            return {}
        node_of = self._node_of if model is self.model else factor_nodes(model)
        edges = edge_activation_quantizers(model, groups, node_of)
        self._harden_masks(groups)
        keep = {g.key: g.gate.keep.clone() for g in groups}  # the current projection (== mask from here on)
        new_ranks = truncate_groups(groups, keep, edges)
        if hasattr(model, "nncf"):
            model.nncf.rebuild_graph()
        return new_ranks

    @torch.no_grad()
    def _harden_masks(self, groups: list[GateGroup]) -> None:
        """Before truncation: masks = the current projection (``keep``). Only ``masking: "soft"`` before the freeze
        differs (masks all ones, the channels outside the projection still in the forward pass): truncation keeps
        the projection's channels, so the masks are made hard first, and the truncated model computes what the
        masked model computes, at the ranks ``achieved_ratio`` and ``compression_rate`` report."""
        changed = False
        for g in groups:
            if not torch.equal(g.gate.mask, g.gate.keep):
                g.gate.mask.copy_(g.gate.keep)
                changed = True
        if changed:
            nncf_logger.warning(
                f"{ALGO_NAME}.rank_learning: stripping/truncating before the freeze (masking 'soft') fixes the ranks "
                f"of the current projection ({self.achieved_ratio:.3f}x; scheduled {self.current_ratio_value():.3f}x, "
                f"target {self.rl['target_ratio']:.3f}x): the channels outside it are dropped (hard masks) before "
                f"their gates reached zero, so the outputs differ from the soft-masked model's")

    def truncate(self) -> dict[str, list[int]]:
        """Slice the live model's factor layers to the current ranks (the optimizer must be re-created: parameters
        change shape). The plan and NNCF's saved quantizer setup follow, so a compression state saved afterwards
        rebuilds the truncated model on resume."""
        if self.truncated:
            return {}
        ranks_before = self.current_ranks()
        groups = self.groups
        new_ranks = self._truncate_model(self.model)
        patch_quantization_state(self.model, groups, self._node_of)
        for name, ranks in new_ranks.items():
            entry = self.plan["layers"][name]
            g = geometry_of(self.info, name)
            entry["ranks"] = list(ranks)
            entry["params"] = factorized_params(g, entry["method"], ranks)
            entry["macs"] = factorized_macs(g, entry["method"], ranks)
            if "latency_ms" in entry:  # the cost model's prediction at the final ranks
                entry["latency_ms"] = self._layer_cost(name, ranks)
        assert all(new_ranks[n] == ranks_before[n] for n in new_ranks), (new_ranks, ranks_before)
        self.info["truncated"] = True
        self.plan["achieved_ratio"] = self.achieved_ratio
        if "additional" in self.plan:
            self.plan["additional"] = [{k: a[k] for k in ("metric", "target_ratio", "achieved_ratio")}
                                       for a in self.additional_status()]
        self.groups = []
        self._scheduler.frozen = True
        return new_ranks

    def strip_model(self, model, do_copy: bool = False, strip_format=None):
        """Truncate to the current ranks (a copy stays in step with nothing; the live model updates the plan)."""
        if self.truncated:
            return model
        self._warn_if_before_the_freeze()
        if do_copy:
            from nncf.common.utils.backend import copy_model

            model = copy_model(model)
        if model is self.model:
            self.truncate()
        else:
            self._truncate_model(model)
        return model

    def _warn_if_before_the_freeze(self) -> None:
        """Stripping before the schedule froze the ranks at the target is legitimate mid-training (an evaluation
        export), but at the end of a run it means the schedule never finished, most often because
        ``scheduler.epoch_step()`` was not called each epoch: the budget then stays where it was, silently."""
        sched = self._scheduler
        if self.frozen or sched.override_ratio is not None or not self.plan["layers"]:
            return
        nncf_logger.warning(
            f"{ALGO_NAME}.rank_learning: stripping before the ranks were frozen at the target: the model is "
            f"{self.achieved_ratio:.3f}x (scheduled {self.current_ratio_value():.3f}x, target "
            f"{self.rl['target_ratio']:.3f}x), the schedule is at epoch {max(sched.current_epoch, 0)} of freeze_epoch "
            f"{self.rl['freeze_epoch']} after {sched.current_step + 1} step(s). If this is the final model, call "
            f"compression_ctrl.scheduler.epoch_step() at the start of every epoch and train until the freeze.")

    # --- NNCF's controller API -----------------------------------------------------------------------------------
    def compression_stage(self) -> CompressionStage:
        if not self.plan["layers"]:
            return CompressionStage.UNCOMPRESSED
        if self.frozen:
            return CompressionStage.FULLY_COMPRESSED
        ratio = self.current_ratio_value()
        if ratio <= self.rl["initial_ratio"] * (1 + 1e-9):
            return CompressionStage.UNCOMPRESSED  # the budget has not started to tighten
        return CompressionStage.PARTIALLY_COMPRESSED

    @property
    def compression_rate(self) -> float:
        """Fraction of the budget metric (in the budget's scope) removed at the current ranks: 1 - 1/ratio."""
        return 1.0 - 1.0 / self.achieved_ratio

    @compression_rate.setter
    def compression_rate(self, value: float) -> None:
        """Project the ranks onto the budget ``1 / (1 - value)`` at once, with hard masks (the accuracy-aware loop
        then fine-tunes at it). Ranks cannot grow beyond the initial decomposition: a smaller rate keeps them."""
        if self.truncated:
            raise AttributeError(f"{ALGO_NAME}: the model was truncated; its compression rate is fixed")
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{ALGO_NAME}: compression_rate must be in [0, 1), got {value}")
        ratio = max(1.0 / (1.0 - value), 1.0)
        self._scheduler.override_ratio = ratio
        self.z_step(ratio, dual=False, hard=True)
        initial = {name: list(e["ranks"]) for name, e in self.plan["layers"].items()}
        if ratio < self.achieved_ratio and self.current_ranks() == initial:
            nncf_logger.info(
                f"{ALGO_NAME}.rank_learning: compression_rate {value:.4f} is below the rate of the initial "
                f"decomposition; the ranks stay at their initial values ({self.compression_rate:.4f}, "
                f"{self.achieved_ratio:.3f}x): they cannot grow beyond the initial ranks")

    @property
    def maximal_compression_rate(self) -> float:
        return 1.0 - 1.0 / reachable_ratio(self.plan) if not self.truncated else self.compression_rate

    def disable_scheduler(self) -> None:
        """NNCF's accuracy-aware loop calls this before it sets ``compression_rate``. The scheduler is kept (not
        swapped for NNCF's stub, whose empty state could not be resumed from) and marked ``disabled``: ``step()`` and
        ``epoch_step()`` do nothing, the ranks stay at the current budget (held as the rate set from outside until
        ``compression_rate`` sets another), and the state saved with a checkpoint still carries that rate and
        ``frozen``."""
        sched = self._scheduler
        if sched.override_ratio is None:
            sched.override_ratio = sched.current_ratio
        sched.disabled = True

    def current_ratio_value(self) -> float:
        """The budget ratio scheduled now (the rate set through ``compression_rate`` once set)."""
        return self._scheduler.current_ratio

    def _collect(self) -> TensorDecompositionStatistics:
        plan = self.plan
        ranks = self.current_ranks()
        layers = {}
        for name, e in plan["layers"].items():
            g = geometry_of(self.info, name)
            layers[name] = {**e, "ranks": ranks[name], "params": factorized_params(g, e["method"], ranks[name]),
                            "macs": factorized_macs(g, e["method"], ranks[name])}
            if "latency_ms" in e:
                layers[name]["latency_ms"] = self._layer_cost(name, ranks[name])
        sched = self._scheduler
        epoch = sched.current_epoch
        state = "truncated" if self.truncated else ("frozen" if self.frozen else "learning")
        schedule = self.rl["schedule"]
        extra = {
            "Rank learning": f"{schedule}, epoch {max(epoch, 0)} of {self.rl['schedule_end']} "
                             f"(freeze at {self.rl['freeze_epoch']}), {state}",
            "Scheduled budget": f"{sched.current_ratio:.3f}x (initial {self.rl['initial_ratio']:.3f}x, target "
                                f"{sched.target_ratio:.3f}x)",
            "Initial ranks -> now": f"{sum(sum(r) for r in self.info['initial_ranks'].values())} -> "
                                    f"{sum(sum(r) for r in ranks.values())} rank channels",
        }
        if self.groups and state == "learning":
            extra["Channel importance"] = self.rl["importance"] + (
                "" if self.rl["importance"] == "magnitude" or self.uses_fisher()
                else " (magnitude until every gate has seen a backward pass)")
        for a in self.additional_status():
            extra[f"Also {a['metric']} budget"] = (f"{a['achieved_ratio']:.3f}x now (scheduled "
                                                   f"{a['scheduled_ratio']:.3f}x, target {a['target_ratio']:.3f}x)")
        if self.info["metric"] == "latency":
            rows = latency_rows(plan["latency"])  # where and how it was measured (the initial selection's record)
            predicted = self.current_cost(measured=False)
            rows["Conv/Linear latency"] = (f"{self.info['dense_total']:.3f} ms -> {predicted:.3f} ms "
                                           f"({self.info['dense_total'] / predicted:.3f}x, the cost model's grid at "
                                           f"these ranks)")
            final = self.info.get("final_latency")
            if final is not None and final["ranks"] == ranks:
                rows["Frozen ranks, measured"] = (f"{final['measured_ms']:.3f} ms ({final['measured_ratio']:.3f}x, "
                                                  f"target {self.rl['target_ratio']:.3f}x)")
            extra.update(rows)
        return self._statistics(layers, sched.target_ratio, self.achieved_ratio, extra)


if "pt_tensor_decomposition" not in ADAPTIVE_COMPRESSION_CONTROLLERS.registry_dict:
    ADAPTIVE_COMPRESSION_CONTROLLERS.register("pt_tensor_decomposition")(RankLearningController)
