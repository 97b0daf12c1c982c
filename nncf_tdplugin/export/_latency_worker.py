"""Times one OpenVINO IR and prints one line of JSON. Run by :mod:`nncf_tdplugin.export.latency` as a script.

It imports only OpenVINO and numpy, never torch and never the ``nncf_tdplugin`` package (whose import loads
nncf.torch, hence torch): a torch thread pool in the same process fights OpenVINO's for the cores (on 2 cores a
13 ms model was measured at 669 ms). That is also why it runs as a script rather than with ``python -m``.
"""

import os
import sys

# A script's directory comes first on sys.path; keep this package's modules (e.g. openvino_export.py) from ever
# shadowing a real package in this OpenVINO-only process.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402


def _parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("xml")
    p.add_argument("--shape", required=True,
                   help="comma-separated input shape, e.g. 1,3,224,224; for a model with several inputs one shape "
                        "per input, in the model's input order, separated by ';' (e.g. 1,64;1,64)")
    p.add_argument("--precision", choices=("f32", "bf16", "default"), default="f32")
    p.add_argument("--threads", type=int, default=0, help="0: OpenVINO's choice")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--profile", action="store_true",
                   help="PERF_COUNT on; report per-layer-type times averaged over the iterations (timings slower)")
    return p.parse_args()


def _random_input(port, shape):
    dtype = port.get_element_type().to_dtype()
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return np.ones(shape, dtype)  # integer inputs: ones are a valid token id, and an attention mask that attends


def main() -> None:
    a = _parse_args()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if a.precision != "default":
        config["INFERENCE_PRECISION_HINT"] = a.precision
    if a.threads:
        config["INFERENCE_NUM_THREADS"] = a.threads
    if a.profile:
        config["PERF_COUNT"] = True
    core = ov.Core()
    model = core.read_model(a.xml)
    shapes = [[int(s) for s in part.split(",")] for part in a.shape.split(";")]
    if len(shapes) != len(model.inputs):
        sys.exit(f"{a.xml} has {len(model.inputs)} input(s); got {len(shapes)} shape(s): {a.shape}")
    # Time every IR at the same static shape: an IR with a dynamic dimension (ov.convert_model's default, e.g. the
    # batch) is otherwise compiled for dynamic shapes, whose per-node shape inference and memory handling cost time
    # on every inference, more the more nodes the graph has (measured: ~10% of a decomposed ResNet's INT8 latency).
    was_dynamic = False
    for port, shape in zip(model.inputs, shapes):
        declared = port.get_partial_shape()
        if not declared.compatible(ov.PartialShape(shape)):
            sys.exit(f"{a.xml}: input {port.get_any_name()!r} of shape {declared} cannot take the timed shape {shape}")
        was_dynamic = was_dynamic or declared.is_dynamic
    if was_dynamic:
        model.reshape({port: ov.PartialShape(shape) for port, shape in zip(model.inputs, shapes)})
    compiled = core.compile_model(model, "CPU", config)
    x = {i: _random_input(compiled.input(i), shape) for i, shape in enumerate(shapes)}
    request = compiled.create_infer_request()
    for _ in range(a.warmup):
        request.infer(x)
    times, by_type, by_kernel, count = [], defaultdict(float), defaultdict(float), defaultdict(int)
    for _ in range(a.iterations):
        t0 = time.perf_counter()
        request.infer(x)
        times.append((time.perf_counter() - t0) * 1e3)
        if a.profile:  # get_profiling_info() describes the last inference only: accumulate
            for info in request.get_profiling_info():
                if info.status == ov.ProfilingInfo.Status.EXECUTED:
                    ms = info.real_time.total_seconds() * 1e3
                    by_type[info.node_type] += ms
                    by_kernel[f"{info.node_type}:{info.exec_type}"] += ms
                    count[f"{info.node_type}:{info.exec_type}"] += 1
    result = {
        "times_ms": times,
        "runtime_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),  # "f32", "bf16"
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "torch_loaded": "torch" in sys.modules,
        "reshaped_from_dynamic": was_dynamic,
    }
    if a.profile:
        n = max(a.iterations, 1)
        result["profile_ms_by_type"] = {k: v / n for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])}
        result["profile_ms_by_kernel"] = {k: v / n for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])}
        result["profile_nodes_by_kernel"] = {k: count[k] // n for k in result["profile_ms_by_kernel"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
