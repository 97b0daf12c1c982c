"""The ``tensor_decomposition`` block of an NNCF config: its JSON schema (the one definition of every key, its
default and its meaning; the README's reference is generated from it) and its parsing into :class:`TDConfig`.

Errors name the path inside the block and the value at fault, e.g.
``tensor_decomposition.budget.target_ratio: 0.5 is not > 1``.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import jsonschema

ALGO_NAME = "tensor_decomposition"

_POSITIVE_INT = {"type": "integer", "minimum": 1}
# The branches are disjoint (JSON Schema counts 2.0 as an integer, so the fraction branch excludes integers): the
# meaning is then decided by the Python type in TDConfig.from_section, an int being a rank and a float a fraction.
_RANKS = {
    "oneOf": [
        {"type": "integer", "minimum": 1, "description": "an integer: one rank (SVD, CP), or both Tucker-2 ranks"},
        {"type": "array", "items": _POSITIVE_INT, "minItems": 1, "maxItems": 2,
         "description": "[R_out, R_in] for Tucker-2, [R] for SVD/CP"},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "not": {"type": "integer"},
         "description": "a float in (0, 1]: a fraction of the layer's full ranks"},
    ]
}

TD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Low-rank tensor decomposition of Conv2d/Linear layers into plain factor layers.",
    "required": ["algorithm"],
    "additionalProperties": False,
    "properties": {
        "algorithm": {"const": ALGO_NAME, "description": "Selects this algorithm."},
        "method": {
            "enum": ["tucker2", "cp", "svd", "auto"],
            "default": "tucker2",
            "description": "Decomposition of k x k convolutions: 'tucker2' (1x1 -> k x k core -> 1x1), 'cp' "
            "(1x1 -> kx1 depthwise -> 1xk depthwise -> 1x1) or 'svd' (k x k conv to R channels -> 1x1); 'auto' "
            "(rank_selection 'search' only) lets the search pick per layer among 'auto_methods'. "
            "1x1 convolutions and Linear layers always use 'svd'.",
        },
        "auto_methods": {
            "type": "array", "items": {"enum": ["tucker2", "cp", "svd"]}, "minItems": 1, "uniqueItems": True,
            "default": ["tucker2", "svd"],
            "description": "With method 'auto': the methods the search may choose from for k x k convs ('cp' "
            "costs a short CP-ALS per candidate rank, so it is opt-in).",
        },
        "rank_selection": {
            "enum": ["uniform", "fraction", "energy", "vbmf", "search"],
            "default": "search",
            "description": "How ranks are chosen. 'uniform': one rank fraction for every layer, the largest that "
            "meets 'budget'. 'fraction': every layer keeps 'rank_fraction' of its full ranks (no global budget). "
            "'energy': per mode, the smallest rank keeping a fraction of the singular-value energy (the threshold "
            "'energy_threshold', or the one that meets 'budget'). 'vbmf': EVBMF ranks (Nakajima et al. 2013) scaled "
            "to meet 'budget'. 'search': data-free continuous search minimising reconstruction error under "
            "'budget' (ORTOS; see docs/rank_search.md and 'search').",
        },
        "energy_threshold": {
            "type": "number", "exclusiveMinimum": 0, "maximum": 1,
            "description": "With rank_selection 'energy': keep this fraction of each mode's singular-value energy "
            "(no global budget). Without it, the threshold is chosen to meet 'budget'.",
        },
        "search": {
            "type": "object",
            "additionalProperties": False,
            "description": "Settings of rank_selection 'search'.",
            "properties": {
                "steps": {**_POSITIVE_INT, "default": 400, "description": "Adam steps over the rank logits."},
                "lr": {"type": "number", "exclusiveMinimum": 0, "default": 0.1, "description": "Adam learning rate."},
                "temperature_start": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                                      "description": "Softmax temperature at the first step."},
                "temperature_end": {"type": "number", "exclusiveMinimum": 0, "default": 0.01,
                                    "description": "Softmax temperature at the last step (geometric annealing)."},
                "penalty": {"type": "number", "exclusiveMinimum": 0, "default": 100.0,
                            "description": "Weight lambda of the budget penalty max(0, cost/budget - 1)^2."},
                "layer_weighting": {"enum": ["uniform", "cost"], "default": "uniform",
                                    "description": "Weight of each layer's squared relative error: equal, or "
                                    "its share of the dense cost."},
            },
        },
        "budget": {
            "type": "object",
            "additionalProperties": False,
            "description": "Global budget: the cost (of the whole model, or of the decomposable layers, see "
            "'scope') divided by 'target_ratio'. Without this key the default is params 2.0 over the decomposable "
            "layers, which is always reachable unless layers given fixed ranks in 'layers' keep too much.",
            "properties": {
                "metric": {
                    "enum": ["params", "flops", "latency"],
                    "default": "params",
                    "description": "'params': all model parameters; 'flops': multiply-accumulates of all Conv2d "
                    "and Linear layers for one input of 'input_info'; 'latency': OpenVINO CPU latency of the "
                    "Conv2d/Linear layers, measured per layer on this CPU (settings in 'latency'; "
                    "see docs/latency.md).",
                },
                "target_ratio": {
                    "type": "number",
                    "exclusiveMinimum": 1,
                    "default": 2.0,
                    "description": "How many times smaller the model should be (e.g. 3.0).",
                },
                "scope": {
                    "enum": ["model", "decomposable"],
                    "default": "model",
                    "description": "'model': the ratio is for the whole model (layers left dense included); "
                    "'decomposable': for the layers that may be decomposed only.",
                },
                "additional": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["metric", "target_ratio"],
                        "properties": {
                            "metric": {"enum": ["params", "flops"],
                                       "description": "Metric of this budget, other than budget.metric."},
                            "target_ratio": {"type": "number", "exclusiveMinimum": 1,
                                             "description": "How many times smaller the model must be in it."},
                        },
                    },
                    "description": "Further budgets the ranks must meet as well (same 'scope'), e.g. "
                    "[{\"metric\": \"flops\", \"target_ratio\": 3}] with metric 'params' for a model 5x smaller "
                    "and 3x cheaper to run. Rank selection 'search' has one penalty per budget in its loss and its "
                    "repair meets all of them; 'uniform', 'energy' and 'vbmf' take the largest ranks that meet "
                    "all. With 'rank_learning' (budget.metric 'params' or 'flops') each one tightens with the "
                    "primary budget, to ratio R_j^(log r / log R) when the primary one is at r of its target R, "
                    "and every Z-step meets all of them.",
                },
            },
        },
        "latency": {
            "type": "object",
            "additionalProperties": False,
            "description": "Settings of the measured latency cost model (budget.metric 'latency'). Every layer's "
            "dense form and its factorizations on a grid of ranks are timed with OpenVINO on this CPU in separate "
            "processes, cached on disk (keyed by layer shape, method, ranks, INT8, precision, threads, CPU and "
            "OpenVINO version) and interpolated between grid ranks; the chosen ranks are then measured exactly.",
            "properties": {
                "precision": {"enum": ["default", "f32", "bf16"], "default": "default",
                              "description": "Inference precision to measure at: 'default' is the CPU's own choice "
                              "(bf16 on CPUs with AMX or AVX512-BF16), as deployed without a hint."},
                "threads": {**_POSITIVE_INT, "description": "INFERENCE_NUM_THREADS to measure with; default: "
                            "OpenVINO's choice (all cores)."},
                "int8": {"enum": ["auto", True, False], "default": "auto",
                         "description": "Measure INT8 layers (FakeQuantize on activations, INT8 weights). 'auto': "
                         "yes when 'quantization' follows this algorithm in the config."},
                "rank_multiple": {"oneOf": [{"const": "auto", "description": "'auto'"},
                                            {**_POSITIVE_INT, "description": "a positive integer"}],
                                  "default": "auto",
                                  "description": "Ranks are multiples of this. 'auto': probe which channel multiple "
                                  "runs most efficiently on this CPU (measured, cached). Combined with "
                                  "constraints.rank_multiple by their least common multiple."},
                "grid_points": {"type": "integer", "minimum": 2, "default": 5,
                                "description": "Measured ranks per mode and method for each layer (Tucker-2: "
                                "grid_points^2 pairs); ranks in between are interpolated."},
                "cache_dir": {"type": "string", "description": "Cache folder; default "
                              "$NNCF_TDPLUGIN_CACHE/latency or ~/.cache/nncf_tdplugin/latency."},
                "warmup": {"type": "integer", "minimum": 0, "default": 10,
                           "description": "Untimed inferences per layer before timing."},
                "iterations": {**_POSITIVE_INT, "default": 20, "description": "Timed inferences per layer and "
                               "repeat."},
                "repeats": {**_POSITIVE_INT, "default": 3, "description": "Round-robin passes over the layers of "
                            "one measurement batch (the median over all is kept)."},
                "calibration": {"enum": ["layers", "whole_model"], "default": "layers",
                                "description": "How the model's latency is formed (budget.scope 'model'). "
                                "'layers': the sum of the per-layer latencies of every Conv2d/Linear call (on "
                                "this machine's ResNet-50 runs the measured end-to-end speedup met or exceeded "
                                "the target at every precision). 'whole_model': the dense model is also timed end "
                                "to end and the per-layer measurements only supply the savings (accurate at the "
                                "default precision, optimistic at f32 and INT8 here; see docs/latency.md); "
                                "falls back to 'layers', with a warning, if the layers alone measure longer than "
                                "the whole model."},
                "whole_model_check": {"type": "integer", "minimum": 0, "default": 0,
                                      "description": "Data-free selection with budget.scope 'model': after the "
                                      "ranks are chosen, build the model with factor layers of those ranks, time it "
                                      "end to end beside the dense model (INT8 mode: both quantized) and, unless "
                                      "the measured speedup is within 5% above the target, select again at a "
                                      "corrected target (raised after a miss, lowered after an overshoot, "
                                      "interpolated between the two once both were seen), at most this many times "
                                      "(0: off). The selections of all rounds are then timed again together, and the "
                                      "plan keeps the least compressed one measured in that run to meet the target, "
                                      "or the fastest one, with a warning, if none did. The per-layer "
                                      "model leaves out what the whole graph adds per node, which matters on small "
                                      "feature maps and in INT8 (docs/latency.md)."},
                "verify_rounds": {"type": "integer", "minimum": 0, "default": 3,
                                  "description": "Rounds of: select ranks, measure the chosen factorizations "
                                  "exactly, select again with the measurements, until nothing new is measured."},
            },
        },
        "rank_fraction": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "description": "With rank_selection 'fraction': the fraction of each layer's full ranks to keep "
            "(Tucker-2: of both channel counts; SVD: of min(T, S*k*k); CP: of the rank at which CP has as many "
            "parameters as the dense layer).",
        },
        "constraints": {
            "type": "object",
            "additionalProperties": False,
            "description": "Limits on every chosen rank.",
            "properties": {
                "min_rank": {**_POSITIVE_INT, "default": 1, "description": "Smallest rank any factor may have."},
                "max_rank_fraction": {
                    "type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0,
                    "description": "Largest rank as a fraction of the layer's full rank.",
                },
                "rank_multiple": {
                    **_POSITIVE_INT, "default": 1,
                    "description": "Ranks are rounded up to a multiple of this (e.g. 8 or 16 for fast kernels).",
                },
            },
        },
        "layers": {
            "type": "object",
            "description": "Per-layer overrides, keyed by module name (e.g. 'layer1.0.conv1'), NNCF node name, "
            "or a regex prefixed with '{re}' matched against both (the whole module name, or anywhere in the node "
            "name as NNCF's scopes are: '{re}conv2' matches every '.../conv2d_0' node, '{re}layer1\\.0\\.conv2' "
            "one module). A key naming a layer exactly wins over a regex that matches it; two regexes (or two "
            "names) that match one layer must give it the same settings.",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "method": {"enum": ["tucker2", "cp", "svd"], "description": "Method for this layer."},
                    "ranks": {**_RANKS, "description": "Fixed ranks for this layer: an integer rank (1 is rank 1), "
                              "[R_out, R_in] for Tucker-2, or a float in (0, 1], the fraction of the layer's full "
                              "ranks (1.0 keeps them all)."},
                    "exclude": {"type": "boolean", "description": "Keep this layer dense."},
                },
            },
        },
        "skip_first_layer": {
            "type": "boolean", "default": True,
            "description": "Keep the first Conv2d/Linear (the one that reads the model input) dense.",
        },
        "skip_last_layer": {
            "type": "boolean", "default": True,
            "description": "Keep the last Conv2d/Linear (usually the classifier) dense.",
        },
        "decomposition": {
            "type": "object",
            "additionalProperties": False,
            "description": "Numerical settings of the decompositions.",
            "properties": {
                "tucker_iterations": {"type": "integer", "minimum": 0, "default": 10,
                                      "description": "At most this many HOOI sweeps after the HOSVD initialisation "
                                                     "(fewer once the relative error changes by less than 1e-6 "
                                                     "between sweeps); 0 keeps the HOSVD factors."},
                "cp_iterations": {**_POSITIVE_INT, "default": 200, "description": "CP-ALS iterations."},
                "seed": {"type": "integer", "default": 0, "description": "Seed of every random choice."},
                "bn_aware": {
                    "type": "boolean", "default": False,
                    "description": "For a layer whose output feeds only a BatchNorm, weight each output channel's "
                    "error by |gamma| / sigma of that BatchNorm (how much the channel matters after it) in both "
                    "rank selection and decomposition. Data-free; exact at full rank.",
                },
                "activation_aware": {
                    "type": "boolean", "default": False,
                    "description": "Approximate each layer for the error of its outputs on calibration data, not "
                    "of its weights: with M the second moment of the layer's input channels, rank selection and "
                    "decomposition see W M^(1/2), and the first factor is multiplied back by M^(-1/2) "
                    "(docs/rank_search.md). Needs nncf.torch.register_default_init_args(config, loader); exact at "
                    "full rank; combines with bn_aware.",
                },
                "activation_samples": {**_POSITIVE_INT, "default": 512,
                                       "description": "Calibration samples for activation_aware's input moments."},
                "activation_damping": {
                    "type": "number", "exclusiveMinimum": 0, "default": 0.01,
                    "description": "activation_aware: M + damping * mean(diag(M)) * I is used, so channels the "
                    "calibration data leaves silent keep a bounded weight.",
                },
            },
        },
        "ignored_scopes": {
            "type": "array", "items": {"type": "string"},
            "description": "NNCF node names or '{re}' regexes of layers to leave dense (NNCF's usual key).",
        },
        "target_scopes": {
            "type": "array", "items": {"type": "string"},
            "description": "If given, only these NNCF node names / '{re}' regexes are decomposed.",
        },
        "validate_scopes": {
            "type": "boolean", "default": True,
            "description": "Raise if an ignored/target scope matches no layer.",
        },
        "rank_learning": {
            "type": "object",
            "additionalProperties": False,
            "description": "Budget-aware rank learning during training (BATUDE-style, docs/rank_learning.md). The "
            "layers are first decomposed at the milder 'initial_ratio' (by 'rank_selection', in the metric and scope "
            "of 'budget'); a learnable gate on every rank channel between factors, the loss ctrl.loss() (cost-weighted "
            "group lasso + ADMM proximity to the budget projection) and the scheduler (step() per batch, epoch_step() "
            "per epoch) then shrink the ranks to budget.target_ratio; at the end the ranks are frozen and the factor "
            "layers are truncated to them (in strip()/export, or at once by ctrl.truncate()). Methods 'tucker2' and "
            "'svd'; every budget metric ('latency': the per-layer cost model's grid, interpolated per rank, "
            "stored in the plan; the frozen ranks are measured and projected again if they miss the target).",
            "properties": {
                "initial_ratio": {"type": "number", "exclusiveMinimum": 1,
                                  "description": "Budget ratio of the initial decomposition, below "
                                  "budget.target_ratio (generous ranks to learn from). Default: the square root of "
                                  "budget.target_ratio, raised towards the target (logged) if the layers the "
                                  "selection decomposes at it cannot shrink to the target, and if the default "
                                  "'search' still falls short the initial ranks are 'uniform' (logged). A given "
                                  "value is never raised (the 'uniform' fallback still applies unless "
                                  "'rank_selection' is set); an unreachable target is then an error. Measured at "
                                  "params:5 (docs/rank_learning.md): 'search' reaches 5x only from 4.09x, 7 layers; "
                                  "a given 1.5 or 3.0 starts from 'uniform' ranks on every layer."},
                "schedule": {"enum": ["exponential", "multistep"], "default": "exponential",
                             "description": "How the budget goes from 'initial_ratio' to budget.target_ratio: "
                             "'exponential' (geometric in the ratio over 'num_epochs', updated at every Z-step) or "
                             "'multistep' (jumps at 'multistep_epochs')."},
                "num_epochs": {**_POSITIVE_INT, "default": 5,
                               "description": "With schedule 'exponential': epochs until budget.target_ratio is "
                               "reached."},
                "multistep_epochs": {"type": "array", "items": _POSITIVE_INT, "minItems": 1,
                                     "description": "With schedule 'multistep' (required): the epochs at which the "
                                     "budget tightens, increasing; the last one ends the schedule."},
                "multistep_ratios": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 1},
                                     "minItems": 1,
                                     "description": "With schedule 'multistep': the budget ratio from each of "
                                     "'multistep_epochs' on (non-decreasing, the last equal to budget.target_ratio). "
                                     "Default: geometric steps from 'initial_ratio' to the target."},
                "freeze_epoch": {"type": "integer", "minimum": 0,
                                 "description": "Epoch from which the ranks are fixed (final masks, the loss is "
                                 "zero). Default and minimum: the end of the schedule."},
                "regularization": {"type": "number", "minimum": 0, "default": 0.001,
                                   "description": "Weight lambda of the group lasso on the gates, each gate "
                                   "weighted by the marginal cost of its channel in the budget metric."},
                "admm_rho": {"type": "number", "minimum": 0, "default": 0.01,
                             "description": "Weight rho of the ADMM proximity term rho/2 * sum((g - z + u)^2) between "
                             "the gates g and their projection z onto the current budget (u: scaled dual)."},
                "steps_per_epoch": {**_POSITIVE_INT,
                                    "description": "Training steps (scheduler.step() calls) per epoch, as in NNCF's "
                                    "sparsity schedulers: with it the 'exponential' budget tightens at every Z-step "
                                    "from the first epoch on; without it the scheduler counts the steps of the first "
                                    "epoch, during which the budget stays at 'initial_ratio'."},
                "update_every": {**_POSITIVE_INT, "default": 50,
                                 "description": "Training steps (scheduler.step() calls) between Z-steps: "
                                 "re-projection onto the current budget and dual update."},
                "importance": {"enum": ["magnitude", "fisher"], "default": "magnitude",
                               "description": "How a Z-step ranks the rank channels it drops (least important per "
                               "unit of budget saved first): 'magnitude' (data-free: the channel's gated norm "
                               "through the producer and consumer factors, as a share of its layer's) or 'fisher' "
                               "(data-driven: gate^2 times the mean squared gradient of the training loss with "
                               "respect to the gate over about the last 'update_every' steps, the second-order "
                               "estimate of the loss increase when the channel is removed, comparable across "
                               "layers; the first projection, before any backward pass, uses 'magnitude')."},
                "masking": {"enum": ["progressive", "soft"], "default": "progressive",
                            "description": "'progressive': at each Z-step the channels outside the projection are "
                            "masked (they can come back at a later Z-step), so the model always runs at the "
                            "current budget; 'soft': only the loss shrinks them and masks are set at freeze."},
                "truncate_at_freeze": {"type": "boolean", "default": False,
                                       "description": "Slice the factor layers to the learned ranks as soon as the "
                                       "ranks freeze. Parameters change shape, so the optimizer must be re-created "
                                       "after that epoch_step(); by default the frozen masks are kept during "
                                       "training and truncation happens in strip()/export or ctrl.truncate()."},
            },
        },
    },
}


class TDConfigError(ValueError):
    """A bad ``tensor_decomposition`` block; the message names the key path and the value at fault."""


def _path(parts) -> str:
    out = ALGO_NAME
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if str(p).isidentifier() else f"[{p!r}]")
    return out


def _schema_error(section: dict) -> Optional[str]:
    validator = jsonschema.Draft7Validator(TD_SCHEMA)
    errors = list(validator.iter_errors(section))
    if not errors:
        return None
    err = jsonschema.exceptions.best_match(errors)
    if err.validator == "additionalProperties":
        where = err.absolute_path
        known = sorted(_schema_at(list(where)).get("properties", {}))
        unknown = sorted(set(err.instance) - set(known))
        return f"{_path(where)}: unknown key(s) {unknown}; allowed keys are {known}"
    if err.validator in ("oneOf", "anyOf"):
        options = "; or ".join(s["description"] for s in err.validator_value if "description" in s)
        return f"{_path(err.absolute_path)}: {err.instance!r} is not valid; expected {options}"
    return f"{_path(err.absolute_path)}: {err.message}"


def _schema_at(path: list) -> dict:
    node = TD_SCHEMA
    for p in path:
        if isinstance(p, int):  # an array index: the schema of the array's items
            node = node.get("items", {})
            continue
        props = node.get("properties", {})
        node = props[p] if p in props else node.get("additionalProperties", {})
    return node if isinstance(node, dict) else {}


def _check_layer_ranks(section: dict) -> None:
    """``layers.<name>.ranks`` by Python type: an int is a rank, a float a fraction in (0, 1] of the full ranks, a list
    holds integer ranks. JSON Schema cannot tell 2 from 2.0, so a float above 1 is caught here, before the schema."""
    layers = section.get("layers")
    if not isinstance(layers, dict):
        return
    for name, spec in layers.items():
        ranks = spec.get("ranks") if isinstance(spec, dict) else None
        where = _path(["layers", name, "ranks"])
        if isinstance(ranks, float) and ranks > 1:
            example = f" (e.g. {int(ranks)})" if math.isfinite(ranks) else ""
            raise TDConfigError(f"{where}: {ranks!r} is a float above 1; write an integer rank{example} or a "
                                f"fraction in (0, 1] of the layer's full ranks")
        if isinstance(ranks, list) and any(isinstance(r, float) for r in ranks):
            raise TDConfigError(f"{where}: {ranks!r}: the ranks in a list must be integers")


def defaults(schema: dict = TD_SCHEMA) -> dict:
    return {k: v["default"] for k, v in schema.get("properties", {}).items() if "default" in v}


def scaled_additional_ratio(additional_target: float, ratio: float, target: float) -> float:
    """The ratio of an additional budget while the primary budget is at ``ratio`` on its way to ``target``: the same
    place on the log scale from 1 to each target (``additional_target`` at ``target``, 1 at 1)."""
    return additional_target ** (math.log(max(ratio, 1.0)) / math.log(target))


@dataclass
class LayerOverride:
    method: Optional[str] = None
    ranks: Optional[Union[int, float, list]] = None
    exclude: bool = False


@dataclass
class TDConfig:
    """The parsed block, with defaults filled in."""

    method: str = "tucker2"
    rank_selection: str = "search"
    budget_metric: str = "params"
    target_ratio: float = 2.0
    budget_scope: str = "decomposable"
    additional_budgets: tuple = ()  # ((metric, target_ratio), ...): budget.additional
    rank_fraction: Optional[float] = None
    min_rank: int = 1
    max_rank_fraction: float = 1.0
    rank_multiple: int = 1
    layers: dict[str, LayerOverride] = field(default_factory=dict)
    skip_first_layer: bool = True
    skip_last_layer: bool = True
    auto_methods: tuple = ("tucker2", "svd")
    energy_threshold: Optional[float] = None
    search: dict = field(default_factory=dict)
    tucker_iterations: int = 10
    cp_iterations: int = 200
    seed: int = 0
    bn_aware: bool = False
    activation_aware: bool = False
    activation_samples: int = 512
    activation_damping: float = 0.01
    latency: dict = field(default_factory=dict)  # the 'latency' block with defaults (budget.metric 'latency')
    rank_learning: Optional[dict] = None  # the 'rank_learning' block, resolved (None: ranks fixed before training)
    raw: dict = field(default_factory=dict)

    @property
    def selection_ratio(self) -> float:
        """The ratio the rank selector meets when the model is built: 'initial_ratio' when ranks are learned."""
        return self.rank_learning["initial_ratio"] if self.rank_learning else self.target_ratio

    @property
    def selection_additional(self) -> tuple:
        """budget.additional as the rank selector meets it when the model is built: scaled with 'initial_ratio'
        when ranks are learned (:func:`scaled_additional_ratio`)."""
        return tuple((m, scaled_additional_ratio(r, self.selection_ratio, self.target_ratio))
                     for m, r in self.additional_budgets)

    @classmethod
    def from_section(cls, section: dict) -> "TDConfig":
        """Validate the algorithm's config section (the dict with ``"algorithm": "tensor_decomposition"``)."""
        if not isinstance(section, dict):
            raise TDConfigError(f"{ALGO_NAME}: the algorithm block must be a JSON object, got {section!r}")
        _check_layer_ranks(section)
        message = _schema_error(section)
        if message:
            raise TDConfigError(message)
        budget = {**defaults(TD_SCHEMA["properties"]["budget"]), **section.get("budget", {})}
        if "budget" not in section:  # the default budget must be reachable whatever the model
            budget["scope"] = "decomposable"
        constraints = {**defaults(TD_SCHEMA["properties"]["constraints"]), **section.get("constraints", {})}
        numerics = {**defaults(TD_SCHEMA["properties"]["decomposition"]), **section.get("decomposition", {})}
        selection = section.get("rank_selection", "fraction" if "rank_fraction" in section else "search")
        if selection == "fraction" and "rank_fraction" not in section:
            raise TDConfigError(f"{_path(['rank_fraction'])}: required when rank_selection is 'fraction'")
        if selection != "fraction" and "rank_fraction" in section:
            raise TDConfigError(
                f"{_path(['rank_fraction'])}: only used with rank_selection 'fraction', but rank_selection is "
                f"{selection!r}; remove one of them"
            )
        if selection == "fraction" and "budget" in section:
            raise TDConfigError(
                f"{_path(['budget'])}: rank_selection 'fraction' has no global budget; remove 'budget' or use "
                f"rank_selection 'uniform'"
            )
        for key, owner in (("energy_threshold", "energy"), ("search", "search")):
            if key in section and selection != owner:
                raise TDConfigError(
                    f"{_path([key])}: only used with rank_selection {owner!r}, but rank_selection is {selection!r}"
                )
        if "energy_threshold" in section and "budget" in section:
            raise TDConfigError(
                f"{_path(['budget'])}: a fixed 'energy_threshold' sets the ranks, so there is no budget to meet; "
                f"remove one of them"
            )
        additional = _additional_budgets(budget, "rank_learning" in section)
        if "latency" in section and budget["metric"] != "latency":
            raise TDConfigError(
                f"{_path(['latency'])}: only used with budget.metric 'latency', but the metric is "
                f"{budget['metric']!r}"
            )
        if section.get("latency", {}).get("whole_model_check", 0):
            reason = ("the ranks are learned in training after the initial selection" if "rank_learning" in section
                      else "the check times the whole model, the budget counts only the decomposable layers"
                      if budget.get("scope", "model") != "model" else "")
            if reason:
                raise TDConfigError(f"{_path(['latency', 'whole_model_check'])}: needs a data-free selection with "
                                    f"budget.scope 'model' ({reason}); set it to 0 or remove it")
        if section.get("method") == "auto" and selection != "search":
            raise TDConfigError(
                f"{_path(['method'])}: 'auto' needs rank_selection 'search' (it compares methods by reconstruction "
                f"error at equal cost), but rank_selection is {selection!r}"
            )
        if "auto_methods" in section and section.get("method") != "auto":
            raise TDConfigError(f"{_path(['auto_methods'])}: only used with method 'auto'")
        layers = {}
        for name, spec in section.get("layers", {}).items():
            ranks = spec.get("ranks")
            if isinstance(ranks, list) and spec.get("method", section.get("method", "tucker2")) != "tucker2" \
                    and len(ranks) != 1:
                raise TDConfigError(
                    f"{_path(['layers', name, 'ranks'])}: {ranks} has two ranks, which only Tucker-2 takes"
                )
            layers[name] = LayerOverride(spec.get("method"), ranks, bool(spec.get("exclude", False)))
        return cls(
            method=section.get("method", "tucker2"),
            rank_selection=selection,
            budget_metric=budget["metric"],
            target_ratio=float(budget["target_ratio"]),
            budget_scope=budget["scope"],
            additional_budgets=additional,
            rank_fraction=section.get("rank_fraction"),
            min_rank=constraints["min_rank"],
            max_rank_fraction=float(constraints["max_rank_fraction"]),
            rank_multiple=constraints["rank_multiple"],
            layers=layers,
            auto_methods=tuple(section.get("auto_methods", ("tucker2", "svd"))),
            energy_threshold=section.get("energy_threshold"),
            search={**defaults(TD_SCHEMA["properties"]["search"]), **section.get("search", {})},
            skip_first_layer=section.get("skip_first_layer", True),
            skip_last_layer=section.get("skip_last_layer", True),
            tucker_iterations=numerics["tucker_iterations"],
            cp_iterations=numerics["cp_iterations"],
            seed=numerics["seed"],
            bn_aware=numerics["bn_aware"],
            activation_aware=numerics["activation_aware"],
            activation_samples=numerics["activation_samples"],
            activation_damping=numerics["activation_damping"],
            latency={**defaults(TD_SCHEMA["properties"]["latency"]), **section.get("latency", {})},
            rank_learning=_rank_learning(section, selection, budget) if "rank_learning" in section else None,
            raw=dict(section),
        )


