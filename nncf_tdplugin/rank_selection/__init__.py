"""Rank selection: which layers to factorise, how, and at which ranks, under a global budget.

All selectors implement :class:`RankSelector` (candidates + budget + constraints -> per-layer choice) and are
registered by name in :data:`RANK_SELECTORS`; the config key ``rank_selection`` picks one.
"""

from nncf_tdplugin.rank_selection import energy, search, uniform, vbmf  # noqa: F401  (registers the selectors)
from nncf_tdplugin.rank_selection.base import (
    DENSE,
    RANK_SELECTORS,
    Budget,
    BudgetUnreachableError,
    LayerCandidate,
    RankChoice,
    RankConstraints,
    RankSelector,
    SelectionProblem,
    pays_off,
    register_selector,
)
from nncf_tdplugin.rank_selection.cost import LayerGeometry, dense_macs, dense_params, factorized_macs, factorized_params

__all__ = [
    "DENSE",
    "RANK_SELECTORS",
    "Budget",
    "BudgetUnreachableError",
    "LayerCandidate",
    "LayerGeometry",
    "RankChoice",
    "RankConstraints",
    "RankSelector",
    "SelectionProblem",
    "dense_macs",
    "dense_params",
    "factorized_macs",
    "factorized_params",
    "pays_off",
    "register_selector",
]
