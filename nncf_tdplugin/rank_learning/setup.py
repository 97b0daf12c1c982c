"""The builder hook of rank learning: budget bookkeeping kept in the plan, and the gate insertion commands.

Called from ``TensorDecompositionBuilder._get_transformation_layout`` after the factor layers are in place. The plan
is the builder's state, so what is stored here (``plan["rank_learning"]``: per-layer geometry, the fixed cost and
dense total of the budget, the initial ranks, whether the model was truncated) is saved with the compression state
and read back on resume, where nothing is decomposed or selected again.
"""

import dataclasses
from typing import Any, Optional

import torch
from nncf.common.graph.transformations.commands import TargetType, TransformationPriority
from nncf.common.logging import nncf_logger
from nncf.torch.graph.transformations.commands import PTInsertionCommand, PTTargetPoint
from nncf.torch.graph.transformations.layout import PTTransformationLayout

from nncf_tdplugin.config import ALGO_NAME, TDConfig, TDConfigError
from nncf_tdplugin.rank_learning.allocation import smallest_rank
from nncf_tdplugin.rank_learning.gates import GATED_FACTORS, RankGate
from nncf_tdplugin.rank_selection.cost import LayerGeometry, dense_macs, dense_params, layer_cost


def geometry_of(info: dict, name: str) -> LayerGeometry:
    g = dict(info["geometry"][name])
    g["in_hw"], g["out_hw"] = tuple(g["in_hw"]), tuple(g["out_hw"])
    return LayerGeometry(**g)


def rank_key(ranks) -> str:
    """Key of a rank tuple in ``plan["rank_learning"]["measured_ms"][layer]`` (JSON keys are strings)."""
    return ",".join(str(int(r)) for r in ranks)


def plan_cost(info: dict, name: str, method: str, ranks, measured: bool = True, metric: Optional[str] = None
              ) -> float:
    """The cost of one decomposed layer at ``ranks`` in the budget's metric (or in ``metric``, that of a
    budget.additional): analytic for params and flops; for latency, the per-layer cost model's grid of the layer
    (measured at decomposition, stored in the plan), interpolated at ``ranks``, or (``measured``) its measurement at
    ``ranks`` if the freeze measured them."""
    metric = metric or info["metric"]
    if metric == "latency":
        from nncf_tdplugin.latency_model.cost_model import interpolate

        value = info.get("measured_ms", {}).get(name, {}).get(rank_key(ranks)) if measured else None
        if value is not None:  # measured at the freeze: the measurement replaces the interpolation
            return float(value)
        grid = info["latency_grid"][name]
        return interpolate(grid["axes"], grid["values"], ranks)
    return layer_cost(geometry_of(info, name), metric, method, ranks)


def budget_info(layers, plan: dict[str, Any], cfg: TDConfig) -> dict[str, Any]:
    """Geometry of every decomposed layer and the cost outside them, in the budget's metric and scope."""
    metric = plan["metric"]
    by_name = {layer.module_name: layer for layer in layers}

    def totals(metric: str) -> tuple[float, float]:
        """(fixed cost, dense total) of an analytic metric in the budget's scope."""
        def dense(g: LayerGeometry) -> float:
            return float(dense_params(g) if metric == "params" else dense_macs(g))

        if plan.get("budget_scope", "model") == "model":
            dense_total = float(plan["model_params"] if metric == "params" else plan["model_macs"])
            fixed = dense_total - sum(dense(by_name[name].geometry) for name in plan["layers"])
        else:  # the decomposable layers only: those the selector kept dense count at their dense cost
            prefix = f"{plan['rank_selection']}: "
            fixed = sum(dense(by_name[n].geometry) for n, why in plan["skipped"].items()
                        if why.startswith(prefix) and n in by_name and by_name[n].geometry is not None)
            dense_total = fixed + sum(dense(by_name[name].geometry) for name in plan["layers"])
        return fixed, dense_total

    geometry = {name: dataclasses.asdict(by_name[name].geometry) for name in plan["layers"]}
    rank_multiple = cfg.rank_multiple
    extra = {}
    if metric == "latency":
        # milliseconds of the cost model: the selection's dense total (its scope), each decomposed layer's measured
        # dense latency, and its rank grid (moved out of the plan entry: rank learning owns it)
        lat = plan["latency"]
        dense_total = float(lat["dense_ms"])
        fixed = dense_total - sum(float(e["dense_latency_ms"]) for e in plan["layers"].values())
        extra["latency_grid"] = {name: e.pop("latency_grid") for name, e in plan["layers"].items()}
        rank_multiple = int(lat["rank_multiple"])  # the probed multiple (combined with the config's)
    else:
        fixed, dense_total = totals(metric)
    if cfg.additional_budgets:  # each budget.additional's target and totals (analytic metrics)
        extra["additional"] = [{"metric": m, "target_ratio": r, **dict(zip(("fixed_cost", "dense_total"), totals(m)))}
                               for m, r in cfg.additional_budgets]
    return {
        "metric": metric, "geometry": geometry, "fixed_cost": fixed, "dense_total": dense_total,
        "initial_ranks": {name: list(e["ranks"]) for name, e in plan["layers"].items()},
        "min_rank": cfg.min_rank, "rank_multiple": rank_multiple, "truncated": False, **extra,
    }


