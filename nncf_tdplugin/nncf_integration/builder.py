"""The ``tensor_decomposition`` builder: picks layers, chooses ranks, replaces dense layers by factor layers.

Flow inside ``create_compressed_model`` (see docs/design.md):
1. ``__init__``: parse and validate the config block; reject an algorithm placed before it that would compute its
   insertion points on the undecomposed graph (quantization, pruning, sparsity).
2. ``get_transformation_layout``: find the Conv2d/Linear calls in the traced graph, decide per layer (skip rules,
   overrides, rank selector under the budget) -> a *plan*; build the factor layers (decomposed from the weights, or
   empty when resuming from a checkpoint, whose state_dict fills them) and swap them into the model; refresh NNCF's
   caches so quantization, which comes next, sees the factor layers as ordinary NNCF conv/linear modules.
3. The plan (per layer: method, ranks, costs, error) is the builder state: saved in the compression state, it
   rebuilds the same structure on resume without decomposing or searching again.
"""

import re
import time
from typing import Any, Optional

import torch
from nncf.common.logging import nncf_logger
from nncf.torch.algo_selector import PT_COMPRESSION_ALGORITHMS
from nncf.torch.compression_method_api import PTCompressionAlgorithmBuilder
from nncf.torch.graph.transformations.layout import PTTransformationLayout
from nncf.torch.nncf_module_replacement import nncf_module_from
from nncf.torch.nncf_network import NNCFNetwork
from torch import nn
from tqdm.auto import tqdm

from nncf_tdplugin.config import ALGO_NAME, TDConfig, TDConfigError
from nncf_tdplugin.decomposition.ranks import max_ranks
from nncf_tdplugin.decomposition.whitening import InputWhitening
from nncf_tdplugin.layers import (
    DecomposedConv2d,
    DecomposedLinear,
    build_factorized,
    check_ranks,
    decompose_layer,
    is_decomposable,
    relative_error,
    weighted_weight,
)
from nncf_tdplugin.nncf_integration._internals import refresh_after_restructuring
from nncf_tdplugin.nncf_integration.activation_stats import collect_input_moments
from nncf_tdplugin.nncf_integration.graph_layers import GraphLayer, find_weighted_layers, replace_module
from nncf_tdplugin.nncf_integration.latency_budget import (
    attach_latency_costs,
    check_whole_model,
    latency_summary,
    layer_latency,
    select_with_measurements,
)
from nncf_tdplugin.rank_selection import (
    RANK_SELECTORS,
    Budget,
    LayerCandidate,
    RankChoice,
    RankConstraints,
    SelectionProblem,
    factorized_macs,
    factorized_params,
)
from nncf_tdplugin.rank_selection.cost import dense_params

# Algorithms that may precede the decomposition in the config: they keep no insertion points on the dense layers.
ALLOWED_BEFORE = {"knowledge_distillation"}


