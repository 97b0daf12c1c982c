"""Fit a one-parameter rank rule to a global budget by bisection (used by the uniform, energy and VBMF rules)."""

from typing import Callable

from nncf_tdplugin.rank_selection.base import BudgetUnreachableError, RankChoice, SelectionProblem

Rule = Callable[[float], dict[str, RankChoice]]


def fit_to_budget(problem: SelectionProblem, rule: Rule, knob: str, iterations: int = 40) -> dict[str, RankChoice]:
    """The choices of ``rule(x)`` for the largest x in [0, 1] that meets the budget; ``rule`` must make the model
    costlier as x grows (x is a rank fraction, an energy threshold, a scale...). ``knob`` names x in errors."""
    target = problem.target_cost
    lowest = rule(0.0)
    if problem.total_cost(lowest) > target:
        best = problem.ratio(lowest)
        raise BudgetUnreachableError(
            f"budget {problem.budget.metric} target_ratio={problem.budget.target_ratio:g} is unreachable: at the "
            f"smallest {knob} every decomposable layer is at its minimum rank and the model is only {best:.3f}x "
            f"{'faster' if problem.budget.metric == 'latency' else 'smaller'}. Lower the target ratio, lower 'min_rank', or allow more layers (skip_first_layer, "
            f"skip_last_layer, ignored_scopes).",
            best,
        )
    highest = rule(1.0)
    if problem.total_cost(highest) <= target:
        return highest
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if problem.total_cost(rule(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return rule(lo)
