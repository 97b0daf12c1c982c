"""Measure layer specs with OpenVINO in worker processes (never in the calling, torch-running process), with a
progress bar, filling a :class:`LatencyCache`."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Iterable

from tqdm.auto import tqdm

from nncf_tdplugin.latency_model.cache import LatencyCache
from nncf_tdplugin.latency_model.specs import LayerSpec

_WORKER = pathlib.Path(__file__).with_name("_layer_worker.py")


def _run_chunk(specs: list, cache: LatencyCache, timeout_s: float) -> dict:
    ctx = cache.context
    job = {"context": {"precision": ctx.precision, "threads": ctx.threads, "warmup": ctx.warmup,
                       "iterations": ctx.iterations, "repeats": ctx.repeats},
           "specs": [s.to_json() for s in specs]}
    env = dict(os.environ)
    if ctx.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(ctx.threads)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        job_path = f.name
    try:
        done = subprocess.run([sys.executable, str(_WORKER), job_path], capture_output=True, text=True, env=env,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"layer latency worker ran past {timeout_s} s on {len(specs)} layers")
    finally:
        os.unlink(job_path)
    if done.returncode != 0:
        raise RuntimeError(f"layer latency worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("torch_loaded"):
        raise RuntimeError("torch was imported into the layer latency worker; its timings would be unreliable")
    return result


def measure_specs(specs: Iterable[LayerSpec], cache: LatencyCache, chunk_size: int = 24, progress: bool = True,
                  desc: str = "latency cost model", timeout_s: float = 900) -> int:
    """Measure every spec not yet in ``cache`` (in chunks, one worker process each; the cache is saved after each
    chunk). Returns how many were measured."""
    todo, seen = [], set()
    for s in specs:
        if s.key not in cache and s.key not in seen:
            seen.add(s.key)
            todo.append(s)
    if not todo:
        return 0
    with tqdm(total=len(todo), desc=desc, unit="layer", disable=None if progress else True) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            result = _run_chunk(chunk, cache, timeout_s)
            for key, ms in result["results"].items():
                cache.put(key, ms, result["spreads"].get(key, 0.0))
            cache.runtime = {"runtime_precision": result["runtime_precision"], "threads": result["threads"]}
            cache.save()
            bar.update(len(chunk))
    return len(todo)
