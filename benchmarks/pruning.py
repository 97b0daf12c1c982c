"""NNCF's own ``filter_pruning`` as a baseline, turned into a physically smaller OpenVINO model.

NNCF's ``strip()`` only zeroes pruned filters, so the exported shapes stay dense and no faster. A physically smaller
model comes from converting the stripped model with a static input shape and running OpenVINO's pruning
transformation, which removes zeroed channels (it also works with FakeQuantize, i.e. for [filter_pruning,
quantization]). See ../shared/design/nncf-integration.md.
"""

import pathlib

import numpy as np
import openvino as ov
import torch
from openvino._offline_transformations import apply_pruning_transformation


def pruning_block(flops_ratio: float, steps: int = 0) -> dict:
    """A ``filter_pruning`` block that prunes to ``1/flops_ratio`` of the FLOPs at once (``steps`` 0), or gradually
    from nothing over ``steps`` epochs (NNCF's exponential schedule of the pruning level, as in training)."""
    rate = 1.0 - 1.0 / float(flops_ratio)
    if steps:
        return {"algorithm": "filter_pruning", "pruning_init": 0.0,
                "params": {"schedule": "exponential", "pruning_flops_target": rate, "num_init_steps": 0,
                           "pruning_steps": int(steps), "prune_downsample_convs": True}}
    return {"algorithm": "filter_pruning", "pruning_init": rate,
            "params": {"pruning_flops_target": rate, "num_init_steps": 0, "pruning_steps": 0,
                       "prune_downsample_convs": True}}


def export_pruned_ir(ctrl, example_input: torch.Tensor, path) -> pathlib.Path:
    """Strip the pruned model, convert at the example's static shape, remove zeroed channels, save (f32 weights)."""
    from nncf_tdplugin.nncf_integration._internals import free_kd_loss_storage

    path = pathlib.Path(path)
    free_kd_loss_storage(ctrl.model)  # after knowledge-distillation training, or the copy fails
    stripped = ctrl.strip(do_copy=True).eval()
    with torch.no_grad():
        model = ov.convert_model(stripped, example_input=example_input, input=[tuple(example_input.shape)])
    apply_pruning_transformation(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def ir_cost(xml, input_shape) -> dict:
    """MACs and weight counts of the Convolution / GroupConvolution / MatMul ops of an IR at ``input_shape``
    (weights read from each op's weight input shape, so INT8 weights count the same as f32)."""
    model = ov.Core().read_model(str(xml))
    model.reshape(list(input_shape))
    macs = params = 0
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        w_shape = op.input_value(1).get_partial_shape()
        if not w_shape.is_static:
            continue
        w = [d.get_length() for d in w_shape]
        out = [d.get_length() for d in op.output(0).get_partial_shape()]
        n_w = int(np.prod(w))
        if kind == "MatMul":
            if op.input_value(1).get_node().get_type_name() == "Parameter" or len(w) != 2:
                continue
            positions = int(np.prod(out[:-1]))
            macs += positions * n_w
        else:
            macs += int(np.prod(out[2:])) * n_w
        params += n_w
    return {"macs": macs, "weights": params}
