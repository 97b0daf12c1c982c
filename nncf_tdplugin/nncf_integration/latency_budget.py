"""``budget.metric: "latency"``: wire the measured cost model (:mod:`nncf_tdplugin.latency_model`) into a
selection problem, and the measure-select loop that makes the final decisions rest on measurements.

1. Settings come from the config's ``latency`` block; INT8 is measured when ``quantization`` follows this algorithm
   in the config (``int8: "auto"``).
2. The rank multiple is probed on this CPU (``rank_multiple: "auto"``) and combined with the user's constraint.
3. Every candidate's dense layer and its factorizations on a grid of ranks are measured (or read from the cache);
   each candidate gets ``extra_costs["latency"]``, so every selector (search, uniform, energy, VBMF) works with it.
4. With ``budget.scope: "model"`` the other Conv2d/Linear calls (first/last layers, depthwise convs, excluded
   layers) are measured dense and form the fixed cost (``calibration: "layers"``, the default). With
   ``calibration: "whole_model"`` the whole dense model is converted to OpenVINO and timed instead (INT8 mode:
   after NNCF's post-training quantization on random inputs, for INT8 kernels), and the fixed cost is its latency
   minus the candidates' per-layer dense costs: per-layer measurements then only supply the savings. If the
   candidates' dense costs add up to more than the whole model (measured under load), the fixed cost would be
   negative: the layer calibration is used instead, with a warning and ``calibration_fallback`` in the plan.
5. :func:`select_with_measurements`: select, measure the chosen factorizations exactly, select again (the measured
   values now replace the interpolation), until nothing new is measured. If the measured plan is still over the
   budget, select once more among measured options only (grid points and earlier choices), which meets it whenever
   the measured options can. Finally any factorization measured no faster than its dense layer is reverted to
   dense (that never adds latency).
6. :func:`check_whole_model` (``whole_model_check: N``, opt-in): the chosen ranks are put into the model as factor
   layers, exported and timed end to end beside the dense model, and selected again at a corrected per-layer
   target until the measured speedup is within ``WHOLE_MODEL_TOLERANCE`` above the target (at most N times);
   the plans of all rounds are then timed again in one run, and the least compressed that meets the target is kept.
"""

import dataclasses
import math
from typing import Optional

from nncf.common.logging import nncf_logger

from nncf_tdplugin.config import ALGO_NAME, TDConfig
from nncf_tdplugin.decomposition.ranks import max_ranks
from nncf_tdplugin.latency_model import LatencyCostModel, LatencySettings, LayerSpec
from nncf_tdplugin.nncf_integration.graph_layers import replace_module
from nncf_tdplugin.rank_selection import Budget, RankChoice, RankConstraints, RankSelector, SelectionProblem
from nncf_tdplugin.rank_selection.options import rank_grid


def quantization_follows(nncf_config) -> bool:
    section = nncf_config.get("compression", [])
    algos = [s.get("algorithm") for s in (section if isinstance(section, list) else [section])]
    return ALGO_NAME in algos and "quantization" in algos[algos.index(ALGO_NAME) + 1:]


def settings_from(cfg: TDConfig, nncf_config, int8: Optional[bool] = None) -> LatencySettings:
    """The cost model's settings from the ``latency`` block; ``int8`` (if given) replaces the block's, whose
    ``"auto"`` means: quantization follows this algorithm in ``nncf_config``."""
    lat = cfg.latency
    if int8 is None:
        int8 = quantization_follows(nncf_config) if lat.get("int8", "auto") == "auto" else bool(lat["int8"])
    return LatencySettings(
        precision=lat["precision"], threads=lat.get("threads"), int8=bool(int8),
        rank_multiple=None if lat["rank_multiple"] == "auto" else int(lat["rank_multiple"]),
        grid_points=lat["grid_points"], cache_dir=lat.get("cache_dir"), warmup=lat["warmup"],
        iterations=lat["iterations"], repeats=lat["repeats"], verify_rounds=lat["verify_rounds"],
        calibration=lat["calibration"], whole_model_check=lat.get("whole_model_check", 0),
    )


