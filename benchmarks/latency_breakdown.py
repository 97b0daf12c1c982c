"""Where the OpenVINO latency of the benchmark's IRs goes: per-op-type times from the CPU plugin's counters.

For every row of a fine-tuning benchmark JSON (``benchmarks/finetune.py``: rows with ``ir`` / ``ir_int8``) it times
the IR (each repeat in its own OpenVINO-only process, precision and threads pinned) and runs it once more with
``PERF_COUNT`` on, then reports: the median latency, the number of executed convolution nodes (k x k and 1 x 1),
the time spent in each kind, the mean time per 1 x 1 node (close to the fixed cost of one small op), and the time
outside every node (the per-inference and per-node scheduling overhead: the profiled run's mean latency minus the
sum of the nodes' mean times). Run it on a quiet machine: with other work on the cores the split is noise.

    python benchmarks/latency_breakdown.py benchmarks/results/finetune_kd.json --json OUT.json [--int8]

It explains why, on a 28x28 network, filter pruning is faster than Tucker-2 at the same FLOPs: pruning keeps the
op count and thins every op, decomposition adds two 1 x 1 ops per layer whose fixed cost is not hidden at these
spatial sizes.
"""

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_and_print  # noqa: E402
from nncf_tdplugin.export.latency import measure_many  # noqa: E402

COLUMNS = ["method", "budget", "latency_ms", "conv_nodes", "kxk_nodes", "1x1_nodes", "kxk_ms", "1x1_ms",
           "ms_per_1x1", "other_ms", "outside_nodes_ms"]


def breakdown(result) -> dict:
    ms, nodes = result.profile_ms_by_kernel, result.profile_nodes_by_kernel
    conv = [k for k in ms if k.startswith("Convolution:")]
    pointwise = [k for k in conv if "1x1" in k]
    kxk = [k for k in conv if k not in pointwise]
    n1, t1 = sum(nodes[k] for k in pointwise), sum(ms[k] for k in pointwise)
    total = sum(ms.values())
    return {"latency_ms": result.median_ms, "profiled_mean_ms": result.profile_mean_ms,
            "conv_nodes": n1 + sum(nodes[k] for k in kxk), "kxk_nodes": sum(nodes[k] for k in kxk),
            "1x1_nodes": n1, "kxk_ms": sum(ms[k] for k in kxk), "1x1_ms": t1,
            "ms_per_1x1": t1 / n1 if n1 else None, "other_ms": total - t1 - sum(ms[k] for k in kxk),
            "outside_nodes_ms": result.profile_mean_ms - total, "nodes_ms": total,
            "by_kernel_ms": ms, "by_kernel_nodes": nodes, "precision": result.precision,
            "runtime_precision": result.runtime_precision, "threads": result.threads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", help="a benchmarks/finetune.py JSON (rows with 'ir' and 'ir_int8')")
    p.add_argument("--json", help="write the breakdown rows here")
    p.add_argument("--int8", action="store_true", help="the INT8 IRs ('ir_int8') instead of the f32 ones")
    p.add_argument("--precision", default="f32", choices=("f32", "bf16", "default"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", default="1,1,28,28")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    key = "ir_int8" if args.int8 else "ir"
    rows = [r for r in json.loads(pathlib.Path(args.rows).read_text()) if r.get(key)]
    missing = [r[key] for r in rows if not pathlib.Path(r[key]).is_file()]
    if missing:
        raise SystemExit(f"IRs not found (run benchmarks/finetune.py with the same --out-dir first): {missing[:3]}")
    shape = [int(s) for s in args.shape.split(",")]
    results = measure_many([(r[key], shape) for r in rows], precision=args.precision, threads=args.threads,
                           iterations=args.iterations, repeats=args.repeats, profile=True)
    out = [{"method": r["method"], "budget": r["budget"], "ir": r[key], **breakdown(res)}
           for r, res in zip(rows, results)]
    write_and_print(out, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
