"""Data-free rank search in a continuous space (ORTOS, Aghababaei-Harandi & Amini, arXiv 2409.03555).

Every layer l gets a menu of K_l options (method, ranks) with exact cost c_lk and relative truncation error
e_lk (:mod:`.options`). The discrete choice is relaxed to a distribution p_l = softmax(alpha_l / tau) over the
menu, and the composite compression loss

    L(alpha) = sum_l w_l * sum_k p_lk * e_lk^2  +  lambda * sum_j max(0, C_j(p) / B_j - 1)^2,
    C_j(p)   = C_j,fixed + sum_l sum_k p_lk * c_lkj

(normalised reconstruction error + one penalty per budget j: the primary one, and any ``budget.additional``; B_j =
dense cost in metric j / its target_ratio) is minimised with Adam over the logits while the temperature tau anneals
towards a one-hot choice. Then r_l = argmax_k p_lk, and a repair step makes the discrete plan meet every budget:
while over one, take the cheaper option that costs the least error per unit of cost saved (costs of the exceeded
budgets, each relative to its B_j); then spend any slack on the upgrades that keep every budget met and buy the most
error reduction per unit of cost. The result is never over a budget and, with fine menus, within a fraction of a
percent under the binding one. The menus are Pareto-optimal in the primary metric's cost.

Weights only, no data: the whole search on ResNet-50 takes seconds (see benchmarks/rank_search.py).
"""

import math
import time
from typing import Optional

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


