"""Budget-aware rank learning during training (rank_learning block): loss, schedule, freeze, truncation, checkpoints,
quantization and NNCF's adaptive accuracy-aware loop, on the small low-rank CNN and synthetic data."""

import copy
import io

import numpy as np
import pytest
import torch
from nncf.api.compression import CompressionStage

from nncf_tdplugin import TDConfigError, td_controller
from nncf_tdplugin.latency_model.cost_model import interpolate
from nncf_tdplugin.layers import DecomposedConv2d, DecomposedLinear
from nncf_tdplugin.rank_learning import RankGate, allocate, budget_ratio
from nncf_tdplugin.rank_learning.allocation import GroupSpec, smallest_rank
from nncf_tdplugin.rank_learning.controller import RankLearningController
from nncf_tdplugin.rank_learning.schedules import RankLearningScheduler
from nncf_tdplugin.rank_learning.setup import rank_key
from nncf_tdplugin.rank_learning.truncation import edge_activation_quantizers
from tests.latency_stubs import analytic_latency
from tests.models import ConvStack, LowRankCNN
from tests.nncf_helpers import compress, loader, make_config

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def block(target=3.0, metric="params", **rl):
    rank_learning = {"initial_ratio": 1.5, "update_every": 2, **rl}
    if rl.get("schedule", "exponential") == "exponential":
        rank_learning.setdefault("num_epochs", 2)
    return {"algorithm": "tensor_decomposition", "budget": {"metric": metric, "target_ratio": target},
            "rank_learning": rank_learning}


def td_ctrl(ctrl) -> RankLearningController:
    td = td_controller(ctrl)  # the package's lookup, in composite (with quantization) and single controllers
    assert isinstance(td, RankLearningController), type(td)
    return td


