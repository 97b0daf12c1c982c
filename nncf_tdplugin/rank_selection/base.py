"""The one interface every rank selector implements: layers + budget + constraints -> per-layer choice.

A selector never touches modules or NNCF: it sees each candidate layer as a :class:`LayerCandidate` (its weight,
geometry and the methods allowed for it) and returns a :class:`RankChoice` per layer name. The builder turns the
choices into factor layers. Selectors (uniform, energy, VBMF, continuous search, training-time learning, latency
cost models) plug in through :data:`RANK_SELECTORS`.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from nncf_tdplugin.rank_selection.cost import LayerGeometry, dense_macs, dense_params, layer_cost


class BudgetUnreachableError(ValueError):
    """The requested budget cannot be met under the rank constraints; carries the best reachable ratio."""

    def __init__(self, message: str, best_ratio: float):
        super().__init__(message)
        self.best_ratio = best_ratio


@dataclass(frozen=True)
class RankChoice:
    """What to do with one layer: ``method`` in {"tucker2", "cp", "svd", "dense"} and its ranks."""

    method: str
    ranks: tuple[int, ...] = ()
    reason: str = field(default="", compare=False)  # why a selector kept a layer dense (shown in statistics)

    @property
    def is_dense(self) -> bool:
        return self.method == "dense"


DENSE = RankChoice("dense")


@dataclass
class RankConstraints:
    min_rank: int = 1
    max_rank_fraction: float = 1.0
    rank_multiple: int = 1

    def clamp(self, rank: float, full: int) -> int:
        """Round ``rank`` to the allowed grid: at least ``min_rank``, rounded up to a multiple of
        ``rank_multiple``, and at most ``max_rank_fraction * full`` (never above ``full``; the cap wins, even if it
        is not a multiple)."""
        upper = max(1, min(full, int(math.floor(self.max_rank_fraction * full + 1e-9))))
        r = max(float(rank), float(self.min_rank), 1.0)
        r = int(math.ceil(r / self.rank_multiple - 1e-9)) * self.rank_multiple
        return int(min(r, upper))


@dataclass(frozen=True)
class Budget:
    """A global target: the model's cost in ``metric`` divided by ``target_ratio``."""

    metric: str  # "params" | "flops" | "latency" (measured, via LayerCandidate.extra_costs)
    target_ratio: float


@dataclass
class LayerCandidate:
    """One decomposable layer as a selector sees it."""

    name: str
    weight: torch.Tensor
    geometry: LayerGeometry
    methods: tuple[str, ...]  # methods allowed for this layer, in order of preference
    fixed: Optional[RankChoice] = None  # a user override: selectors must keep it
    # costs that are not analytic, by metric: e.g. {"latency": f(choice) -> ms} from a measured cost model
    extra_costs: dict = field(default_factory=dict)

    def cost(self, metric: str, choice: RankChoice) -> float:
        if metric in self.extra_costs:
            return float(self.extra_costs[metric](choice))
        return layer_cost(self.geometry, metric, choice.method, choice.ranks)

    def dense_cost(self, metric: str) -> float:
        if metric in self.extra_costs:
            return float(self.extra_costs[metric](DENSE))
        return float(dense_params(self.geometry) if metric == "params" else dense_macs(self.geometry))


@dataclass
class SelectionProblem:
    """Everything a selector needs. ``fixed_cost`` is the cost of the model outside the candidates (layers that
    stay dense, BN, embeddings...), so budgets are for the whole model: total_dense / achieved = ratio.

    ``additional`` are further budgets the choice must also meet (e.g. 5x parameters *and* 3x FLOPs), each with
    the fixed cost in its own metric in ``additional_fixed_costs``. ``budget`` stays the primary one: the metric
    the rank menus are Pareto-optimal in, and the one a latency cost model measures."""

    candidates: list[LayerCandidate]
    budget: Budget
    constraints: RankConstraints
    fixed_cost: float
    seed: int = 0
    options: dict = field(default_factory=dict)
    additional: tuple[Budget, ...] = ()
    additional_fixed_costs: dict[str, float] = field(default_factory=dict)

    @property
    def budgets(self) -> list[Budget]:
        """Every budget the choice must meet, the primary one first."""
        return [self.budget, *self.additional]

    def fixed_cost_in(self, metric: str) -> float:
        return self.fixed_cost if metric == self.budget.metric else self.additional_fixed_costs[metric]

    def dense_cost_in(self, metric: str) -> float:
        return self.fixed_cost_in(metric) + sum(c.dense_cost(metric) for c in self.candidates)

    def cost_in(self, metric: str, choices: dict[str, RankChoice]) -> float:
        return self.fixed_cost_in(metric) + sum(c.cost(metric, choices.get(c.name, DENSE)) for c in self.candidates)

    def target_cost_in(self, budget: Budget) -> float:
        return self.dense_cost_in(budget.metric) / budget.target_ratio

    def ratios(self, choices: dict[str, RankChoice]) -> dict[str, float]:
        """The achieved ratio of every budget's metric."""
        return {b.metric: self.dense_cost_in(b.metric) / self.cost_in(b.metric, choices) for b in self.budgets}

    def missed(self, choices: dict[str, RankChoice]) -> list[str]:
        """The budgets ``choices`` do not meet, as 'metric target_ratio=R (reached r)'; empty when all are met."""
        out = []
        for b in self.budgets:
            cost = self.cost_in(b.metric, choices)
            if cost > self.target_cost_in(b) * (1 + 1e-12):
                out.append(f"{b.metric} target_ratio={b.target_ratio:g} (reached {self.dense_cost_in(b.metric) / cost:.3f}x)")
        return out

    def missed_ratio(self, choices: dict[str, RankChoice]) -> float:
        """The ratio ``choices`` reach in the metric of the first budget they miss (the primary metric's ratio when
        they miss none): what a BudgetUnreachableError carries as its best ratio."""
        for b in self.budgets:
            if self.cost_in(b.metric, choices) > self.target_cost_in(b) * (1 + 1e-12):
                return self.dense_cost_in(b.metric) / self.cost_in(b.metric, choices)
        return self.ratio(choices)

    def within_budgets(self, choices: dict[str, RankChoice]) -> bool:
        return not self.missed(choices)

    @property
    def total_dense_cost(self) -> float:
        return self.dense_cost_in(self.budget.metric)

    def total_cost(self, choices: dict[str, RankChoice]) -> float:
        return self.cost_in(self.budget.metric, choices)

    def ratio(self, choices: dict[str, RankChoice]) -> float:
        return self.total_dense_cost / self.total_cost(choices)

    @property
    def target_cost(self) -> float:
        return self.target_cost_in(self.budget)


class RankSelector(ABC):
    """Weights + budget -> per-layer :class:`RankChoice`. Subclasses must keep ``candidate.fixed`` choices."""

    name: str = ""

    @abstractmethod
    def select(self, problem: SelectionProblem) -> dict[str, RankChoice]:
        ...


RANK_SELECTORS: dict[str, Callable[[], RankSelector]] = {}


def register_selector(name: str):
    def wrap(cls):
        cls.name = name
        RANK_SELECTORS[name] = cls
        return cls

    return wrap


def pays_off(candidate: LayerCandidate, metric: str, choice: RankChoice) -> bool:
    """A factorisation is worth it only if it is strictly cheaper than the dense layer."""
    return choice.is_dense or candidate.cost(metric, choice) < candidate.dense_cost(metric)
