"""OpenVINO export: outputs equal torch, INT8 weights after NNCF quantization (factors included), pinned precision,
latency measured in separate, interleaved worker processes."""

import copy
import pathlib

import nncf
import openvino as ov
import pytest
import torch
from nncf.torch import create_compressed_model
from torch import nn

from nncf_tdplugin.export import (
    compile_openvino,
    count_int8_weights,
    export_openvino,
    measure_latency,
    measure_many,
    run_openvino,
)
from nncf_tdplugin.export import latency as latency_module
from tests.models import low_rank_conv_weight, low_rank_matrix
from tests.nncf_helpers import compress

SIZE = [1, 3, 16, 16]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc(x)


def _trained_bn(model):
    """Non-trivial BN statistics, so that BN folding in the conversion is actually exercised."""
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *SIZE[1:]) * 2 + 1)
    return model


def _weight_types(xml):
    return {c.get_element_type() for c in ov.Core().read_model(str(xml)).get_ordered_ops()
            if c.get_type_name() == "Constant"}


def test_small_cnn_f32_matches_torch_and_keeps_f32_weights(tmp_path):
    model = _trained_bn(SmallCNN())
    x = torch.randn(3, *SIZE[1:])
    xml = export_openvino(model, x[:1], tmp_path / "cnn.xml")
    assert xml == tmp_path / "cnn.xml" and xml.with_suffix(".bin").is_file()
    assert model.training, "export must give a module its training mode back"
    with torch.no_grad():
        expected = model.eval()(x)
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32", threads=1), x))
    assert float((got - expected).norm() / expected.norm()) < 1e-4
    assert ov.Type.f16 not in _weight_types(xml)
    counts = count_int8_weights(xml)
    assert (counts["ops"], counts["int8_weight_ops"]) == (3, 0), counts["per_op"]

    half = export_openvino(model, x[:1], tmp_path / "cnn_fp16.xml", compress_to_fp16=True)
    assert ov.Type.f16 in _weight_types(half)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"precision must be one of \('f32', 'bf16', 'default'\), got 'fp16'"):
        compile_openvino(tmp_path / "x.xml", precision="fp16")
    with pytest.raises(FileNotFoundError, match="no OpenVINO IR at .*missing.xml"):
        compile_openvino(tmp_path / "missing.xml")
    with pytest.raises(ValueError, match=r"must end with \.xml.*got '.*model\.onnx'"):
        export_openvino(nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "model.onnx")
    with pytest.raises(TypeError, match="got object"):
        export_openvino(object(), torch.randn(1, 2), tmp_path / "model.xml")
    with pytest.raises(ValueError, match="got 'int4'"):
        measure_latency(tmp_path / "x.xml", SIZE, precision="int4")


