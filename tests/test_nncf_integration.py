"""The algorithm through NNCF's public API: create_compressed_model, training, statistics, checkpoints."""

import io

import pytest
import torch
from nncf.api.compression import CompressionStage
from nncf.torch.layers import NNCFConv2d, NNCFLinear

from nncf_tdplugin.layers import DecomposedConv2d, DecomposedLinear
from nncf_tdplugin.nncf_integration import builder as builder_module
from tests.models import LowRankCNN
from tests.nncf_helpers import compress, train_steps


def _factor_modules(model):
    for name, module in model.named_modules():
        if isinstance(module, (DecomposedConv2d, DecomposedLinear)):
            for child_name, child in module.named_children():
                yield f"{name}.{child_name}", child


def test_default_block_with_quantization_compresses_trains_and_reports():
    ctrl, model = compress()  # the default block: search, params 2x over the decomposable layers
    decomposed = {n: m for n, m in model.named_modules() if isinstance(m, (DecomposedConv2d, DecomposedLinear))}
    assert {"conv2", "conv3"} <= set(decomposed) <= {"conv2", "conv3", "conv4", "fc1"}  # never conv1, dw, fc
    factors = list(_factor_modules(model))
    assert len(factors) == sum(len(m) for m in decomposed.values())
    for name, factor in factors:
        assert isinstance(factor, (NNCFConv2d, NNCFLinear)), name
        assert any("Quantize" in type(op.op).__name__ for op in factor.pre_ops.values()), f"{name} has no WQ"

    stats = ctrl.statistics()
    td = stats.tensor_decomposition
    assert td.budget_scope == "decomposable" and 2.0 <= td.achieved_ratio <= 2.0 * 1.02
    assert td.params_ratio > 1.5  # whole model, the dense conv1/dw/fc included
    assert all(e["relative_error"] < 0.05 for e in td.layers.values())  # low-rank weights: small errors
    assert sum(p.numel() for n, p in model.named_parameters() if "_nncf" not in n and "pre_ops" not in n
               and "post_ops" not in n) == td.params_after
    text = stats.to_str()
    for expected in ("tensor decomposition", "conv3", "tucker2", "Rel. error", "first layer", "grouped conv",
                     "last layer", "quantization", "Budget reached"):
        assert expected in text
    assert ctrl.compression_stage() == CompressionStage.FULLY_COMPRESSED
    loss = ctrl.loss()
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0

    losses = train_steps(ctrl, model, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_reconstruction_error_is_small_on_low_rank_weights():
    ctrl, _ = compress(td_block={"algorithm": "tensor_decomposition", "rank_selection": "fraction",
                                 "rank_fraction": 0.5}, quantization=False)
    layers = ctrl.statistics().tensor_decomposition.layers
    assert layers["conv3"]["ranks"] == [32, 32]
    assert all(entry["relative_error"] < 0.05 for entry in layers.values()), layers


def test_flops_budget_is_met():
    ctrl, _ = compress(td_block={"algorithm": "tensor_decomposition",
                                 "budget": {"metric": "flops", "target_ratio": 1.5}}, quantization=False)
    td = ctrl.statistics().tensor_decomposition
    assert td.budget_metric == "flops" and td.macs_ratio >= 1.5


def test_explicit_per_layer_ranks_and_methods():
    block = {
        "algorithm": "tensor_decomposition",
        "rank_selection": "fraction",
        "rank_fraction": 0.5,
        "layers": {"conv3": {"method": "cp", "ranks": 24}, "conv2": {"ranks": [12, 6]}, "fc1": {"exclude": True},
                   "{re}conv4": {"ranks": 0.25}},
    }
    ctrl, model = compress(td_block=block, quantization=False)
    assert model.conv3.method == "cp" and model.conv3.ranks == (24,)
    assert model.conv2.method == "tucker2" and model.conv2.ranks == (12, 6)
    assert model.conv4.ranks == (16,)  # 0.25 of min(128, 64)
    assert not isinstance(model.fc1, DecomposedLinear)
    assert "excluded" in ctrl.statistics().tensor_decomposition.skipped["fc1"]


def test_checkpoint_round_trip_restores_without_decomposing(monkeypatch):
    ctrl, model = compress()
    train_steps(ctrl, model, steps=2)
    buffer = io.BytesIO()
    torch.save({"state": ctrl.get_compression_state(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    from nncf.api.compression import CompressionStage as Stage
    from nncf.common.quantization.structs import QuantizationScheme
    with torch.serialization.safe_globals([Stage, QuantizationScheme]):
        checkpoint = torch.load(buffer, weights_only=True)

    def no_decomposition(*args, **kwargs):
        raise AssertionError("resume must not decompose again")

    monkeypatch.setattr(builder_module, "decompose_layer", no_decomposition)
    ctrl2, model2 = compress(LowRankCNN(noise=0.5), compression_state=checkpoint["state"])
    model2.load_state_dict(checkpoint["model"])
    x = torch.randn(4, 3, 32, 32)
    model.eval(), model2.eval()
    assert torch.equal(model(x), model2(x))
    assert ctrl2.statistics().to_str() == ctrl.statistics().to_str()
    assert ctrl2.get_compression_state()["builder_state"] == checkpoint["state"]["builder_state"]


def test_strip_and_onnx_export(tmp_path):
    ctrl, model = compress()
    stripped = ctrl.strip()
    kinds = {type(m).__name__ for m in stripped.modules()}
    assert "FakeQuantize" in kinds and not kinds & {"SymmetricQuantizer", "AsymmetricQuantizer"}
    path = tmp_path / "model.onnx"
    ctrl.export_model(str(path))
    import onnx

    graph = onnx.load(str(path)).graph
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in stripped.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in stripped.modules())
    assert convs > 5 and linears >= 2
    assert sum(n.op_type == "Conv" for n in graph.node) == convs  # every factor is a plain ONNX Conv
    assert sum(n.op_type in ("Gemm", "MatMul") for n in graph.node) == linears


@pytest.mark.parametrize("selection", ["energy", "vbmf", "search"])
def test_budgeted_selectors_through_the_config(selection):
    block = {"algorithm": "tensor_decomposition", "rank_selection": selection, "budget": {"target_ratio": 2.5},
             "constraints": {"rank_multiple": 4}}
    ctrl, _ = compress(td_block=block, quantization=False)
    td = ctrl.statistics().tensor_decomposition
    assert 2.5 <= td.params_ratio
    if selection == "search":
        assert td.params_ratio <= 2.5 * 1.02  # the repair lands within 2% under the budget
    for entry in td.layers.values():
        assert all(r % 4 == 0 or r == f for r, f in zip(entry["ranks"], entry["full_ranks"]))


@pytest.mark.parametrize("selection", ["uniform", "search"])
def test_additional_flops_budget_through_the_config(selection):
    params_only = {"algorithm": "tensor_decomposition", "rank_selection": selection,
                   "budget": {"metric": "params", "target_ratio": 2.0}}
    td_alone = compress(td_block=params_only, quantization=False)[0].statistics().tensor_decomposition
    flops_target = round(td_alone.macs_ratio * 1.5, 2)  # tighter than what the parameter budget gives
    both = {**params_only, "budget": {**params_only["budget"],
                                      "additional": [{"metric": "flops", "target_ratio": flops_target}]}}
    ctrl, _ = compress(td_block=both, quantization=False)
    td = ctrl.statistics().tensor_decomposition
    assert td.params_ratio >= 2.0 and td.macs_ratio >= flops_target, (td.params_ratio, td.macs_ratio)
    plan = ctrl.get_compression_state()["builder_state"]["tensor_decomposition"]["plan"]
    assert plan["additional"] == [{"metric": "flops", "target_ratio": flops_target,
                                   "achieved_ratio": pytest.approx(td.macs_ratio)}]
    assert "Also flops budget" in td.to_str()
    assert f"{flops_target:.3f}x target, {td.macs_ratio:.3f}x reached (model)" in td.to_str()


def test_auto_method_search_and_resume_without_searching(monkeypatch):
    block = {"algorithm": "tensor_decomposition", "rank_selection": "search", "method": "auto",
             "budget": {"metric": "flops", "target_ratio": 2.0}}
    ctrl, model = compress(td_block=block)
    plan = ctrl.get_compression_state()["builder_state"]["tensor_decomposition"]["plan"]
    assert {e["method"] for e in plan["layers"].values()} <= {"tucker2", "svd"}
    assert ctrl.statistics().tensor_decomposition.macs_ratio >= 2.0

    from nncf_tdplugin.rank_selection import RANK_SELECTORS

    def no_search():
        raise AssertionError("resume must not search again")

    monkeypatch.setitem(RANK_SELECTORS, "search", no_search)
    ctrl2, model2 = compress(LowRankCNN(), td_block=block, compression_state=ctrl.get_compression_state())
    model2.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), model2.eval()(x))


def test_default_budget_is_reachable_when_dense_layers_dominate():
    class BigHead(torch.nn.Module):  # the kept-dense classifier holds most of the parameters
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.conv3 = torch.nn.Conv2d(32, 32, 3, padding=1)
            self.fc = torch.nn.Linear(32 * 32 * 32, 10)

        def forward(self, x):
            x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
            return self.fc(x.flatten(1))

    ctrl, model = compress(BigHead(), quantization=False)
    td = ctrl.statistics().tensor_decomposition
    assert td.achieved_ratio >= 2.0 and td.params_ratio < 1.1  # 2x on what can be decomposed
    with pytest.raises(ValueError, match="unreachable"):
        compress(BigHead(), td_block={"algorithm": "tensor_decomposition", "budget": {"target_ratio": 2.0}},
                 quantization=False)


def test_strip_returns_a_copy_when_asked():
    ctrl, model = compress(td_block={"algorithm": "tensor_decomposition", "rank_selection": "fraction",
                                     "rank_fraction": 0.5}, quantization=False)  # the only algorithm
    copied = ctrl.strip()  # do_copy=True is the default
    assert copied is not model and copied.conv3 is not model.conv3
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(copied.eval()(x), model.eval()(x))
    assert ctrl.strip(do_copy=False) is model


def test_frozen_layer_gives_frozen_factors_also_on_resume():
    def frozen_conv3():
        m = LowRankCNN()
        for p in m.conv3.parameters():
            p.requires_grad_(False)
        return m

    block = {"algorithm": "tensor_decomposition", "rank_selection": "fraction", "rank_fraction": 0.5}
    ctrl, model = compress(frozen_conv3(), td_block=block, quantization=False)
    ctrl2, model2 = compress(frozen_conv3(), td_block=block, quantization=False,
                             compression_state=ctrl.get_compression_state())
    for m in (model, model2):
        conv3 = dict(m.conv3.named_parameters())
        assert "out_proj.bias" in conv3 and not any(p.requires_grad for p in conv3.values()), \
            {n: p.requires_grad for n, p in conv3.items()}
        assert all(p.requires_grad for p in m.conv2.parameters())


def test_knowledge_distillation_before_decomposition_keeps_a_dense_teacher():
    import nncf
    from nncf.torch import create_compressed_model

    config = nncf.NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": [{"algorithm": "knowledge_distillation", "type": "softmax"},
                        {"algorithm": "tensor_decomposition", "rank_selection": "fraction", "rank_fraction": 0.5}],
    })
    ctrl, model = create_compressed_model(LowRankCNN(), config)
    assert isinstance(model.conv3, DecomposedConv2d)
    teacher = model.nncf._kd_loss_handler._kd_original_model  # NNCF-private: where KD keeps its teacher
    assert not any(isinstance(m, (DecomposedConv2d, DecomposedLinear)) for m in teacher.modules())


