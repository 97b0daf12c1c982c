"""Data-free rank search in a continuous space (ORTOS, Aghababaei-Harandi & Amini, arXiv 2409.03555).

Every layer l gets a menu of K_l options (method, ranks) with exact cost c_lk and relative truncation error
e_lk (:mod:`.options`). The discrete choice is relaxed to a distribution p_l = softmax(alpha_l / tau) over the
menu, and the composite compression loss

    L(alpha) = sum_l w_l * sum_k p_lk * e_lk^2  +  lambda * max(0, C(p) / B - 1)^2,
    C(p)     = C_fixed + sum_l sum_k p_lk * c_lk

(normalised reconstruction error + budget penalty; B = dense cost / target_ratio) is minimised with Adam over the
logits while the temperature tau anneals towards a one-hot choice. Then r_l = argmax_k p_lk, and a repair step
makes the discrete plan meet the budget: while over it, take the cheaper option that costs the least error per unit
of cost saved; then spend any slack on the upgrades that buy the most error reduction per unit of cost. The result
is never over the budget and, with fine menus, within a fraction of a percent under it.

Weights only, no data: the whole search on ResNet-50 takes seconds (see benchmarks/rank_search.py).
"""

import heapq
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from nncf_tdplugin.rank_selection.base import (
    BudgetUnreachableError,
    RankChoice,
    RankSelector,
    SelectionProblem,
    register_selector,
)
from nncf_tdplugin.rank_selection.options import Menu, build_menu

SEARCH_DEFAULTS = {
    "steps": 400,
    "lr": 0.1,
    "temperature_start": 1.0,
    "temperature_end": 0.01,
    "penalty": 100.0,
    "layer_weighting": "uniform",
}


def _better(metric: str) -> str:
    return "faster (in the measured per-layer latency)" if metric == "latency" else "smaller"


def layer_weights(menus: list[Menu], how: str) -> np.ndarray:
    """w_l. 'uniform': every layer's relative error counts the same. 'cost': weighted by the layer's share of the
    dense cost (big layers matter more)."""
    if how == "uniform":
        return np.ones(len(menus))
    if how == "cost":
        dense = np.array([m.costs[-1] for m in menus])
        return dense / dense.sum() * len(menus)
    raise ValueError(f"unknown layer_weighting {how!r}; expected 'uniform' or 'cost'")


def total_cost(menus: list[Menu], idx: list[int], fixed_cost: float) -> float:
    return fixed_cost + float(sum(m.costs[i] for m, i in zip(menus, idx)))


def repair(menus: list[Menu], idx: list[int], weights: np.ndarray, fixed_cost: float, target: float) -> list[int]:
    """Greedy exchange on the menus: meet ``target`` (downgrades by least weighted-error increase per cost saved),
    then use the slack (upgrades by most error decrease per cost added)."""
    idx = list(idx)
    cost = total_cost(menus, idx, fixed_cost)

    def down(l):  # error added per cost saved by moving layer l one option cheaper
        i = idx[l]
        if i == 0:
            return None
        m = menus[l]
        return weights[l] * (m.errors[i - 1] ** 2 - m.errors[i] ** 2) / max(m.costs[i] - m.costs[i - 1], 1e-12)

    heap = [(d, l) for l in range(len(menus)) if (d := down(l)) is not None]
    heapq.heapify(heap)
    while cost > target and heap:
        d, l = heapq.heappop(heap)
        if d != down(l):  # stale entry
            continue
        m, i = menus[l], idx[l]
        cost -= m.costs[i] - m.costs[i - 1]
        idx[l] = i - 1
        if (d := down(l)) is not None:
            heapq.heappush(heap, (d, l))
    if cost > target * (1 + 1e-12):
        return idx  # the caller reports the budget as unreachable

    def up(l):  # error removed per cost added by moving layer l one option more accurate
        i = idx[l]
        m = menus[l]
        if i + 1 >= len(m):
            return None
        return -weights[l] * (m.errors[i] ** 2 - m.errors[i + 1] ** 2) / max(m.costs[i + 1] - m.costs[i], 1e-12)

    improved = True
    while improved:  # repeat: an upgrade that did not fit earlier may fit after others were skipped
        improved = False
        heap = [(u, l) for l in range(len(menus)) if (u := up(l)) is not None]
        heapq.heapify(heap)
        while heap:
            u, l = heapq.heappop(heap)
            if u != up(l):
                continue
            m, i = menus[l], idx[l]
            step = m.costs[i + 1] - m.costs[i]
            if cost + step <= target:
                cost += step
                idx[l] = i + 1
                improved = True
                if (u := up(l)) is not None:
                    heapq.heappush(heap, (u, l))
    return idx


