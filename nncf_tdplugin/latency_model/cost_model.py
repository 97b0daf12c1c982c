"""Per-layer OpenVINO latency as a rank-selection cost: measured on a grid of ranks, interpolated in between,
measured exactly for the ranks a selector picks.

For every candidate layer the model measures (once; results live in the on-disk cache):
- the dense layer;
- each allowed method on a grid of ranks: ``grid_points`` ranks per mode, multiples of the rank multiple, from the
  smallest to the largest allowed rank (Tucker-2: the full ``grid_points x grid_points`` grid of (R_out, R_in)).

``cost(layer, choice)`` is the measured value when the choice was measured, otherwise a piecewise-linear
(Tucker-2: bilinear) interpolation of the grid: the *fitted predictor*. Its error against measurement is reported
by :func:`predictor_error` and in docs/latency.md. Selectors call :meth:`measure_choices` on what they picked, so
final decisions (and the reported ratio) rest on measurements, not on the predictor.

Costs are additive per layer (sum over Conv/MatMul layers). Each single-layer model pays one inference call; that
fixed overhead is measured on a trivial model and subtracted (``_layer_worker.py``).
"""

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import math

import numpy as np

from nncf_tdplugin.latency_model.cache import LatencyCache
from nncf_tdplugin.latency_model.measure import measure_specs
from nncf_tdplugin.latency_model.specs import LayerSpec, MeasurementContext

RANK_MULTIPLE_CANDIDATES = (4, 8, 16, 32)


@dataclass
class LatencySettings:
    """The ``latency`` block of the config (see config.py for the meaning of each key)."""

    precision: str = "default"
    threads: Optional[int] = None
    int8: Optional[bool] = None  # None: decided by the builder ("auto": quantization follows in the config)
    rank_multiple: Optional[int] = None  # None: probed ("auto")
    grid_points: int = 5
    cache_dir: Optional[str] = None
    warmup: int = 10
    iterations: int = 20
    repeats: int = 3
    verify_rounds: int = 3
    calibration: str = "layers"  # "layers" | "whole_model"
    whole_model_check: int = 0  # rounds of end-to-end timing of the chosen plan and re-selection (0: off)


def _grid(allowed: Sequence[int], points: int) -> list[int]:
    """``points`` ranks spread geometrically over ``allowed`` (sorted), first and last included."""
    allowed = sorted(set(int(r) for r in allowed))
    if len(allowed) <= points:
        return allowed
    idx = np.unique(np.round(np.geomspace(1, len(allowed), points)).astype(int) - 1)
    return [allowed[i] for i in idx]


