"""Times one OpenVINO IR and prints JSON. Run as a separate process by :mod:`nncf_tdplugin.export.latency`.

It imports only OpenVINO and numpy: a torch thread pool in the same process fights OpenVINO's for the cores
(on 2 cores a 13 ms model was measured at 669 ms).
"""

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import openvino as ov


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("xml")
    p.add_argument("--shape", required=True, help="comma-separated input shape")
    p.add_argument("--precision", default="f32")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--profile", action="store_true")
    a = p.parse_args()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if a.precision != "default":
        config["INFERENCE_PRECISION_HINT"] = a.precision
    if a.threads:
        config["INFERENCE_NUM_THREADS"] = a.threads
    if a.profile:
        config["PERF_COUNT"] = True
    core = ov.Core()
    compiled = core.compile_model(core.read_model(a.xml), "CPU", config)
    request = compiled.create_infer_request()
    shape = [int(s) for s in a.shape.split(",")]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(a.warmup):
        request.infer({0: x})
    times = []
    start = time.perf_counter()
    while len(times) < a.iterations or time.perf_counter() - start < a.min_seconds:
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append((time.perf_counter() - t0) * 1e3)
    result = {
        "times_ms": times,
        "runtime_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
    }
    if a.profile:
        by_type = defaultdict(float)
        for info in request.get_profiling_info():
            by_type[f"{info.node_type}:{info.exec_type}"] += info.real_time.total_seconds() * 1e3
        result["profile_ms_by_type"] = dict(sorted(by_type.items(), key=lambda kv: -kv[1]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
