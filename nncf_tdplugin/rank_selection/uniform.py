"""Classic rank rules that need no search: a fixed fraction of each layer's rank, or one fraction for the whole
network found by bisection so that the model meets a global budget."""

from typing import Callable

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


def per_layer_rule(problem: SelectionProblem, ranks_of: Callable[[LayerCandidate], tuple], why: str
                   ) -> dict[str, RankChoice]:
    """Apply a per-layer rank rule to every candidate: user overrides are kept, and a factorisation that would not
    pay off becomes dense (with ``why`` in its reason)."""
    metric = problem.budget.metric
    return {c.name: c.fixed if c.fixed is not None
            else choice_or_dense(c, RankChoice(c.methods[0], ranks_of(c)), metric, why)
            for c in problem.candidates}


def fraction_rule(problem: SelectionProblem, fraction: float) -> dict[str, RankChoice]:
    """Every layer at ``fraction`` of its full ranks, with its preferred method."""
    return per_layer_rule(problem, lambda c: ranks_at_fraction(c, c.methods[0], fraction, problem.constraints),
                          f"rank fraction {fraction:.3f}")


@register_selector("fraction")
class FractionSelector(RankSelector):
    """Every layer keeps ``options["rank_fraction"]`` of its full ranks (no global budget)."""

    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        return fraction_rule(problem, problem.options["rank_fraction"])


@register_selector("uniform")
class UniformSelector(RankSelector):
    """One rank fraction for every layer, the largest that meets the global budget (bisection)."""

    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        return fit_to_budget(problem, lambda fraction: fraction_rule(problem, fraction), "rank fraction")