def test_compression_rate_is_in_the_budget_metric_and_scope():
    block = {"algorithm": "tensor_decomposition", "rank_selection": "uniform",
             "budget": {"metric": "flops", "target_ratio": 1.5, "scope": "decomposable"}}
    ctrl, _ = compress(td_block=block, quantization=False)
    td = ctrl.statistics().tensor_decomposition
    assert td.achieved_ratio >= 1.5
    assert ctrl.compression_rate == pytest.approx(1 - 1 / td.achieved_ratio)
    assert ctrl.compression_rate != pytest.approx(1 - 1 / td.macs_ratio)  # not the whole-model ratio
    assert ctrl.compression_rate != pytest.approx(1 - 1 / td.params_ratio)  # nor the parameters
    with pytest.raises(AttributeError, match="budget.target_ratio"):  # fixed ranks: the rate cannot be set
        ctrl.compression_rate = 0.5
    assert ctrl.compression_rate == pytest.approx(1 - 1 / td.achieved_ratio)


def test_fixed_energy_threshold_records_no_target():
    ctrl, _ = compress(td_block={"algorithm": "tensor_decomposition", "rank_selection": "energy",
                                 "energy_threshold": 0.9}, quantization=False)
    assert ctrl.plan["target_ratio"] is None
    td = ctrl.statistics().tensor_decomposition
    assert td.target_ratio is None
    row = next(line for line in td.to_str().splitlines() if "Target ratio" in line)
    assert "x" not in row.replace("Target ratio", "") and "-" in row