@PT_COMPRESSION_ALGORITHMS.register(ALGO_NAME)
class TensorDecompositionBuilder(PTCompressionAlgorithmBuilder):
    def __init__(self, config, should_init: bool = True):
        super().__init__(config, should_init)
        self.td_config = TDConfig.from_section(self._algo_config)
        _check_position(config)
        self._plan: Optional[dict[str, Any]] = None  # set by load_state on resume, else by the selection
        self._input_whitening: dict[str, InputWhitening] = {}  # decomposition.activation_aware, per layer

    # --- state -----------------------------------------------------------------------------------------------
    def _get_state_without_name(self) -> dict[str, Any]:
        return {"plan": self._plan}

    def _load_state_without_name(self, state_without_name: dict[str, Any]):
        self._plan = state_without_name.get("plan")

    def _are_frozen_layers_allowed(self) -> tuple[bool, str]:
        return True, "Frozen layers are decomposed into frozen factor layers"

    # --- the algorithm ---------------------------------------------------------------------------------------
    def _get_transformation_layout(self, target_model: NNCFNetwork) -> PTTransformationLayout:
        layers = find_weighted_layers(target_model)
        if self._plan is None:
            start = time.perf_counter()
            if self.td_config.rank_learning:  # an initial decomposition the ranks can shrink to the target from
                from nncf_tdplugin.rank_learning.setup import initial_plan

                self._plan = initial_plan(lambda: self._make_plan(target_model, layers), layers, self.td_config)
            else:
                self._plan = self._make_plan(target_model, layers)
            self._plan["selection_seconds"] = time.perf_counter() - start
            nncf_logger.info(
                f"tensor_decomposition: {self.td_config.rank_selection} rank selection took "
                f"{self._plan['selection_seconds']:.2f} s"
            )
            self._apply_plan(target_model, layers, decompose=True)
        else:
            self._apply_plan(target_model, layers, decompose=False)
        try:
            refresh_after_restructuring(target_model)
        except AttributeError as error:
            culprit = _read_outside_forward(target_model, error)
            if culprit is None:
                raise
            raise culprit from error
        if self.td_config.rank_learning:  # learnable rank gates, placed before quantization's weight quantizers
            from nncf_tdplugin.rank_learning.setup import gate_layout

            return gate_layout(target_model, layers, self._plan, self.td_config)
        return PTTransformationLayout()

    def _build_controller(self, model: NNCFNetwork):
        from nncf_tdplugin.nncf_integration.controller import TensorDecompositionController

        if self.td_config.rank_learning:
            from nncf_tdplugin.rank_learning.controller import RankLearningController

            return RankLearningController(model, self.td_config, self._plan)
        return TensorDecompositionController(model, self.td_config, self._plan)

    def initialize(self, model: NNCFNetwork) -> None:
        pass

    # --- planning --------------------------------------------------------------------------------------------
    def _make_plan(self, model: NNCFNetwork, layers: list[GraphLayer]) -> dict[str, Any]:
        cfg = self.td_config
        overrides = _match_overrides(cfg, layers)
        skipped: dict[str, str] = {}
        candidates: list[LayerCandidate] = []
        pending: list[tuple] = []  # (layer, methods, fixed choice) of the layers that may be decomposed
        first, last = (layers[0].module_name, layers[-1].module_name) if layers else (None, None)
        skipped.update(_unsupported_weighted_modules(model, layers))
        seen = set()
        for layer in layers:
            name = layer.module_name
            if name in seen:
                continue
            seen.add(name)
            override = overrides.get(name)
            reason = _skip_reason(self, cfg, layer, override, first, last)
            if reason:
                skipped[name] = reason
                if override is not None and override.ranks is not None and not override.exclude:
                    raise TDConfigError(
                        f"{ALGO_NAME}.layers[{override.key!r}]: layer '{name}' cannot be decomposed: {reason}"
                    )
                continue
            methods = _methods_for(layer.module, override.method if override else None, cfg)
            fixed = None
            if override is not None and override.ranks is not None:
                fixed = _fixed_choice(layer.module, methods[0], override, cfg)
            pending.append((layer, methods, fixed))
        self._collect_input_statistics(model, [layer for layer, _, _ in pending])
        for layer, methods, fixed in pending:
            weight = weighted_weight(layer.module.weight.detach(), self._output_scale(layer),
                                     self._input_whitening.get(layer.module_name))
            candidates.append(LayerCandidate(layer.module_name, weight, layer.geometry, methods, fixed))

        metric = cfg.budget_metric
        cand_names = {c.name for c in candidates}
        model_params = sum(p.numel() for p in model.parameters())
        model_macs = sum(layer.macs for layer in layers)
        constraints = RankConstraints(cfg.min_rank, cfg.max_rank_fraction, cfg.rank_multiple)
        latency_model = None
        if metric == "latency" and candidates:
            by_name = {layer.module_name: layer for layer in layers}
            latency_model, constraints, fixed_cost = attach_latency_costs(
                cfg, self.config, layers, candidates, constraints, by_name, net=model,
                input_shape=_single_input_shape(self.config), grid_fixed=bool(cfg.rank_learning))
        elif metric == "latency":
            fixed_cost = 0.0

        def analytic_fixed_cost(m: str) -> float:  # the cost outside the candidates, in params or MACs
            cand_cost = sum(c.dense_cost(m) for c in candidates)
            return (float(model_params if m == "params" else model_macs) - cand_cost
                    if cfg.budget_scope == "model" else 0.0)

        if metric != "latency":
            fixed_cost = analytic_fixed_cost(metric)
        problem = SelectionProblem(
            candidates=candidates,
            budget=Budget(metric, cfg.selection_ratio),  # initial_ratio when ranks are learned in training
            constraints=constraints,
            fixed_cost=fixed_cost,
            seed=cfg.seed,
            options={"rank_fraction": cfg.rank_fraction, "energy_threshold": cfg.energy_threshold,
                     "search": cfg.search},
            additional=tuple(Budget(m, r) for m, r in cfg.selection_additional),
            additional_fixed_costs={m: analytic_fixed_cost(m) for m, _ in cfg.additional_budgets},
        )
        if not candidates:
            nncf_logger.warning(f"{ALGO_NAME}: no layer can be decomposed ({len(skipped)} skipped); model unchanged")
            choices = {}
        else:
            selector = RANK_SELECTORS[cfg.rank_selection]()
            try:
                if latency_model is not None:
                    choices = select_with_measurements(selector, problem, latency_model)
                    if latency_model.settings.whole_model_check:
                        shape = _single_input_shape(self.config)
                        if shape is None:
                            raise TDConfigError(f"{ALGO_NAME}.latency.whole_model_check: needs one model input "
                                                f"with a sample_size in input_info, to time the model end to end")
                        choices, latency_model.whole_model_check = check_whole_model(
                            model, shape, latency_model, selector, problem, choices)
                else:
                    choices = selector.select(problem)
            except ValueError as e:  # BudgetUnreachableError and friends
                default = "" if "budget" in cfg.raw else (
                    f" This is the default budget (no 'budget' key was given): params {cfg.target_ratio:g}x over the "
                    f"decomposable layers, and layers given fixed ranks in 'layers' count in it; give a 'budget' "
                    f"the fixed ranks can meet, or rank_selection 'fraction' to keep only the given ranks.")
                raise TDConfigError(f"{ALGO_NAME}.budget: {e}{default}") from e
        plan_layers = {}
        for c in candidates:
            choice = choices.get(c.name)
            if choice is None or choice.is_dense:
                reason = choice.reason if choice is not None and choice.reason else "kept dense"
                skipped[c.name] = f"{cfg.rank_selection}: {reason}"
                continue
            g = c.geometry
            plan_layers[c.name] = {
                "method": choice.method,
                "ranks": list(choice.ranks),
                "dense_params": dense_params(g),
                "params": factorized_params(g, choice.method, choice.ranks),
                "dense_macs": int(g.out_pixels * g.out_channels * g.in_channels * g.kh * g.kw),
                "macs": factorized_macs(g, choice.method, choice.ranks),
                "full_ranks": list(max_ranks(c.weight.shape, choice.method)),
                **layer_latency(latency_model, c.name, choice, with_grid=bool(cfg.rank_learning)),
            }
        assert cand_names >= set(plan_layers)
        return {
            "layers": plan_layers, "skipped": skipped, "metric": metric, "rank_selection": cfg.rank_selection,
            # no target without a budget: rank_selection 'fraction', or 'energy' with a fixed energy_threshold
            "target_ratio": None if cfg.rank_selection == "fraction" or cfg.energy_threshold is not None
            else cfg.target_ratio,
            "budget_scope": cfg.budget_scope,
            "achieved_ratio": problem.ratio(choices) if candidates else 1.0,
            # budget.additional: the configured targets (rank learning selects at scaled-down ones first)
            **({"additional": [{"metric": m, "target_ratio": r,
                                "achieved_ratio": problem.ratios(choices)[m] if candidates else 1.0}
                               for m, r in cfg.additional_budgets]} if cfg.additional_budgets else {}),
            "model_params": model_params, "model_macs": model_macs,
            **({"latency": latency_summary(latency_model, problem, choices)} if latency_model is not None else {}),
        }

    # --- restructuring ---------------------------------------------------------------------------------------
    def _apply_plan(self, model: NNCFNetwork, layers: list[GraphLayer], decompose: bool) -> None:
        by_name = {layer.module_name: layer for layer in layers}
        missing = [n for n in self._plan["layers"] if n not in by_name]
        if missing:
            raise TDConfigError(
                f"{ALGO_NAME}: the saved decomposition plan names layers this model does not have: {missing[:5]}. "
                f"The compression_state belongs to a different model."
            )
        cfg = self.td_config
        items = list(self._plan["layers"].items())
        for name, entry in tqdm(items, desc="tensor_decomposition", disable=None if decompose else True):
            dense = by_name[name].module
            if decompose:
                scale = self._output_scale(by_name[name])
                whitening = self._input_whitening.get(name)
                factorized = decompose_layer(
                    dense, entry["method"], entry["ranks"], tucker_iterations=cfg.tucker_iterations,
                    cp_iterations=cfg.cp_iterations, seed=cfg.seed, output_scale=scale, input_whitening=whitening,
                )
                entry["relative_error"] = relative_error(dense.weight, factorized, scale)
                entry["bn_weighted"] = scale is not None
                if whitening is not None:  # the relative RMS error of the outputs on the calibration inputs
                    entry["activation_error"] = relative_error(dense.weight, factorized, scale, whitening)
            else:
                factorized = build_factorized(dense, entry["method"], entry["ranks"])
            for child_name, child in list(factorized.named_children()):
                _copy_requires_grad(dense, child)
                setattr(factorized, child_name, nncf_module_from(child))
            replace_module(model, dense, factorized)  # under every name: an alias must not keep the dense layer


    def _output_scale(self, layer: GraphLayer) -> Optional[torch.Tensor]:
        return layer.output_scale if self.td_config.bn_aware else None

    def _collect_input_statistics(self, model: NNCFNetwork, layers: list[GraphLayer]) -> None:
        """``decomposition.activation_aware``: the input whitening of every layer that may be decomposed, from one
        pass over the calibration data (kept: rank learning may plan several times)."""
        cfg = self.td_config
        todo = {layer.module_name: layer.module for layer in layers if layer.module_name not in self._input_whitening}
        if not cfg.activation_aware or not todo:
            return
        start = time.perf_counter()
        moments = collect_input_moments(model, todo, self.config, cfg.activation_samples)
        for name, moment in moments.items():
            self._input_whitening[name] = InputWhitening.from_moment(moment, cfg.activation_damping)
        nncf_logger.info(f"{ALGO_NAME}: input statistics of {len(todo)} layers in {time.perf_counter() - start:.1f} s")


