"""OpenVINO export: outputs equal the stripped torch model, INT8 weights on every factor, latency in a subprocess."""

import pytest
import torch

from nncf_tdplugin.export import compile_openvino, count_int8_weights, export_openvino, measure_latency, run_openvino
from tests.nncf_helpers import compress, train_steps


def test_decomposed_int8_model_matches_torch_in_openvino_and_every_factor_is_int8(tmp_path):
    ctrl, model = compress()
    train_steps(ctrl, model, steps=2)
    stripped = ctrl.strip().eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = stripped(x)
    xml = export_openvino(ctrl, x[:1], tmp_path / "td_int8.xml")
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32"), x))
    # INT8 fake-quantisation can round a value differently across a bucket edge; outputs must still agree closely
    assert float((got - expected).norm() / expected.norm()) < 1e-2
    assert (got.argmax(1) == expected.argmax(1)).all()

    counts = count_int8_weights(xml)
    weighted = [m for m in stripped.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) >= 1 + 3 + 3 + 1 + 1 + 1  # conv1, conv2/conv3 factors, conv4, dw, fc1, fc (at least)
    # one IR op per torch layer (BN folding renames a few ops, so count rather than match names), all INT8
    assert counts["ops"] == len(weighted), counts["per_op"]
    assert counts["int8_weight_ops"] == counts["ops"], counts["per_op"]


def test_decomposed_f32_model_matches_torch_exactly(tmp_path):
    ctrl, model = compress(quantization=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ctrl.strip().eval()(x)
    xml = export_openvino(ctrl, x[:1], tmp_path / "td.xml")
    got = torch.from_numpy(run_openvino(compile_openvino(xml, precision="f32"), x))
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert count_int8_weights(xml)["int8_weight_ops"] == 0


def test_bad_precision_and_path_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"precision must be one of .* got 'fp16'"):
        compile_openvino(tmp_path / "x.xml", precision="fp16")
    with pytest.raises(ValueError, match=r"must end with \.xml, got '.*model\.onnx'"):
        export_openvino(torch.nn.Linear(2, 2), torch.randn(1, 2), tmp_path / "model.onnx")


def test_latency_is_measured_in_a_separate_process(tmp_path):
    xml = export_openvino(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()), torch.randn(1, 3, 16, 16),
                          tmp_path / "tiny.xml")
    result = measure_latency(xml, [1, 3, 16, 16], precision="f32", threads=1, warmup=2, iterations=10, repeats=2,
                             profile=True)
    assert result.median_ms > 0 and result.min_ms <= result.median_ms and len(result.repeat_medians_ms) == 2
    assert result.precision == "f32" and "f32" in result.runtime_precision and result.threads == 1
    assert result.profile_ms_by_type and any(k.startswith("Convolution") for k in result.profile_ms_by_type)
