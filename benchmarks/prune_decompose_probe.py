"""How much faster can decomposition still make a channel-pruned network? A probe without training.

For each FLOPs ratio R of --prune-flops, the cached Fashion-MNIST ResNet is pruned at once by NNCF's filter_pruning
(no fine-tuning: only the shapes matter here), made physically smaller in torch
(nncf_tdplugin.materialize_pruned_model), and handed to the latency-budgeted search with an unreachable target: the
error it raises carries the best speed-up the per-layer OpenVINO cost model allows with every decomposable layer at
its cheapest option (the ceiling of pruning+search_aa's second stage). R = 1 is the unpruned model.

    python benchmarks/prune_decompose_probe.py --widths 64,128,256,512 --base-epochs 3 --json OUT.json

Rows: prune_flops, precision ("int8": INT8 layers at the f32 hint, as the benchmark's INT8 column; "default"),
params (of the pruned model), max_speedup (cost model, whole model), seconds.
"""

import argparse
import copy
import os
import pathlib
import sys
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
from benchmarks.finetune import INPUT, td_block  # noqa: E402
from benchmarks.pruning import pruning_block  # noqa: E402
from nncf_tdplugin import materialize_pruned_model  # noqa: E402
from nncf_tdplugin.config import TDConfigError  # noqa: E402
from nncf_tdplugin.rank_selection.base import BudgetUnreachableError  # noqa: E402

UNREACHABLE = 1000.0


def pruned_model(base, ratio: float, loader):
    if ratio <= 1.0:
        return copy.deepcopy(base)
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": INPUT},
                                        "compression": [pruning_block(ratio)]})
    ctrl, _ = create_compressed_model(copy.deepcopy(base), register_default_init_args(config, loader))
    return materialize_pruned_model(ctrl, base)


def max_speedup(model, metric: str, threads: int) -> float:
    block = td_block(metric, UNREACHABLE, "search", 1, 1, 1, threads)
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": INPUT}, "compression": [block]})
    try:
        create_compressed_model(copy.deepcopy(model), config)
    except TDConfigError as e:
        if isinstance(e.__cause__, BudgetUnreachableError):
            return e.__cause__.best_ratio
        raise
    raise RuntimeError(f"a {UNREACHABLE:g}x {metric} target was reached: the probe's premise is wrong")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True)
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)))
    parser.add_argument("--base-epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--prune-flops", default="1,1.7,2.5,3", help="FLOPs ratios of the pruning (1: none)")
    parser.add_argument("--precisions", default="int8", help="of int8, default")
    parser.add_argument("--latency-threads", type=int, default=2)
    args = parser.parse_args(argv)
    quiet_nncf()
    torch.manual_seed(0)
    base, _ = get_trained_resnet_fmnist(tuple(int(w) for w in args.widths.split(",")), args.base_epochs)
    loader, _ = fashion_mnist_loaders(128, train_subset=2048)
    rows = []
    for ratio in (float(r) for r in args.prune_flops.split(",")):
        model = pruned_model(base, ratio, loader)
        for precision in args.precisions.split(","):
            start = time.perf_counter()
            metric = {"int8": "latency_int8", "default": "latency"}[precision]
            rows.append({"prune_flops": ratio, "precision": precision,
                         "params": sum(p.numel() for p in model.parameters()),
                         "max_speedup": max_speedup(model, metric, args.latency_threads),
                         "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
    write_and_print(rows, ["prune_flops", "precision", "params", "max_speedup", "seconds"], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