def run_epochs(ctrl, model, epochs, data, steps=None, lr=0.01):
    """NNCF's training-loop shape: epoch_step() at each epoch start, step() before each batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # no momentum: two runs from one checkpoint stay identical
    model.train()
    for _ in range(epochs):
        ctrl.scheduler.epoch_step()
        for i, (x, y) in enumerate(data):
            if steps is not None and i >= steps:
                break
            ctrl.scheduler.step()
            loss = torch.nn.functional.cross_entropy(model(x), y) + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def fixed_data(n=32, batch_size=8):
    return list(loader(n=n, batch_size=batch_size))


def test_gates_sit_before_the_weight_quantizer_and_start_neutral():
    ctrl, model = compress(td_block=block(), quantization=True)
    td = td_ctrl(ctrl)
    assert {g.key for g in td.groups} >= {"conv2.in_proj", "conv2.core", "conv3.in_proj", "conv3.core"}
    for g in td.groups:
        ops = [type(op.op).__name__ for op in g.producer.pre_ops.values()]
        assert ops[0] == "RankGate" and "Quantizer" in ops[1], ops
        assert g.gate.channels == g.container.ranks[g.rank_index]
    # decomposed at the initial ratio; stage is UNCOMPRESSED until the budget starts to tighten
    assert 1.5 <= td.achieved_ratio <= 1.5 * 1.03
    assert td.compression_stage() == CompressionStage.UNCOMPRESSED
    assert td.compression_rate == pytest.approx(1 - 1 / td.achieved_ratio)


def test_loss_is_differentiable_and_shrinks_the_gates_outside_the_budget():
    ctrl, _ = compress(td_block=block(masking="soft"), quantization=False)
    td = td_ctrl(ctrl)
    td.z_step(2.5)  # a tighter budget: some channels fall outside the projection
    dropped = [(g, g.gate.keep < 0.5) for g in td.groups]
    assert sum(int(d.sum()) for _, d in dropped) > 0
    assert all(bool((g.gate.mask == 1).all()) for g, _ in dropped)  # soft masking: nothing masked yet
    gates = [g.gate.gate for g in td.groups]
    before = [p.detach().clone() for p in gates]
    loss = ctrl.loss()
    assert loss.requires_grad and loss.item() > 0
    opt = torch.optim.SGD(gates, lr=0.5)
    for _ in range(5):
        opt.zero_grad()
        loss = ctrl.loss()
        loss.backward()
        assert all(p.grad is not None for p in gates)
        opt.step()
    assert ctrl.loss().item() < loss.item()
    for (g, d), b in zip(dropped, before):
        if d.any():
            assert bool((g.gate.gate.detach()[d].abs() < b[d].abs()).all())


def test_fisher_importance_sums_the_model_gradient_only_and_decides_the_projection():
    ctrl, model = compress(td_block=block(importance="fisher", update_every=4), quantization=False)
    td = td_ctrl(ctrl)
    assert all(g.gate.fisher_information() is None for g in td.groups) and not td.uses_fisher()
    assert "fisher (magnitude until every gate has seen a backward pass)" in ctrl.statistics().to_str()
    td.z_step(2.5)  # the compression loss now pulls on the gates; its gradient is not the model's
    ctrl.loss().backward()
    assert all(g.gate.fisher_information() is None for g in td.groups)
    x, y = fixed_data()[0]
    grads = []
    for _ in range(2):  # two backward passes of the model's loss alone
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append({g.key: g.gate.gate.grad.detach().clone() for g in td.groups})
    decay = 1 - 1 / 4
    for g in td.groups:  # d loss / d gate = d loss / d effective * mask: equal on the unmasked channels
        m = g.gate.mask.bool()
        expected = decay * grads[0][g.key].pow(2) + grads[1][g.key].pow(2)
        assert float(g.gate.fisher_weight) == pytest.approx(decay + 1)
        assert torch.allclose(g.gate.fisher[m], expected[m], rtol=1e-5, atol=1e-12)
    assert td.uses_fisher()
    (row,) = [line for line in ctrl.statistics().to_str().splitlines() if "Channel importance" in line]
    assert "fisher" in row and "magnitude" not in row
    # a group whose channels the loss does not feel gives up its channels first, whatever their norms
    quiet = max(td.groups, key=lambda g: float(g.gate.scale.max()))
    for g in td.groups:
        g.gate.fisher.fill_(0.0 if g is quiet else 1.0)
        g.gate.fisher_weight.fill_(1.0)
    before = td.current_ranks()[quiet.layer][quiet.rank_index]
    td.z_step(2.0, dual=False, hard=True)
    assert td.current_ranks()[quiet.layer][quiet.rank_index] < before
    others = [g for g in td.groups if g is not quiet]
    assert any(int(g.gate.keep.sum()) == g.gate.channels for g in others)


def test_greedy_allocation_meets_the_budget_and_drops_the_least_important_first():
    # one SVD-like layer with 10 channels (cost 10 per channel) and one with 4 (cost 30 per channel)
    specs = [GroupSpec("a", 0, np.linspace(0.1, 1.0, 10)), GroupSpec("b", 0, np.array([0.9, 0.8, 0.05, 0.7]))]
    unit = {"a": 10.0, "b": 30.0}
    result = allocate(specs, {"a": [10], "b": [4]}, lambda layer, r: unit[layer] * r[0], fixed_cost=20.0,
                      budget_cost=150.0)
    assert result.met and result.cost <= 150.0
    assert not result.keep[1][2]  # the cheap-to-lose expensive channel goes first
    assert list(result.keep[0][:3]) == [False, False, False] and result.keep[0][-1]
    # a budget below every group's minimum is reported, not looped on
    assert not allocate(specs, {"a": [10], "b": [4]}, lambda layer, r: unit[layer] * r[0], 20.0, 1.0).met


def test_allocation_meets_several_budgets():
    """Two layers: 'a' heavy in the first metric, 'b' in the second; the first budget alone leaves the second
    exceeded, both together drop channels of both layers and meet both."""
    specs = [GroupSpec("a", 0, np.linspace(0.1, 0.5, 10)), GroupSpec("b", 0, np.linspace(0.8, 1.0, 10))]
    unit = {"a": np.array([10.0, 1.0]), "b": np.array([1.0, 10.0])}

    def cost(layer, r):
        return unit[layer] * r[0]

    first_only = allocate(specs, {"a": [10], "b": [10]}, lambda layer, r: float(cost(layer, r)[0]), 0.0, 80.0)
    second = sum(cost(layer, r)[1] for layer, r in first_only.ranks.items())
    assert first_only.met and second > 100.0 and first_only.ranks["b"] == [10]  # 'b' is important: kept whole
    both = allocate(specs, {"a": [10], "b": [10]}, cost, [0.0, 0.0], [80.0, 60.0])
    totals = sum(cost(layer, r) for layer, r in both.ranks.items())
    assert both.met and totals[0] <= 80.0 and totals[1] <= 60.0 and both.cost == totals[0]
    assert not allocate(specs, {"a": [10], "b": [10]}, cost, [0.0, 0.0], [80.0, 5.0]).met


def test_allocation_looks_past_a_rank_where_the_cost_does_not_fall():
    # a measured latency grid need not be monotonic: one step down costs more, two steps down save
    table = {8: 100.0, 7: 105.0, 6: 60.0, 5: 55.0, 4: 50.0, 3: 45.0, 2: 40.0, 1: 35.0}
    specs = [GroupSpec("a", 0, np.linspace(0.1, 1.0, 8))]
    result = allocate(specs, {"a": [8]}, lambda layer, r: table[r[0]], fixed_cost=0.0, budget_cost=70.0)
    assert result.met and result.ranks == {"a": [6]} and result.cost == 60.0
    assert list(result.keep[0]) == [False, False] + [True] * 6


@pytest.mark.parametrize("count, min_rank, multiple", [(17, 1, 16), (40, 1, 16), (8, 1, 16), (64, 20, 16),
                                                      (24, 20, 16), (10, 3, 1), (12, 1, 4)])
def test_smallest_rank_is_where_the_allocation_stops(count, min_rank, multiple):
    # the builder's reachability check and maximal_compression_rate use smallest_rank: it must be the allocation's
    spec = GroupSpec("a", 0, np.linspace(0.1, 1.0, count), min_rank)
    result = allocate([spec], {"a": [count]}, lambda layer, r: float(r[0]), fixed_cost=0.0, budget_cost=0.0,
                      rank_multiple=multiple)
    assert not result.met and result.ranks["a"] == [smallest_rank(count, min_rank, multiple)]


def test_schedules():
    rl = {"initial_ratio": 1.5, "target_ratio": 3.0, "schedule": "exponential", "num_epochs": 4}
    ratios = [budget_ratio(rl, e) for e in range(6)]
    assert ratios[0] == 1.5 and ratios[4] == ratios[5] == 3.0
    assert all(b > a for a, b in zip(ratios[:5], ratios[1:5]))
    assert ratios[2] == pytest.approx((1.5 * 3.0) ** 0.5)
    ms = {**rl, "schedule": "multistep", "multistep_epochs": [1, 3], "multistep_ratios": [2.0, 3.0]}
    assert [budget_ratio(ms, e) for e in range(5)] == [1.5, 2.0, 2.0, 3.0, 3.0]


class Recorder:
    """Stands in for the controller of a RankLearningScheduler: records Z-steps, freezes and gradient steps."""

    def __init__(self):
        self.ratios = []
        self.events = []

    def z_step(self, ratio):
        self.ratios.append(ratio)
        self.events.append("z")

    def freeze(self):
        self.events.append("freeze")


def run_schedule(sched, recorder, epochs, steps):
    """epoch_step() at each epoch start, step() before each batch; "grad" marks the gradient step after it."""
    for _ in range(epochs):
        sched.epoch_step()
        for _ in range(steps):
            sched.step()
            recorder.events.append("grad")


def test_steps_per_epoch_tightens_the_budget_within_the_first_epoch():
    rl = {"initial_ratio": 1.5, "target_ratio": 3.0, "schedule": "exponential", "num_epochs": 2, "update_every": 2,
          "freeze_epoch": 2}
    for steps_per_epoch, rises_in_first_epoch in ((None, False), (4, True)):
        recorder = Recorder()
        sched = RankLearningScheduler(recorder, {**rl, "steps_per_epoch": steps_per_epoch})
        sched.epoch_step()
        for _ in range(4):
            sched.step()
        assert (recorder.ratios[-1] > 1.5) == rises_in_first_epoch, recorder.ratios
        # the k-th batch (k from 1) of epoch e trains at t = e + (k - 1) / steps_per_epoch: the last one at 3/4
        assert sched.current_ratio == pytest.approx(1.5 * 2 ** (3 / 8) if steps_per_epoch else 1.5)
        assert recorder.ratios[-1] == pytest.approx(1.5 * 2 ** (1 / 4) if steps_per_epoch else 1.5)
        sched.epoch_step()  # epoch 1: its last batch is still short of the target
        for _ in range(4):
            sched.step()
        assert sched.current_ratio == pytest.approx(1.5 * 2 ** (7 / 8)) and 3.0 not in recorder.ratios
        sched.epoch_step()  # epoch 2, the end of the schedule: the freeze (at the target)
        assert recorder.events[-1] == "freeze" and sched.current_ratio == 3.0


def test_multistep_budget_steps_from_the_configured_epoch_on():
    rl = {"initial_ratio": 1.5, "target_ratio": 3.0, "schedule": "multistep", "multistep_epochs": [1, 2],
          "multistep_ratios": [2.0, 3.0], "update_every": 1, "freeze_epoch": 3, "steps_per_epoch": 4}
    recorder = Recorder()
    sched = RankLearningScheduler(recorder, rl)
    seen = []
    for _ in range(3):
        sched.epoch_step()
        for _ in range(4):
            sched.step()
            seen.append(sched.current_ratio)
    # every batch of epoch e trains at the ratio of epoch e: no step one batch before multistep_epochs[i]
    assert seen == [1.5] * 4 + [2.0] * 4 + [3.0] * 4
    # Z-steps: steps 1-3 (not step 0), each epoch start, then steps 5-7 and 9-11 (4 and 8: the epoch start's)
    assert recorder.ratios == [1.5] * 3 + [2.0] * 4 + [3.0] * 4


def test_one_dual_update_per_gradient_step_at_epoch_starts():
    """update_every divides the steps per epoch: the periodic Z-step falls on the first step of every epoch, where
    the epoch start has just projected (and updated the dual); the step does not project again."""
    rl = {"initial_ratio": 1.5, "target_ratio": 3.0, "schedule": "exponential", "num_epochs": 3, "update_every": 2,
          "freeze_epoch": 3, "steps_per_epoch": 4}
    recorder = Recorder()
    run_schedule(RankLearningScheduler(recorder, rl), recorder, 3, 4)
    events = "".join(e[0] for e in recorder.events)
    assert "zz" not in events, events
    assert events == "ggzgg" + "zggzgg" * 2  # Z-steps at step 2, epoch 1's start (not step 4), 6, epoch 2's, 10


@pytest.mark.parametrize("metric,extra,quantization", [
    ("params", {}, True),
    ("flops", {"schedule": "multistep", "multistep_epochs": [1, 2]}, False),
    ("params", {"masking": "soft"}, False),
    ("params", {"importance": "fisher"}, True),
])
def test_budget_is_met_at_the_end_of_the_schedule_and_truncation_keeps_outputs(metric, extra, quantization):
    ctrl, model = compress(td_block=block(2.5 if metric == "flops" else 3.0, metric, **extra),
                           quantization=quantization)
    td = td_ctrl(ctrl)
    target = td.rl["target_ratio"]
    data = fixed_data()
    stages = [td.compression_stage()]
    ratios = []
    for _ in range(3):
        run_epochs(ctrl, model, 1, data)
        stages.append(td.compression_stage())
        ratios.append(td.achieved_ratio)
    assert stages == [CompressionStage.UNCOMPRESSED, CompressionStage.UNCOMPRESSED,
                      CompressionStage.PARTIALLY_COMPRESSED, CompressionStage.FULLY_COMPRESSED]
    assert ratios[0] < ratios[1] < target <= ratios[2] <= target * 1.05
    stats = ctrl.statistics()
    assert stats.tensor_decomposition.achieved_ratio == pytest.approx(ratios[2])
    text = stats.to_str()
    assert "Scheduled budget" in text and "frozen" in text and f"{target:.3f}x" in text
    assert float(ctrl.loss()) == 0.0
    ranks = td.current_ranks()
    for g in td.groups:  # masks are the final projection
        assert torch.equal(g.gate.mask, g.gate.keep)

    model.eval()
    with torch.no_grad():
        before = model(X)
        stripped = ctrl.strip()
        after = stripped(X)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4), (before - after).abs().max()
    for name, r in ranks.items():
        layer = stripped.get_submodule(name)
        assert list(layer.ranks) == r
        assert layer.in_proj.weight.shape[0] == r[-1]
        if layer.method == "tucker2":
            assert tuple(layer.core.weight.shape[:2]) == (r[0], r[1])
            assert layer.out_proj.weight.shape[1] == r[0]
        assert not any(isinstance(op.op, RankGate) for m in layer.children() for op in m.pre_ops.values())
    assert any(isinstance(g.gate, RankGate) for g in td.groups)  # the live model was not touched by strip()


def test_additional_budget_is_met_at_the_end_and_survives_a_resume():
    """params 3x and FLOPs 4x (the parameter budget alone ends near 3.2x FLOPs on this model): each Z-step meets
    both, tightening together, and the frozen ranks meet both targets."""
    b = block(3.0, "params")
    b["budget"]["additional"] = [{"metric": "flops", "target_ratio": 4.0}]
    ctrl, model = compress(td_block=b, quantization=False)
    td = td_ctrl(ctrl)
    (start,) = td.additional_status()
    assert start["scheduled_ratio"] == pytest.approx(4.0 ** (np.log(1.5) / np.log(3.0)))
    data = fixed_data()
    run_epochs(ctrl, model, 1, data)
    state, weights = copy.deepcopy(ctrl.get_compression_state()), copy.deepcopy(model.state_dict())
    run_epochs(ctrl, model, 2, data)
    stats = ctrl.statistics().tensor_decomposition
    (end,) = td.additional_status()
    assert stats.params_ratio >= 3.0 and stats.macs_ratio >= 4.0, (stats.params_ratio, stats.macs_ratio)
    assert end["achieved_ratio"] == pytest.approx(stats.macs_ratio) and end["scheduled_ratio"] == 4.0
    assert "Also flops budget" in stats.to_str()
    final_ranks = td.current_ranks()
    td.truncate()
    assert ctrl.get_compression_state()["builder_state"]["tensor_decomposition"]["plan"]["additional"][0][
        "achieved_ratio"] == pytest.approx(stats.macs_ratio)

    ctrl2, model2 = compress(td_block=b, quantization=False, compression_state=state)  # resume mid-schedule
    model2.load_state_dict(weights)
    run_epochs(ctrl2, model2, 2, data)
    assert td_ctrl(ctrl2).current_ranks() == final_ranks


@pytest.mark.parametrize("importance", ["magnitude", "fisher"])
def test_checkpoint_mid_schedule_resumes_with_the_same_ranks(importance):
    data = fixed_data()
    ctrl, model = compress(td_block=block(num_epochs=3, importance=importance), quantization=True)
    run_epochs(ctrl, model, 1, data)
    run_epochs(ctrl, model, 1, data, steps=3)  # mid-epoch, mid-schedule
    td = td_ctrl(ctrl)
    assert td.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    buffer = io.BytesIO()
    torch.save({"state": ctrl.get_compression_state(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    from nncf.common.quantization.structs import QuantizationScheme
    with torch.serialization.safe_globals([CompressionStage, QuantizationScheme]):
        checkpoint = torch.load(buffer, weights_only=True)

    ctrl2, model2 = compress(LowRankCNN(noise=0.5), td_block=block(num_epochs=3, importance=importance),
                             compression_state=checkpoint["state"])
    model2.load_state_dict(checkpoint["model"])
    td2 = td_ctrl(ctrl2)
    s1, s2 = td.scheduler.get_state(), td2.scheduler.get_state()
    assert s1 == s2 and s2["current_epoch"] == 1 and s2["step_in_epoch"] == 3
    assert td2.current_ranks() == td.current_ranks()
    assert td2.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    for g, g2 in zip(td.groups, td2.groups):  # the data-driven importance resumes from the same sums
        assert torch.equal(g.gate.fisher, g2.gate.fisher) and g.gate.fisher_weight == g2.gate.fisher_weight
        assert g2.gate.track_fisher == (importance == "fisher")
    assert bool((td.groups[0].gate.fisher_weight > 0)) == (importance == "fisher")
    model.eval(), model2.eval()
    assert torch.equal(model(X), model2(X))
    # both continue the schedule identically
    rest = data[3:]
    run_epochs(ctrl, model, 1, rest, steps=1)
    run_epochs(ctrl2, model2, 1, rest, steps=1)
    for _ in range(2):
        run_epochs(ctrl, model, 1, data)
        run_epochs(ctrl2, model2, 1, data)
    assert td.compression_stage() == td2.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert td2.current_ranks() == td.current_ranks()


def test_truncate_during_training_with_quantization_and_resume_from_the_truncated_state(tmp_path):
    data = fixed_data()
    ctrl, model = compress(td_block=block(), quantization=True)
    run_epochs(ctrl, model, 3, data)  # frozen at the start of epoch 2, masks kept
    td = td_ctrl(ctrl)
    assert td.frozen and not td.truncated
    ranks = td.current_ranks()
    model.eval()
    with torch.no_grad():
        masked = model(X)
    assert td.truncate() == ranks
    assert td.truncated and td.groups == [] and td.current_ranks() == ranks
    model.eval()
    with torch.no_grad():
        truncated = model(X)
    assert torch.allclose(masked, truncated, atol=1e-5, rtol=1e-4), (masked - truncated).abs().max()
    assert tuple(model.conv3.core.weight.shape[:2]) == tuple(ranks["conv3"])
    assert td.achieved_ratio >= td.rl["target_ratio"]
    # the weight quantizer of a truncated factor has one scale per kept channel
    wq = [op.op for op in model.conv3.core.pre_ops.values()][0]
    assert wq.scale.shape[0] == ranks["conv3"][0]
    assert ctrl.statistics().tensor_decomposition.layers["conv3"]["ranks"] == ranks["conv3"]
    run_epochs(ctrl, model, 1, data)  # training goes on with a new optimizer
    state, weights = ctrl.get_compression_state(), model.state_dict()
    ctrl2, model2 = compress(LowRankCNN(), td_block=block(), compression_state=state)
    model2.load_state_dict(weights)
    model.eval(), model2.eval()
    assert torch.equal(model(X), model2(X))
    assert td_ctrl(ctrl2).current_ranks() == td.current_ranks()
    assert td_ctrl(ctrl2).compression_stage() == CompressionStage.FULLY_COMPRESSED
    path = tmp_path / "model.onnx"
    ctrl2.export_model(str(path))
    import onnx

    graph = onnx.load(str(path)).graph  # quantized weights are Constant nodes (the FakeQuantize folds later)
    shapes = [list(i.dims) for i in graph.initializer]
    shapes += [list(a.t.dims) for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    assert [ranks["conv3"][0], ranks["conv3"][1], 3, 3] in shapes


def latency_block(cache, target=1.6) -> dict:
    """A latency budget on the per-layer cost model: f32, 1 thread, a 3-point grid, quick timings (the tests here
    replace the timings by :func:`analytic_latency`)."""
    section = {**block(target, "latency"),
               "latency": {"precision": "f32", "threads": 1, "cache_dir": str(cache), "grid_points": 3,
                           "iterations": 5, "repeats": 1, "rank_multiple": 4}}
    del section["rank_learning"]["initial_ratio"]  # the default: raised by the builder if out of reach
    return section


def test_latency_budget_is_learned_on_the_cost_model_grid_and_resumes_without_measuring(tmp_path, monkeypatch):
    """Analytic timings (:func:`analytic_latency`) keep the budget's margins independent of the machine's load;
    real OpenVINO timing of the cost model is tested in test_latency_model.py."""
    import shutil

    analytic_latency(monkeypatch)
    cache = tmp_path / "cache"
    section = latency_block(cache)
    ctrl, model = compress(ConvStack(), td_block=section, quantization=False)
    td = td_ctrl(ctrl)
    info = td.info
    assert info["metric"] == "latency" and info["rank_multiple"] == 4
    assert set(info["latency_grid"]) == set(td.plan["layers"]) and td.groups
    assert not any("latency_grid" in e for e in td.plan["layers"].values())  # kept once, in the budget info
    # the dense total is the selection's (measured) one; the decomposed layers start at their initial ranks
    assert info["dense_total"] == pytest.approx(td.plan["latency"]["dense_ms"])
    assert 1.0 < td.achieved_ratio < 1.6
    data = fixed_data()
    run_epochs(ctrl, model, 1, data)
    run_epochs(ctrl, model, 1, data, steps=2)
    assert td.compression_stage() == CompressionStage.PARTIALLY_COMPRESSED
    # copies: state_dict() shares the live tensors, which the next epochs train
    state, weights = copy.deepcopy(ctrl.get_compression_state()), copy.deepcopy(model.state_dict())
    run_epochs(ctrl, model, 2, data)
    assert td.compression_stage() == CompressionStage.FULLY_COMPRESSED
    ranks = td.current_ranks()
    assert all(r % 4 == 0 for rs in ranks.values() for r in rs)
    # at the freeze the frozen ranks were measured (as the fixed-ranks mode measures its final choice; if the
    # measurement missed the target they were projected again and measured again); from then on the measurement,
    # not the grid, is the cost at these ranks
    final = info["final_latency"]
    assert final["ranks"] == ranks and final["measured_ms"] > 0
    assert final["measured_ratio"] == pytest.approx(info["dense_total"] / final["measured_ms"])
    assert td.achieved_ratio == pytest.approx(final["measured_ratio"])
    assert 1.6 <= td.achieved_ratio <= 1.6 * 1.25
    grids = info["latency_grid"]
    for n, r in ranks.items():
        assert td._layer_cost(n, r) == pytest.approx(info["measured_ms"][n][rank_key(r)])
        smaller = [max(4, r[0] - 4)] + list(r[1:])  # not measured: the grid's interpolation
        if rank_key(smaller) not in info["measured_ms"][n]:
            assert td._layer_cost(n, smaller) == pytest.approx(interpolate(grids[n]["axes"], grids[n]["values"],
                                                                           smaller))
    text = ctrl.statistics().to_str()
    assert "Conv/Linear latency" in text and "the cost model's grid at these ranks" in text
    assert "Frozen ranks, measured" in text
    # resume: the plan carries the grid, nothing is measured again (the cache is gone)
    shutil.copytree(cache, tmp_path / "kept")
    shutil.rmtree(cache)
    ctrl2, model2 = compress(ConvStack(), td_block=section, quantization=False, compression_state=state)
    model2.load_state_dict(weights)
    assert not cache.exists()
    td2 = td_ctrl(ctrl2)
    # the freeze measures the frozen ranks, and a measurement that missed the target would move them: on the same
    # machine the cache answers as it did in the first run
    shutil.copytree(tmp_path / "kept", cache)
    run_epochs(ctrl2, model2, 2, data)
    assert td2.current_ranks() == ranks and td2.achieved_ratio == pytest.approx(td.achieved_ratio)
    td2.truncate()
    assert all(td2.plan["layers"][n]["latency_ms"] == pytest.approx(
        td2._layer_cost(n, r)) for n, r in ranks.items())


def test_truncate_at_freeze():
    data = fixed_data()
    ctrl, model = compress(td_block=block(truncate_at_freeze=True), quantization=False)
    run_epochs(ctrl, model, 2, data)
    td = td_ctrl(ctrl)
    assert not td.truncated
    ctrl.scheduler.epoch_step()  # epoch 2: freeze, then truncate
    assert td.truncated and td.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert list(model.conv3.ranks) == td.current_ranks()["conv3"]
    run_epochs(ctrl, model, 1, data)  # a new optimizer trains the truncated model


def test_compression_rate_is_settable_in_learning_mode_only(monkeypatch):
    from nncf_tdplugin.rank_learning import controller as controller_module

    infos = []
    monkeypatch.setattr(controller_module.nncf_logger, "info", infos.append)
    ctrl, _ = compress(td_block=block(), quantization=False)
    td = td_ctrl(ctrl)
    assert 0 < td.compression_rate < td.maximal_compression_rate < 1
    td.compression_rate = 0.6
    assert td.achieved_ratio >= 1 / 0.4 and td.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert all(torch.equal(g.gate.mask, g.gate.keep) for g in td.groups)
    td.compression_rate = 0.5  # back to a milder budget: masked channels come back
    assert 2.0 <= td.achieved_ratio < 1 / 0.4 and not [m for m in infos if "compression_rate" in m]
    td.compression_rate = 0.0  # below the initial decomposition's rate: the initial ranks, and a log line says so
    said = [m for m in infos if "compression_rate 0.0000 is below" in m]
    assert len(said) == 1 and f"({td.compression_rate:.4f}" in said[0] and td.compression_rate > 0.1
    fixed, _ = compress(quantization=False)
    with pytest.raises(AttributeError, match="budget.target_ratio"):
        fixed.compression_rate = 0.5


def test_rate_set_after_disable_scheduler_is_reported_and_resumes():
    """NNCF's adaptive loop calls disable_scheduler() and then sets compression_rate: the scheduler is kept (its
    step()/epoch_step() do nothing), the reported budget follows the rate, and a checkpoint resumes."""
    from nncf_tdplugin.config import scaled_additional_ratio

    b = block(3.0, "params")
    b["budget"]["additional"] = [{"metric": "flops", "target_ratio": 4.0}]
    ctrl, model = compress(td_block=b, quantization=False)
    td = td_ctrl(ctrl)
    sched = td.scheduler
    ctrl.disable_scheduler()
    assert ctrl.scheduler is sched and sched.disabled
    td.compression_rate = 0.6
    ratio = 1 / 0.4
    assert td.achieved_ratio >= ratio and td.compression_stage() == CompressionStage.FULLY_COMPRESSED
    assert td.current_ratio_value() == pytest.approx(ratio) and sched.target_ratio == pytest.approx(ratio)
    (extra,) = td.additional_status()
    assert extra["scheduled_ratio"] == pytest.approx(scaled_additional_ratio(4.0, ratio, 3.0))
    stats = ctrl.statistics()
    assert stats.tensor_decomposition.target_ratio == pytest.approx(ratio)
    assert f"{ratio:.3f}x (initial 1.500x, target {ratio:.3f}x)" in stats.to_str()
    ranks, achieved = td.current_ranks(), td.achieved_ratio
    run_epochs(ctrl, model, 1, fixed_data(16))  # the disabled scheduler changes nothing
    assert td.current_ranks() == ranks and sched.current_epoch == -1 and sched.current_step == -1
    state, weights = copy.deepcopy(ctrl.get_compression_state()), copy.deepcopy(model.state_dict())
    saved = state["ctrl_state"][td.name]["scheduler_state"]
    assert saved["override_ratio"] == pytest.approx(ratio) and saved["disabled"]

    ctrl2, model2 = compress(td_block=b, quantization=False, compression_state=state)
    model2.load_state_dict(weights)
    td2 = td_ctrl(ctrl2)
    assert td2.scheduler.get_state() == sched.get_state()
    assert td2.current_ranks() == ranks and td2.achieved_ratio == pytest.approx(achieved)
    for g, g2 in zip(td.groups, td2.groups):
        assert torch.equal(g.gate.mask, g2.gate.mask) and torch.equal(g.gate.keep, g2.gate.keep)
    assert td2.current_ratio_value() == pytest.approx(ratio) and td2.additional_status() == td.additional_status()
    assert td2.compression_stage() == CompressionStage.FULLY_COMPRESSED
    model.eval(), model2.eval()
    assert torch.equal(model(X), model2(X))
    # the empty state NNCF's StubCompressionScheduler saved (checkpoints of earlier versions) loads too
    td2.scheduler.load_state({})
    assert td2.scheduler.current_step == -1 and not td2.scheduler.frozen and td2.scheduler.override_ratio is None


def test_strip_before_the_freeze_with_soft_masks_drops_what_the_projection_drops(monkeypatch):
    """masking "soft": before the freeze the masks are all ones and the projection (keep) drops channels; strip()
    and truncate() first make the masks hard, so the truncated model computes what the hard-masked one does, at the
    ranks reported, and warn."""
    from nncf_tdplugin.rank_learning import controller as controller_module
    from nncf_tdplugin.rank_learning.gates import find_groups

    warnings = []
    monkeypatch.setattr(controller_module.nncf_logger, "warning", warnings.append)
    ctrl, model = compress(td_block=block(masking="soft", num_epochs=3), quantization=False)
    td = td_ctrl(ctrl)
    run_epochs(ctrl, model, 2, fixed_data())
    assert not td.frozen and any(not torch.equal(g.gate.mask, g.gate.keep) for g in td.groups)
    ranks, achieved = td.current_ranks(), td.achieved_ratio
    masked = copy.deepcopy(model)
    for g in find_groups(masked, td.plan["layers"]):
        g.gate.mask.copy_(g.gate.keep)
    with torch.no_grad():
        expected = masked(X)
        stripped = ctrl.strip()
        after = stripped(X)
    assert torch.allclose(expected, after, atol=1e-5, rtol=1e-4), (expected - after).abs().max()
    assert {name: list(stripped.get_submodule(name).ranks) for name in ranks} == ranks
    assert all(bool((g.gate.mask == 1).all()) for g in td.groups)  # the live model goes on with soft masks
    hardened = [w for w in warnings if "fixes the ranks of the current projection" in w]
    assert len(hardened) == 1 and len(warnings) == 2  # and strip()'s "before the ranks were frozen"
    td.truncate()  # the live model alike
    with torch.no_grad():
        truncated = model(X)
    assert torch.allclose(expected, truncated, atol=1e-5, rtol=1e-4), (expected - truncated).abs().max()
    assert td.current_ranks() == ranks and td.achieved_ratio == pytest.approx(achieved)
    assert td.compression_rate == pytest.approx(1 - 1 / achieved)
    assert len([w for w in warnings if "fixes the ranks of the current projection" in w]) == 2


def test_truncation_keeps_the_quantizers_compression_lr_multiplier():
    from nncf.torch import create_compressed_model, register_default_init_args
    from nncf.torch.layer_utils import CompressionParameter

    config = make_config(block(), quantization=True)
    config["compression"][1]["compression_lr_multiplier"] = 4.0
    config = register_default_init_args(config, loader())
    ctrl, model = create_compressed_model(LowRankCNN(), config)
    td = td_ctrl(ctrl)
    td.compression_rate = 0.6
    ranks = td.current_ranks()
    channels = model.conv3.core.out_channels
    td.truncate()
    wq = [op.op for op in model.conv3.core.pre_ops.values()][0]
    assert wq.scale.shape[0] == ranks["conv3"][0] < channels  # sliced: new parameters
    sliced = [p for p in wq.parameters(recurse=False) if p.shape[0] == ranks["conv3"][0]]
    assert sliced
    for p in sliced:
        assert isinstance(p, CompressionParameter)
        p.requires_grad_(True)
        p.grad = None
        p.sum().backward()
        assert torch.all(p.grad == 4.0), p.grad


def test_adaptive_accuracy_aware_training_loop_drives_the_rate(tmp_path):
    from nncf.common.accuracy_aware_training import create_accuracy_aware_training_loop
    from nncf.torch import create_compressed_model

    config = make_config(block(num_epochs=1), quantization=False)
    config["accuracy_aware_training"] = {
        "mode": "adaptive_compression_level",
        "params": {"maximal_absolute_accuracy_degradation": 100.0, "initial_training_phase_epochs": 1,
                   "patience_epochs": 1, "maximal_total_epochs": 3, "initial_compression_rate_step": 0.1,
                   "minimal_compression_rate_step": 0.05},
    }
    ctrl, model = create_compressed_model(LowRankCNN(), config)
    data = fixed_data(16)
    rates = []

    def train_epoch_fn(compression_ctrl, model, epoch=None, optimizer=None, lr_scheduler=None):
        model.train()
        for x, y in data:
            compression_ctrl.scheduler.step()
            loss = torch.nn.functional.cross_entropy(model(x), y) + compression_ctrl.loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        rates.append(compression_ctrl.compression_rate)

    def validate_fn(model, epoch=None):
        return 50.0  # always within the (huge) tolerated drop: the loop keeps raising the rate

    def configure_optimizers_fn():
        return torch.optim.SGD(model.parameters(), lr=0.01), None

    loop = create_accuracy_aware_training_loop(config, ctrl, uncompressed_model_accuracy=60.0,
                                               dump_checkpoints=False)
    assert loop.adaptive_controller is ctrl
    model = loop.run(model, train_epoch_fn=train_epoch_fn, validate_fn=validate_fn,
                     configure_optimizers_fn=configure_optimizers_fn, log_dir=str(tmp_path))
    assert len(rates) >= 2 and max(rates) > rates[0]
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED


@pytest.mark.parametrize("rl,extra,message", [
    ({"initial_ratio": 4.0}, {}, r"tensor_decomposition\.rank_learning\.initial_ratio: 4\.0 must be smaller than"),
    ({"schedule": "linear"}, {}, r"tensor_decomposition\.rank_learning\.schedule: 'linear' is not one of"),
    ({"schedule": "multistep"}, {}, r"rank_learning\.multistep_epochs: required with schedule 'multistep'"),
    ({"schedule": "multistep", "multistep_epochs": [2, 1]}, {}, r"multistep_epochs: \[2, 1\] must be strictly"),
    ({"schedule": "multistep", "multistep_epochs": [1, 2], "multistep_ratios": [2.0, 2.5]}, {},
     r"rank_learning\.multistep_ratios: the last ratio \(2\.5\) must equal budget\.target_ratio"),
    ({"multistep_epochs": [1]}, {}, r"rank_learning\.multistep_epochs: only used with schedule 'multistep'"),
    ({"num_epochs": 3, "freeze_epoch": 2}, {}, r"rank_learning\.freeze_epoch: 2 is before the end"),
    ({"regularization": -1}, {}, r"rank_learning\.regularization: -1 is less than the minimum of 0"),
    ({"update_every": 0}, {}, r"rank_learning\.update_every: 0 is less than the minimum of 1"),
    ({"gates": True}, {}, r"tensor_decomposition\.rank_learning: unknown key\(s\) \['gates'\]"),
    ({}, {"method": "cp"}, r"tensor_decomposition\.method: rank_learning gates the channels"),
    ({}, {"rank_selection": "fraction", "rank_fraction": 0.5, "budget": None},
     r"tensor_decomposition\.rank_learning: needs a global budget"),
])
def test_config_errors_name_the_key(rl, extra, message):
    section = {"algorithm": "tensor_decomposition", "budget": {"target_ratio": 3.0}, "rank_learning": rl, **extra}
    section = {k: v for k, v in section.items() if v is not None}
    with pytest.raises(TDConfigError, match=message):
        compress(td_block=section, quantization=False)


def test_decomposed_layers_are_tucker2_or_svd_containers():
    _, model = compress(td_block=block(), quantization=False)
    layers = [m for m in model.modules() if isinstance(m, (DecomposedConv2d, DecomposedLinear))]
    assert layers and all(m.method in ("tucker2", "svd") for m in layers)


def test_per_channel_activation_quantizers_on_gated_edges_are_sliced_too():
    from nncf.torch import create_compressed_model, register_default_init_args

    config = make_config(block(), quantization=True)
    config["target_device"] = "TRIAL"  # the CPU HW config has per-tensor activations only
    config["compression"][1]["activations"] = {"per_channel": True}
    config["compression"][1]["initializer"]["range"] = {"num_init_samples": 8, "type": "min_max"}
    config = register_default_init_args(config, loader())
    ctrl, model = create_compressed_model(LowRankCNN(), config)
    td = td_ctrl(ctrl)
    edges = edge_activation_quantizers(model, td.groups, td._node_of)
    assert edges, "expected per-channel activation quantizers between factors"
    run_epochs(ctrl, model, 3, fixed_data())
    kept = {g.key: int(g.gate.keep.sum()) for g in td.groups}
    model.eval()
    with torch.no_grad():
        before = model(X)
        # NNCF's strip also converts the quantizers to torch's FakeQuantize, whose float rounding differs slightly
        # (already on the model's input): an activation right at a rounding boundary can move by one level, so the
        # stripped copy matches to a looser tolerance; the truncation itself is exact (the live model below)
        stripped = ctrl.strip()(X)
        td.truncate()
        truncated = model(X)
    assert torch.allclose(before, truncated, atol=1e-5, rtol=1e-4), (before - truncated).abs().max()
    assert torch.allclose(before, stripped, atol=5e-4, rtol=1e-3), (before - stripped).abs().max()
    for key, quantizers in edges.items():
        assert all(q.scale_shape[1] == kept[key] for q in quantizers), (key, [q.scale_shape for q in quantizers])


def test_default_initial_ratio_is_raised_when_the_target_is_out_of_reach(monkeypatch):
    """A selection at a mild ratio can decompose too few layers to reach the target: the default initial_ratio is then
    raised towards the target (and saved in the plan, so a resumed run keeps it); a given one is an error."""
    from nncf_tdplugin.rank_learning import setup

    real = setup.reachable_ratio
    asked = []

    def reachable_only_from_2_3(plan):  # pretend the layers decomposed below 2.3x cannot shrink to 3x
        ratio = plan["rank_learning"]["initial_ratio"]
        asked.append(ratio)
        return real(plan) if ratio >= 2.3 else 2.0

    monkeypatch.setattr(setup, "reachable_ratio", reachable_only_from_2_3)
    # ... and that a higher ratio may decompose more layers (raising stops once every candidate is decomposed)
    monkeypatch.setattr(setup, "_kept_dense", lambda plan: ["a layer the selection kept dense"])
    section = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 3.0},
               "rank_learning": {"num_epochs": 2}}
    ctrl, model = compress(td_block=section, quantization=False)
    td = td_ctrl(ctrl)
    assert asked[0] == pytest.approx(3.0 ** 0.5) and len(asked) >= 2  # default sqrt(3), then raised
    assert td.rl["initial_ratio"] >= 2.3 and td.info["initial_ratio"] == td.rl["initial_ratio"]
    assert td.achieved_ratio >= td.rl["initial_ratio"]
    state = ctrl.get_compression_state()
    monkeypatch.setattr(setup, "reachable_ratio", real)
    ctrl2, model2 = compress(LowRankCNN(), td_block=section, quantization=False, compression_state=state)
    model2.load_state_dict(model.state_dict())
    assert td_ctrl(ctrl2).rl["initial_ratio"] == td.rl["initial_ratio"]
    assert td_ctrl(ctrl2).current_ranks() == td.current_ranks()

    monkeypatch.setattr(setup, "reachable_ratio", reachable_only_from_2_3)
    given = {**section, "rank_learning": {"num_epochs": 2, "initial_ratio": 1.5}}
    with pytest.raises(TDConfigError, match=r"rank_learning\.initial_ratio: at 1\.500 the selection decomposed"):
        compress(td_block=given, quantization=False)


def test_default_search_falls_back_to_uniform_initial_ranks_when_the_target_stays_out_of_reach(monkeypatch):
    """If the default search's initial plans (raised towards the target) still cannot reach it, the initial
    decomposition falls back to uniform ranks at the first initial_ratio; a rank_selection given in the config is
    kept, and the unreachable target is then an error."""
    from nncf_tdplugin.rank_learning import setup

    real = setup.reachable_ratio
    asked = []

    def only_uniform_reaches(plan):  # pretend the search's plans decompose too few layers to reach 3x
        asked.append((plan["rank_selection"], plan["rank_learning"]["initial_ratio"]))
        return real(plan) if plan["rank_selection"] == "uniform" else 2.0

    monkeypatch.setattr(setup, "reachable_ratio", only_uniform_reaches)
    monkeypatch.setattr(setup, "_kept_dense", lambda plan: ["a layer the selection kept dense"])
    section = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 3.0},
               "rank_learning": {"num_epochs": 2}}
    ctrl, model = compress(td_block=section, quantization=False)
    td = td_ctrl(ctrl)
    selections = [s for s, _ in asked]
    assert selections[:4] == ["search"] * 4 and "uniform" in selections  # 1 try + 3 raised, then uniform
    first_uniform = asked[selections.index("uniform")]
    assert first_uniform[1] == pytest.approx(3.0 ** 0.5)  # back at the first initial_ratio
    assert td.plan["rank_selection"] == "uniform"
    assert real(td.plan) >= 3.0 and td.achieved_ratio >= td.rl["initial_ratio"]

    given = {**section, "rank_selection": "search"}
    with pytest.raises(TDConfigError, match=r"rank_learning\.initial_ratio: at .* the selection decomposed"):
        compress(td_block=given, quantization=False)


def test_stripping_before_the_freeze_warns_with_the_likely_cause(monkeypatch):
    """A loop that never calls epoch_step() leaves the budget at its start and never freezes; stripping then warns
    (naming epoch_step) instead of silently exporting a model short of the target. After the freeze: no warning."""
    from nncf_tdplugin.rank_learning import controller as controller_module

    warnings = []
    monkeypatch.setattr(controller_module.nncf_logger, "warning", warnings.append)
    data = fixed_data()
    ctrl, model = compress(td_block=block(), quantization=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in data * 3:  # three "epochs" of steps, no epoch_step()
        ctrl.scheduler.step()
        loss = torch.nn.functional.cross_entropy(model(x), y) + ctrl.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    td = td_ctrl(ctrl)
    assert td.compression_stage() != CompressionStage.FULLY_COMPRESSED and td.achieved_ratio < 3.0
    ctrl.strip_model(model, do_copy=True)
    ours = [w for w in warnings if "before the ranks were frozen" in w]  # (soft masking adds its own warning)
    assert len(ours) == 1 and "scheduler.epoch_step()" in ours[0] and "target 3.000x" in ours[0]

    warnings.clear()
    ctrl, model = compress(td_block=block(), quantization=False)
    run_epochs(ctrl, model, 3, data)
    assert td_ctrl(ctrl).compression_stage() == CompressionStage.FULLY_COMPRESSED
    ctrl.strip_model(model, do_copy=True)
    assert not [w for w in warnings if "before the ranks were frozen" in w], warnings


@pytest.mark.parametrize("selection", ["uniform", "search"])
def test_unreachable_target_with_every_candidate_decomposed_is_not_chased_by_raising_initial_ratio(
        selection, monkeypatch):
    """With every candidate layer decomposed at the first initial_ratio, a higher one cannot reach more: the error
    comes at once, in terms of the user's target, and names what can help. (Raising it used to end in the selector's
    "budget target_ratio=13.7531 is unreachable", a ratio the user never set.)"""
    from nncf_tdplugin.rank_learning import setup

    infos = []
    monkeypatch.setattr(setup.nncf_logger, "info", infos.append)
    section = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 20.0},
               "rank_selection": selection, "constraints": {"min_rank": 4}, "rank_learning": {"num_epochs": 2}}
    with pytest.raises(TDConfigError) as info:
        compress(td_block=section, quantization=False)
    message = str(info.value)
    assert message.startswith("tensor_decomposition.rank_learning.initial_ratio: at 4.472 the selection decomposed")
    assert "below budget.target_ratio 20.0" in message and "13.75" not in message
    assert "every candidate layer is decomposed already" in message and "constraints.min_rank (4)" in message
    assert not [m for m in infos if "decomposing again" in m], infos

    # with candidates kept dense the ratio is raised; a raised ratio the selector cannot reach (13.753 here) keeps
    # the last reachable plan, and the error is again about the user's target
    monkeypatch.setattr(setup, "_kept_dense", lambda plan: ["conv2"])
    with pytest.raises(TDConfigError) as info:
        compress(td_block=section, quantization=False)
    message = str(info.value)
    assert message.startswith("tensor_decomposition.rank_learning.initial_ratio: at 9.457 the selection decomposed")
    assert "below budget.target_ratio 20.0; raise initial_ratio (1 candidate layer(s)" in message
    assert [m for m in infos if "keeping the plan at initial_ratio 9.457" in m]


def test_frozen_ranks_that_measure_slower_than_the_grid_are_projected_again(tmp_path, monkeypatch):
    """At the freeze the frozen ranks are measured; when the measurement misses the target (here every decomposed
    layer "measures" 15% slower than the grid's interpolation), the measured costs replace the grid at those ranks
    and the ranks are projected again, until the measurement meets the target or the rounds run out (then NOT met
    is logged and shown). The grid itself is analytic (:func:`analytic_latency`): with real timings a loaded machine
    can leave the smallest ranks too slow for the tightened budget."""
    from nncf_tdplugin.latency_model import LatencyCostModel

    analytic_latency(monkeypatch)
    ctrl, model = compress(ConvStack(), td_block=latency_block(tmp_path / "cache", target=1.4), quantization=False)
    td = td_ctrl(ctrl)
    grids = td.info["latency_grid"]
    monkeypatch.setattr(LatencyCostModel, "measure_choices", lambda self, chosen: None)
    monkeypatch.setattr(LatencyCostModel, "cost", lambda self, name, method, ranks: 1.15 * interpolate(
        grids[name]["axes"], grids[name]["values"], ranks))
    measured = []
    real_measure = td.measure_final_latency
    monkeypatch.setattr(td, "measure_final_latency", lambda: measured.append(real_measure()) or measured[-1])
    run_epochs(ctrl, model, 3, fixed_data())
    assert td.compression_stage() == CompressionStage.FULLY_COMPRESSED
    first, last = measured[0], measured[-1]
    assert td.info["dense_total"] / first["predicted_ms"] >= 1.4 > first["measured_ratio"]  # the grid said met
    assert first["measured_ms"] == pytest.approx(td.info["fixed_cost"] + 1.15 * (
        first["predicted_ms"] - td.info["fixed_cost"]))
    assert len(measured) == 2  # one projection onto the tightened budget meets it
    channels = [sum(sum(r) for r in m["ranks"].values()) for m in measured]
    assert channels[-1] < channels[0]
    # the measurements are kept per layer and rank, and the budget reads them at the frozen ranks
    for name, ranks in last["ranks"].items():
        assert td.info["measured_ms"][name][rank_key(ranks)] == pytest.approx(
            1.15 * interpolate(grids[name]["axes"], grids[name]["values"], ranks))
    assert td.current_ranks() == last["ranks"] and td.info["final_latency"] == last
    assert td.current_cost() == pytest.approx(last["measured_ms"])
    assert last["measured_ratio"] >= 1.4
    assert "Frozen ranks, measured" in ctrl.statistics().to_str()
