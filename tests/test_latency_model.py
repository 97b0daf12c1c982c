"""The latency cost model: specs and cache keys, the on-disk cache, single-layer OpenVINO models that match the
torch layers, real measurements in worker processes, the measure-select loop, and a latency budget on a model."""

import importlib.util
import json
import pathlib

import pytest
import torch
from torch import nn

from nncf_tdplugin.latency_model import LatencyCache, LatencyCostModel, LatencySettings, LayerSpec, MeasurementContext
from nncf_tdplugin.latency_model import measure_specs
from nncf_tdplugin.nncf_integration.latency_budget import select_with_measurements
from nncf_tdplugin.rank_selection import (
    RANK_SELECTORS,
    Budget,
    LayerCandidate,
    LayerGeometry,
    RankChoice,
    RankConstraints,
    SelectionProblem,
)
from tests.latency_stubs import analytic_latency
from tests.models import ConvStack, low_rank_conv_weight

_WORKER = pathlib.Path(__file__).resolve().parents[1] / "nncf_tdplugin" / "latency_model" / "_layer_worker.py"


def _worker_module():
    spec = importlib.util.spec_from_file_location("_layer_worker_for_tests", _WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shapes(module, x):
    with torch.no_grad():
        return tuple(x.shape), tuple(module(x).shape)


# --- specs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module,x", [
    (nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.randn(1, 8, 15, 15)),
    (nn.Conv2d(8, 16, (3, 5), padding="same", dilation=2, bias=False), torch.randn(1, 8, 12, 10)),
    (nn.Conv2d(8, 16, 3, padding="valid"), torch.randn(1, 8, 9, 9)),
    (nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.randn(1, 16, 8, 8)),
    (nn.Conv2d(8, 16, 3, padding=1, stride=2, padding_mode="reflect"), torch.randn(1, 8, 11, 11)),
    (nn.Conv2d(8, 16, (3, 5), padding=(2, 1), dilation=(2, 1), padding_mode="circular"), torch.randn(1, 8, 9, 9)),
    (nn.Linear(12, 20), torch.randn(1, 12)),
    (nn.Linear(12, 20), torch.randn(1, 5, 12)),
])
def test_single_layer_models_have_the_torch_layers_shapes(module, x):
    """The OpenVINO model timed for a spec (dense and every factorization) maps the same input shape to the same
    output shape as the torch layer: padding, stride, dilation, groups and Linear positions are carried over."""
    import openvino as ov

    worker = _worker_module()
    in_shape, out_shape = _shapes(module, x)
    spec = LayerSpec.of(module, in_shape, out_shape)
    choices = [("dense", ())]
    if isinstance(module, nn.Linear):
        choices.append(("svd", (4,)))
    elif module.groups == 1:
        choices += [("tucker2", (4, 3)), ("svd", (4,)), ("cp", (5,))]
    for int8 in (False, True):
        for method, ranks in choices:
            s = LayerSpec.of(module, in_shape, out_shape, int8=int8).with_choice(method, ranks)
            model, shape = worker.build_model(s.to_json())
            assert list(shape) == list(in_shape) or (spec.kind == "linear" and shape[-1] == in_shape[-1])
            compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            out = compiled(torch.randn(*shape).numpy())[0]
            assert out.size == torch.Size(out_shape).numel(), (method, ranks, out.shape, out_shape)
            # a non-zero padding mode exports as a Pad node before every padded factor (two for CP's kx1 and 1xk)
            pads = sum(op.get_type_name() == "Pad" for op in model.get_ops())
            padded = isinstance(module, nn.Conv2d) and module.padding_mode != "zeros"
            assert pads == (0 if not padded else 2 if method == "cp" else 1), (method, pads)


def test_int8_models_quantize_a_nonnegative_input_unsigned_and_the_factor_activations_signed():
    """As NNCF exports a quantized network: an input that follows a ReLU is quantized over [0, hi] (u8 in OpenVINO),
    any other input and the activations between factors over [-hi, hi] (s8); a 3x3 conv reading s8 runs slower on
    VNNI, so the two are different measurements."""
    worker = _worker_module()
    keys = set()
    for unsigned in (True, False):
        spec = LayerSpec.of(nn.Conv2d(16, 32, 3, padding=1), (1, 16, 8, 8), (1, 32, 8, 8), int8=True,
                            unsigned_input=unsigned)
        keys.add(spec.key)
        for method, ranks, inner in (("dense", (), 0), ("tucker2", (8, 4), 2), ("svd", (8,), 1)):
            model, _ = worker.build_model(spec.with_choice(method, ranks).to_json())
            lows = [float(op.input_value(1).get_node().get_data()) for op in model.get_ordered_ops()
                    if op.get_type_name() == "FakeQuantize"]
            assert (lows[0] == 0.0) == unsigned, (method, lows)  # the prefix: the layer's input
            assert len(lows) == 1 + inner and all(low < 0 for low in lows[1:]), (method, lows)
    assert len(keys) == 2
    # the flag means nothing without INT8: one key
    assert (LayerSpec.of(nn.Conv2d(16, 32, 3), (1, 16, 8, 8), (1, 32, 6, 6), unsigned_input=True).key
            == LayerSpec.of(nn.Conv2d(16, 32, 3), (1, 16, 8, 8), (1, 32, 6, 6)).key)


