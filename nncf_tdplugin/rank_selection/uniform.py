"""Classic rank rules that need no search: a fixed fraction of each layer's rank, or one fraction for the whole
network found by bisection so that the model meets a global budget."""

from nncf_tdplugin.decomposition.ranks import max_ranks
from nncf_tdplugin.rank_selection.base import (
    LayerCandidate,
    RankChoice,
    RankConstraints,
    RankSelector,
    SelectionProblem,
    pays_off,
    register_selector,
)
from nncf_tdplugin.rank_selection.budget_fit import fit_to_budget


def ranks_at_fraction(candidate: LayerCandidate, method: str, fraction: float, constraints: RankConstraints):
    """Ranks that keep ``fraction`` of each of the layer's full ranks, on the constraint grid."""
    shape = candidate.weight.shape
    return tuple(constraints.clamp(fraction * full, full) for full in max_ranks(shape, method))


def choice_or_dense(candidate: LayerCandidate, choice: RankChoice, metric: str, why: str) -> RankChoice:
    """``choice`` if it is cheaper than the dense layer, else dense with the reason."""
    if pays_off(candidate, metric, choice):
        return choice
    return RankChoice("dense", reason=f"{choice.method} at ranks {list(choice.ranks)} ({why}) would not reduce {metric}")


def choice_at_fraction(
    candidate: LayerCandidate, fraction: float, constraints: RankConstraints, metric: str
) -> RankChoice:
    """The layer's choice at ``fraction`` with its preferred method; dense if that would not pay off."""
    if candidate.fixed is not None:
        return candidate.fixed
    method = candidate.methods[0]
    choice = RankChoice(method, ranks_at_fraction(candidate, method, fraction, constraints))
    return choice_or_dense(candidate, choice, metric, f"rank fraction {fraction:.3f}")


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

    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        m = problem.budget.metric

        def rule(fraction: float) -> dict[str, RankChoice]:
            return {c.name: choice_at_fraction(c, fraction, problem.constraints, m) for c in problem.candidates}

        return fit_to_budget(problem, rule, "rank fraction")
