"""Fit a one-parameter rank rule to a global budget by bisection (used by the uniform, energy and VBMF rules)."""

from typing import Callable

from nncf_tdplugin.rank_selection.base import BudgetUnreachableError, RankChoice, SelectionProblem

Rule = Callable[[float], dict[str, RankChoice]]


def fit_to_budget(problem: SelectionProblem, rule: Rule, knob: str, iterations: int = 40) -> dict[str, RankChoice]:
    """The choices of ``rule(x)`` for the largest x in [0, 1] that meets every budget of ``problem``; ``rule`` must
    make the model costlier as x grows (x is a rank fraction, an energy threshold, a scale...). ``knob`` names x in
    errors."""
    lowest = rule(0.0)
    missed = problem.missed(lowest)
    if missed:  # each missed budget says the ratio it reached, in its own metric
        raise BudgetUnreachableError(
            f"budget {' and '.join(missed)} is unreachable: at the smallest {knob} every decomposable layer is at "
            f"its minimum rank. Lower the target ratio, lower 'min_rank', or allow more layers (skip_first_layer, "
            f"skip_last_layer, ignored_scopes).",
            problem.missed_ratio(lowest),
        )
    highest = rule(1.0)
    if problem.within_budgets(highest):
        return highest
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if problem.within_budgets(rule(mid)):
            lo = mid
        else:
            hi = mid
    return rule(lo)
