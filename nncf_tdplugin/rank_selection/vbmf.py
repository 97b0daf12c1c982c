"""Ranks from empirical variational Bayesian matrix factorisation (EVBMF, Nakajima et al., JMLR 2013), as used for
Tucker-2 by Kim et al. (ICLR 2016) and MUSCO: the analytic global solution of EVBMF on each unfolding gives the
number of components that stand above the estimated noise level.

VBMF ranks describe the *shape* of a rank profile (which layers carry more signal); the global budget sets its
*size*: the VBMF ranks are scaled by one common factor, found by bisection, so the model meets the budget
("weakened"/"strengthened" VBMF in MUSCO's terms).
"""

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from nncf_tdplugin.decomposition.ranks import max_ranks
from nncf_tdplugin.rank_selection.base import RankChoice, RankSelector, SelectionProblem, register_selector
from nncf_tdplugin.rank_selection.budget_fit import fit_to_budget
from nncf_tdplugin.rank_selection.spectra import mode_spectra
from nncf_tdplugin.rank_selection.uniform import per_layer_rule


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def evbmf_rank(spectrum: torch.Tensor, shape: tuple[int, int]) -> int:
    """EVBMF rank of an L x M matrix (L <= M after transposition) with singular values ``spectrum``.

    The noise variance sigma^2 is estimated by minimising the EVBMF free energy (Nakajima et al. 2013, Thm. 2 and
    eq. 29 ff.); components with s_h > sqrt(M sigma^2 (1 + tau_bar)(1 + alpha / tau_bar)) are kept.
    """
    s = spectrum.double().cpu().numpy()
    L, M = sorted(int(d) for d in shape)
    H = len(s)
    alpha = L / M
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = 0.0  # the full spectrum is used
    eh_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
    upper = (np.sum(s**2) + residual) / (L * M)
    lower = max(s[eh_ub + 1] ** 2 / (M * x_bar) if eh_ub + 1 < H else 0.0, np.mean(s[eh_ub + 1:] ** 2) / M
                if eh_ub + 1 < H else 0.0)
    if not upper > lower > 0:
        return H  # no noise floor to estimate (tiny or exactly low-rank matrix): keep every component

    def free_energy(sigma2: float) -> float:
        x = s**2 / (M * sigma2)
        z1, z2 = x[x > x_bar], x[x <= x_bar]
        tau_z1 = _tau(z1, alpha)
        return float(
            np.sum(z2 - np.log(z2)) + np.sum(z1 - tau_z1) + np.sum(np.log((tau_z1 + 1) / z1))
            + alpha * np.sum(np.log(tau_z1 / alpha + 1)) + residual / (M * sigma2) + (L - H) * np.log(sigma2)
        )

    sigma2 = minimize_scalar(free_energy, bounds=(lower, upper), method="bounded").x
    threshold = math.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return int(np.sum(s > threshold))


def unfolding_shapes(weight_shape, method: str) -> list[tuple[int, int]]:
    t, s = int(weight_shape[0]), int(weight_shape[1])
    rest = int(np.prod(weight_shape[2:])) if len(weight_shape) > 2 else 1
    if method == "tucker2":
        return [(t, s * rest), (s, t * rest)]
    return [(t, s * rest)]


@register_selector("vbmf")
class VBMFSelector(RankSelector):
    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        constraints = problem.constraints
        profile = {}  # layer -> VBMF ranks (>= 1) per truncated mode, and the method's full ranks
        for c in problem.candidates:
            if c.fixed is not None:
                continue
            method = c.methods[0]
            spectra = mode_spectra(c, method)
            vb = [max(1, evbmf_rank(sp, shape)) for sp, shape in zip(spectra, unfolding_shapes(c.weight.shape, method))]
            full = max_ranks(c.weight.shape, method)
            if method == "cp":  # same fraction of the break-even rank as VBMF keeps of the mode-0 rank
                vb = [max(1, round(vb[0] / len(spectra[0]) * full[0]))]
            profile[c.name] = (vb, full)
        # scale x in [0, 1] maps to a factor in [0, max full/vbmf] so that x = 1 reaches full rank everywhere
        top = max((f / v for vb, full in profile.values() for v, f in zip(vb, full)), default=1.0)

        def rule(x: float) -> dict[str, RankChoice]:
            def ranks_of(c) -> tuple:
                vb, full = profile[c.name]
                return tuple(constraints.clamp(x * top * v, f) for v, f in zip(vb, full))

            return per_layer_rule(problem, ranks_of, f"VBMF ranks scaled by {x * top:.3f}")

        return fit_to_budget(problem, rule, "VBMF scale")