def _copy_requires_grad(dense: nn.Module, factor: nn.Module) -> None:
    """A frozen dense layer (NNCF's frozen_layers, requires_grad False) gives frozen factors: every factor weight
    follows the dense weight, the bias (on the last factor) the dense bias."""
    for param_name, param in factor.named_parameters(recurse=False):  # a factor has a bias only if the dense one has
        param.requires_grad_((dense.bias if param_name == "bias" else dense.weight).requires_grad)


def _single_input_shape(config) -> Optional[list]:
    """The sample size of the model's only input in ``input_info`` (None for several inputs)."""
    info = config.get("input_info")
    if isinstance(info, list):
        info = info[0] if len(info) == 1 else None
    return list(info["sample_size"]) if isinstance(info, dict) and "sample_size" in info else None


class _Override:
    def __init__(self, key: str, spec):
        self.key, self.method, self.ranks, self.exclude = key, spec.method, spec.ranks, spec.exclude

    @property
    def settings(self) -> tuple:
        return self.method, self.ranks, self.exclude


def _check_position(config) -> None:
    """Reject a config order that silently goes wrong: an algorithm before this one that places its operations on the
    dense layers (quantization, pruning, sparsity), or knowledge distillation after it (NNCF's KD builder copies the
    model as the teacher when its own layout is built, so after this one's swap the teacher would be decomposed)."""
    section = config.get("compression", [])
    algos = [s.get("algorithm") for s in (section if isinstance(section, list) else [section])]
    if ALGO_NAME not in algos:
        return
    at = algos.index(ALGO_NAME)
    bad = [a for a in algos[:at] if a not in ALLOWED_BEFORE]
    late = [a for a in algos[at + 1:] if a in ALLOWED_BEFORE]
    if not bad and not late:
        return
    order = [a for a in algos if a in ALLOWED_BEFORE] + [ALGO_NAME] + \
            [a for a in algos if a != ALGO_NAME and a not in ALLOWED_BEFORE]
    problems = []
    if bad:
        problems.append(f"'{ALGO_NAME}' must come before {bad}, because they place their operations on the layers "
                        f"it replaces")
    if late:
        problems.append(f"{late} must come before '{ALGO_NAME}', because knowledge distillation copies the model "
                        f"as its teacher when its turn in the list comes: placed after '{ALGO_NAME}', the teacher "
                        f"would be the decomposed model instead of the dense one")
    raise TDConfigError(f"compression: {'; and '.join(problems)}. Reorder the 'compression' list as {order}.")