def attach_latency_costs(cfg: TDConfig, nncf_config, layers, candidates, constraints: RankConstraints,
                         candidate_layers: dict, net=None, input_shape=None, grid_fixed: bool = False
                         ) -> tuple[LatencyCostModel, RankConstraints, float]:
    """Measure what the selection needs; returns (cost model, constraints with the rank multiple, fixed cost).

    ``layers``: every GraphLayer of the model; ``candidate_layers``: name -> GraphLayer of each candidate.
    ``grid_fixed``: also measure a rank grid for the method of layers whose ranks the config fixes (rank learning
    shrinks those ranks too)."""
    settings = settings_from(cfg, nncf_config)
    model = LatencyCostModel(settings)
    multiple = settings.rank_multiple if settings.rank_multiple else model.probe_rank_multiple()
    constraints = RankConstraints(constraints.min_rank, constraints.max_rank_fraction,
                                  math.lcm(int(constraints.rank_multiple), int(multiple)))
    for c in candidates:
        layer = candidate_layers[c.name]
        spec = LayerSpec.of(layer.module, layer.in_shape, layer.out_shape, int8=settings.int8,
                            unsigned_input=layer.input_nonnegative)
        methods = {}
        if c.fixed is None:
            grid_methods = c.methods
        else:
            grid_methods = (c.fixed.method,) if grid_fixed and not c.fixed.is_dense else ()
        for method in grid_methods:
            limits = max_ranks(tuple(c.weight.shape), method)
            methods[method] = [rank_grid(full, constraints) for full in limits]
        model.add_layer(c.name, spec, methods)
    cand_names = {c.name for c in candidates}
    others = []
    if cfg.budget_scope == "model":
        for layer in layers:
            if layer.module_name not in cand_names:
                name = f"{layer.module_name}@{layer.node_name}"
                model.add_layer(name, LayerSpec.of(layer.module, layer.in_shape, layer.out_shape, settings.int8,
                                                   unsigned_input=layer.input_nonnegative))
                others.append(name)
    model.prepare()
    fixed = [c for c in candidates if c.fixed is not None and not c.fixed.is_dense]
    if fixed:  # user overrides are measured exactly
        model.measure_choices({c.name: (c.fixed.method, c.fixed.ranks) for c in fixed})
    for c in candidates:
        c.extra_costs["latency"] = (lambda choice, name=c.name: model.cost(name, choice.method, choice.ranks))
    fixed_cost = sum(model.dense(n) for n in others)
    model.whole_model_ms, model.calibration_fallback, model.whole_model_check = None, None, None
    if (settings.calibration == "whole_model" and cfg.budget_scope == "model" and net is not None
            and input_shape is not None):
        model.whole_model_ms = whole_model_latency(net, input_shape, model, layers)
        # the model's latency minus what the candidates cost as measured layer by layer: everything else
        # (other layers, pooling, adds, the call), and the per-layer model's bias on the candidates' absolute
        # times; savings (dense - factorized) stay per layer
        candidates_ms = sum(model.dense(c.name) for c in candidates)
        if model.whole_model_ms > candidates_ms:
            fixed_cost = model.whole_model_ms - candidates_ms
        else:
            # the candidates alone, one by one, took longer than the whole model (a CPU loaded while the layers
            # were measured, seen here): the fixed cost would be negative and a plan's total could fall to zero or
            # below, a meaningless ratio reported as met; calibrate on the layers instead and say so
            model.calibration_fallback = (
                f"whole-model calibration not used: the dense model ran in {model.whole_model_ms:.4f} ms end to "
                f"end but its {len(candidates)} candidate layers alone measured {candidates_ms:.4f} ms one by one "
                f"(was the CPU busy while measuring?); the budget uses the per-layer measurements "
                f"(calibration: \"layers\")")
            nncf_logger.warning(f"{ALGO_NAME}: {model.calibration_fallback}")
    model.rank_multiple = constraints.rank_multiple
    model.fixed_layers = others
    return model, constraints, fixed_cost


def _export_for_timing(net, input_shape, model: LatencyCostModel, xml: str) -> str:
    """Save ``net`` as an OpenVINO IR for the static ``input_shape`` (INT8 mode: quantized by NNCF's post-training
    quantization on two random inputs, only to get INT8 kernels); returns ``xml``."""
    import numpy as np
    import openvino as ov
    import torch

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            ov_model = ov.convert_model(net, example_input=torch.randn(*input_shape), input=[tuple(input_shape)])
    finally:
        net.train(was_training)
    if model.settings.int8:
        import nncf

        rng = np.random.default_rng(0)
        data = nncf.Dataset([rng.standard_normal(input_shape).astype(np.float32) for _ in range(2)])
        ov_model = nncf.quantize(ov_model, data, subset_size=2, fast_bias_correction=True)
    ov.save_model(ov_model, xml, compress_to_fp16=False)
    return xml


