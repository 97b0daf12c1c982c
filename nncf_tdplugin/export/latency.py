"""OpenVINO latency measured in separate processes, with precision and threads pinned.

Rules these functions enforce, learnt on a 2-core AMX CPU shared with other work:

- never time OpenVINO in a process where torch runs: their thread pools fight (a 13 ms model took 669 ms), so
  every measurement runs ``_latency_worker.py`` in a fresh interpreter that imports only OpenVINO and numpy;
- pin ``INFERENCE_PRECISION_HINT``: an unpinned f32 model runs in bf16 on AMX, so a result records both the
  precision asked for and the one OpenVINO reports running;
- compare models interleaved (A, B, A, B, ...) so that load from other processes and thermal drift hit all of
  them alike, and report medians and spreads rather than means.
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

_WORKER = pathlib.Path(__file__).with_name("_latency_worker.py")


@dataclass
class LatencyResult:
    """Latency of one IR over all timed iterations of all repeats (milliseconds, batch as in the input shape)."""

    median_ms: float
    min_ms: float
    spread_ms: float  # p90 - p10 of all timed iterations: how noisy the median is
    precision: str  # asked for: "f32" | "bf16" | "default"
    runtime_precision: str  # what OpenVINO reports running in ("bf16" for "default" on AMX)
    threads: int  # INFERENCE_NUM_THREADS as OpenVINO reports it
    repeat_medians_ms: list = field(default_factory=list)  # one per worker run, in run order
    # profile=True: ms per inference by the CPU plugin's executed node type, after fusion (BN and activations are
    # inside "Convolution"; a Linear is "FullyConnected"), and by "type:kernel" (e.g. "Convolution:brgconv_..._1x1_i8")
    profile_ms_by_type: Optional[dict] = None
    profile_ms_by_kernel: Optional[dict] = None
    profile_nodes_by_kernel: Optional[dict] = None  # executed nodes per inference, by "type:kernel"
    profile_mean_ms: Optional[float] = None  # the profiled run's own mean (counters on; node times are means too)
    xml: str = ""
    # the IR declared a dynamic input dimension and was reshaped to the timed static shape before compiling
    reshaped_from_dynamic: bool = False


def _worker_env(threads: Optional[int]) -> dict:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def _run_worker(xml, shape, precision, threads, warmup, iterations, profile, timeout_s) -> dict:
    # A script, not "python -m nncf_tdplugin...": importing the package would import nncf.torch and torch.
    cmd = [sys.executable, str(_WORKER), str(xml), "--shape", _shape_arg(shape),
           "--precision", precision, "--threads", str(threads or 0), "--warmup", str(warmup),
           "--iterations", str(iterations)]
    if profile:
        cmd.append("--profile")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env(threads), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"latency worker for {xml} ran past {timeout_s} s; lower iterations or raise timeout_s")
    if done.returncode != 0:
        raise RuntimeError(f"latency worker failed for {xml} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("torch_loaded"):
        raise RuntimeError("torch was imported into the latency worker; its timings would be unreliable")
    return result


def _shapes(shape) -> list:
    """``shape`` as a list of input shapes: a flat shape is a model's single input; a sequence of shapes gives one
    per input, in the model's input order (token ids and attention mask)."""
    if shape and all(isinstance(s, (list, tuple)) for s in shape):  # (torch.Size is a tuple of ints)
        return [list(s) for s in shape]
    return [list(shape)]


def _shape_arg(shape) -> str:
    return ";".join(",".join(str(int(d)) for d in s) for s in _shapes(shape))


def _check(models, precision, threads, warmup, iterations, repeats) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be a positive integer or None (OpenVINO's choice), got {threads!r}")
    if warmup < 0 or iterations < 1 or repeats < 1:
        raise ValueError(f"need warmup >= 0, iterations >= 1, repeats >= 1; got {warmup}, {iterations}, {repeats}")
    if not models:
        raise ValueError("no models to measure")
    for xml, shape in models:
        if not pathlib.Path(xml).is_file():
            raise FileNotFoundError(f"no OpenVINO IR at {str(xml)!r}")
        if not shape or any(not s or any(int(d) < 1 for d in s) for s in _shapes(shape)):
            raise ValueError(f"input shape for {xml} must be positive integers (or one such shape per input), "
                             f"got {shape!r}")


def measure_many(models: Sequence[tuple], precision: str = "f32", threads: Optional[int] = 2, warmup: int = 20,
                 iterations: int = 100, repeats: int = 5, interleave: bool = True, profile: bool = False,
                 timeout_s: float = 600) -> list:
    """Latency of each ``(xml_path, input_shape)``, one :class:`LatencyResult` per model, in order. For a model
    with several inputs ``input_shape`` is a list of shapes, one per input in the model's order (e.g.
    ``[[1, 64], [1, 64]]`` for token ids and attention mask; integer inputs are fed ones).

    Each repeat is one worker process (compile, ``warmup`` untimed and ``iterations`` timed synchronous
    inferences on random input). Every IR is compiled for the static ``input_shape``: one with a dynamic input
    dimension (``ov.convert_model``'s default batch) is reshaped first, since a dynamically shaped graph pays shape
    inference on every inference, per node, and would be slower the more nodes it has. With ``interleave`` the
    repeats run A, B, A, B, ...; otherwise A, A, B, B.
    ``profile`` adds one more run per model with OpenVINO's per-layer counters on, whose timings are discarded
    (the counters slow inference down); its times per layer type explain where a speedup comes from.
    """
    _check(models, precision, threads, warmup, iterations, repeats)
    order = ([(r, i) for r in range(repeats) for i in range(len(models))] if interleave
             else [(r, i) for i in range(len(models)) for r in range(repeats)])
    runs = [[None] * repeats for _ in models]
    for r, i in order:
        xml, shape = models[i]
        runs[i][r] = _run_worker(xml, shape, precision, threads, warmup, iterations, False, timeout_s)
    results = []
    for (xml, shape), model_runs in zip(models, runs):
        times = np.concatenate([run["times_ms"] for run in model_runs])
        p10, p90 = np.percentile(times, [10, 90])
        profiled = _run_worker(xml, shape, precision, threads, warmup, iterations, True, timeout_s) if profile else {}
        results.append(LatencyResult(
            median_ms=float(np.median(times)),
            min_ms=float(times.min()),
            spread_ms=float(p90 - p10),
            precision=precision,
            runtime_precision=model_runs[0]["runtime_precision"],
            threads=model_runs[0]["threads"],
            repeat_medians_ms=[float(np.median(run["times_ms"])) for run in model_runs],
            profile_ms_by_type=profiled.get("profile_ms_by_type"),
            profile_ms_by_kernel=profiled.get("profile_ms_by_kernel"),
            profile_nodes_by_kernel=profiled.get("profile_nodes_by_kernel"),
            profile_mean_ms=float(np.mean(profiled["times_ms"])) if profiled else None,
            xml=str(xml),
            reshaped_from_dynamic=bool(model_runs[0].get("reshaped_from_dynamic", False)),
        ))
    return results


def measure_latency(xml_path, input_shape, precision: str = "f32", threads: Optional[int] = 2, warmup: int = 20,
                    iterations: int = 100, repeats: int = 5, profile: bool = False,
                    timeout_s: float = 600) -> LatencyResult:
    """Latency of one IR, each repeat in its own worker process (see :func:`measure_many`)."""
    return measure_many([(xml_path, input_shape)], precision=precision, threads=threads, warmup=warmup,
                        iterations=iterations, repeats=repeats, profile=profile, timeout_s=timeout_s)[0]