def composite_loss(p: torch.Tensor, errors_sq: torch.Tensor, costs: torch.Tensor, weights: torch.Tensor,
                   fixed_cost: float, target: float, penalty: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction term, budget penalty) for option probabilities ``p`` [L, K]."""
    reconstruction = (weights * (p * errors_sq).sum(1)).sum()
    expected_cost = fixed_cost + (p * costs).sum()
    budget_penalty = penalty * torch.clamp(expected_cost / target - 1.0, min=0.0) ** 2
    return reconstruction + budget_penalty, reconstruction, budget_penalty


@register_selector("search")
class ContinuousRankSearch(RankSelector):
    """Composite-loss search over per-layer logits, then discretisation and budget repair (see module docs)."""

    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        start = time.perf_counter()
        opts = {**SEARCH_DEFAULTS, **(problem.options.get("search") or {})}
        metric = problem.budget.metric
        menus = [build_menu(c, metric, problem.constraints, seed=problem.seed)
                 for c in tqdm(problem.candidates, desc="rank search: error tables", disable=None)]
        weights = layer_weights(menus, opts["layer_weighting"])
        target = problem.target_cost
        cheapest = total_cost(menus, [0] * len(menus), problem.fixed_cost)
        if cheapest > target:
            best = problem.total_dense_cost / cheapest
            raise BudgetUnreachableError(
                f"budget {metric} target_ratio={problem.budget.target_ratio:g} is unreachable: with every layer at its "
                f"cheapest allowed option the model is only {best:.3f}x {_better(metric)}. Lower the target ratio, "
                f"relax the constraints (min_rank, rank_multiple), or allow more layers.", best)
        idx, history = self.relax(menus, weights, problem.fixed_cost, target, problem.total_dense_cost, opts,
                                  problem.seed)
        idx = repair(menus, idx, weights, problem.fixed_cost, target)
        self.loss_history = history
        self.menus = menus
        self.seconds = time.perf_counter() - start
        dense = RankChoice("dense", reason="the search spent the budget elsewhere (dense is within it here)")
        return {m.name: (dense if m.choices[i].is_dense else m.choices[i]) for m, i in zip(menus, idx)}

    @staticmethod
    def relax(menus, weights, fixed_cost, target, dense_total, opts, seed) -> tuple[list[int], list[dict]]:
        """Minimise the composite loss over the logits; returns argmax indices and the loss history."""
        gen = torch.Generator().manual_seed(int(seed))
        k_max = max(len(m) for m in menus)
        # padded [L, K] tensors; padding gets -inf logits so it never receives probability
        costs = torch.zeros(len(menus), k_max, dtype=torch.float64)
        errs = torch.zeros(len(menus), k_max, dtype=torch.float64)
        valid = torch.zeros(len(menus), k_max, dtype=torch.bool)
        for l, m in enumerate(menus):
            costs[l, : len(m)] = torch.from_numpy(m.costs)
            errs[l, : len(m)] = torch.from_numpy(m.errors) ** 2
            valid[l, : len(m)] = True
        w = torch.from_numpy(weights)
        alpha = (1e-3 * torch.randn(len(menus), k_max, generator=gen, dtype=torch.float64)).requires_grad_(True)
        optimizer = torch.optim.Adam([alpha], lr=opts["lr"])
        steps = int(opts["steps"])
        t0, t1 = float(opts["temperature_start"]), float(opts["temperature_end"])
        history = []
        for step in tqdm(range(steps), desc="rank search", disable=None):
            tau = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
            p = torch.softmax(alpha.masked_fill(~valid, -math.inf) / tau, dim=1)
            loss, recon, penalty = composite_loss(p, errs, costs, w, fixed_cost, target, opts["penalty"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                expected_cost = fixed_cost + float((p * costs).sum())
            history.append({"loss": loss.item(), "reconstruction": recon.item(), "penalty": penalty.item(),
                            "expected_ratio": dense_total / expected_cost, "tau": tau})
        with torch.no_grad():
            idx = alpha.masked_fill(~valid, -math.inf).argmax(1).tolist()
        return idx, history