class BNWeightedNet(torch.nn.Module):
    """A stem, a 3x3 conv whose output feeds only a BatchNorm with gammas over three decades, a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(32)
        self.fc = torch.nn.Linear(32, 10)
        with torch.no_grad():
            self.bn.weight.copy_(torch.logspace(-2, 1, 32)[torch.randperm(32)])
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.bn(self.conv(torch.relu(self.stem(x))))
        return self.fc(torch.relu(x).mean((2, 3)))


def _after_bn_error(original, stripped) -> float:
    """Relative error of conv -> BN (what the rest of the network sees) on random inputs to the conv."""
    h = torch.randn(4, 16, 16, 16)
    with torch.no_grad():
        ref = original.bn(original.conv(h))
        return float((stripped.bn(stripped.conv(h)) - ref).norm() / ref.norm())


def test_bn_aware_through_the_config_weights_the_error_by_the_following_batchnorm():
    import copy

    original = BNWeightedNet().eval()
    errors, weighted = {}, {}
    for bn_aware in (False, True):
        block = {"algorithm": "tensor_decomposition", "layers": {"conv": {"method": "tucker2", "ranks": [8, 8]}},
                 "decomposition": {"bn_aware": bn_aware}}
        ctrl, _ = compress(model=copy.deepcopy(original), td_block=block, quantization=False)
        weighted[bn_aware] = ctrl.plan["layers"]["conv"]["bn_weighted"]
        errors[bn_aware] = _after_bn_error(original, ctrl.strip().eval())
    assert weighted == {False: False, True: True}
    # the channels the BatchNorm amplifies are approximated better: a clearly lower error after it
    assert errors[True] < 0.8 * errors[False], errors


def test_first_and_last_layers_are_decomposed_when_not_skipped():
    block = {"algorithm": "tensor_decomposition", "skip_first_layer": False, "skip_last_layer": False,
             "budget": {"metric": "params", "target_ratio": 1.3}}
    ctrl, _ = compress(model=BNWeightedNet(), td_block=block, quantization=False)
    stats = ctrl.statistics().tensor_decomposition
    # candidates of the search like the others (it may keep them dense, saying so)
    assert all(stats.skipped.get(name, "search:").startswith("search:") for name in ("stem", "fc")), stats.skipped
    ctrl, _ = compress(model=BNWeightedNet(), td_block={"algorithm": "tensor_decomposition",
                                                        "budget": {"metric": "params", "target_ratio": 1.3}},
                       quantization=False)
    skipped = ctrl.statistics().tensor_decomposition.skipped
    assert skipped["stem"] == "first layer (skip_first_layer)" and skipped["fc"] == "last layer (skip_last_layer)"


def test_auto_methods_with_cp_only_resume_the_cp_factors_exactly(monkeypatch):
    """``method: "auto"`` with ``auto_methods: ["cp"]``: every k x k conv the search decomposes is CP (1x1 convs and
    Linear layers stay SVD), quantized; a checkpoint resumes the CP factors without running CP-ALS again."""
    from nncf_tdplugin import td_controller

    block = {"algorithm": "tensor_decomposition", "method": "auto", "auto_methods": ["cp"],
             "budget": {"metric": "params", "target_ratio": 1.3}, "decomposition": {"cp_iterations": 25},
             "ignored_scopes": ["{re}.*conv3.*"]}  # one CP-ALS menu (conv2's) keeps the test short
    ctrl, model = compress(td_block=block)
    train_steps(ctrl, model, steps=1)
    layers = td_controller(ctrl).plan["layers"]
    assert layers["conv2"]["method"] == "cp" and "conv3" not in layers, layers
    assert all(e["method"] == "svd" for n, e in layers.items() if n in ("conv4", "fc1"))

    def no_decomposition(*args, **kwargs):
        raise AssertionError("resume must not decompose again")

    monkeypatch.setattr(builder_module, "decompose_layer", no_decomposition)
    ctrl2, model2 = compress(LowRankCNN(noise=0.5), td_block=block, compression_state=ctrl.get_compression_state())
    model2.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), model2.eval()(x))
    assert td_controller(ctrl2).plan["layers"] == layers


class AliasedNet(torch.nn.Module):
    """The last block is registered twice (``blocks[2]`` and the alias ``last_block``) and called as the alias."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(3)])
        self.last_block = self.blocks[-1]
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks[:-1]:
            x = torch.relu(block(x))
        return self.fc(torch.relu(self.last_block(x)).mean((2, 3)))