def _time_irs(xmls, input_shape, model: LatencyCostModel, iterations: int = 30, repeats: int = 3) -> list:
    """A ``LatencyResult`` per IR at the cost model's precision and threads, repeats interleaved, each in its own
    worker process."""
    from nncf_tdplugin.export.latency import measure_many

    ctx = model.context
    return measure_many([(x, list(input_shape)) for x in xmls], precision=ctx.precision, threads=ctx.threads,
                        warmup=10, iterations=iterations, repeats=repeats)


def whole_model_key(net, input_shape, layers, int8: bool) -> str:
    """Cache key of a whole model's latency: the input shape, every weighted layer's spec, and the traced graph's
    ops with their connections and output shapes (two models with the same layers but other activations, adds or
    pooling between them run at different speeds)."""
    import hashlib

    signature = "|".join(LayerSpec.of(g.module, g.in_shape, g.out_shape, int8, g.input_nonnegative).key
                         for g in layers)
    if hasattr(net, "nncf"):
        graph = net.nncf.get_original_graph()
        order = graph.topological_sort()
        index = {node.node_id: i for i, node in enumerate(order)}
        ops = []
        for node in order:
            inputs = ",".join(str(index[e.from_node.node_id]) for e in graph.get_input_edges(node))
            outputs = ";".join(str(tuple(e.tensor_shape)) for e in graph.get_output_edges(node)[:1])
            ops.append(f"{node.node_type}({inputs}){outputs}")
        signature += "||" + "|".join(ops)
    return f"model:{hashlib.sha1(f'{input_shape}|{signature}'.encode()).hexdigest()[:16]}|{'i8' if int8 else 'fp'}"


def whole_model_latency(net, input_shape, model: LatencyCostModel, layers) -> float:
    """Latency (ms) of the whole dense model at the cost model's settings, converted to OpenVINO and timed in worker
    processes, cached under :func:`whole_model_key`."""
    import tempfile

    key = whole_model_key(net, input_shape, layers, bool(model.settings.int8))
    cached = model.cache.get(key)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory() as tmp:
        result, = _time_irs([_export_for_timing(net, input_shape, model, f"{tmp}/dense.xml")], input_shape, model)
    model.cache.put(key, result.median_ms, result.spread_ms)
    model.cache.save()
    return result.median_ms


def _export_plan(net, input_shape, model: LatencyCostModel, choices: dict[str, RankChoice], xml: str) -> str:
    """:func:`_export_for_timing` of ``net`` with every non-dense choice in place as factor layers of its ranks
    (random weights: latency does not depend on them). The factor layers are swapped into ``net`` for the export
    and the dense ones put back, whatever happens."""
    from nncf_tdplugin.layers.factorized import build_factorized

    swapped = []  # (dense, factorized), replaced under every name the dense layer has (aliases included)
    try:
        for name, choice in choices.items():
            if not choice.is_dense:
                dense = net.get_submodule(name)
                swapped.append((dense, build_factorized(dense, choice.method, choice.ranks)))
                replace_module(net, *swapped[-1])
        return _export_for_timing(net, input_shape, model, xml)
    finally:
        for dense, factorized in swapped:
            replace_module(net, factorized, dense)


def plan_speedup(net, input_shape, model: LatencyCostModel, choices: dict[str, RankChoice], dense_xml: str,
                 plan_xml: str) -> tuple[float, float]:
    """(dense ms, plan ms): the dense IR ``dense_xml`` and the model with ``choices`` in place, exported to
    ``plan_xml``, timed end to end together (interleaved repeats, so that both see the same machine)."""
    dense_ms, (plan_ms,) = time_against_dense(input_shape, model, dense_xml,
                                              [_export_plan(net, input_shape, model, choices, plan_xml)])
    return dense_ms, plan_ms


def time_against_dense(input_shape, model: LatencyCostModel, dense_xml: str, plan_xmls: list[str]
                       ) -> tuple[float, list[float]]:
    """(dense ms, ms of each of ``plan_xmls``): the plans and the dense IR timed in one interleaved run (5 x 200
    inferences each), so that they are compared under the same machine load. The check times all its plans again
    this way at the end: each round alone is as noisy as the machine, and keeping the plan whose own round happened
    to run fast would favour the noise."""
    dense, *plans = _time_irs([dense_xml, *plan_xmls], input_shape, model, iterations=200, repeats=5)
    return dense.median_ms, [r.median_ms for r in plans]


