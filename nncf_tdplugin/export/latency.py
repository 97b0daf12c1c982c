"""OpenVINO latency measured in separate processes, with precision and threads pinned.

Rules that these functions enforce, learnt on this 2-core AMX CPU: never time OpenVINO in a process where torch
runs (their thread pools fight); pin ``INFERENCE_PRECISION_HINT`` (an unpinned f32 model runs in bf16); compare
models interleaved (A, B, A, B, ...) so drift and noise hit all of them; report medians and spreads.
"""

import json
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from nncf_tdplugin.export.openvino_export import PRECISIONS


@dataclass
class LatencyResult:
    median_ms: float
    min_ms: float
    spread_ms: float  # p90 - p10 over all timed runs of all repeats
    precision: str  # requested: "f32" | "bf16" | "default"
    runtime_precision: str  # what OpenVINO reports it runs in
    threads: int
    repeat_medians_ms: list[float] = field(default_factory=list)
    profile_ms_by_type: Optional[dict] = None


def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _run_worker(xml, shape, precision, threads, warmup, iterations, profile) -> dict:
    # Run as a script, not "-m nncf_tdplugin...": importing the package would import torch into the worker.
    cmd = [sys.executable, str(pathlib.Path(__file__).with_name("_latency_worker.py")), str(xml),
           "--shape", ",".join(str(int(s)) for s in shape), "--precision", precision, "--threads", str(threads),
           "--warmup", str(warmup), "--iterations", str(iterations)]
    if profile:
        cmd.append("--profile")
    done = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(threads), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"latency worker failed for {xml}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_many(models: Sequence[tuple], precision: str = "f32", threads: int = 2, warmup: int = 20,
                 iterations: int = 100, repeats: int = 3, profile: bool = False) -> list[LatencyResult]:
    """Latency of each ``(xml_path, input_shape)``; the models are timed interleaved, ``repeats`` rounds."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for xml, _ in models:
        if not pathlib.Path(xml).is_file():
            raise FileNotFoundError(f"no OpenVINO IR at {xml}")
    runs: list[list[dict]] = [[] for _ in models]
    for r in range(repeats):
        for i, (xml, shape) in enumerate(models):
            runs[i].append(_run_worker(xml, shape, precision, threads, warmup, iterations, profile and r == 0))
    results = []
    for model_runs in runs:
        times = np.concatenate([np.asarray(run["times_ms"]) for run in model_runs])
        results.append(LatencyResult(
            median_ms=float(np.median(times)),
            min_ms=float(times.min()),
            spread_ms=float(np.percentile(times, 90) - np.percentile(times, 10)),
            precision=precision,
            runtime_precision=model_runs[0]["runtime_precision"],
            threads=model_runs[0]["threads"],
            repeat_medians_ms=[float(np.median(run["times_ms"])) for run in model_runs],
            profile_ms_by_type=model_runs[0].get("profile_ms_by_type"),
        ))
    return results


def measure_latency(xml, input_shape, precision: str = "f32", threads: int = 2, **kwargs) -> LatencyResult:
    """Latency of one IR (see :func:`measure_many`)."""
    return measure_many([(xml, input_shape)], precision=precision, threads=threads, **kwargs)[0]
