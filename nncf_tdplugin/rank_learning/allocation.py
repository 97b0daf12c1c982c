"""The Z-step's projection onto the budget: which rank channels to keep so that the model meets a cost budget.

Greedy knapsack (docs/rank_learning.md): start from every channel; repeatedly drop, in the group (gated rank mode of
one layer) where it is cheapest per unit of cost saved, that group's least important remaining channel(s), until
the model's cost is within the budget (within every budget, with ``budget.additional``: the cost saved is then
counted on the budgets still exceeded, each relative to its budget). A group's channels leave in increasing importance, ``rank_multiple`` at a
time (or as many multiples as it takes for the cost to fall), never below ``min_rank``; the cost of a layer is its
cost in the budget metric at the ranks left (analytic for params and FLOPs, the measured grid for latency; Tucker-2's
core couples both ranks, so a group's marginal saving is recomputed whenever its layer changes).
"""

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np


@dataclass
class GroupSpec:
    layer: str
    rank_index: int
    importance: np.ndarray  # one non-negative value per channel (the loss of dropping it; squared shares add up)
    min_rank: int = 1


def smallest_rank(count: int, min_rank: int = 1, rank_multiple: int = 1) -> int:
    """The smallest rank :func:`allocate` can shrink a rank of ``count`` channels to: the smallest multiple of
    ``rank_multiple`` not below ``min_rank`` (and at least 1), or ``count`` itself if that is smaller."""
    lowest = max(1, int(min_rank))
    m = max(1, int(rank_multiple))
    return min(int(count), -(-lowest // m) * m)


@dataclass
class Allocation:
    keep: list[np.ndarray]  # per group, a bool per channel
    ranks: dict[str, list[int]]  # per layer
    cost: float  # in the first (primary) budget's metric
    met: bool  # False if every group is at its minimum and a budget is still exceeded


def allocate(groups: Sequence[GroupSpec], layer_ranks: dict[str, list[int]],
             layer_cost: Callable[[str, Sequence[int]], Union[float, np.ndarray]], fixed_cost, budget_cost,
             rank_multiple: int = 1) -> Allocation:
    """Keep the channels that meet ``budget_cost`` at the smallest loss of importance (greedy, see module doc).

    ``layer_ranks`` are the ranks of every layer with all its channels (groups index into them); layers whose ranks
    are not gated keep them. ``layer_cost(layer, ranks)`` is the layer's cost at those ranks: a float for one budget,
    or an array with one cost per budget (``fixed_cost`` and ``budget_cost`` then arrays of the same length; a move
    is ranked by the importance it loses per unit of cost it saves on the budgets still exceeded, each relative to
    its budget, so one budget gives the plain importance-per-cost order).
    """
    ranks = {k: list(v) for k, v in layer_ranks.items()}
    orders = [np.argsort(g.importance, kind="stable") for g in groups]  # least important first
    dropped = [0] * len(groups)

    def cost_of(layer, r) -> np.ndarray:
        return np.atleast_1d(np.asarray(layer_cost(layer, r), dtype=float))

    budget = np.atleast_1d(np.asarray(budget_cost, dtype=float))
    costs = {k: cost_of(k, v) for k, v in ranks.items()}
    total = np.atleast_1d(np.asarray(fixed_cost, dtype=float)) + sum(costs.values(), np.zeros(len(budget)))
    by_layer: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_layer.setdefault(g.layer, []).append(i)

    def exceeded() -> np.ndarray:
        return total > budget * (1 + 1e-12)

    over = exceeded()

    def step_size(i: int) -> int:
        count = ranks[groups[i].layer][groups[i].rank_index]
        remainder = count % rank_multiple
        return remainder if remainder else rank_multiple

    def candidate(i: int):
        """The group's next move: drop its next step of channels, or several steps when the cost does not fall at
        the first (a measured latency grid need not be monotonic in the rank)."""
        g = groups[i]
        count = ranks[g.layer][g.rank_index]
        n = step_size(i)
        while count - n >= max(1, g.min_rank):
            trial = list(ranks[g.layer])
            trial[g.rank_index] = count - n
            saving = costs[g.layer] - cost_of(g.layer, trial)
            gain = float(np.sum(np.maximum(saving[over], 0.0) / np.maximum(budget[over], 1e-300)))
            if gain > 0:
                lost = float(np.sum(g.importance[orders[i][dropped[i]: dropped[i] + n]] ** 2))
                return lost / gain, n, trial
            n += rank_multiple
        return None

    cands = [candidate(i) for i in range(len(groups))]
    while over.any():
        best = min((i for i, c in enumerate(cands) if c is not None), key=lambda i: cands[i][0], default=None)
        if best is None:
            break
        _, n, trial = cands[best]
        layer = groups[best].layer
        dropped[best] += n
        ranks[layer] = trial
        new_cost = cost_of(layer, trial)
        total = total + new_cost - costs[layer]
        costs[layer] = new_cost
        now_over = exceeded()
        if not np.array_equal(now_over, over):  # a budget was met: rank the moves by the ones still exceeded
            over = now_over
            cands = [candidate(i) for i in range(len(groups))]
        else:
            for i in by_layer[layer]:
                cands[i] = candidate(i)
    keep = []
    for i, g in enumerate(groups):
        k = np.ones(len(g.importance), dtype=bool)
        k[orders[i][: dropped[i]]] = False
        keep.append(k)
    return Allocation(keep, ranks, float(total[0]), bool(np.all(total <= budget * (1 + 1e-9))))
