"""Does a latency budget hold end to end? The per-layer cost model against `latency.whole_model_check`, no training.

For each budget of --budgets (``latency:R`` at the default precision, ``latency_int8:R`` on INT8 layers, as in
``benchmarks/finetune.py``) the cached Fashion-MNIST ResNet is compressed by the activation-aware search twice: with
the per-layer cost model alone (``whole_model_check: 0``) and with ``whole_model_check: --rounds`` (the chosen
ranks are timed end to end and selected again at a raised target while they miss). Each plan is exported (INT8
budgets: quantized post-training like the benchmark's INT8 column), and every IR is timed against the dense one,
interleaved, each repeat in its own OpenVINO-only process, at the static input shape.

    python benchmarks/whole_model_check.py --widths 64,128,256,512 --base-epochs 3 --base-holdout 10000 \
        --budgets latency_int8:1.5,latency:1.7 --json OUT.json
    python benchmarks/whole_model_check.py --widths 64,128,256,512 --base-epochs 3 --base-holdout 10000 \
        --prune-flops 2 --pruning-points 3 --budgets latency_int8:1.3,latency:1.45 --json OUT.json

With ``--prune-flops R`` the search runs on the network pruned to R times fewer FLOPs first (NNCF's filter pruning
at once, no training, made physically smaller: decomposition on top of pruning, ``pruning+search_aa`` in
``benchmarks/finetune.py``); ``--pruning-points R1,R2`` adds pruning alone at those FLOPs ratios to the timing, each at
the precision of every budget, so a checked plan can be placed against pruning's own speed. Ratios are against the
unpruned dense network (``measured_ratio``) and, with --prune-flops, against the pruned one (``vs_start_ratio``).

Rows: budget, whole_model_check (rounds allowed), predicted_ratio (the per-layer model's, whole model), check_rounds
and check_measured_ratio (what the check timed during the selection), measured_ratio (dense IR latency / this IR's,
timed here), macs_ratio, layers (decomposed), seconds (selection).
"""

import argparse
import copy
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing and registers the algorithm)
import nncf
import torch
from nncf.torch import create_compressed_model, register_default_init_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))
from benchmarks.common import quiet_nncf, write_and_print  # noqa: E402
from benchmarks.data_models.fashion_mnist import (  # noqa: E402
    DEFAULT_EPOCHS, DEFAULT_WIDTHS, fashion_mnist_loaders, get_trained_resnet_fmnist)
from benchmarks.finetune import (  # noqa: E402
    INPUT, calibration_images, merge_options, parse_budget, quantize_ir, td_block)
from benchmarks.pruning import export_pruned_ir, ir_cost, pruning_block  # noqa: E402
from nncf_tdplugin import materialize_pruned_model  # noqa: E402
from nncf_tdplugin.export import export_openvino, measure_many  # noqa: E402

COLUMNS = ["budget", "whole_model_check", "predicted_ratio", "check_rounds", "check_measured_ratio",
           "measured_ratio", "vs_start_ratio", "latency_ms", "macs_ratio", "layers", "seconds"]


def pruned(base, flops_ratio: float, loader):
    """``base`` with NNCF's filter pruning to ``flops_ratio`` at once (no training), physically smaller, and the
    pruning controller (for its own IR)."""
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": INPUT},
                                        "compression": [pruning_block(flops_ratio)]})
    ctrl, _ = create_compressed_model(copy.deepcopy(base), register_default_init_args(config, loader))
    return materialize_pruned_model(ctrl, base).eval(), ctrl


