"""Export and deployment: OpenVINO IR (ONNX goes through the controller's ``export_model``), compilation at a
pinned precision, INT8-weight checks, and latency measured in separate processes."""

from nncf_tdplugin.export.latency import LatencyResult, measure_latency, measure_many
from nncf_tdplugin.export.openvino_export import (
    PRECISIONS,
    compile_openvino,
    count_int8_weights,
    cpu_config,
    export_openvino,
    run_openvino,
)

__all__ = [
    "PRECISIONS",
    "LatencyResult",
    "compile_openvino",
    "count_int8_weights",
    "cpu_config",
    "export_openvino",
    "measure_latency",
    "measure_many",
    "run_openvino",
]
