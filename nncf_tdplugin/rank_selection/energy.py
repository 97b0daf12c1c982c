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
from nncf_tdplugin.rank_selection.uniform import choice_or_dense


def energy_rank(spectrum: torch.Tensor, threshold: float) -> int:
    """Smallest r with sum_{i<r} s_i^2 >= threshold * sum s_i^2 (at least 1)."""
    energy = torch.cumsum(spectrum**2, 0) / (spectrum**2).sum().clamp_min(1e-300)
    return max(1, int(torch.searchsorted(energy, torch.tensor(threshold - 1e-12, dtype=energy.dtype))) + 1)


@register_selector("energy")
class EnergySelector(RankSelector):
    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        metric, constraints = problem.budget.metric, problem.constraints
        spectra = {c.name: mode_spectra(c, c.methods[0]) for c in problem.candidates if c.fixed is None}

        def rule(threshold: float) -> dict[str, RankChoice]:
            choices = {}
            for c in problem.candidates:
                if c.fixed is not None:
                    choices[c.name] = c.fixed
                    continue
                method = c.methods[0]
                full = max_ranks(c.weight.shape, method)
                if method == "cp":
                    spectrum = spectra[c.name][0]
                    fraction = energy_rank(spectrum, threshold) / len(spectrum)
                    ranks = (constraints.clamp(fraction * full[0], full[0]),)
                else:
                    ranks = tuple(constraints.clamp(energy_rank(s, threshold), f)
                                  for s, f in zip(spectra[c.name], full))
                choices[c.name] = choice_or_dense(c, RankChoice(method, ranks), metric,
                                                  f"energy threshold {threshold:.4f}")
            return choices

        fixed = problem.options.get("energy_threshold")
        if fixed is not None:
            return rule(float(fixed))
        return fit_to_budget(problem, rule, "energy threshold")