def _padded(menus: list[Menu], other_costs: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[L, K, M] costs (the menu's metric first, then each additional budget's), [L, K] errors and the menu
    lengths; padding repeats a menu's last option (never chosen: moves stop at the lengths)."""
    k_max = max(len(m) for m in menus)
    n_metrics = 1 + len(other_costs)
    costs = np.zeros((len(menus), k_max, n_metrics))
    errors = np.zeros((len(menus), k_max))
    for l, m in enumerate(menus):
        k = len(m)
        columns = [m.costs] + [extra[l] for extra in other_costs]
        for j, column in enumerate(columns):
            costs[l, :k, j] = column
            costs[l, k:, j] = column[-1]
        errors[l, :k] = m.errors
        errors[l, k:] = m.errors[-1]
    return costs, errors, np.array([len(m) for m in menus])


def repair(menus: list[Menu], idx: list[int], weights: np.ndarray, fixed_cost, target,
           other_costs: Optional[list[list[np.ndarray]]] = None) -> list[int]:
    """Greedy exchange on the menus: meet every budget (downgrades by least weighted-error increase per cost saved
    on the budgets still exceeded), then use the slack (upgrades that keep every budget met, by most error decrease
    per cost added).

    ``fixed_cost`` and ``target`` are a float each for the menus' own metric, or sequences whose first entry is
    that metric's and the others belong to the additional budgets, whose per-option costs ``other_costs[j][l]``
    (aligned with ``menus[l]``) gives. Costs are compared relative to each target, so with one budget the order of
    moves is that of plain cost-per-error greedy."""
    other_costs = other_costs or []
    costs, errors, lengths = _padded(menus, other_costs)
    fixed = np.atleast_1d(np.asarray(fixed_cost, dtype=float))
    targets = np.atleast_1d(np.asarray(target, dtype=float))
    assert len(fixed) == len(targets) == costs.shape[2], "one fixed cost and one target per budget"
    layers = np.arange(len(menus))
    idx = np.array(idx)
    sq = errors ** 2
    cost = fixed + costs[layers, idx].sum(0)

    while True:  # downgrades until every budget is met
        over = cost > targets * (1 + 1e-12)
        if not over.any():
            break
        # any cheaper option of a layer (in the menu's metric) may be the move, not only the next one: along a
        # menu sorted by one metric another metric's cost need not fall at every step (e.g. parameters of a
        # stride-2 conv's Tucker-2 vs channel-SVD options), and a one-step-only greedy would stop short of a
        # reachable budget there
        k_max = costs.shape[1]
        lower = np.arange(k_max)[None, :]  # candidate option j for every layer: [L, K]
        movable = lower < idx[:, None]
        saved = costs[layers, idx][:, None, :] - costs  # [L, K, M]
        gain = (np.maximum(saved[:, :, over], 0.0) / targets[over]).sum(2)
        movable &= gain > 0
        if not movable.any():
            return idx.tolist()  # the caller reports the budget as unreachable
        with np.errstate(divide="ignore", invalid="ignore"):
            d = weights[:, None] * (sq - sq[layers, idx][:, None]) / gain
        l, j = np.unravel_index(int(np.argmin(np.where(movable, d, np.inf))), d.shape)
        cost -= saved[l, j]
        idx[l] = j

    while True:  # upgrades that keep every budget met
        upper = np.minimum(idx + 1, lengths - 1)
        added = costs[layers, upper] - costs[layers, idx]
        fits = (idx + 1 < lengths) & np.all(cost + added <= targets, axis=1)
        if not fits.any():
            break
        norm = np.maximum((np.maximum(added, 0.0) / targets).sum(1), 1e-300)
        u = -weights * (sq[layers, idx] - sq[layers, upper]) / norm
        l = int(np.argmin(np.where(fits, u, np.inf)))
        cost += added[l]
        idx[l] += 1
    return idx.tolist()


def composite_loss(p: torch.Tensor, errors_sq: torch.Tensor, costs: torch.Tensor, weights: torch.Tensor,
                   fixed_cost, target, penalty: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction term, budget penalty) for option probabilities ``p`` [L, K]. ``costs`` is [L, K] for
    one budget, or [L, K, M] with ``fixed_cost`` and ``target`` sequences of M for several (one penalty each)."""
    reconstruction = (weights * (p * errors_sq).sum(1)).sum()
    if costs.dim() == 2:
        costs = costs.unsqueeze(-1)
    fixed = torch.as_tensor(fixed_cost, dtype=costs.dtype).reshape(-1)
    targets = torch.as_tensor(target, dtype=costs.dtype).reshape(-1)
    expected_cost = fixed + (p.unsqueeze(-1) * costs).sum((0, 1))
    budget_penalty = penalty * (torch.clamp(expected_cost / targets - 1.0, min=0.0) ** 2).sum()
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
        # each option's cost in the metric of every additional budget (the menus are Pareto-optimal in ``metric``)
        other_costs = [[np.array([c.cost(b.metric, choice) for choice in m.choices])
                        for c, m in zip(problem.candidates, menus)] for b in problem.additional]
        weights = layer_weights(menus, opts["layer_weighting"])
        fixed = [problem.fixed_cost_in(b.metric) for b in problem.budgets]
        targets = [problem.target_cost_in(b) for b in problem.budgets]
        cheapest = [fixed[0] + sum(m.costs[0] for m in menus)] + \
                   [f + sum(layer.min() for layer in extra) for f, extra in zip(fixed[1:], other_costs)]
        short = [(b, problem.dense_cost_in(b.metric) / c) for b, c, t in zip(problem.budgets, cheapest, targets)
                 if c > t]
        if short:
            best = short[0][1]  # the ratio of the first budget out of reach, in its own metric
            raise BudgetUnreachableError(
                "budget " + " and ".join(f"{b.metric} target_ratio={b.target_ratio:g}" for b, _ in short) +
                " is unreachable: with every layer at its cheapest allowed option the model is only " +
                ", ".join(f"{r:.3f}x {_better(b.metric)} in {b.metric}" for b, r in short) +
                ". Lower the target ratio, relax the constraints (min_rank, rank_multiple), or allow more layers.",
                best)
        idx, history = self.relax(menus, weights, fixed, targets, problem.total_dense_cost, opts, problem.seed,
                                  other_costs)
        idx = repair(menus, idx, weights, fixed, targets, other_costs)
        self.loss_history = history
        self.menus = menus
        self.seconds = time.perf_counter() - start
        dense = RankChoice("dense", reason="the search spent the budget elsewhere (dense is within it here)")
        choices = {m.name: (dense if m.choices[i].is_dense else m.choices[i]) for m, i in zip(menus, idx)}
        missed = problem.missed(choices)
        if missed:  # every layer at an option no cheaper one of which helps the exceeded budgets
            raise BudgetUnreachableError(
                f"budget {' and '.join(missed)} is unreachable together with the other budgets: no cheaper option of "
                "any layer lowers the exceeded cost further. Lower the target ratio, relax the constraints "
                "(min_rank, rank_multiple), or allow more layers.",
                problem.missed_ratio(choices))
        return choices

    @staticmethod
    def relax(menus, weights, fixed_cost, target, dense_total, opts, seed, other_costs=None
              ) -> tuple[list[int], list[dict]]:
        """Minimise the composite loss over the logits; returns argmax indices and the loss history.
        ``fixed_cost``/``target``: a float, or one per budget (the menus' metric first, then ``other_costs``')."""
        gen = torch.Generator().manual_seed(int(seed))
        padded_costs, padded_errors, lengths = _padded(menus, other_costs or [])
        costs = torch.from_numpy(padded_costs)  # [L, K, M]
        errs = torch.from_numpy(padded_errors) ** 2
        k_max = costs.shape[1]
        # padding gets -inf logits so it never receives probability
        valid = torch.arange(k_max)[None, :] < torch.from_numpy(lengths)[:, None]
        fixed = torch.as_tensor(fixed_cost, dtype=torch.float64).reshape(-1)
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
                expected_cost = float(fixed[0] + (p * costs[:, :, 0]).sum())
            history.append({"loss": loss.item(), "reconstruction": recon.item(), "penalty": penalty.item(),
                            "expected_ratio": dense_total / expected_cost, "tau": tau})
        with torch.no_grad():
            idx = alpha.masked_fill(~valid, -math.inf).argmax(1).tolist()
        return idx, history