def test_nncf_quantized_cnn_has_int8_weights_on_every_conv_and_matmul(tmp_path):
    config = nncf.NNCFConfig.from_dict({
        "input_info": {"sample_size": SIZE},
        "compression": {"algorithm": "quantization",
                        "initializer": {"range": {"num_init_samples": 0},
                                        "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}},
    })
    ctrl, _ = create_compressed_model(_trained_bn(SmallCNN()), config)
    stripped = ctrl.strip().eval()
    x = torch.randn(2, *SIZE[1:])
    with torch.no_grad():
        expected = stripped(x)
    xml = export_openvino(stripped, x[:1], tmp_path / "int8.xml")
    counts = count_int8_weights(xml)
    assert counts["ops"] == 3 and counts["int8_weight_ops"] == 3, counts["per_op"]
    assert {op[1] for op in counts["per_op"]} == {"Convolution", "MatMul"}
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32"), x))
    # INT8 fake-quantisation can round a value across a bucket edge differently; outputs still agree closely
    assert float((got - expected).norm() / expected.norm()) < 2e-2


class SmallLowRankNet(nn.Module):
    """A k x k conv (Tucker-2 target) and a Linear (SVD target) with low-rank weights; small, so decomposing it
    takes well under a second (tests.models.LowRankCNN's HOOI takes ~10 s on a busy 2-core CPU)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.fc1 = nn.Linear(32, 32)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            self.conv2.weight.copy_(low_rank_conv_weight(32, 16, 3, 6, 4, noise=0.01))
            self.fc1.weight.copy_(low_rank_matrix(32, 32, 4, noise=0.01))

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean((2, 3))
        return self.fc(torch.relu(self.fc1(x)))


def test_every_decomposed_factor_carries_int8_weights(tmp_path):
    ctrl, _ = compress(model=SmallLowRankNet())  # tensor_decomposition + quantization
    stripped = ctrl.strip().eval()
    names = {type(m).__name__ for m in stripped.modules()}
    assert {"DecomposedConv2d", "DecomposedLinear"} <= names, names
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stripped(x)
    xml = export_openvino(ctrl, x[:1], tmp_path / "td_int8.xml")  # the controller path: strips a copy
    counts = count_int8_weights(xml)
    weighted = [m for m in stripped.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 1 + 3 + 2 + 1  # conv1, conv2's Tucker-2 factors, fc1's SVD factors, fc
    assert counts["ops"] == len(weighted), counts["per_op"]  # one IR op per torch layer
    assert counts["int8_weight_ops"] == counts["ops"], counts["per_op"]
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32"), x))
    assert float((got - expected).norm() / expected.norm()) < 2e-2


def test_latency_is_measured_in_a_separate_process_with_precision_recorded(tmp_path):
    xml = export_openvino(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.randn(*SIZE), tmp_path / "tiny.xml")
    result = measure_latency(xml, SIZE, precision="f32", threads=1, warmup=2, iterations=10, repeats=2,
                             profile=True)
    assert 0 < result.min_ms <= result.median_ms and result.spread_ms >= 0 and len(result.repeat_medians_ms) == 2
    assert result.precision == result.runtime_precision == "f32" and result.threads == 1
    assert result.profile_ms_by_type and "Convolution" in result.profile_ms_by_type
    assert all(v >= 0 for v in result.profile_ms_by_kernel.values())
    # one Convolution node per inference (the ReLU is fused into it)
    conv = [k for k in result.profile_nodes_by_kernel if k.startswith("Convolution:")]
    assert sum(result.profile_nodes_by_kernel[k] for k in conv) == 1, result.profile_nodes_by_kernel
    assert result.profile_mean_ms > 0


def test_latency_times_every_ir_at_the_static_input_shape(tmp_path):
    # export_openvino leaves the batch dynamic (ov.convert_model's default); an IR converted with a fixed input is
    # static. Both are compiled for the timed shape, so a dynamically shaped graph pays no per-inference shape
    # inference that a static one does not.
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    dynamic_xml = export_openvino(net, torch.randn(*SIZE), tmp_path / "dynamic.xml")
    assert ov.Core().read_model(str(dynamic_xml)).input(0).get_partial_shape().is_dynamic
    static_xml = tmp_path / "static.xml"
    ov.save_model(ov.convert_model(net.eval(), example_input=torch.randn(*SIZE), input=[tuple(SIZE)]),
                  str(static_xml))
    dynamic, static = measure_many([(dynamic_xml, SIZE), (static_xml, SIZE)], precision="f32", threads=1,
                                   warmup=2, iterations=5, repeats=1)
    assert dynamic.reshaped_from_dynamic and not static.reshaped_from_dynamic
    with pytest.raises(RuntimeError, match=r"cannot take the timed shape \[1, 3, 8, 8\]"):
        measure_latency(static_xml, [1, 3, 8, 8], precision="f32", threads=1, warmup=1, iterations=1, repeats=1)


@pytest.mark.parametrize("interleave, expected", [(True, ["a", "b", "a", "b", "a", "b"]),
                                                  (False, ["a", "a", "a", "b", "b", "b"])])
def test_measure_many_interleaves_repeats(tmp_path, monkeypatch, interleave, expected):
    for name in "ab":
        (tmp_path / f"{name}.xml").write_text("")
    calls = []

    def fake_worker(xml, shape, precision, threads, warmup, iterations, profile, timeout_s):
        calls.append(pathlib.Path(xml).stem)
        return {"times_ms": [1.0, 2.0, 3.0], "runtime_precision": precision, "threads": threads}

    monkeypatch.setattr(latency_module, "_run_worker", fake_worker)
    results = measure_many([(tmp_path / "a.xml", SIZE), (tmp_path / "b.xml", SIZE)], repeats=3,
                           interleave=interleave)
    assert calls == expected
    assert [r.xml for r in results] == [str(tmp_path / "a.xml"), str(tmp_path / "b.xml")]
    assert results[0].median_ms == 2.0 and results[0].repeat_medians_ms == [2.0, 2.0, 2.0]


class TinyAttention(nn.Module):
    """One Linear and two activation-by-activation MatMuls whose second input passes through ops with constant
    inputs (Multiply by a scalar, Reshape): those constants are not weights."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        q = self.proj(x)
        return torch.softmax(q @ (x * 0.5).transpose(1, 2), -1) @ x.reshape(1, 4, 8)


def test_activation_matmuls_are_not_counted_as_weight_ops(tmp_path):
    xml = export_openvino(TinyAttention(), torch.randn(1, 4, 8), tmp_path / "attn.xml")
    counts = count_int8_weights(xml)
    assert [op[1:] for op in counts["per_op"]] == [("MatMul", False)], counts["per_op"]


def test_export_after_training_with_knowledge_distillation(tmp_path):
    """NNCF keeps the last training step's KD loss (a tensor with a graph) in the model; exporting through the
    controller strips a deep copy, which must not trip over it."""
    from tests.nncf_helpers import make_config

    config = make_config({"algorithm": "tensor_decomposition"}, quantization=False)
    config["compression"] = [{"algorithm": "knowledge_distillation", "type": "softmax"}, *config["compression"]]
    ctrl, model = create_compressed_model(SmallLowRankNet(), config)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    loss = model(x).sum() + ctrl.loss()
    assert loss.requires_grad and float(ctrl.loss()) > 0  # the KD term is there
    loss.backward()
    xml = export_openvino(ctrl, x[:1], tmp_path / "kd.xml")
    model.eval()
    with torch.no_grad():
        expected = ctrl.strip(do_copy=True)(x)
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32"), x))
    assert float((got - expected).norm() / expected.norm()) < 1e-4


class PaddedCPNet(nn.Module):
    """A reflect-padded 3x3 conv (traced as pad + conv2d; Tucker-2 keeps the pad before its core), a circular-padded
    dilated one, and a 3x3 conv for CP (two depthwise factors between 1x1s)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.circular = nn.Conv2d(16, 16, 3, padding=2, dilation=2, padding_mode="circular", bias=False)
        self.cp = nn.Conv2d(16, 24, 3, padding=1, stride=2)
        self.fc = nn.Linear(24, 10)
        with torch.no_grad():
            for conv in (self.reflect, self.circular):
                conv.weight.copy_(low_rank_conv_weight(16, 16, 3, 6, 6, noise=0.01))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.circular(torch.relu(self.reflect(x))))
        return self.fc(torch.relu(self.cp(x)).mean((2, 3)))


PADDED_CP_BLOCK = {"algorithm": "tensor_decomposition", "skip_first_layer": True, "skip_last_layer": True,
                   "layers": {"reflect": {"method": "tucker2", "ranks": [8, 8]},
                              "circular": {"method": "tucker2", "ranks": [8, 8]},
                              "cp": {"method": "cp", "ranks": 12}}}


@pytest.mark.parametrize("quantization", [False, True])
def test_cp_factors_and_padding_modes_export_equal_to_torch(tmp_path, quantization):
    original = PaddedCPNet().eval()
    ctrl, _ = compress(model=copy.deepcopy(original), td_block=PADDED_CP_BLOCK, quantization=quantization)
    stripped = ctrl.strip().eval()
    decomposed = {name: (m.method, tuple(m.ranks)) for name, m in stripped.named_modules() if hasattr(m, "ranks")}
    assert decomposed == {"reflect": ("tucker2", (8, 8)), "circular": ("tucker2", (8, 8)), "cp": ("cp", (12,))}
    if not quantization:  # the factor layers pad as the original did: rank 8 >= the weights' rank 6 (+ noise)
        h = torch.randn(2, 16, 16, 16)
        with torch.no_grad():
            for name in ("reflect", "circular"):
                ref = getattr(original, name)(h)
                err = float((getattr(stripped, name)(h) - ref).norm() / ref.norm())
                assert err < 0.05, (name, err)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stripped(x)
    xml = export_openvino(ctrl, x[:1], tmp_path / "padded_cp.xml")
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32"), x))
    error = float((got - expected).norm() / expected.norm())
    if quantization:
        counts = count_int8_weights(xml)
        # stem, fc, 3 Tucker-2 factors twice, CP's 1x1 + two depthwise + 1x1
        assert counts["ops"] == counts["int8_weight_ops"] == 2 + 3 + 3 + 4, counts["per_op"]
        assert error < 2e-2
    else:
        assert error < 1e-4