def _match_overrides(cfg: TDConfig, layers: list[GraphLayer]) -> dict[str, _Override]:
    """Map module name -> override; every key must match at least one layer. A key naming the layer exactly wins over
    a '{re}' regex; two keys of the same kind that match one layer must give it the same settings."""
    matches: dict[str, dict[bool, list[_Override]]] = {}  # module name -> {is regex: overrides}
    for key, spec in cfg.layers.items():
        if key.startswith("{re}"):
            pattern = re.compile(key[4:])
            hits = [lyr for lyr in layers if pattern.fullmatch(lyr.module_name) or pattern.search(lyr.node_name)]
        else:
            hits = [lyr for lyr in layers if key in (lyr.module_name, lyr.node_name)]
        if not hits:
            sample = sorted({lyr.module_name for lyr in layers})[:8]
            raise TDConfigError(
                f"{ALGO_NAME}.layers[{key!r}]: matches no Conv2d/Linear layer of the model. Use a module name "
                f"(e.g. {sample}), an NNCF node name, or a '{{re}}' regex."
            )
        for lyr in hits:
            by_kind = matches.setdefault(lyr.module_name, {False: [], True: []})
            by_kind[key.startswith("{re}")].append(_Override(key, spec))
    result: dict[str, _Override] = {}
    for name, by_kind in matches.items():
        found = by_kind[False] or by_kind[True]  # an exact name wins over a regex
        for other in found[1:]:
            if other.settings != found[0].settings:
                kind = "regexes" if found is by_kind[True] else "names"
                raise TDConfigError(
                    f"{ALGO_NAME}.layers: layer '{name}' is matched by the {kind} {found[0].key!r} and {other.key!r}, "
                    f"which give it different settings; make the keys match different layers, or give both the "
                    f"same settings"
                )
        result[name] = found[0]
    return result