def compress(base, metric: str, ratio: float, rounds: int, threads: int, loader):
    block = merge_options(td_block(metric, ratio, "search", 1, 1, 1, threads),  # search_aa+finetune's block
                          {"decomposition": {"activation_aware": True}, "latency": {"whole_model_check": rounds}})
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": INPUT}, "compression": [block]})
    ctrl, _ = create_compressed_model(copy.deepcopy(base), register_default_init_args(config, loader))
    return ctrl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)))
    parser.add_argument("--base-epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--base-holdout", type=int, default=0)
    parser.add_argument("--budgets", default="latency_int8:1.5,latency:1.7")
    parser.add_argument("--rounds", type=int, default=3, help="latency.whole_model_check of the checked plans")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--out-dir", default=None, help="IRs (default: a temporary folder)")
    parser.add_argument("--prune-flops", type=float, default=None,
                        help="decompose the network pruned to this FLOPs ratio (no training) instead of the dense one")
    parser.add_argument("--pruning-points", default="",
                        help="comma-separated FLOPs ratios of pruning alone to time beside the plans")
    args = parser.parse_args(argv)
    quiet_nncf()
    torch.manual_seed(0)
    base, _ = get_trained_resnet_fmnist(tuple(int(w) for w in args.widths.split(",")), args.base_epochs,
                                        holdout=args.base_holdout)
    loader, _ = fashion_mnist_loaders(128, train_subset=2048)
    calibration = calibration_images()
    out_dir = pathlib.Path(args.out_dir or tempfile.mkdtemp(prefix="whole_model_check_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.randn(*INPUT)
    dense_xml = export_openvino(base, example, out_dir / "dense.xml")
    dense_int8 = quantize_ir(dense_xml, calibration, out_dir / "dense_int8.xml")
    dense_macs = ir_cost(dense_xml, INPUT)["macs"]
    rows, start_irs = [], None
    metrics = {parse_budget(text)[0] for text in args.budgets.split(",")}
    for ratio in [float(r) for r in args.pruning_points.split(",") if r]:
        _, pctrl = pruned(base, ratio, loader)
        xml = export_pruned_ir(pctrl, example, out_dir / f"pruning_flops{ratio:g}.xml")
        ir8 = quantize_ir(xml, calibration, out_dir / f"pruning_flops{ratio:g}_int8.xml")
        for metric in sorted(metrics):
            rows.append({"budget": f"filter_pruning flops:{ratio:g}", "metric": metric, "whole_model_check": None,
                         "macs_ratio": dense_macs / ir_cost(xml, INPUT)["macs"],
                         "ir": str(ir8 if metric == "latency_int8" else xml)})
    if args.prune_flops:  # decomposition on top of pruning: the pruned network is where the search starts
        base, pctrl = pruned(base, args.prune_flops, loader)
        xml = export_pruned_ir(pctrl, example, out_dir / f"start_pruning_flops{args.prune_flops:g}.xml")
        start_irs = {"latency": xml, "latency_int8": quantize_ir(xml, calibration, out_dir / "start_int8.xml")}
        for metric in sorted(metrics):
            rows.append({"budget": f"start: filter_pruning flops:{args.prune_flops:g}", "metric": metric,
                         "whole_model_check": None, "macs_ratio": dense_macs / ir_cost(xml, INPUT)["macs"],
                         "ir": str(start_irs[metric])})
    for text in args.budgets.split(","):
        metric, ratio, _ = parse_budget(text)
        for rounds in (0, args.rounds):
            start = time.perf_counter()
            ctrl = compress(base, metric, ratio, rounds, args.latency_threads, loader)
            seconds = time.perf_counter() - start
            lat = ctrl.plan["latency"]
            check = lat.get("whole_model_check") or {}
            tag = f"{metric}{ratio:g}_check{rounds}"
            xml = export_openvino(ctrl, example, out_dir / f"{tag}.xml")
            ir = quantize_ir(xml, calibration, out_dir / f"{tag}_int8.xml") if metric == "latency_int8" else xml
            rows.append({"budget": text + (f" on pruning flops:{args.prune_flops:g}" if args.prune_flops else ""),
                         "metric": metric, "target_ratio": ratio, "whole_model_check": rounds,
                         "predicted_ratio": lat["achieved_ratio"], "check_rounds": len(check.get("rounds", [])),
                         "check_measured_ratio": check.get("measured_ratio"), "check": check or None,
                         "macs_ratio": dense_macs / ir_cost(xml, INPUT)["macs"], "layers": len(ctrl.plan["layers"]),
                         "seconds": seconds, "ir": str(ir), "precision": lat["precision"], "int8": lat["int8"]})
            print(rows[-1], flush=True)
    # every IR of a precision with its dense IR, interleaved; INT8 budgets on the INT8 IRs
    for int8 in (False, True):
        group = [r for r in rows if (r["metric"] == "latency_int8") == int8]
        if not group:
            continue
        dense = str(dense_int8 if int8 else dense_xml)
        results = measure_many([(dense, INPUT)] + [(r["ir"], INPUT) for r in group], precision="default",
                               threads=args.latency_threads, iterations=200, repeats=5)
        start_ms = next((res.median_ms for r, res in zip(group, results[1:]) if r["budget"].startswith("start:")),
                        None)
        for r, result in zip(group, results[1:]):
            r["latency_ms"], r["dense_latency_ms"] = result.median_ms, results[0].median_ms
            r["measured_ratio"] = results[0].median_ms / result.median_ms
            if start_ms is not None:
                r["vs_start_ratio"] = start_ms / result.median_ms
    write_and_print(rows, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