def test_spec_keys_distinguish_everything_that_changes_latency():
    base = LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1), (1, 8, 8, 8), (1, 16, 8, 8))
    variants = [base, base.with_choice("tucker2", (4, 4)), base.with_choice("tucker2", (4, 8)),
                base.with_choice("svd", (4,)), LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1, stride=2), (1, 8, 8, 8),
                                                            (1, 16, 4, 4)),
                LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1), (1, 8, 8, 8), (1, 16, 8, 8), int8=True),
                LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1, bias=False), (1, 8, 8, 8), (1, 16, 8, 8)),
                LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1), (1, 8, 9, 9), (1, 16, 9, 9)),
                LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1, padding_mode="reflect"), (1, 8, 8, 8), (1, 16, 8, 8))]
    assert len({v.key for v in variants}) == len(variants)
    # zero-padded keys did not change when the padding mode joined the spec (cached measurements stay valid)
    assert base.key == "conv|8>16|k3x3|s1x1|pb1x1|pe1x1|d1x1|g1|hw8x8|b1|fp|dense|-"
    # an unpadded conv's padding mode changes nothing it runs
    assert (LayerSpec.of(nn.Conv2d(8, 16, 1, padding_mode="reflect"), (1, 8, 8, 8), (1, 16, 8, 8)).key
            == LayerSpec.of(nn.Conv2d(8, 16, 1), (1, 8, 8, 8), (1, 16, 8, 8)).key)
    # the same layer from another model has the same key
    assert LayerSpec.of(nn.Conv2d(8, 16, 3, padding=1), (1, 8, 8, 8), (1, 16, 8, 8)).key == base.key


# --- cache ---------------------------------------------------------------------------------------------------------
def test_cache_round_trip_and_context_keying(tmp_path):
    ctx = MeasurementContext(precision="f32", threads=1, cpu="cpu A", openvino="1.0")
    cache = LatencyCache(ctx, tmp_path)
    cache.put("k1", 0.25, 0.01)
    cache.runtime = {"runtime_precision": "f32"}
    cache.save()
    again = LatencyCache(ctx, tmp_path)
    assert again.get("k1") == 0.25 and "k1" in again and again.runtime == {"runtime_precision": "f32"}
    # timing settings do not change the file; precision, threads, CPU and OpenVINO version do
    assert LatencyCache(MeasurementContext("f32", 1, iterations=99, cpu="cpu A", openvino="1.0"), tmp_path).get("k1")
    for other in (MeasurementContext("default", 1, cpu="cpu A", openvino="1.0"),
                  MeasurementContext("f32", 2, cpu="cpu A", openvino="1.0"),
                  MeasurementContext("f32", 1, cpu="cpu B", openvino="1.0"),
                  MeasurementContext("f32", 1, cpu="cpu A", openvino="2.0")):
        assert LatencyCache(other, tmp_path).get("k1") is None
    # a file that claims another context is refused, not silently used
    data = json.loads(cache.path.read_text())
    data["context"]["precision"] = "bf16"
    cache.path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="precision"):
        LatencyCache(ctx, tmp_path)