def test_an_aliased_layer_is_decomposed_under_every_name():
    """Replacing only the first name left the alias, the one called, dense: 2.0x planned, 1.22x real."""
    net = AliasedNet()
    dense_params = sum(p.numel() for p in net.parameters())
    from nncf_tdplugin import td_controller

    block = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 2.0},
             "layers": {"blocks.2": {"method": "tucker2", "ranks": [8, 8]}}}
    ctrl, _ = compress(model=net, td_block=block, quantization=False)
    stripped = ctrl.strip().eval()
    assert stripped.last_block is stripped.blocks[2] and isinstance(stripped.last_block, DecomposedConv2d)
    real = dense_params / sum(p.numel() for p in stripped.parameters())
    assert real == pytest.approx(td_controller(ctrl).plan["achieved_ratio"]) and real >= 2.0


class TiedNet(torch.nn.Module):
    """``b`` uses ``a``'s weight tensor (tied weights); each is called once."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.a = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.b = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.b.weight = self.a.weight
        self.c = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.fc(x.mean((2, 3)))


def test_layers_with_tied_weights_stay_dense_and_tied():
    """Decomposing each of two tied layers untied them and counted the shared weight twice (2.03x planned, 1.15x
    real)."""
    ctrl, _ = compress(model=TiedNet(), td_block={"algorithm": "tensor_decomposition",
                                                  "budget": {"metric": "params", "target_ratio": 1.2}},
                       quantization=False)
    skipped = ctrl.statistics().tensor_decomposition.skipped
    assert skipped["a"] == "tied weights (a parameter is shared with b)", skipped
    assert skipped["b"] == "tied weights (a parameter is shared with a)", skipped
    stripped = ctrl.strip()
    assert stripped.a.weight is stripped.b.weight and isinstance(stripped.c, DecomposedConv2d)


def test_a_weight_read_outside_the_layers_forward_names_the_layer():
    """A Linear whose weight the parent also reads (tied projections): NNCF's re-trace failed with
    "'DecomposedLinear' object has no attribute 'weight'", naming neither the layer nor the cause."""
    from nncf_tdplugin import TDConfigError

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
            self.proj = torch.nn.Linear(32, 64)
            self.fc = torch.nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.proj(torch.relu(self.stem(x)).mean((2, 3))))
            return self.fc(torch.nn.functional.linear(h, self.proj.weight.t()))

    block = {"algorithm": "tensor_decomposition", "layers": {"proj": {"ranks": 8}}}
    with pytest.raises(TDConfigError, match=r"layer 'proj' was decomposed, but the model reads its 'weight' "
                                            r"outside the layer's own forward \(.*test_nncf_integration\.py:\d+"):
        compress(model=Net(), td_block=block, quantization=False)
    block["layers"]["proj"] = {"exclude": True}  # the suggested fix
    compress(model=Net(), td_block=block, quantization=False)


class UnsupportedLayersNet(torch.nn.Module):
    """A Conv1d, a ConvTranspose2d and a MultiheadAttention (NNCF does not trace its fused call, so the classifier
    after it has no traced input)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.c1 = torch.nn.Conv1d(32, 32, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(32, 32, 2, stride=2)
        self.mid = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.attn = torch.nn.MultiheadAttention(64, 4, batch_first=True)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        b, c, h, w = x.shape
        x = torch.relu(self.mid(self.up(self.c1(x.flatten(2)).reshape(b, c, h, w))))
        t = x.flatten(2).transpose(1, 2)
        return self.fc(self.attn(t, t, t)[0].mean(1))


def test_weighted_layers_the_algorithm_cannot_touch_are_listed_with_the_reason():
    """They were missing from the statistics (a ViT's attention projections are a third of its weights)."""
    from nncf_tdplugin import td_controller

    block = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 1.05}}
    ctrl, _ = compress(model=UnsupportedLayersNet(), td_block=block, quantization=False)
    skipped = td_controller(ctrl).statistics().tensor_decomposition.skipped
    assert skipped["c1"] == "Conv1d: only Conv2d and Linear are decomposed"
    assert skipped["up"] == "ConvTranspose2d: only Conv2d and Linear are decomposed"
    assert skipped["attn"].startswith("MultiheadAttention: its projections are weights of one fused call")
    assert "attn.out_proj" not in skipped  # a Linear that is never called: covered by its attention module
    assert skipped["fc"].startswith("not a traced call in NNCF's graph")
    assert skipped["stem"] == "first layer (skip_first_layer)"
