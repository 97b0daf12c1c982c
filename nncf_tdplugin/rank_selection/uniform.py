"""Classic rank rules that need no search: a fixed fraction of each layer's rank, or one fraction for the whole
network found by bisection so that the model meets a global budget."""

from nncf_tdplugin.decomposition.ranks import max_ranks
from nncf_tdplugin.rank_selection.base import (
    BudgetUnreachableError,
    LayerCandidate,
    RankChoice,
    RankConstraints,
    RankSelector,
    SelectionProblem,
    pays_off,
    register_selector,
)


def ranks_at_fraction(candidate: LayerCandidate, method: str, fraction: float, constraints: RankConstraints):
    """Ranks that keep ``fraction`` of each of the layer's full ranks, on the constraint grid."""
    shape = candidate.weight.shape
    return tuple(constraints.clamp(fraction * full, full) for full in max_ranks(shape, method))


def choice_at_fraction(
    candidate: LayerCandidate, fraction: float, constraints: RankConstraints, metric: str
) -> RankChoice:
    """The layer's choice at ``fraction`` with its preferred method; dense if that would not pay off."""
    if candidate.fixed is not None:
        return candidate.fixed
    method = candidate.methods[0]
    choice = RankChoice(method, ranks_at_fraction(candidate, method, fraction, constraints))
    if pays_off(candidate, metric, choice):
        return choice
    return RankChoice("dense", reason=f"{method} at ranks {list(choice.ranks)} (rank fraction {fraction:.3f}) "
                                      f"would not reduce {metric}")


@register_selector("fraction")
class FractionSelector(RankSelector):
    """Every layer keeps ``options["rank_fraction"]`` of its full ranks (no global budget)."""

    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        fraction = problem.options["rank_fraction"]
        m = problem.budget.metric
        return {c.name: choice_at_fraction(c, fraction, problem.constraints, m) for c in problem.candidates}


@register_selector("uniform")
class UniformSelector(RankSelector):
    """One rank fraction for every layer, the largest that meets the global budget (bisection)."""

    iterations = 40

    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        m, target = problem.budget.metric, problem.target_cost

        def choices(fraction: float) -> dict[str, RankChoice]:
            return {c.name: choice_at_fraction(c, fraction, problem.constraints, m) for c in problem.candidates}

        lowest = choices(0.0)
        if problem.total_cost(lowest) > target:
            best = problem.ratio(lowest)
            raise BudgetUnreachableError(
                f"budget {m} target_ratio={problem.budget.target_ratio:g} is unreachable: with every decomposable "
                f"layer at its minimum rank the model is only {best:.3f}x smaller. Lower the target ratio, lower "
                f"'min_rank', or allow more layers (skip_first_layer/skip_last_layer, ignored_scopes).",
                best,
            )
        lo, hi = 0.0, 1.0
        if problem.total_cost(choices(hi)) <= target:
            return choices(hi)
        for _ in range(self.iterations):
            mid = 0.5 * (lo + hi)
            if problem.total_cost(choices(mid)) <= target:
                lo = mid
            else:
                hi = mid
        return choices(lo)
