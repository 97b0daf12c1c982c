"""Times single layers (dense, or the factor layers of one decomposition) with OpenVINO. Run as a script by
:mod:`nncf_tdplugin.latency_model.measure`: it imports only OpenVINO and numpy (never torch, never this package),
for the reasons given in ``nncf_tdplugin/export/_latency_worker.py``.

Input: a JSON file ``{"context": {...}, "specs": [{...}, ...]}`` (see :class:`LayerSpec` in ``specs.py``).
Output (stdout, last line): ``{"results": {key: ms}, "baselines_ms": ..., "runtime_precision": ..., "threads": ...}``.

Each spec becomes a small ``ov.Model`` built with the opset, exactly the layer sequence that the factor layers of
``nncf_tdplugin.layers`` export to: 1x1 / k x k / depthwise Convolutions, MatMuls for Linear layers, bias on the
last factor only. In INT8 mode every convolution/matmul gets what an NNCF-quantized model exports: a FakeQuantize
(256 levels) on its input activation and INT8 weights (Constant i8 -> Convert -> per-channel Multiply), so the CPU
plugin runs INT8 kernels as it does for the real model. As there, a layer whose input is non-negative (after a
ReLU; ``unsigned_input`` in the spec) reads it quantized unsigned (u8), any other input and the activations between
factors (no ReLU) signed (s8): on AVX512-VNNI a 3x3 conv reading s8 ran 10-30% slower than one reading u8 at 14x14 and
7x7, which made the dense layers of ReLU networks look slower than they run when every input was timed signed.

In context: a layer is timed after a prefix, Parameter -> ReLU (-> FakeQuantize in INT8), that stands for the
previous layer, and the prefix alone is timed too; the layer's cost is the difference. This removes what only an
isolated layer pays: the call's fixed cost and converting the f32 planar input to the internal layout and precision
(bf16 blocked, or INT8), which in a network happens once, not per layer. (An optional suffix, a spatial mean that
stands for the next layer, also removes the output conversion; measured against whole models it made the
per-layer sums optimistic at f32, so it is off: see docs/latency.md.) Without it, every factor layer carried a
floor that made factorizations look slower than they run in the network (ResNet-50 at bf16: a 2.9x predicted
ratio ran 4.9x faster).

Timing: all models are compiled first, then timed round-robin (A, B, C, A, B, C, ...) ``repeats`` times, so drift
and load from other processes hit all of them alike; a time is the median of all its timed iterations, and a
layer's cost its median minus its prefix's median, floored at 1 microsecond.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import openvino.opset13 as ops  # noqa: E402

_RNG = np.random.default_rng(0)


def _quantize_activation(x, int8, unsigned=False):
    """256-level FakeQuantize as NNCF exports it: over [0, 4] for a non-negative activation (after a ReLU: the CPU
    plugin then runs u8), over [-4, 4] otherwise (s8)."""
    if not int8:
        return x
    lo, hi = ops.constant(np.float32(0.0 if unsigned else -4.0)), ops.constant(np.float32(4.0))
    return ops.fake_quantize(x, lo, hi, lo, hi, 256)


def _weight(shape, int8):
    """f32 constant, or INT8 constant -> Convert -> per-output-channel Multiply (NNCF's exported pattern)."""
    if not int8:
        return ops.constant((_RNG.standard_normal(shape) * 0.05).astype(np.float32))
    q = ops.constant(_RNG.integers(-127, 128, size=shape).astype(np.int8))
    scale_shape = [shape[0]] + [1] * (len(shape) - 1)
    scale = ops.constant((np.abs(_RNG.standard_normal(scale_shape)) * 1e-3 + 1e-4).astype(np.float32))
    return ops.multiply(ops.convert(q, ov.Type.f32), scale)


def _conv(x, cin, cout, kernel, stride=(1, 1), pads_begin=(0, 0), pads_end=(0, 0), dilation=(1, 1), groups=1,
          bias=False, int8=False, quantize_input=True):
    x = _quantize_activation(x, int8 and quantize_input)
    kh, kw = kernel
    if groups == 1:
        y = ops.convolution(x, _weight([cout, cin, kh, kw], int8), list(stride), list(pads_begin), list(pads_end),
                            list(dilation))
    else:
        w = _weight([cout, cin // groups, kh, kw], int8)
        w = ops.reshape(w, ops.constant(np.array([groups, cout // groups, cin // groups, kh, kw], np.int64)), False)
        y = ops.group_convolution(x, w, list(stride), list(pads_begin), list(pads_end), list(dilation))
    if bias:
        y = ops.add(y, ops.constant((_RNG.standard_normal([1, cout, 1, 1]) * 0.05).astype(np.float32)))
    return y


# torch's padding_mode -> OpenVINO's Pad mode; circular (which torch exports as slices and a concat) is timed as a
# reflect pad, the same data movement
_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "reflect"}


def _pad(x, spec: dict, pads_begin, pads_end):
    """A conv with a non-zero ``padding_mode`` exports as Pad -> Convolution (with no padding of its own)."""
    mode = spec.get("pad_mode", "zeros")
    if mode == "zeros" or not (any(pads_begin) or any(pads_end)):
        return x, pads_begin, pads_end
    x = ops.pad(x, ops.constant(np.array([0, 0, *pads_begin], np.int64)),
                ops.constant(np.array([0, 0, *pads_end], np.int64)), _PAD_MODES[mode])
    return x, (0, 0), (0, 0)


def _linear(x, cin, cout, bias=False, int8=False, quantize_input=True):
    x = _quantize_activation(x, int8 and quantize_input)
    y = ops.matmul(x, _weight([cout, cin], int8), False, True)
    if bias:
        y = ops.add(y, ops.constant((_RNG.standard_normal([cout]) * 0.05).astype(np.float32)))
    return y


def input_shape(spec: dict) -> list:
    if spec["kind"] == "linear":
        return [1, spec["positions"], spec["in_channels"]] if spec["positions"] > 1 else [1, spec["in_channels"]]
    return [1, spec["in_channels"], *spec["in_hw"]]


def _prefix(spec: dict):
    """Parameter -> ReLU (-> FakeQuantize in INT8): stands for the previous layer, so the layer under test reads
    its input in the layout and precision that a network hands it, as in a real model (where the FakeQuantize is
    fused into the previous layer's output)."""
    x = ops.parameter(input_shape(spec), ov.Type.f32)
    y = ops.relu(x)
    return x, _quantize_activation(y, spec["int8"], unsigned=spec.get("unsigned_input", False))


def baseline_key(spec: dict) -> str:
    return f"{spec['kind']}|{input_shape(spec)}|{spec['int8']}"


def _suffix(y, spec: dict):
    """Conv outputs are reduced to [1, C, 1, 1] by a spatial mean, which reads the layer's output once in the
    plugin's internal layout, as the next layer would, instead of converting the whole map back to planar f32."""
    if spec["kind"] != "conv":
        return y
    return ops.reduce_mean(y, ops.constant(np.array([2, 3], np.int64)), True)


def build_baseline(spec: dict, suffix: bool = False) -> tuple:
    """The prefix (and suffix) alone: subtracted from the layer's time (input conversion, the call's fixed cost)."""
    x, y = _prefix(spec)
    return ov.Model([_suffix(y, spec) if suffix else y], [x]), input_shape(spec)


def build_model(spec: dict, suffix: bool = False) -> tuple:
    """The ``ov.Model`` of one spec (between prefix and suffix) and its input shape."""
    s, t, int8, bias = spec["in_channels"], spec["out_channels"], spec["int8"], spec["bias"]
    method, ranks = spec["method"], spec["ranks"]
    x, first = _prefix(spec)
    shape = input_shape(spec)
    if spec["kind"] == "linear":
        if method == "dense":
            y = _linear(first, s, t, bias, int8, False)
        elif method == "svd":
            y = _linear(_linear(first, s, ranks[0], False, int8, False), ranks[0], t, bias, int8)
        else:
            raise ValueError(f"method {method!r} is not defined for Linear layers")
        return ov.Model([_suffix(y, spec) if suffix else y], [x]), shape
    k, st, pb, pe, d, g = (spec["kernel"], spec["stride"], spec["pads_begin"], spec["pads_end"], spec["dilation"],
                           spec["groups"])
    if method == "dense":
        y, b, e = _pad(first, spec, pb, pe)
        y = _conv(y, s, t, k, st, b, e, d, g, bias, int8, False)
    elif method == "tucker2":
        r_out, r_in = ranks
        y = _conv(first, s, r_in, (1, 1), int8=int8, quantize_input=False)
        y, b, e = _pad(y, spec, pb, pe)
        y = _conv(y, r_in, r_out, k, st, b, e, d, 1, False, int8)
        y = _conv(y, r_out, t, (1, 1), bias=bias, int8=int8)
    elif method == "svd":
        (r,) = ranks
        y, b, e = _pad(first, spec, pb, pe)
        y = _conv(y, s, r, k, st, b, e, d, 1, False, int8, False)
        y = _conv(y, r, t, (1, 1), bias=bias, int8=int8)
    elif method == "cp":
        (r,) = ranks
        y = _conv(first, s, r, (1, 1), int8=int8, quantize_input=False)
        y, b, e = _pad(y, spec, (pb[0], 0), (pe[0], 0))
        y = _conv(y, r, r, (k[0], 1), (st[0], 1), b, e, (d[0], 1), r, False, int8)
        y, b, e = _pad(y, spec, (0, pb[1]), (0, pe[1]))
        y = _conv(y, r, r, (1, k[1]), (1, st[1]), b, e, (1, d[1]), r, False, int8)
        y = _conv(y, r, t, (1, 1), bias=bias, int8=int8)
    else:
        raise ValueError(f"unknown method {method!r}")
    return ov.Model([_suffix(y, spec) if suffix else y], [x]), shape


def _config(context: dict) -> dict:
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if context["precision"] != "default":
        config["INFERENCE_PRECISION_HINT"] = context["precision"]
    if context.get("threads"):
        config["INFERENCE_NUM_THREADS"] = int(context["threads"])
    return config


def _time(request, x, n) -> list:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        request.infer({0: x})
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    context, specs = job["context"], job["specs"]
    core = ov.Core()
    config = _config(context)
    warmup, iterations, repeats = int(context["warmup"]), int(context["iterations"]), int(context["repeats"])

    entries, baselines = [], {}
    suffix = bool(context.get("suffix", False))

    def add(key, model, shape):
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        x = _RNG.standard_normal(shape).astype(np.float32)
        _time(request, x, warmup)
        entries.append((key, request, x, []))
        return compiled

    for spec in specs:
        base = baseline_key(spec)
        if base not in baselines:
            baselines[base] = add("baseline:" + base, *build_baseline(spec, suffix))
        add(spec["key"], *build_model(spec, suffix))
    for _ in range(repeats):
        for _, request, x, times in entries:
            times.extend(_time(request, x, iterations))
    median = {key: float(np.median(times)) for key, _, _, times in entries}
    results = {spec["key"]: max(median[spec["key"]] - median["baseline:" + baseline_key(spec)], 1e-3)
               for spec in specs}
    spreads = {key: float(np.subtract(*np.percentile(times, [90, 10]))) for key, _, _, times in entries}
    any_compiled = next(iter(baselines.values()))
    print(json.dumps({
        "results": results,
        "spreads": spreads,
        "baselines_ms": {k: median["baseline:" + k] for k in baselines},
        "runtime_precision": any_compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "threads": int(any_compiled.get_property("INFERENCE_NUM_THREADS")),
        "torch_loaded": "torch" in sys.modules,
    }))


if __name__ == "__main__":
    main()
