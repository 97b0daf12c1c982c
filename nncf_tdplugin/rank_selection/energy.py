"""Energy-threshold ranks: per truncated mode, the smallest rank whose singular values keep a fraction
``threshold`` of the energy sum(s_i^2). With a fixed ``energy_threshold`` that is the rule; otherwise the threshold
is found by bisection so that the model meets the global budget.

CP has no spectrum of its own: its rank is the same fraction of its break-even rank as the energy rank is of the
mode-0 unfolding's full rank.
"""

import torch

from nncf_tdplugin.decomposition.ranks import max_ranks
from nncf_tdplugin.rank_selection.base import RankChoice, RankSelector, SelectionProblem, register_selector
from nncf_tdplugin.rank_selection.budget_fit import fit_to_budget
from nncf_tdplugin.rank_selection.spectra import mode_spectra
from nncf_tdplugin.rank_selection.uniform import per_layer_rule


def energy_rank(spectrum: torch.Tensor, threshold: float) -> int:
    """Smallest r with sum_{i<r} s_i^2 >= threshold * sum s_i^2 (at least 1)."""
    energy = torch.cumsum(spectrum**2, 0) / (spectrum**2).sum().clamp_min(1e-300)
    return max(1, int(torch.searchsorted(energy, torch.tensor(threshold - 1e-12, dtype=energy.dtype))) + 1)


@register_selector("energy")
class EnergySelector(RankSelector):
    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        constraints = problem.constraints
        spectra = {c.name: mode_spectra(c, c.methods[0]) for c in problem.candidates if c.fixed is None}

        def ranks_of(c, threshold: float) -> tuple:
            method = c.methods[0]
            full = max_ranks(c.weight.shape, method)
            if method == "cp":
                spectrum = spectra[c.name][0]
                return (constraints.clamp(energy_rank(spectrum, threshold) / len(spectrum) * full[0], full[0]),)
            return tuple(constraints.clamp(energy_rank(s, threshold), f) for s, f in zip(spectra[c.name], full))

        def rule(threshold: float) -> dict[str, RankChoice]:
            return per_layer_rule(problem, lambda c: ranks_of(c, threshold), f"energy threshold {threshold:.4f}")

        fixed = problem.options.get("energy_threshold")
        if fixed is not None:
            return rule(float(fixed))
        return fit_to_budget(problem, rule, "energy threshold")
