"""Strip, convert and save to OpenVINO IR; compile at a pinned precision; check which weights are stored as INT8.

Precision matters on this hardware: on a CPU with AMX (or AVX512-BF16) OpenVINO silently runs an "f32" model in
bf16 unless ``INFERENCE_PRECISION_HINT`` is set, which moves outputs by 2-3%. Every compile here says which
precision it asks for.

(This module is named like the ``openvino`` package it imports; that is safe under absolute imports, but nothing
may be run as a script from this directory without dropping the directory from ``sys.path``: see
``_latency_worker.py``.)
"""

import pathlib
from typing import Optional, Sequence, Union

import numpy as np
import openvino as ov
import torch

PRECISIONS = ("f32", "bf16", "default")

PathLike = Union[str, pathlib.Path]


def _deployable(model_or_ctrl) -> torch.nn.Module:
    """The plain torch model to convert: a controller is stripped (into a copy), a module is used as is."""
    if isinstance(model_or_ctrl, torch.nn.Module):
        return model_or_ctrl
    if callable(getattr(model_or_ctrl, "strip", None)):  # an NNCF compression controller
        from nncf_tdplugin.nncf_integration._internals import free_kd_loss_storage

        free_kd_loss_storage(getattr(model_or_ctrl, "model", None))
        return model_or_ctrl.strip(do_copy=True)
    raise TypeError(
        f"expected a torch.nn.Module or an NNCF compression controller (an object with .strip()), "
        f"got {type(model_or_ctrl).__name__}"
    )


def export_openvino(model_or_ctrl, example_input: torch.Tensor, path: PathLike,
                    compress_to_fp16: bool = False) -> pathlib.Path:
    """Strip (if given a controller), convert with ``ov.convert_model`` and save an IR; returns the .xml path.

    NNCF's weight FakeQuantize ops are folded by the conversion into INT8 constants (Constant -> Convert ->
    Multiply); activation FakeQuantize ops stay and make OpenVINO pick INT8 kernels. Weights are saved in f32
    unless ``compress_to_fp16`` (``ov.save_model`` would otherwise halve them silently, which changes outputs
    and IR size of f32 models). The model is traced in eval mode; a module passed in gets its mode back.
    """
    path = pathlib.Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO IR path must end with .xml (the .bin is written beside it), got {str(path)!r}")
    model = _deployable(model_or_ctrl)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ov_model = ov.convert_model(model, example_input=example_input)
    finally:
        model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=compress_to_fp16)
    return path


def cpu_config(precision: str = "f32", threads: Optional[int] = None) -> dict:
    """OpenVINO CPU properties for a latency-oriented run at a pinned precision ("default": the CPU's choice)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _read(model_or_path, core: ov.Core) -> ov.Model:
    if isinstance(model_or_path, ov.Model):
        return model_or_path
    if isinstance(model_or_path, (str, pathlib.Path)):
        if not pathlib.Path(model_or_path).is_file():
            raise FileNotFoundError(f"no OpenVINO IR at {str(model_or_path)!r}")
        return core.read_model(str(model_or_path))
    raise TypeError(f"expected an IR path or an openvino.Model, got {type(model_or_path).__name__}")


def compile_openvino(model_or_path, precision: str = "f32", threads: Optional[int] = None) -> ov.CompiledModel:
    """Compile an IR path or ``ov.Model`` on the CPU, latency hint, ``precision`` in {"f32", "bf16", "default"}.

    The precision is checked before the IR is read, so a typo fails fast. The runtime precision actually used
    can be read back with ``compiled.get_property("INFERENCE_PRECISION_HINT")``.
    """
    config = cpu_config(precision, threads)
    core = ov.Core()
    return core.compile_model(_read(model_or_path, core), "CPU", config)


def run_openvino(compiled: ov.CompiledModel, inputs: Union[torch.Tensor, np.ndarray, Sequence], batch: int = 1
                 ) -> np.ndarray:
    """First output of the model for ``inputs``: one array [N, ...], or a tuple/list with one array [N, ...] per
    model input, in the model's input order (e.g. token ids and attention mask); ``batch`` samples per request.

    Batch 1 by default: that is the shape latency is measured at, and an IR converted from a batch-1 example may
    not accept other batch sizes.
    """
    arrays = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a) for a in arrays]
    if len(arrays) != len(compiled.inputs):
        raise ValueError(f"the model has {len(compiled.inputs)} input(s), got {len(arrays)} array(s): pass one "
                         f"array, or a tuple with one array per input")
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"inputs differ in their first (sample) dimension: {[len(a) for a in arrays]}")
    request = compiled.create_infer_request()
    outs = []
    for i in range(0, len(arrays[0]), batch):
        request.infer({k: a[i:i + batch] for k, a in enumerate(arrays)})
        outs.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(outs)


_WEIGHT_OPS = {"Convolution": (1,), "GroupConvolution": (1,), "MatMul": (1, 0)}  # ports where a weight may be
# Ops that dequantise or re-lay-out a constant weight. Walking stops at anything else: that is an activation.
_WEIGHT_PATH_OPS = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                    "FakeQuantize"}
_INT8 = (ov.Type.i8, ov.Type.u8)


def _weight_constants(source) -> Optional[list]:
    """The Constants that a weight input is computed from, or None if it depends on an activation.

    A decompression chain such as Constant(i8) -> Convert -> [Subtract zero point] -> Multiply(scale) ->
    [Reshape] yields the i8 constant and the scale/zero-point constants.
    """
    frontier, seen, constants = [source], set(), []
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = node.get_type_name()
        if kind == "Constant":
            constants.append(node)
        elif kind in _WEIGHT_PATH_OPS:
            frontier.extend(v.get_node() for v in node.input_values())
        else:
            return None
    return constants


def count_int8_weights(model_or_path) -> dict:
    """For every Convolution/GroupConvolution/MatMul with a constant weight, whether that weight is stored INT8.

    Returns ``{"ops": N, "int8_weight_ops": M, "per_op": [(friendly_name, type, is_int8), ...]}``. MatMuls between
    two activations (attention) are not counted. Names are OpenVINO's friendly names, which BN folding may rename
    (a folded conv can be called ``Multiply_123``): match ops by count, not by name.
    """
    model = _read(model_or_path, ov.Core())
    per_op = []
    for node in model.get_ordered_ops():
        kind = node.get_type_name()
        for port in _WEIGHT_OPS.get(kind, ()):
            constants = _weight_constants(node.input_value(port).get_node())
            if constants:
                is_int8 = any(c.get_element_type() in _INT8 for c in constants)
                per_op.append((node.get_friendly_name(), kind, is_int8))
                break
    return {"ops": len(per_op), "int8_weight_ops": sum(op[2] for op in per_op), "per_op": per_op}