def _interp1(x: float, xs: Sequence[int], ys: Sequence[float]) -> float:
    """Piecewise linear; linear extrapolation from the end segments."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs) == 1:
        return float(ys[0] * x / xs[0])
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    t = (x - xs[i]) / (xs[i + 1] - xs[i])
    return float(ys[i] + t * (ys[i + 1] - ys[i]))


def _interp2(x: float, y: float, xs, ys, table: np.ndarray) -> float:
    """Bilinear on a rectangular grid (table[i, j] at xs[i], ys[j])."""
    column = [_interp1(y, ys, table[i]) for i in range(len(xs))]
    return _interp1(x, xs, column)


def interpolate(axes: Sequence[Sequence[int]], values, ranks: Sequence[int]) -> float:
    """The grid predictor: ``values`` measured at the ranks of ``axes`` (one axis: a list; two: a table indexed
    ``[i][j]``), piecewise linear (two axes: bilinear) at ``ranks``, floored at 1 us (as measurements are)."""
    if len(axes) == 1:
        return max(_interp1(ranks[0], axes[0], values), 1e-3)
    return max(_interp2(ranks[0], ranks[1], axes[0], axes[1], np.asarray(values, float)), 1e-3)


class LatencyCostModel:
    """Measured per-layer latencies (ms) of dense layers and their factorizations in one context."""

    def __init__(self, settings: LatencySettings, progress: bool = True):
        self.settings = settings
        self.context = MeasurementContext.here(settings.precision, settings.threads, warmup=settings.warmup,
                                               iterations=settings.iterations, repeats=settings.repeats)
        self.cache = LatencyCache(self.context, settings.cache_dir)
        self.progress = progress
        self.layers: dict[str, LayerSpec] = {}  # name -> dense spec
        self.grids: dict[tuple[str, str], tuple] = {}  # (name, method) -> rank grid per mode
        self.measured_now = 0  # measurements taken by this instance (the rest came from the cache)
        self.measured_only = False  # True: unmeasured factorizations cost +inf (selectors then skip them)
        self.rank_multiple_scores: dict = {}

    # --- measuring ---------------------------------------------------------------------------------------------
    def _measure(self, specs: Iterable[LayerSpec], desc: str) -> None:
        self.measured_now += measure_specs(list(specs), self.cache, progress=self.progress, desc=desc)

    def probe_rank_multiple(self) -> int:
        """The channel multiple at which this CPU's kernels are most efficient, from a 3x3 conv at 14x14 with
        64..160 channels in steps of 4: for each candidate m, the mean latency per MAC at multiples of m relative
        to the mean over all channel counts. Picks the best m if it is at least 0.5% more efficient (else 1), or a
        smaller m within 1% of it."""
        specs = [LayerSpec("conv", c, c, (3, 3), pads_begin=(1, 1), pads_end=(1, 1), in_hw=(14, 14),
                           int8=bool(self.settings.int8)) for c in range(64, 161, 4)]
        self._measure(specs, "latency cost model: rank multiple probe")
        eff = {s.in_channels: self.cache.get(s.key) / s.in_channels ** 2 for s in specs}
        overall = float(np.mean(list(eff.values())))
        scores = {m: float(np.mean([e for c, e in eff.items() if c % m == 0])) / overall
                  for m in RANK_MULTIPLE_CANDIDATES}
        self.rank_multiple_scores = scores
        best = min(scores, key=scores.get)
        if scores[best] > 0.995:
            return 1
        # a smaller multiple that is about as efficient gives finer rank menus
        return min(m for m in RANK_MULTIPLE_CANDIDATES if scores[m] <= scores[best] + 0.01)

    def add_layer(self, name: str, spec: LayerSpec, methods: dict[str, Sequence[Sequence[int]]] = None) -> None:
        """Register a layer: its dense spec, and per method the allowed ranks of each mode (for the grid)."""
        if spec.method != "dense":
            raise ValueError(f"add_layer takes the dense spec of {name}, got method {spec.method!r}")
        self.layers[name] = spec
        for method, allowed in (methods or {}).items():
            self.grids[(name, method)] = tuple(_grid(a, self.settings.grid_points) for a in allowed)

    def grid_specs(self) -> list[LayerSpec]:
        specs = [spec for spec in self.layers.values()]
        for (name, method), axes in self.grids.items():
            base = self.layers[name]
            if len(axes) == 1:
                specs += [base.with_choice(method, (r,)) for r in axes[0]]
            else:
                specs += [base.with_choice(method, (a, b)) for a in axes[0] for b in axes[1]]
        return specs

    def prepare(self) -> None:
        """Measure every dense layer and every grid point not in the cache yet."""
        self._measure(self.grid_specs(), "latency cost model: layers")

    def measure_choices(self, choices: dict[str, tuple]) -> int:
        """Measure exactly ``{layer: (method, ranks)}`` (dense choices need nothing); returns how many were new."""
        specs = [self.layers[n].with_choice(m, r) for n, (m, r) in choices.items() if m != "dense"]
        before = self.measured_now
        self._measure(specs, "latency cost model: chosen ranks")
        return self.measured_now - before

    # --- costs -------------------------------------------------------------------------------------------------
    def is_measured(self, name: str, method: str, ranks: Sequence[int] = ()) -> bool:
        return self.layers[name].with_choice(method, ranks).key in self.cache

    def dense(self, name: str) -> float:
        value = self.cache.get(self.layers[name].key)
        if value is None:
            raise KeyError(f"dense latency of {name} not measured; call prepare() first")
        return value

    def cost(self, name: str, method: str, ranks: Sequence[int] = ()) -> float:
        """Latency (ms) of layer ``name`` as ``method`` at ``ranks``: measured if available, else interpolated."""
        base = self.layers[name]
        if method == "dense":
            return self.dense(name)
        measured = self.cache.get(base.with_choice(method, ranks).key)
        if measured is not None:
            return measured
        if self.measured_only:
            return math.inf
        return self.predict(name, method, ranks)

    def predict(self, name: str, method: str, ranks: Sequence[int]) -> float:
        """The grid interpolation, ignoring any exact measurement of this point."""
        axes = self.grids.get((name, method))
        if axes is None:
            raise KeyError(f"no latency grid for method {method!r} of layer {name}")
        return interpolate(axes, self.grid_values(name, method), ranks)

    def grid_values(self, name: str, method: str) -> list:
        """The measured grid of ``method`` on layer ``name`` (ms): a list over the rank axis, or for two axes a
        table ``[i][j]`` at ``(axes[0][i], axes[1][j])`` (see :func:`interpolate`)."""
        axes, base = self.grids[(name, method)], self.layers[name]
        if len(axes) == 1:
            return [self.cache.get(base.with_choice(method, (r,)).key) for r in axes[0]]
        return [[self.cache.get(base.with_choice(method, (a, b)).key) for b in axes[1]] for a in axes[0]]

    @property
    def runtime(self) -> dict:
        return dict(self.cache.runtime)


def predictor_error(model: LatencyCostModel, points: dict[str, list[tuple]]) -> list[dict]:
    """Measure ``{layer: [(method, ranks), ...]}`` off the grid and compare with the prediction."""
    rows = []
    for name, choices in points.items():
        predicted = {c: model.predict(name, c[0], c[1]) for c in choices}
        specs = [model.layers[name].with_choice(m, r) for m, r in choices]
        model._measure(specs, "latency cost model: predictor check")
        for (method, ranks), spec in zip(choices, specs):
            measured = model.cache.get(spec.key)
            p = predicted[(method, ranks)]
            rows.append({"layer": name, "method": method, "ranks": list(ranks), "predicted_ms": p,
                         "measured_ms": measured, "relative_error": (p - measured) / measured})
    return rows