_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                nn.MultiheadAttention)


def _unsupported_weighted_modules(model: nn.Module, layers: list[GraphLayer]) -> dict[str, str]:
    """Weighted modules this algorithm leaves alone whatever the config, with the reason, so that the statistics
    account for them (a ViT's attention projections are a third of its weights): other conv kinds, and
    MultiheadAttention, whose projections are read as weights inside one fused call, never called as layers (its
    ``out_proj`` is a Linear that is never called)."""
    found = {layer.module_name for layer in layers}
    attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    reasons = {}
    for name, module in model.named_modules():
        if name.startswith("_nncf") or "kd_original_model" in name:  # NNCF's own modules (a KD teacher...)
            continue
        if name in attention:
            reasons[name] = ("MultiheadAttention: its projections are weights of one fused call, not layers "
                             "(only Conv2d and Linear calls are decomposed)")
        elif any(name.startswith(a + ".") for a in attention):
            continue
        elif isinstance(module, _UNSUPPORTED):
            reasons[name] = f"{type(module).__name__.removeprefix('NNCF')}: only Conv2d and Linear are decomposed"
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and name not in found:
            reasons[name] = ("not a traced call in NNCF's graph: never called, or called on the output of an "
                             "operation NNCF does not trace")
    return reasons


def _read_outside_forward(model: nn.Module, error: AttributeError) -> Optional[TDConfigError]:
    """The re-trace after the decomposition failed on an attribute of a factorized layer (its ``weight``, read by
    code outside the layer's own forward, e.g. ``F.linear(h, self.proj.weight.t())`` for tied projections): a
    config error naming the layer and the line that read it; None for any other AttributeError."""
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for i in range(len(frames) - 1, 0, -1):
        owner = frames[i].f_locals.get("self")
        if frames[i].f_code.co_name == "__getattr__" and isinstance(owner, (DecomposedConv2d, DecomposedLinear)):
            names = [n for n, m in model.named_modules() if m is owner]
            caller = frames[i - 1]
            attr = frames[i].f_locals.get("name", "weight")
            return TDConfigError(
                f"{ALGO_NAME}: layer {names[0] if names else type(owner).__name__!r} was decomposed, but the model "
                f"reads its {attr!r} outside the layer's own forward ({caller.f_code.co_filename}:"
                f"{caller.f_lineno}, in {caller.f_code.co_name}), e.g. tied weights; factor layers have no "
                f"{attr!r}. Keep it dense: \"layers\": {{\"{names[0] if names else '...'}\": {{\"exclude\": true}}}}"
            )
    return None