def test_the_cpu_identity_counts_the_cores_this_process_may_use(monkeypatch):
    """Under taskset/a cpuset OpenVINO's automatic thread count follows the affinity set, so measurements with
    threads=None taken on 1 of 2 cores must not share a cache file with those taken on both."""
    from nncf_tdplugin.latency_model import specs

    monkeypatch.setattr(specs.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    one = specs.cpu_identity()
    monkeypatch.setattr(specs.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    two = specs.cpu_identity()
    assert "| 1 cpus |" in one and "| 2 cpus |" in two
    contexts = [MeasurementContext(cpu=cpu, openvino="1.0") for cpu in (one, two)]
    assert contexts[0].cache_id != contexts[1].cache_id


def test_two_processes_filling_one_cache_keep_each_others_entries(tmp_path):
    ctx = MeasurementContext(precision="f32", threads=1, cpu="cpu A", openvino="1.0")
    first, second = LatencyCache(ctx, tmp_path), LatencyCache(ctx, tmp_path)  # both loaded before either saves
    first.put("a", 0.5)
    first.save()
    second.put("b", 0.75)
    second.put("a", 0.625)  # its own measurement of a key wins over the one on disk
    second.save()
    merged = LatencyCache(ctx, tmp_path)
    assert merged.get("a") == 0.625 and merged.get("b") == 0.75 and len(merged) == 2
    first.put("c", 1.0)
    first.save()
    assert LatencyCache(ctx, tmp_path).entries.keys() == {"a", "b", "c"}
    assert LatencyCache(ctx, tmp_path).get("a") == 0.5  # the last saver's own value of "a"


def test_measurements_fill_the_cache_once(tmp_path):
    ctx = MeasurementContext.here("f32", 1, warmup=2, iterations=5, repeats=2)
    cache = LatencyCache(ctx, tmp_path)
    base = LayerSpec.of(nn.Conv2d(16, 16, 3, padding=1), (1, 16, 8, 8), (1, 16, 8, 8))
    specs = [base, base.with_choice("tucker2", (8, 8)), base.with_choice("svd", (8,))]
    assert measure_specs(specs, cache, progress=False) == 3
    assert all(cache.get(s.key) > 0 for s in specs)
    assert cache.runtime["runtime_precision"] == "f32" and cache.runtime["threads"] == 1
    reloaded = LatencyCache(ctx, tmp_path)
    assert measure_specs(specs, reloaded, progress=False) == 0  # all cached on disk


# --- selection with measured costs ---------------------------------------------------------------------------------
class FakeLatency:
    """A cost model with given 'measured' values and a deliberately wrong 'prediction' before measuring."""

    def __init__(self, dense, measured, predicted, verify_rounds=3, known=()):
        self.settings = LatencySettings(verify_rounds=verify_rounds)
        self._dense, self._measured, self._predicted, self.known = dense, measured, predicted, set(known)
        self.measured_only = False

    def dense(self, name):
        return self._dense[name]

    def cost(self, name, method, ranks=()):
        if method == "dense":
            return self._dense[name]
        key = (name, method, tuple(ranks))
        if key in self.known:
            return self._measured(key)
        return float("inf") if self.measured_only else self._predicted(key)

    def measure_choices(self, choices):
        new = {(n, m, tuple(r)) for n, (m, r) in choices.items() if m != "dense"} - self.known
        self.known |= new
        return len(new)


def _candidate(name, fake, t=32, s=32, full_rank=False):
    g = LayerGeometry("conv", t, s, 3, 3, (8, 8), (8, 8), False)
    w = torch.randn(t, s, 3, 3) if full_rank else low_rank_conv_weight(t, s, 3, 8, 8)
    c = LayerCandidate(name, w, g, ("tucker2",))
    c.extra_costs["latency"] = lambda ch, n=name: fake.cost(n, ch.method, ch.ranks)
    return c


@pytest.mark.parametrize("selector", ["search", "uniform"])
def test_a_layer_slower_decomposed_stays_dense(selector):
    """'slow' is predicted fast but measures slower than dense at every rank: after the measure-select loop it is
    dense, 'fast' carries the budget, and the budget holds on measured costs."""
    dense = {"slow": 1.0, "fast": 1.0}
    predicted = lambda key: 0.1 + 0.8 * (key[2][0] * key[2][1]) / 32 ** 2  # noqa: E731
    measured = lambda key: 1.2 if key[0] == "slow" else predicted(key)  # noqa: E731
    fake = FakeLatency(dense, measured, predicted)
    problem = SelectionProblem([_candidate("slow", fake), _candidate("fast", fake)], Budget("latency", 1.25),
                               RankConstraints(rank_multiple=4), fixed_cost=0.0)
    choices = select_with_measurements(RANK_SELECTORS[selector](), problem, fake)
    assert choices["slow"].is_dense
    assert not choices["fast"].is_dense
    assert problem.ratio(choices) >= 1.25 - 1e-9


def test_a_slower_layer_stays_decomposed_when_an_additional_budget_needs_it():
    """As above, but a params budget that needs both layers decomposed: 'slow' keeps its factors (reverting it to
    dense would break budget.additional), and both budgets hold."""
    dense = {"slow": 1.0, "fast": 1.0}
    predicted = lambda key: 0.1 + 0.8 * (key[2][0] * key[2][1]) / 32 ** 2  # noqa: E731
    measured = lambda key: 1.2 if key[0] == "slow" else predicted(key)  # noqa: E731
    fake = FakeLatency(dense, measured, predicted)
    problem = SelectionProblem([_candidate("slow", fake), _candidate("fast", fake)], Budget("latency", 1.05),
                               RankConstraints(rank_multiple=4), fixed_cost=0.0,
                               additional=(Budget("params", 2.5),), additional_fixed_costs={"params": 0.0})
    choices = select_with_measurements(RANK_SELECTORS["search"](), problem, fake)
    assert not choices["slow"].is_dense and not choices["fast"].is_dense
    assert problem.within_budgets(choices), problem.ratios(choices)


def test_an_optimistic_predictor_cannot_break_the_budget():
    """Every prediction is 30% too fast and no re-selection round is allowed: the plan must still meet the budget on
    measured costs, by selecting among measured options (the grid) only."""
    dense = {"a": 1.0, "b": 1.0}
    measured = lambda key: 0.05 + 0.9 * (key[2][0] * key[2][1]) / 32 ** 2  # noqa: E731
    predicted = lambda key: 0.7 * measured(key)  # noqa: E731
    grid = {(n, "tucker2", (r, q)) for n in dense for r in (4, 8, 16, 32) for q in (4, 8, 16, 32)}
    fake = FakeLatency(dense, measured, predicted, verify_rounds=0, known=grid)
    problem = SelectionProblem([_candidate(n, fake, full_rank=True) for n in dense], Budget("latency", 1.6),
                               RankConstraints(rank_multiple=4), fixed_cost=0.0)

    def measured_ratio(choices):
        return sum(dense.values()) / sum(measured((n, c.method, c.ranks)) if not c.is_dense else dense[n]
                                         for n, c in choices.items())

    assert measured_ratio(RANK_SELECTORS["search"]().select(problem)) < 1.6  # the first pick misses on measurement
    choices = select_with_measurements(RANK_SELECTORS["search"](), problem, fake)
    assert measured_ratio(choices) >= 1.6 - 1e-9
    assert all(c.is_dense or (n, c.method, c.ranks) in fake.known for n, c in choices.items())
    assert not fake.measured_only


def test_unreachable_latency_budget_reports_best_speedup():
    dense = {"a": 1.0}
    fake = FakeLatency(dense, lambda key: 0.9, lambda key: 0.9)
    problem = SelectionProblem([_candidate("a", fake)], Budget("latency", 2.0), RankConstraints(), fixed_cost=0.0)
    with pytest.raises(ValueError, match=r"unreachable.*1\.1\d*x faster") as e:
        RANK_SELECTORS["search"]().select(problem)
    assert e.value.best_ratio == pytest.approx(1 / 0.9)


def test_cost_model_interpolates_between_grid_ranks_and_prefers_measurements(tmp_path):
    model = LatencyCostModel(LatencySettings(precision="f32", threads=1, grid_points=3, cache_dir=str(tmp_path),
                                             warmup=2, iterations=5, repeats=1), progress=False)
    spec = LayerSpec.of(nn.Conv2d(32, 32, 3, padding=1), (1, 32, 8, 8), (1, 32, 8, 8))
    model.add_layer("conv", spec, {"tucker2": [[4, 8, 16, 32], [4, 8, 16, 32]], "svd": [[4, 8, 16, 32]]})
    assert model.grids[("conv", "tucker2")] == ([4, 8, 32], [4, 8, 32])  # geometric, both ends included
    model.prepare()
    assert model.measured_now == 1 + 9 + 3
    lo, hi = model.cost("conv", "svd", (8,)), model.cost("conv", "svd", (32,))
    assert min(lo, hi) <= model.predict("conv", "svd", (16,)) <= max(lo, hi)  # between its neighbours
    assert not model.is_measured("conv", "svd", (16,))
    model.measure_choices({"conv": ("svd", (16,))})
    assert model.cost("conv", "svd", (16,)) == model.cache.get(spec.with_choice("svd", (16,)).key)


# --- a latency budget through the NNCF config ----------------------------------------------------------------------
def test_latency_budget_is_met_and_holds_end_to_end(tmp_path):
    import nncf
    from nncf.torch import create_compressed_model

    from nncf_tdplugin.export import export_openvino, measure_many

    size = [1, 3, 32, 32]
    target = 1.35  # ConvStack reaches 1.8-2.4x at its smallest ranks on a quiet 2-core Xeon: a margin for a loaded one
    block = {"algorithm": "tensor_decomposition", "budget": {"metric": "latency", "target_ratio": target},
             "latency": {"precision": "f32", "threads": 1, "cache_dir": str(tmp_path / "cache"), "grid_points": 4,
                         "iterations": 10, "repeats": 2}}
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": size}, "compression": [block]})
    ctrl, model = create_compressed_model(ConvStack(), config)
    lat = ctrl.plan["latency"]
    assert lat["budget_met"] and lat["achieved_ratio"] >= target - 1e-9
    assert lat["precision"] == "f32" and lat["runtime_precision"] == "f32" and lat["threads"] == 1
    assert lat["fixed_ms"] > 0  # stem and classifier stay dense and count in the model's latency
    for entry in ctrl.plan["layers"].values():
        assert entry["latency_ms"] < entry["dense_latency_ms"]
        assert all(r % lat["rank_multiple"] == 0 for r in entry["ranks"])
    assert "Latency" in ctrl.statistics().to_str()
    dense_xml = export_openvino(ConvStack().eval(), torch.randn(*size), tmp_path / "dense.xml")
    td_xml = export_openvino(ctrl, torch.randn(*size), tmp_path / "td.xml")
    # The per-layer cost model leaves out the other ops and the call itself: end to end the model must still be
    # clearly faster. Compared on floors (each model's fastest inference over interleaved worker runs): the median
    # of a shared CI host moves with its load (CI once measured 0.95x by medians with a spread of 31%; the floors
    # of this plan are 1.6-1.7x here, with or without two busy processes beside it). A miss is timed once more,
    # longer, before it fails: a plan that is really slower misses both times.
    floor = target * 0.8
    tries = []
    for iterations, repeats in ((50, 3), (100, 5)):
        dense, td = measure_many([(dense_xml, size), (td_xml, size)], precision="f32", threads=1, warmup=10,
                                 iterations=iterations, repeats=repeats)
        tries.append({"floor_speedup": round(dense.min_ms / td.min_ms, 3),
                      "median_speedup": round(dense.median_ms / td.median_ms, 3),
                      "dense_ms": dense.repeat_medians_ms, "td_ms": td.repeat_medians_ms})
        met = dense.min_ms / td.min_ms >= floor
        if met:
            break
    ranks = {name: entry["ranks"] for name, entry in ctrl.plan["layers"].items()}
    assert met, (
        f"end to end {tries} below {floor:.2f}x on {lat['cpu']}; predicted {lat['achieved_ratio']:.2f}x, "
        f"rank multiple {lat['rank_multiple']}, ranks {ranks}")


# the whole model's ratio: the stem, the classifier and the call overhead stay. ConvStack reaches 1.5-2.5x at its
# smallest ranks on a quiet 2-core Xeon and was seen at 1.33x in CI under load (target 1.35 failed there): a wide margin
WHOLE_MODEL_TARGET = 1.15


def _convstack_ctrl(tmp_path, target, monkeypatch=None, **latency):
    """ConvStack compressed under a latency budget (f32, 1 thread, a 3-point grid, ``latency`` keys added); with
    ``monkeypatch``, selected on the analytic per-layer timings (:func:`analytic_latency`) at rank multiple 4, so
    that which targets are reachable does not depend on the machine's load."""
    import nncf
    from nncf.torch import create_compressed_model

    block = {"algorithm": "tensor_decomposition", "budget": {"metric": "latency", "target_ratio": target},
             "latency": {"precision": "f32", "threads": 1, "cache_dir": str(tmp_path), "grid_points": 3,
                         "iterations": 10, "repeats": 2, **latency}}
    if monkeypatch is not None:
        analytic_latency(monkeypatch)
        block["latency"]["rank_multiple"] = 4
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": [block]})
    ctrl, _ = create_compressed_model(ConvStack(), config)
    return ctrl


def _whole_model_plan(tmp_path, monkeypatch=None) -> dict:
    """The latency part of the plan of ConvStack under latency:1.15 with ``calibration: "whole_model"``."""
    return _convstack_ctrl(tmp_path, WHOLE_MODEL_TARGET, monkeypatch, iterations=20, repeats=3,
                           calibration="whole_model").plan["latency"]


def test_whole_model_calibration_times_the_dense_model(tmp_path):
    """Real OpenVINO timings: which branch is taken depends on the machine's load; both must be consistent."""
    target = WHOLE_MODEL_TARGET
    lat = _whole_model_plan(tmp_path)
    assert lat["whole_model_ms"] > 0 and lat["budget_met"] and lat["achieved_ratio"] >= target - 1e-9
    if lat["calibration_fallback"] is None:
        # the budget is a ratio of whole-model latencies: the dense total is the end-to-end time of the dense model
        assert lat["dense_ms"] == pytest.approx(lat["whole_model_ms"])
    else:  # measured under load (the layers one by one slower than the whole model): the layer calibration
        assert lat["dense_ms"] > lat["whole_model_ms"] and "calibration" in lat["calibration_fallback"]


def test_whole_model_calibration_puts_everything_but_the_candidates_into_the_fixed_cost(tmp_path, monkeypatch):
    """Deterministic (analytic per-layer timings, a whole model 0.05 ms slower than its layers): the fixed cost is
    the whole model minus the candidates, so the dense total is the whole model's time."""
    from nncf_tdplugin.nncf_integration import latency_budget

    seen = {}

    def whole(net, input_shape, model, layers):
        seen["layers_ms"] = sum(model.dense(name) for name in model.layers)
        seen["candidates_ms"] = sum(model.dense(name) for name in model.layers if name.startswith("convs."))
        return seen["layers_ms"] + 0.05

    monkeypatch.setattr(latency_budget, "whole_model_latency", whole)
    lat = _whole_model_plan(tmp_path, monkeypatch)
    assert lat["calibration_fallback"] is None and lat["whole_model_ms"] == pytest.approx(seen["layers_ms"] + 0.05)
    assert lat["dense_ms"] == pytest.approx(lat["whole_model_ms"])
    assert lat["fixed_ms"] == pytest.approx(lat["whole_model_ms"] - seen["candidates_ms"])
    assert lat["budget_met"] and lat["achieved_ratio"] >= WHOLE_MODEL_TARGET - 1e-9
    assert lat["ms"] == pytest.approx(lat["dense_ms"] / lat["achieved_ratio"])


def test_whole_model_cache_key_sees_the_ops_between_the_layers():
    """Two models with the same weighted layers but another activation (or a residual add) between them must not
    share a cached whole-model latency."""
    from nncf.torch.model_creation import wrap_model

    from nncf_tdplugin.nncf_integration.graph_layers import find_weighted_layers
    from nncf_tdplugin.nncf_integration.latency_budget import whole_model_key

    class Net(nn.Module):
        def __init__(self, act, residual=False):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.act, self.residual = act, residual

        def forward(self, x):
            y = self.b(self.act(self.a(x)))
            return y + x if self.residual else y

    shape = (1, 8, 8, 8)
    keys = []
    for net in (Net(nn.ReLU()), Net(nn.ReLU()), Net(nn.Sigmoid()), Net(nn.ReLU(), residual=True)):
        wrapped = wrap_model(net, torch.randn(*shape), trace_parameters=False)
        keys.append(whole_model_key(wrapped, shape, find_weighted_layers(wrapped), int8=False))
    assert keys[0] == keys[1]  # the same model, another instance
    assert len({keys[0], keys[2], keys[3]}) == 3, keys


def test_whole_model_calibration_falls_back_to_the_layers_when_the_layers_alone_take_longer(tmp_path, monkeypatch):
    """A whole-model time below the candidates' per-layer sum (a CPU loaded while the layers were measured) made the
    fixed cost negative and a plan's total negative: a ratio of -0.30x reported as met (seen in CI under load)."""
    from nncf_tdplugin.nncf_integration import latency_budget

    monkeypatch.setattr(latency_budget, "whole_model_latency", lambda *args, **kwargs: 1e-4)
    target = WHOLE_MODEL_TARGET
    lat = _whole_model_plan(tmp_path, monkeypatch)
    assert lat["whole_model_ms"] == 1e-4 and "0.0001 ms end to end" in lat["calibration_fallback"]
    assert lat["fixed_ms"] >= 0 and lat["ms"] > 0 and lat["dense_ms"] > lat["ms"]
    assert lat["budget_met"] and lat["achieved_ratio"] >= target - 1e-9


def _checked_plan(tmp_path, monkeypatch, target, rounds=2):
    """ConvStack's plan with ``whole_model_check: rounds``, on the analytic per-layer timings."""
    return _convstack_ctrl(tmp_path, target, monkeypatch, whole_model_check=rounds).plan


def _fake_speedups(monkeypatch, speedups, confirmed=None):
    """plan_speedup reporting ``speedups`` in turn (dense 1 ms), and the confirmation run of all plans reporting
    ``confirmed`` (default: what their rounds measured); returns the list of the plans it was asked to time (layer
    name -> ranks of the decomposed layers)."""
    from nncf_tdplugin.nncf_integration import latency_budget

    calls = []

    def fake(net, input_shape, model, choices, dense_xml, plan_xml):
        calls.append({n: tuple(c.ranks) for n, c in choices.items() if not c.is_dense})
        return 1.0, 1.0 / speedups[len(calls) - 1]

    def fake_confirm(input_shape, model, dense_xml, plan_xmls):
        assert len(plan_xmls) == len(calls) > 1 and len(set(plan_xmls)) == len(plan_xmls)  # one IR per round
        return 1.0, [1.0 / r for r in (confirmed or speedups)[:len(plan_xmls)]]

    monkeypatch.setattr(latency_budget, "plan_speedup", fake)
    monkeypatch.setattr(latency_budget, "time_against_dense", fake_confirm)
    return calls


def _kept(plan) -> dict:
    return {n: tuple(e["ranks"]) for n, e in plan["layers"].items()}


def test_whole_model_check_selects_again_at_a_raised_target_after_a_miss(tmp_path, monkeypatch):
    calls = _fake_speedups(monkeypatch, [1.01, 1.12])  # the per-layer plan misses 1.1 end to end, the next meets it
    plan = _checked_plan(tmp_path, monkeypatch, 1.1)
    check = plan["latency"]["whole_model_check"]
    first, second = check["rounds"]
    assert first["selected_at"] == 1.1 and first["measured_ratio"] == pytest.approx(1.01)
    assert second["selected_at"] == pytest.approx(1.1 * 1.1 / 1.01)  # raised by the miss
    assert second["predicted_ratio"] >= second["selected_at"] - 1e-9
    assert check["met"] and check["measured_ratio"] == pytest.approx(1.12) and len(calls) == 2
    assert _kept(plan) == calls[1]  # the plan is the one that met the target
    assert plan["latency"]["budget_met"]  # judged end to end


def test_statistics_show_the_end_to_end_check(tmp_path, monkeypatch):
    _fake_speedups(monkeypatch, [1.01, 1.02])  # never meets 1.1
    ctrl = _convstack_ctrl(tmp_path, 1.1, monkeypatch, whole_model_check=1)
    assert not ctrl.plan["latency"]["budget_met"]
    text = ctrl.statistics().to_str()
    assert "Whole model, end to end" in text
    assert "1.020x (1.000 ms -> 0.980 ms; plan of round 2 of 2, the 2 timed again together)" in text
    assert "NOT MET" in text


def test_whole_model_check_lowers_the_target_after_an_overshoot(tmp_path, monkeypatch):
    # 1.6x measured for a 1.3x budget removes more of the model than needed: the next selection asks less
    calls = _fake_speedups(monkeypatch, [1.6, 1.33])
    plan = _checked_plan(tmp_path, monkeypatch, 1.3)
    first, second = plan["latency"]["whole_model_check"]["rounds"]
    assert second["selected_at"] == pytest.approx(1.3 * 1.3 / 1.6)
    assert second["predicted_ratio"] < first["predicted_ratio"]
    assert _kept(plan) == calls[1]  # both met: the less compressed one is kept


def test_whole_model_check_chooses_on_the_run_that_times_every_plan_together(tmp_path, monkeypatch):
    # the second plan's own round ran fast (1.33x) but timed beside the first it reaches 1.25x only: the first plan,
    # the only one that meets 1.3x in the same run, is kept
    calls = _fake_speedups(monkeypatch, [1.6, 1.33], confirmed=[1.58, 1.25])
    plan = _checked_plan(tmp_path, monkeypatch, 1.3)
    check = plan["latency"]["whole_model_check"]
    assert check["confirmation"]["measured_ratio"] == pytest.approx([1.58, 1.25])
    assert check["kept_round"] == 0 and check["measured_ratio"] == pytest.approx(1.58) and check["met"]
    assert _kept(plan) == calls[0]


def test_whole_model_check_interpolates_between_a_miss_and_an_overshoot(tmp_path, monkeypatch):
    _fake_speedups(monkeypatch, [1.6, 1.1, 1.32])  # overshoot, then a miss: the third target lies between
    plan = _checked_plan(tmp_path, monkeypatch, 1.3, rounds=2)
    first, second, third = plan["latency"]["whole_model_check"]["rounds"]
    a_lo, a_hi = second["selected_at"], first["selected_at"]
    assert a_lo == pytest.approx(1.3 * 1.3 / 1.6)
    assert third["selected_at"] == pytest.approx(a_lo + (1.3 - 1.1) * (a_hi - a_lo) / (1.6 - 1.1))


def test_whole_model_check_keeps_the_fastest_selection_when_every_timing_misses(tmp_path, monkeypatch):
    calls = _fake_speedups(monkeypatch, [1.01, 1.05, 1.03])  # all below 1.1; the second is the fastest
    plan = _checked_plan(tmp_path, monkeypatch, 1.1, rounds=2)
    check = plan["latency"]["whole_model_check"]
    assert [r["measured_ratio"] for r in check["rounds"]] == pytest.approx([1.01, 1.05, 1.03])
    assert not check["met"] and check["measured_ratio"] == pytest.approx(1.05) and check["kept_round"] == 1
    assert _kept(plan) == calls[1]


def test_whole_model_check_restores_the_dense_layers_and_measures_real_speedups(tmp_path, monkeypatch):
    plan = _checked_plan(tmp_path, monkeypatch, WHOLE_MODEL_TARGET, rounds=1)
    check = plan["latency"]["whole_model_check"]
    assert 1 <= len(check["rounds"]) <= 2
    timed = [r["dense_ms"] / r["measured_ms"] for r in check["rounds"]]
    assert all(r["dense_ms"] > 0 for r in check["rounds"])
    assert [r["measured_ratio"] for r in check["rounds"]] == pytest.approx(timed)
    if check["confirmation"] is not None:  # two plans: the choice is made on the run that timed both together
        confirmed = check["confirmation"]
        timed = [confirmed["dense_ms"] / ms for ms in confirmed["measured_ms"]]
        assert len(timed) == 2 and confirmed["measured_ratio"] == pytest.approx(timed)
    else:
        assert len(check["rounds"]) == 1
    met = [t for t in timed if t >= WHOLE_MODEL_TARGET]
    assert check["measured_ratio"] == pytest.approx(min(met) if met else max(timed))
    # the timing swapped random factor layers in and put the dense ones back: the plan decomposed the real weights
    assert plan["layers"] and all(0 <= e["relative_error"] < 1 for e in plan["layers"].values())


def test_whole_model_check_is_refused_where_it_cannot_apply():
    import nncf
    from nncf.torch import create_compressed_model

    from nncf_tdplugin.config import TDConfigError

    block = {"algorithm": "tensor_decomposition", "budget": {"metric": "latency", "target_ratio": 1.2},
             "latency": {"whole_model_check": 2}, "rank_learning": {"num_epochs": 2}}
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": [block]})
    with pytest.raises(TDConfigError, match=r"latency\.whole_model_check.*learned in training"):
        create_compressed_model(ConvStack(), config)
    del block["rank_learning"]
    block["budget"]["scope"] = "decomposable"
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]}, "compression": [block]})
    with pytest.raises(TDConfigError, match=r"latency\.whole_model_check.*only the decomposable layers"):
        create_compressed_model(ConvStack(), config)


