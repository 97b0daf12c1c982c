"""Strip, convert and save to OpenVINO IR; compile with pinned precision; count INT8 weights in an IR.

Precision matters on this hardware: on a CPU with AMX (or AVX512-BF16) OpenVINO silently runs an "f32" model in
bf16 unless ``INFERENCE_PRECISION_HINT`` is set, which moves outputs by 2-3%. Every compile here says which
precision it asks for.
"""

import pathlib
from typing import Optional, Union

import numpy as np
import openvino as ov
import torch

PRECISIONS = ("f32", "bf16", "default")


def _strip(model_or_ctrl) -> torch.nn.Module:
    if hasattr(model_or_ctrl, "strip") and not isinstance(model_or_ctrl, torch.nn.Module):
        return model_or_ctrl.strip(do_copy=True)  # an NNCF compression controller
    if isinstance(model_or_ctrl, torch.nn.Module):
        return model_or_ctrl
    raise TypeError(f"expected a torch.nn.Module or an NNCF compression controller, got {type(model_or_ctrl).__name__}")


def export_openvino(model_or_ctrl, example_input: torch.Tensor, path: Union[str, pathlib.Path],
                    compress_to_fp16: bool = False) -> pathlib.Path:
    """Strip (if given a controller), convert with ``ov.convert_model`` and save an IR; returns the .xml path.

    NNCF's weight FakeQuantize ops are folded into INT8 constants by the conversion; activation FakeQuantize ops
    stay and run as INT8 kernels. Weights are saved in f32 unless ``compress_to_fp16``.
    """
    path = pathlib.Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR path must end with .xml, got {str(path)!r}")
    model = _strip(model_or_ctrl).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        ov_model = ov.convert_model(model, example_input=example_input)
    ov.save_model(ov_model, str(path), compress_to_fp16=compress_to_fp16)
    return path


def cpu_config(precision: str = "f32", threads: Optional[int] = None) -> dict:
    """OpenVINO CPU properties for a latency-oriented run at a pinned precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def compile_openvino(model_or_path, precision: str = "f32", threads: Optional[int] = None) -> ov.CompiledModel:
    """Compile an IR path or ``ov.Model`` on the CPU with ``precision`` in {"f32", "bf16", "default"}."""
    config = cpu_config(precision, threads)
    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, pathlib.Path)) else model_or_path
    return core.compile_model(model, "CPU", config)


def run_openvino(compiled: ov.CompiledModel, inputs: Union[torch.Tensor, np.ndarray], batch: int = 1) -> np.ndarray:
    """Outputs of the first model output for ``inputs`` [N, ...], run ``batch`` samples at a time."""
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    request = compiled.create_infer_request()
    outs = []
    for i in range(0, len(x), batch):
        request.infer({0: x[i:i + batch]})
        outs.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(outs)


_WEIGHT_OPS = {"Convolution", "GroupConvolution", "MatMul"}
_PASS_THROUGH = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "FakeQuantize"}


def _weight_constants(node) -> list:
    """The Constants that feed the weight input (port 1), found through dequantisation/reshaping ops."""
    frontier, seen, constants = [node.input_value(1).get_node()], set(), []
    while frontier:
        n = frontier.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        kind = n.get_type_name()
        if kind == "Constant":
            constants.append(n)
        elif kind in _PASS_THROUGH:
            frontier.extend(v.get_node() for v in n.input_values())
    return constants


def count_int8_weights(model_or_path) -> dict:
    """For every Convolution/GroupConvolution/MatMul with a constant weight, whether the weight is stored as INT8.

    Returns ``{"ops": N, "int8_weight_ops": M, "per_op": [(friendly_name, type, is_int8), ...]}``. MatMuls between
    two activations (no constant on the weight path) are not counted.
    """
    model = ov.Core().read_model(str(model_or_path)) if isinstance(model_or_path, (str, pathlib.Path)) else model_or_path
    per_op = []
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        if kind not in _WEIGHT_OPS:
            continue
        constants = _weight_constants(node)
        if not constants:
            continue
        is_int8 = any(c.get_element_type() in (ov.Type.i8, ov.Type.u8) for c in constants)
        per_op.append((node.get_friendly_name(), kind, is_int8))
    return {"ops": len(per_op), "int8_weight_ops": sum(x[2] for x in per_op), "per_op": per_op}