def _skip_reason(builder, cfg: TDConfig, layer: GraphLayer, override, first, last) -> Optional[str]:
    if override is not None and override.exclude:
        return f"excluded by layers[{override.key!r}]"
    why = is_decomposable(layer.module)
    if why:
        return why
    if layer.calls > 1:
        return f"shared module (called {layer.calls} times)"
    if layer.tied_to:
        return f"tied weights (a parameter is shared with {', '.join(layer.tied_to)})"
    explicit = override is not None and override.ranks is not None
    if not builder._should_consider_scope(layer.node_name):
        return "ignored_scopes/target_scopes"
    if cfg.skip_first_layer and layer.module_name == first and not explicit:
        return "first layer (skip_first_layer)"
    if cfg.skip_last_layer and layer.module_name == last and not explicit:
        return "last layer (skip_last_layer)"
    if isinstance(layer.module, nn.Linear) and len(layer.module.weight.shape) != 2:
        return "unsupported Linear weight"
    return None


def _methods_for(module: nn.Module, override_method: Optional[str], cfg: TDConfig) -> tuple[str, ...]:
    """Methods allowed for a layer, in order of preference."""
    if isinstance(module, nn.Linear) or module.weight.shape[2:] == (1, 1):
        return ("svd",)
    if override_method:
        return (override_method,)
    return tuple(cfg.auto_methods) if cfg.method == "auto" else (cfg.method,)


def _fixed_choice(module: nn.Module, method: str, override: _Override, cfg: TDConfig) -> RankChoice:
    where = f"{ALGO_NAME}.layers[{override.key!r}].ranks"
    ranks = override.ranks
    full = max_ranks(module.weight.shape, method)
    if isinstance(ranks, float):  # a fraction of the full ranks (TDConfig keeps a float in (0, 1])
        constraints = RankConstraints(cfg.min_rank, cfg.max_rank_fraction, cfg.rank_multiple)
        ranks = [constraints.clamp(ranks * f, f) for f in full]
    elif isinstance(ranks, int):  # one int: the rank of SVD/CP, or both Tucker-2 ranks
        ranks = [ranks] * len(full)
    try:
        return RankChoice(method, check_ranks(module, method, ranks, where=where))
    except ValueError as e:
        raise TDConfigError(str(e)) from e