# a plan measured within this fraction above the target is close enough: the check stops there
WHOLE_MODEL_TOLERANCE = 0.05


def _next_target(target: float, timed: list) -> float:
    """The per-layer target to select at next, from the (selected at, measured end to end) pairs so far: between the
    closest pairs that bracket the target, linear interpolation (the end-to-end ratio is far from proportional to
    the per-layer one: the part of the latency outside the candidates does not shrink); without a bracket, the last
    target corrected by the last error, ``asked * target / measured``."""
    below = [p for p in timed if p[1] < target]
    above = [p for p in timed if p[1] >= target]
    if below and above:
        (a_lo, m_lo), (a_hi, m_hi) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
        if m_hi > m_lo:
            return max(a_lo + (target - m_lo) * (a_hi - a_lo) / (m_hi - m_lo), 1.0 + 1e-6)
    asked, measured = timed[-1]
    return max(asked * target / measured, 1.0 + 1e-6)


def check_whole_model(net, input_shape, model: LatencyCostModel, selector: RankSelector,
                      problem: SelectionProblem, choices: dict[str, RankChoice]
                      ) -> tuple[dict[str, RankChoice], dict]:
    """``latency.whole_model_check``: time the chosen plan end to end against the dense model and select again
    (with measurements) at a corrected target (:func:`_next_target`: raised after a miss, lowered after an overshoot
    of more than ``WHOLE_MODEL_TOLERANCE``, which removes less of the model), at most ``whole_model_check`` times.
    When more than one plan was timed, all of them are timed again together with the dense model
    (:func:`time_against_dense`) and the choice is made on that one run. Returns the choices (of the plans measured
    to meet the target, the one measured slowest, i.e. the least compressed; if none met it, the fastest) and a
    record for the plan."""
    import tempfile

    target = problem.budget.target_ratio
    rounds, plans, xmls = [], [], []
    current, asked = choices, target
    with tempfile.TemporaryDirectory() as tmp:  # the dense IR, exported once for every round
        dense_xml = _export_for_timing(net, input_shape, model, f"{tmp}/dense.xml")
        for i in range(model.settings.whole_model_check + 1):
            xmls.append(f"{tmp}/plan{i}.xml")
            dense_ms, ms = plan_speedup(net, input_shape, model, current, dense_xml, xmls[-1])
            measured = dense_ms / ms
            rounds.append({"selected_at": asked, "predicted_ratio": problem.ratio(current), "dense_ms": dense_ms,
                           "measured_ms": ms, "measured_ratio": measured})
            plans.append((current, measured))
            nncf_logger.info(f"{ALGO_NAME}: whole-model check, round {i + 1}: selected at {asked:.3f}x, measured "
                             f"{measured:.3f}x end to end ({dense_ms:.3f} -> {ms:.3f} ms), target {target:g}x")
            close = target <= measured <= target * (1 + WHOLE_MODEL_TOLERANCE)
            if close or i == model.settings.whole_model_check:
                break
            asked = _next_target(target, [(r["selected_at"], r["measured_ratio"]) for r in rounds])
            try:
                current = select_with_measurements(
                    selector, dataclasses.replace(problem, budget=Budget(problem.budget.metric, asked)), model)
            except ValueError as e:  # the raised target is out of the per-layer model's reach
                rounds[-1]["stopped"] = f"selection at {asked:.3f}x failed: {e}"
                break
        confirmation = None
        if len(plans) > 1:
            dense_ms, plans_ms = time_against_dense(input_shape, model, dense_xml, xmls)
            confirmation = {"dense_ms": dense_ms, "measured_ms": plans_ms,
                            "measured_ratio": [dense_ms / ms for ms in plans_ms]}
            plans = [(c, r) for (c, _), r in zip(plans, confirmation["measured_ratio"])]
            nncf_logger.info(f"{ALGO_NAME}: whole-model check, the {len(plans)} plans timed again together: "
                             + ", ".join(f"{r:.3f}x" for r in confirmation["measured_ratio"]))
    met = [i for i, p in enumerate(plans) if p[1] >= target]
    kept = min(met, key=lambda i: plans[i][1]) if met else max(range(len(plans)), key=lambda i: plans[i][1])
    chosen, measured = plans[kept]
    if not met:
        nncf_logger.warning(
            f"{ALGO_NAME}: whole-model check: the chosen ranks run {measured:.3f}x faster than the dense model end "
            f"to end, target {target:g}x, after {len(rounds)} timing(s); keeping the fastest measured selection "
            f"(raise latency.whole_model_check or lower the target)")
    return chosen, {"rounds": rounds, "confirmation": confirmation, "kept_round": kept, "measured_ratio": measured,
                    "met": bool(met), "tolerance": WHOLE_MODEL_TOLERANCE}