def test_int8_auto_means_quantization_follows_the_decomposition(tmp_path, monkeypatch):
    """``latency.int8: "auto"`` (the default) times the layers in INT8 exactly when quantization comes after the
    decomposition in the config; an explicit value wins."""
    import nncf
    from nncf.torch import create_compressed_model

    from nncf_tdplugin import validate_config
    from nncf_tdplugin.nncf_integration.latency_budget import settings_from

    quantization = {"algorithm": "quantization", "initializer": {"range": {"num_init_samples": 0},
                                                                 "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}

    def config(order, **latency):
        td = {"algorithm": "tensor_decomposition", "budget": {"metric": "latency", "target_ratio": 1.2},
              "latency": {"precision": "f32", "threads": 1, "cache_dir": str(tmp_path), "grid_points": 3,
                          "rank_multiple": 4, **latency}}
        blocks = {"td": td, "q": quantization}
        return nncf.NNCFConfig.from_dict({"input_info": {"sample_size": [1, 3, 32, 32]},
                                          "compression": [blocks[name] for name in order]})

    def int8(nncf_config):
        return settings_from(validate_config(nncf_config), nncf_config).int8

    assert int8(config(["td", "q"])) and not int8(config(["td"])) and not int8(config(["q", "td"]))
    assert not int8(config(["td", "q"], int8=False)) and int8(config(["td"], int8=True))
    analytic_latency(monkeypatch)
    ctrl, _ = create_compressed_model(ConvStack(), config(["td", "q"]))
    td = next(c for c in ctrl.child_ctrls if hasattr(c, "plan"))
    assert td.plan["latency"]["int8"] and td.plan["latency"]["budget_met"]
    keys = [key for file in tmp_path.glob("*.json") for key in json.loads(file.read_text()).get("entries", {})]
    convs = [key for key in keys if key.startswith("conv|64>64|")]  # the 3x3 convs after ReLUs: unsigned inputs
    assert convs and all("|u8|" in key for key in convs), convs[:3]
    assert any(key.startswith("conv|3>64|") and "|i8|" in key for key in keys)  # the stem reads the signed image


@pytest.mark.parametrize("efficient,expected", [({}, 1), ({16: 0.85}, 16), ({8: 0.9, 16: 0.895}, 8),
                                                ({32: 0.996}, 1), ({32: 0.97}, 32)])
def test_rank_multiple_probe_picks_the_most_efficient_channel_multiple(tmp_path, monkeypatch, efficient, expected):
    """The probe's rule on synthetic timings: latency per MAC scaled by ``efficient[m]`` at channel counts that are
    multiples of m (the largest such m applies): the best multiple wins if it is >0.5% more efficient than the
    average, a smaller multiple within 1% of it is preferred (finer rank menus), else 1."""
    from nncf_tdplugin.latency_model import cost_model

    def fake_measure(specs, cache, **_):
        for s in specs:
            c = s.in_channels
            scale = min([f for m, f in efficient.items() if c % m == 0], default=1.0)
            cache.put(s.key, 1e-4 * c * c * scale)
        cache.runtime = {"runtime_precision": "f32", "threads": 1}
        return len(specs)

    monkeypatch.setattr(cost_model, "measure_specs", fake_measure)
    model = LatencyCostModel(LatencySettings(precision="f32", threads=1, cache_dir=str(tmp_path)), progress=False)
    assert model.probe_rank_multiple() == expected, model.rank_multiple_scores