def factor_nodes(model) -> dict[int, str]:
    """``id(module) -> the name of its first node`` in NNCF's original graph (functional ops have no module)."""
    node_of: dict[int, str] = {}
    for node in model.nncf.get_original_graph().get_all_nodes():
        try:
            module = model.nncf.get_containing_module(node.node_name)
        except Exception:  # noqa: BLE001 - functional ops have no containing module
            continue
        node_of.setdefault(id(module), node.node_name)
    return node_of


def gate_layout(model, layers, plan: dict[str, Any], cfg: TDConfig) -> PTTransformationLayout:
    """Insertion commands of one :class:`RankGate` per gated factor (none once the plan says truncated). The plan
    holds its ``rank_learning`` budget info already (:func:`initial_plan`, or the saved plan on resume)."""
    layout = PTTransformationLayout()
    for name, entry in plan["layers"].items():
        if entry["method"] not in GATED_FACTORS:
            raise TDConfigError(
                f"{ALGO_NAME}.rank_learning: layer '{name}' is decomposed with {entry['method']!r}; rank learning "
                f"gates 'tucker2' and 'svd' factors only (set its method in 'layers' or exclude it)"
            )
    if plan["rank_learning"]["truncated"]:
        return layout
    node_of = factor_nodes(model)
    for name, entry in plan["layers"].items():
        container = model.get_submodule(name)
        for producer, _, index in GATED_FACTORS[entry["method"]]:
            factor = getattr(container, producer)
            gate = RankGate(entry["ranks"][index]).to(factor.weight.device)
            point = PTTargetPoint(TargetType.OPERATION_WITH_WEIGHTS, target_node_name=node_of[id(factor)])
            layout.register(PTInsertionCommand(point, gate, TransformationPriority.SPARSIFICATION_PRIORITY))
    return layout


def initial_plan(make_plan, layers, cfg: TDConfig, retries: int = 3) -> dict[str, Any]:
    """The plan of the initial decomposition, at ``initial_ratio``. A selection at a mild ratio may decompose too few
    layers for the ranks to reach the target (it decomposes the layers where low rank is cheapest first); with the
    default ``initial_ratio`` the ratio is then raised towards the target, geometrically, up to ``retries`` times
    (logged). If the default selection ('search', neither set nor configured) still falls short, the initial
    decomposition falls back to 'uniform' ranks at the first ``initial_ratio`` (logged): uniform ranks decompose
    every layer that gets cheaper, which is what a latency budget at a mild ratio needs. An ``initial_ratio`` given in
    the config is never raised (the 'uniform' fallback still applies to it), a ``rank_selection`` given in the config
    is kept, and a target still unreachable raises."""
    rl = cfg.rank_learning
    r0, target = rl["initial_ratio"], rl["target_ratio"]
    plan = _raise_until_reachable(make_plan, layers, cfg, retries)
    best = reachable_ratio(plan)
    chosen = any(key in cfg.raw for key in ("rank_selection", "search")) or cfg.method == "auto"  # search needed
    if (best < target or unreachable_additional(plan)) and cfg.rank_selection == "search" and not chosen:
        nncf_logger.info(
            f"{ALGO_NAME}.rank_learning: the search's initial plan (at {rl['initial_ratio']:.3f}) decomposed "
            f"{len(plan['layers'])} layer(s), whose ranks reach at most {best:.3f}x < {target}; decomposing again "
            f"with rank_selection 'uniform' at {r0:.3f}"
        )
        cfg.rank_selection, rl["initial_ratio"] = "uniform", r0
        plan = _raise_until_reachable(make_plan, layers, cfg, retries)
    _check_reachable(plan, cfg)
    return plan


