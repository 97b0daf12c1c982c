"""Per-layer option menus: every allowed (method, ranks) of a layer with its exact cost and truncation error.

Errors come from the closed-form tables of :mod:`nncf_tdplugin.decomposition` (truncated HOSVD for Tucker-2,
Eckart-Young for SVD), so a whole network's menus take seconds. A menu keeps only Pareto-optimal options (no other
option is both cheaper and more accurate) and always contains "dense" (cost of the dense layer, error 0).
CP has no closed-form error; its options are measured with a short CP-ALS per candidate rank.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from nncf_tdplugin.decomposition import cp_decompose, max_ranks, svd_relative_errors, tucker2_relative_errors
from nncf_tdplugin.rank_selection.base import DENSE, LayerCandidate, RankChoice, RankConstraints, pays_off



@dataclass
class Menu:
    """Options of one layer, sorted by increasing cost (so by decreasing error): ``costs[k]``, ``errors[k]``
    (relative Frobenius error) and ``choices[k]``. The last option is the most accurate one (usually dense)."""

    name: str
    choices: list[RankChoice]
    costs: np.ndarray
    errors: np.ndarray

    def __len__(self) -> int:
        return len(self.choices)


def rank_grid(full: int, constraints: RankConstraints, max_points: Optional[int] = None) -> list[int]:
    """Allowed ranks of a mode (multiples of ``rank_multiple``, within min/max), thinned to ``max_points``."""
    ranks = sorted({constraints.clamp(r, full) for r in range(1, full + 1)})
    if max_points is not None and len(ranks) > max_points:
        idx = np.unique(np.round(np.geomspace(1, len(ranks), max_points)).astype(int) - 1)
        ranks = [ranks[i] for i in idx]
    return ranks


def _pareto(choices, costs, errors) -> tuple[list, np.ndarray, np.ndarray]:
    order = np.lexsort((errors, costs))
    keep, best = [], np.inf
    for i in order:
        if errors[i] < best - 1e-12:
            keep.append(i)
            best = errors[i]
    return [choices[i] for i in keep], np.asarray(costs)[keep], np.asarray(errors)[keep]


def build_menu(candidate: LayerCandidate, metric: str, constraints: RankConstraints,
               max_points_per_mode: int = 48, cp_iterations: int = 30, seed: int = 0) -> Menu:
    """All Pareto-optimal options of ``candidate`` (its ``fixed`` choice only, if it has one)."""
    if candidate.fixed is not None:
        fixed = candidate.fixed
        return Menu(candidate.name, [fixed], np.array([candidate.cost(metric, fixed)]), np.array([0.0]))
    w = candidate.weight.detach().double().cpu()
    choices: list[RankChoice] = [DENSE]
    costs: list[float] = [candidate.dense_cost(metric)]
    errors: list[float] = [0.0]

    def add(choice: RankChoice, error: float) -> None:
        if pays_off(candidate, metric, choice):
            choices.append(choice)
            costs.append(candidate.cost(metric, choice))
            errors.append(float(error))

    for method in candidate.methods:
        full = max_ranks(w.shape, method)
        if method == "svd":
            table = svd_relative_errors(w.reshape(w.shape[0], -1)).numpy()
            for r in rank_grid(full[0], constraints, max_points_per_mode * 4):
                add(RankChoice("svd", (r,)), table[r])
        elif method == "tucker2":
            table = tucker2_relative_errors(w).numpy()
            outs = rank_grid(full[0], constraints, max_points_per_mode)
            ins = rank_grid(full[1], constraints, max_points_per_mode)
            for r_out in outs:
                for r_in in ins:
                    add(RankChoice("tucker2", (r_out, r_in)), table[r_out, r_in])
        elif method == "cp":
            norm = float(w.norm())
            for r in rank_grid(full[0], constraints, 8):
                f = cp_decompose(w.float(), r, n_iter_max=cp_iterations, random_state=seed)
                add(RankChoice("cp", (r,)), float((f.reconstruct().double() - w).norm()) / norm)
        else:
            raise ValueError(f"unknown method {method!r} for layer {candidate.name}")
    picked, c, e = _pareto(choices, costs, errors)
    return Menu(candidate.name, picked, c, e)