def _additional_budgets(budget: dict, rank_learning: bool) -> tuple:
    """budget.additional as ((metric, target_ratio), ...); each metric once, none equal to budget.metric."""
    given = budget.get("additional", [])
    if given and rank_learning and budget["metric"] == "latency":
        raise TDConfigError(f"{_path(['budget', 'additional'])}: not supported with 'rank_learning' under "
                            f"budget.metric 'latency' yet (the frozen ranks are re-projected on measurements of "
                            f"the latency alone); use metric 'params' or 'flops', or drop 'rank_learning'")
    seen = {budget["metric"]: "budget.metric"}
    out = []
    for i, entry in enumerate(given):
        metric = entry["metric"]
        if metric in seen:
            raise TDConfigError(f"{_path(['budget', 'additional', i, 'metric'])}: {metric!r} is already the "
                                f"metric of {seen[metric]}; each metric may have one budget")
        seen[metric] = f"budget.additional[{i}]"
        out.append((metric, float(entry["target_ratio"])))
    return tuple(out)


def _rank_learning(section: dict, selection: str, budget: dict) -> dict:
    """The 'rank_learning' block with defaults resolved; cross-key checks name the key at fault."""
    given = section["rank_learning"]
    rl = {**defaults(TD_SCHEMA["properties"]["rank_learning"]), **given}
    where = ["rank_learning"]
    if selection == "fraction" or "energy_threshold" in section:
        raise TDConfigError(
            f"{_path(where)}: needs a global budget to learn ranks under, but rank_selection "
            f"{'fraction' if selection == 'fraction' else 'energy with a fixed energy_threshold'} has none; use "
            f"'search', 'uniform', 'energy' or 'vbmf' with 'budget'"
        )
    method = section.get("method", "tucker2")
    if method == "cp" or (method == "auto" and "cp" in section.get("auto_methods", ())):
        raise TDConfigError(f"{_path(['method'] if method == 'cp' else ['auto_methods'])}: rank_learning gates the "
                            f"channels of 'tucker2' and 'svd' factors; 'cp' is not supported with it")
    target = float(budget["target_ratio"])
    initial = float(rl.get("initial_ratio", target ** 0.5))
    if initial >= target:
        raise TDConfigError(f"{_path(where + ['initial_ratio'])}: {initial} must be smaller than "
                            f"budget.target_ratio ({target}): the ranks only shrink during training")
    rl["initial_ratio"], rl["initial_ratio_given"] = initial, "initial_ratio" in given
    if rl["schedule"] == "multistep":
        epochs = given.get("multistep_epochs")
        if epochs is None:
            raise TDConfigError(f"{_path(where + ['multistep_epochs'])}: required with schedule 'multistep'")
        if any(b <= a for a, b in zip(epochs, epochs[1:])):
            raise TDConfigError(f"{_path(where + ['multistep_epochs'])}: {epochs} must be strictly increasing")
        if "num_epochs" in given:
            raise TDConfigError(f"{_path(where + ['num_epochs'])}: only used with schedule 'exponential'; the "
                                f"last of multistep_epochs ends a 'multistep' schedule")
        ratios = given.get("multistep_ratios")
        if ratios is None:
            n = len(epochs)
            ratios = [initial * (target / initial) ** ((i + 1) / n) for i in range(n)]
            ratios[-1] = target
        elif len(ratios) != len(epochs):
            raise TDConfigError(f"{_path(where + ['multistep_ratios'])}: {len(ratios)} ratio(s) for "
                                f"{len(epochs)} multistep_epochs; give one ratio per epoch")
        elif any(b < a for a, b in zip(ratios, ratios[1:])) or ratios[0] < initial:
            raise TDConfigError(f"{_path(where + ['multistep_ratios'])}: {ratios} must be non-decreasing and "
                                f"not below initial_ratio ({initial})")
        elif abs(ratios[-1] - target) > 1e-9:
            raise TDConfigError(f"{_path(where + ['multistep_ratios'])}: the last ratio ({ratios[-1]}) must equal "
                                f"budget.target_ratio ({target})")
        rl["multistep_epochs"], rl["multistep_ratios"] = list(epochs), [float(r) for r in ratios]
        end = epochs[-1]
    else:
        for key in ("multistep_epochs", "multistep_ratios"):
            if key in given:
                raise TDConfigError(f"{_path(where + [key])}: only used with schedule 'multistep'")
        end = rl["num_epochs"]
    freeze = rl.get("freeze_epoch", end)
    if freeze < end:
        raise TDConfigError(f"{_path(where + ['freeze_epoch'])}: {freeze} is before the end of the schedule "
                            f"(epoch {end}); the ranks can only freeze once budget.target_ratio is reached")
    rl["freeze_epoch"], rl["schedule_end"], rl["target_ratio"] = freeze, end, target
    return rl