def _raise_until_reachable(make_plan, layers, cfg: TDConfig, retries: int) -> dict[str, Any]:
    """Raises ``initial_ratio`` while that can help: while the selection keeps candidate layers dense (a higher
    ratio may decompose them) and the raised ratio is reachable at all (else the last reachable plan is kept, and
    :func:`_check_reachable` says why the target is out of reach, in terms of the user's target)."""
    rl = cfg.rank_learning
    r0, target = rl["initial_ratio"], rl["target_ratio"]
    plan = None
    for attempt in range(retries + 1):
        try:
            raised = make_plan()
        except TDConfigError:
            if plan is None:
                raise
            rl["initial_ratio"] = plan["rank_learning"]["initial_ratio"]  # back to the last reachable plan's
            nncf_logger.info(f"{ALGO_NAME}.rank_learning: that ratio is unreachable; keeping the plan at "
                             f"initial_ratio {rl['initial_ratio']:.3f}")
            break
        plan = raised
        plan["rank_learning"] = budget_info(layers, plan, cfg)
        plan["rank_learning"]["initial_ratio"] = rl["initial_ratio"]
        best = reachable_ratio(plan)
        if (best >= target and not unreachable_additional(plan)) or rl.get("initial_ratio_given") \
                or attempt == retries or not _kept_dense(plan):
            break
        rl["initial_ratio"] = r0 * (target / r0) ** ((attempt + 1) / (retries + 1))
        nncf_logger.info(
            f"{ALGO_NAME}.rank_learning: at initial_ratio {plan['rank_learning']['initial_ratio']:.3f} the "
            f"{cfg.rank_selection} selection decomposed {len(plan['layers'])} layer(s), whose ranks reach at most "
            f"{best:.3f}x < {target}; decomposing again at {rl['initial_ratio']:.3f}"
        )
    return plan


def reachable_ratio(plan: dict[str, Any], additional: Optional[dict] = None) -> float:
    """The largest ratio the gated ranks of the plan's layers reach, every gated rank at the smallest rank the
    Z-step allocation can shrink it to (``min_rank``, on the ``rank_multiple`` grid); in the budget's metric, or in
    that of ``additional`` (an entry of ``plan["rank_learning"]["additional"]``)."""
    info = plan["rank_learning"]
    totals = additional or info
    cost = totals["fixed_cost"]
    for name, entry in plan["layers"].items():
        ranks = list(entry["ranks"])
        for _, _, index in GATED_FACTORS.get(entry["method"], ()):
            ranks[index] = smallest_rank(ranks[index], info["min_rank"], info["rank_multiple"])
        cost += plan_cost(info, name, entry["method"], ranks, metric=additional and additional["metric"])
    return totals["dense_total"] / cost if cost > 0 else float("inf")


def unreachable_additional(plan: dict[str, Any]) -> list[str]:
    """The budget.additional targets the gated ranks of the plan cannot reach, as 'metric R (at most r)'."""
    out = []
    for extra in plan["rank_learning"].get("additional", []):
        best = reachable_ratio(plan, extra)
        if best < extra["target_ratio"]:
            out.append(f"{extra['metric']} {extra['target_ratio']:g} (at most {best:.3f}x)")
    return out


def _kept_dense(plan: dict[str, Any]) -> list[str]:
    """The candidate layers the selection kept dense (the others in ``skipped`` were never candidates)."""
    return [n for n, why in plan["skipped"].items() if why.startswith(f"{plan['rank_selection']}: ")]


def _check_reachable(plan: dict[str, Any], cfg: TDConfig) -> None:
    """The target must be reachable by shrinking the gated ranks of the layers decomposed at initial_ratio."""
    target, best = cfg.rank_learning["target_ratio"], reachable_ratio(plan)
    missed = unreachable_additional(plan)
    if missed:
        raise TDConfigError(
            f"{ALGO_NAME}.rank_learning.initial_ratio: at {cfg.rank_learning['initial_ratio']:.3f} the selection "
            f"decomposed {len(plan['layers'])} layer(s), whose ranks cannot reach budget.additional "
            f"{', '.join(missed)}; raise initial_ratio, or lower the additional target"
        )
    if best < target:
        info = plan["rank_learning"]
        kept_dense = _kept_dense(plan)
        if kept_dense:  # candidates the selection kept dense at this ratio: a higher one may decompose them
            hint = (f"raise initial_ratio ({len(kept_dense)} candidate layer(s) the selection kept dense, e.g. "
                    f"'{kept_dense[0]}', may get decomposed), "
                    + ("" if cfg.rank_selection == "uniform" else
                       "use rank_selection 'uniform' (it decomposes every layer that gets cheaper), "))
        else:  # raising initial_ratio cannot decompose more layers: the limit is the ranks' floor and the scope
            hint = (f"every candidate layer is decomposed already, so a higher initial_ratio cannot help; lower "
                    f"constraints.min_rank ({info['min_rank']}) or the rank multiple ({info['rank_multiple']}), "
                    f"let more layers in ({len(plan['skipped'])} are outside the search: target_scopes, "
                    f"ignored_scopes, skip_first_layer/skip_last_layer; the statistics list them with the reason), ")
        raise TDConfigError(
            f"{ALGO_NAME}.rank_learning.initial_ratio: at {cfg.rank_learning['initial_ratio']:.3f} the selection "
            f"decomposed {len(plan['layers'])} layer(s), whose ranks can reach at most {best:.3f}x, below "
            f"budget.target_ratio {target}; " + hint + "or lower the target"
        )