def select_with_measurements(selector: RankSelector, problem: SelectionProblem, model: LatencyCostModel
                             ) -> dict[str, RankChoice]:
    """Select; measure what was chosen; select again until nothing new is measured (at most ``verify_rounds``
    extra rounds); revert factorizations measured no faster than dense."""
    def measure(chosen) -> int:
        return model.measure_choices({n: (c.method, c.ranks) for n, c in chosen.items() if not c.is_dense})

    choices = selector.select(problem)
    for _ in range(model.settings.verify_rounds):
        if measure(choices) == 0:
            break
        choices = selector.select(problem)
    measure(choices)
    if problem.total_cost(choices) > problem.target_cost:
        # the interpolation was optimistic: select again among measured options only (the grids, and every
        # choice measured so far), which meets the budget on measurements whenever that is possible
        model.measured_only = True
        try:
            exact = selector.select(problem)
            if problem.total_cost(exact) <= problem.target_cost:
                choices = exact
        except ValueError:
            pass
        finally:
            model.measured_only = False
    out = dict(choices)
    for cand in problem.candidates:
        choice = choices.get(cand.name)
        if choice is not None and not choice.is_dense and cand.fixed is None:
            ms, dense_ms = model.cost(cand.name, choice.method, choice.ranks), model.dense(cand.name)
            if ms >= dense_ms:
                out[cand.name] = RankChoice("dense", reason=f"{choice.method} {list(choice.ranks)} measured "
                                                            f"{ms:.4f} ms, not faster than dense {dense_ms:.4f} ms")
                if problem.missed(out):  # dense would break a budget.additional (params/flops): keep the factors
                    out[cand.name] = choice
    return out


def latency_summary(model: LatencyCostModel, problem: SelectionProblem, choices: dict[str, RankChoice]
                    ) -> dict:
    """What the plan records about the latency budget (all values measured)."""
    dense_total = problem.total_dense_cost
    total = problem.total_cost(choices)
    achieved = dense_total / total
    met = total <= problem.target_cost * (1 + 1e-9)
    check = getattr(model, "whole_model_check", None)
    if check is not None:  # the budget is judged end to end (check_whole_model warned if it missed)
        met = check["met"]
    elif not met:
        nncf_logger.warning(
            f"{ALGO_NAME}: latency budget NOT met after measuring the chosen ranks: {achieved:.3f}x, target "
            f"{problem.budget.target_ratio:g}x (raise latency.verify_rounds or lower the target)")
    ctx = model.context
    return {
        "precision": ctx.precision, "runtime_precision": model.runtime.get("runtime_precision"),
        "threads": ctx.threads, "runtime_threads": model.runtime.get("threads"), "int8": model.settings.int8,
        "rank_multiple": model.rank_multiple, "rank_multiple_scores": model.rank_multiple_scores, "cpu": ctx.cpu, "openvino": ctx.openvino,
        "cache_file": str(model.cache.path), "measured_now": model.measured_now,
        "whole_model_ms": getattr(model, "whole_model_ms", None),
        "calibration_fallback": getattr(model, "calibration_fallback", None),
        "whole_model_check": getattr(model, "whole_model_check", None),
        "fixed_ms": problem.fixed_cost, "dense_ms": dense_total, "ms": total, "achieved_ratio": achieved,
        "budget_met": bool(met),  # with whole_model_check: measured end to end (achieved_ratio stays per layer)
    }


def layer_latency(model: Optional[LatencyCostModel], name: str, choice: RankChoice, with_grid: bool = False
                  ) -> dict:
    """The plan entry's latency fields; ``with_grid``: also the measured rank grid of the chosen method
    (``latency_grid``: axes and values, for :func:`nncf_tdplugin.latency_model.interpolate`)."""
    if model is None:
        return {}
    out = {"latency_ms": model.cost(name, choice.method, choice.ranks), "dense_latency_ms": model.dense(name)}
    if with_grid and not choice.is_dense:
        axes = model.grids[(name, choice.method)]
        out["latency_grid"] = {"axes": [list(a) for a in axes], "values": model.grid_values(name, choice.method),
                               "spec": model.layers[name].to_json()}  # the dense layer (to measure the final ranks)
    return out
