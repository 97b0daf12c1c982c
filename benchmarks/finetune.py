"""Fine-tuning benchmark on Fashion-MNIST (issue 4): accuracy, FLOPs/parameter reduction and OpenVINO latency of
(1) data-free search + fine-tune, (2) budget-aware rank learning during fine-tuning, (3) uniform ranks + fine-tune and
(4) NNCF's filter_pruning at the same FLOPs reduction (and rank_learning_fisher: (2) with the data-driven channel
importance, ``rank_learning.importance: "fisher"``; search_aa+finetune: (1) with ``decomposition.activation_aware``,
ranks and factors fitted to the layers' outputs on NNCF's init data, the training images; rank_learning_aa: (2) from
an activation-aware initial decomposition, the same option; and the control
dense+finetune: the uncompressed model through the same fine-tuning, once per seed, budget "-"), all with the same
number of fine-tuning epochs, starting from
the cached trained ResNet-18-style classifier (benchmarks/data_models/fashion_mnist.py, 4 epochs, 92.88% test
accuracy).

    python benchmarks/finetune.py --json benchmarks/results/finetune.json                # hours on 2 cores
    python benchmarks/finetune.py --json /tmp/finetune_quick.json --quick                # minutes, small subsets
                                          # (on a fresh machine from a 1-epoch base model, trained and cached)
    python benchmarks/finetune.py --widths 64,128,256,512 --base-epochs 3 ...            # ResNet-18's widths

``--seeds 0,1,2`` runs every method and budget once per seed (the seed sets the data order and augmentation of the
fine-tuning, set again before each row) and ends with the mean over seeds; a seed's IRs get a ``_s<seed>`` suffix.
Runs of different budgets or methods can be combined: each --resume keeps the earlier rows and times every IR again
with the new ones, side by side (docs/rank_learning.md, "ResNet-18 widths", lists the commands of such a run). A
row whose IRs are no longer in --out-dir keeps the latencies of its earlier timing run; every row carries the dense
IR's latencies of the run that timed it (dense_latency_ms_*) and the CPU it ran on (timing_cpu: model, cores, ISA
flags), and the report rescales rows of other runs on the same CPU by them (never across CPUs: a speed-up measured
without AMX is not one with AMX). Every IR is timed compiled for the static input shape (timing_static_shapes; the
decomposed and dense IRs are exported with a dynamic batch, the pruned ones static, and before session 22 each ran
as exported: dynamic shapes cost ~10% on the decomposed INT8 IRs), and rows of runs timed otherwise are not compared.

Rows: method, budget (metric:ratio), flops_ratio and params_ratio (MACs and weights of the Convolution/MatMul ops
of the exported IRs, against the dense IR: the same count for every method, pruning included), test_accuracy (f32,
after fine-tuning), baseline_accuracy, epochs, latency_ms_default (f32 IR at the CPU's default precision) and
latency_ms_int8 (the same IR quantized post-training by NNCF's OpenVINO backend on training images); each latency in
its own processes (nncf_tdplugin.export.measure_many). The filter-pruning IR is made physically smaller with
OpenVINO's pruning transformation (benchmarks/pruning.py). Pruning targets the FLOPs ratio that the search row of
the same budget reached (the plain search's; where only the activation-aware search ran at that budget, the mean of
its rows so far: ``flops_to_match``), gradually over the first epochs - 1 epochs (NNCF's exponential schedule), as
rank learning shrinks its ranks over the first epochs - 1 epochs; both then fine-tune one epoch at the final shapes.
A budget ``latency:R`` uses the per-layer OpenVINO cost model at the default precision and --latency-threads (rank
learning: its grid, interpolated per rank); pruning then matches the FLOPs ratio of the search row. A budget
``latency_int8:R`` is the same on INT8 layers (``latency.int8``) at the default precision, as the INT8 column is
timed since session 22 (before, at the f32 hint: see measure_column).
A budget ``params:5+flops:3`` asks for both (``budget.additional``: the first is ``budget.metric``), for every
method; pruning then matches the FLOPs ratio of the search row, as at any budget.

``--lr`` sets the fine-tuning learning rate of every row of a run (SGD, cosine decay; default 0.01, the rate of every
row made before rows recorded ``lr``); rows of several rates are kept apart (their IRs get a ``_lr<rate>`` suffix).
``--val-size N`` adds ``val_accuracy``, on the last N training images, which the fine-tuning never sees: the report
chooses a learning rate per method and budget on it, never on the test accuracy. The default base model was trained
on them, so that split favours staying close to the base model; ``--base-holdout N`` starts from a base model
trained without the last N training images (cached apart, ``_h<N>``; trained first if missing) and makes the split
unbiased (--val-size at most N). Rows record ``base_holdout``, and --resume refuses rows of another base model, and rows
that recorded another fine-tuning setup (``RUN_SETTINGS``: epochs, subsets, distillation, widths, base epochs,
update_every). ``--td-options JSON`` merges keys into the tensor_decomposition
block of every row of a run (e.g. ``'{"rank_learning": {"num_epochs": 1}}'``; only methods with that block): rows
record it as ``options`` (canonical JSON) and are kept apart from the other settings like a learning rate (IRs get
an ``_o<keys and values>`` suffix); the report chooses among settings on ``val_accuracy`` the same way.
``--pruning-options JSON`` does the same for the filter_pruning block (e.g. ``'{"params": {"pruning_steps": 1}}'``,
pruning in one epoch; not its FLOPs target, which matches the search row): a method's schedule tuned on validation
can be set against pruning's schedule tuned the same way.

pruning+search_aa is decomposition on top of channel pruning: its budget ``flops:R+<metric>:R2`` prunes to R times
fewer FLOPs (filter_pruning, gradually over epochs - 2 epochs, then one epoch at the final shapes), makes the pruned
model physically smaller in torch (nncf_tdplugin.materialize_pruned_model), then decomposes it under
``<metric>:R2`` with the activation-aware search and fine-tunes the last epoch (knowledge distillation from the
pruned model in that stage).
"""

import argparse
import copy
import json
import os
import pathlib
import sys
import time
import traceback

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing and registers the algorithm)
import nncf
import numpy as np
import openvino as ov
import torch
from nncf.torch import create_compressed_model, register_default_init_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "samples"))
from benchmarks.common import quiet_nncf, write_and_print  # noqa: E402
from benchmarks.finetune_report import DEFAULT_LR, aggregate  # noqa: E402
from benchmarks.data_models.fashion_mnist import (  # noqa: E402
    DEFAULT_EPOCHS,
    DEFAULT_WIDTHS,
    evaluate,
    FashionMNISTDataset,
    cache_paths,
    fashion_mnist_loaders,
    get_trained_resnet_fmnist,
    load_fashion_mnist,
)
from benchmarks.pruning import export_pruned_ir, ir_cost, pruning_block  # noqa: E402
from fashion_mnist_rank_learning import finetune, latencies  # noqa: E402
from nncf_tdplugin import materialize_pruned_model, td_controller  # noqa: E402
from nncf_tdplugin.export import export_openvino  # noqa: E402
from nncf_tdplugin.latency_model.specs import cpu_identity  # noqa: E402

COLUMNS = ["method", "budget", "seed", "lr", "options", "flops_ratio", "params_ratio", "test_accuracy", "val_accuracy",
           "baseline_accuracy", "epochs",
           "latency_ms_default", "latency_ms_int8", "precision_default", "precision_int8", "achieved_ratio", "seconds"]
INPUT = [1, 1, 28, 28]
TD_METHODS = ("search+finetune", "search_aa+finetune", "pruning+search_aa", "rank_learning", "rank_learning_fisher",
              "rank_learning_aa", "uniform+finetune")
LATENCY_KEYS = ("latency_ms_default", "latency_ms_int8")


def parse_budget(text: str) -> tuple:
    """'flops:3' -> ("flops", 3.0, ()); 'params:5+flops:3' -> ("params", 5.0, (("flops", 3.0),)): the first is
    budget.metric, the others go to budget.additional."""
    parts = []
    for part in text.split("+"):
        metric, _, ratio = part.partition(":")
        parts.append((metric, float(ratio)))
    (metric, ratio), extra = parts[0], tuple(parts[1:])
    return metric, ratio, extra


def budget_label(budget: tuple) -> str:
    metric, ratio, extra = budget
    if metric == "-":  # dense+finetune: no budget
        return "-"
    return "+".join(f"{m}:{r:g}" for m, r in ((metric, ratio), *extra))


def merge_options(block: dict, options: dict) -> dict:
    """``block`` with ``options`` merged in (nested dicts key by key, anything else replaced)."""
    out = dict(block)
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_options(out[key], value)
        else:
            out[key] = value
    return out


def parse_options(text: str, flag: str = "--td-options") -> tuple[dict, str]:
    """The value of --td-options or (``flag``) --pruning-options: (the dict, its canonical JSON; "" for none). Raises
    ValueError naming what is wrong."""
    if not text:
        return {}, ""
    block = "tensor_decomposition" if flag == "--td-options" else "filter_pruning"
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not JSON ({e}): {text!r}") from None
    if not isinstance(options, dict) or not options:
        raise ValueError(f"{flag} must be a non-empty JSON object (keys of the {block} block), got {text!r}")
    if "algorithm" in options or "budget" in options:
        raise ValueError(f"{flag} may not set 'algorithm' or 'budget' (the budget is --budgets)")
    params = options.get("params") if isinstance(options.get("params"), dict) else {}
    fixed = sorted(k for k in ("pruning_flops_target", "pruning_target") if k in params)
    if flag == "--pruning-options" and fixed:
        raise ValueError(f"--pruning-options may not set params.{fixed[0]}: pruning matches the FLOPs ratio of the "
                         f"search row of the budget")
    return options, json.dumps(options, sort_keys=True, separators=(",", ":"))


def method_options(name: str, args) -> tuple[dict, str]:
    """(options, canonical JSON) that apply to method ``name``: --td-options for methods with a tensor_decomposition
    block, --pruning-options for filter_pruning, else none."""
    if name in TD_METHODS:
        return parse_options(args.td_options)
    if name == "filter_pruning":
        return parse_options(args.pruning_options, "--pruning-options")
    return {}, ""


def options_slug(options: str) -> str:
    """File-name form of canonical options: the leaf keys and values, e.g. 'num_epochs1-initial_ratio3.5'."""
    def leaves(d):
        for key, value in sorted(d.items()):
            if isinstance(value, dict):
                yield from leaves(value)
            else:
                yield f"{key}{value}".replace(" ", "")
    return "".join(c if c.isalnum() or c in "._-" else "" for c in "-".join(leaves(json.loads(options))))


def td_block(metric: str, ratio: float, method: str, epochs: int, update_every: int, steps_per_epoch: int,
             latency_threads: int, additional: tuple = ()) -> dict:
    int8 = metric == "latency_int8"  # the latency of INT8 layers, timed as the INT8 rows are (default precision)
    metric = "latency" if int8 else metric
    block = {"algorithm": "tensor_decomposition", "budget": {"metric": metric, "target_ratio": ratio}}
    if additional:
        block["budget"]["additional"] = [{"metric": m, "target_ratio": r} for m, r in additional]
    if metric == "latency":  # the per-layer OpenVINO cost model, at the precision and threads the rows are timed at
        block["latency"] = ({"precision": "default", "int8": True, "threads": latency_threads} if int8
                            else {"precision": "default", "threads": latency_threads})
    if method == "uniform":
        block["rank_selection"] = "uniform"
    elif method in ("rank_learning", "rank_learning_fisher"):  # (rank_learning_aa: rank_learning, activation-aware)
        # the ranks shrink over all but the last epoch, which fine-tunes at the final ranks
        # (initial_ratio: the default, sqrt of the target, raised by the builder if the target is out of reach)
        block["rank_learning"] = {"num_epochs": max(1, epochs - 1),
                                  "update_every": update_every, "steps_per_epoch": steps_per_epoch}
        if method == "rank_learning_fisher":  # the data-driven channel importance
            block["rank_learning"]["importance"] = "fisher"
        if metric == "latency":
            # at a mild latency ratio the search decomposes only the few layers with the largest measured savings
            # (a decomposition at high ranks is slower than dense here), too few for the ranks to reach the target;
            # uniform ranks decompose every layer that gets faster (docs/rank_learning.md, "Latency budgets")
            block["rank_selection"] = "uniform"
    return block


def calibration_images(n: int = 64) -> list:
    """``n`` training images (one per item, normalised as the model's inputs) for the INT8 post-training quantization
    of every IR."""
    return [x[:1].numpy() for (x, _), _ in zip(fashion_mnist_loaders(1, augment=False)[0], range(n))]


def quantize_ir(xml: pathlib.Path, calibration: list, out: pathlib.Path) -> pathlib.Path:
    """Post-training INT8 quantization of an f32 IR with NNCF's OpenVINO backend."""
    model = ov.Core().read_model(str(xml))
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def run_method(name, budget, base_model, loaders, args, out_dir, calibration, baseline, flops_for_pruning=None,
               seed=0, val_loader=None):
    train_loader, test_loader = loaders
    metric, ratio, additional = budget
    torch.manual_seed(seed)  # the data order and any random init of this row, whatever ran before it
    np.random.seed(seed)  # the augmentation (NumPy's global generator; before 2026-12-03 it ran on from the rows before)
    model = copy.deepcopy(base_model)
    start = time.perf_counter()
    epochs = args.epochs
    if name == "pruning+search_aa":  # decomposition on top of pruning: budget flops:R (pruning) + the search's budget
        if metric != "flops" or not additional:
            raise ValueError(f"{name} needs a budget flops:R+<metric>:R (pruning's FLOPs ratio, then the budget of "
                             f"the decomposition of the pruned model), got {budget_label(budget)}")
        prune_epochs = max(1, epochs - 1)  # pruned gradually, one epoch at the final shapes, then decomposed
        ctrl, pruned = compress_and_finetune(model, pruning_block(ratio, steps=max(0, prune_epochs - 1)), loaders,
                                             args, prune_epochs)
        model = materialize_pruned_model(ctrl, base_model)  # physically smaller plain torch model
        epochs -= prune_epochs
        (metric, ratio), additional = additional[0], tuple(additional[1:])
    if name == "filter_pruning":
        block = pruning_block(flops_for_pruning, steps=max(0, epochs - 1))
    elif name == "dense+finetune":  # the control: the uncompressed model through the same fine-tuning
        block = None
    else:
        method = {"search+finetune": "search", "search_aa+finetune": "search", "pruning+search_aa": "search",
                  "rank_learning": "rank_learning", "rank_learning_fisher": "rank_learning_fisher",
                  "rank_learning_aa": "rank_learning",
                  "uniform+finetune": "uniform"}[name]
        block = td_block(metric, ratio, method, epochs, args.update_every, len(train_loader),
                         args.latency_threads, additional)
        if name in ("search_aa+finetune", "pruning+search_aa", "rank_learning_aa"):
            # activation-aware: ranks and factors for the outputs on training images
            block["decomposition"] = {"activation_aware": True}
    extra, options = method_options(name, args)
    if extra:  # --td-options / --pruning-options (the TD block of pruning+search_aa; dense+finetune has none)
        block = merge_options(block, extra)
    ctrl, compressed = compress_and_finetune(model, block, loaders, args, epochs)
    accuracy = evaluate(compressed, test_loader, progress=False)
    val_accuracy = evaluate(compressed, val_loader, progress=False) if val_loader is not None else None
    tag = row_tag(name, budget_label(budget), seed, args.lr, options)
    example = torch.randn(*INPUT)
    if name == "filter_pruning":
        xml = export_pruned_ir(ctrl, example, out_dir / f"{tag}.xml")
        achieved = check = None
    else:
        xml = export_openvino(ctrl, example, out_dir / f"{tag}.xml")
        td = td_controller(ctrl)
        achieved = td.statistics().tensor_decomposition.achieved_ratio if td is not None else None
        check = ((getattr(td, "plan", None) or {}).get("latency") or {}).get("whole_model_check")
    int8 = quantize_ir(xml, calibration, out_dir / f"{tag}_int8.xml")
    cost = ir_cost(xml, INPUT)
    return {"method": name, "budget": budget_label(budget), "seed": seed, "lr": args.lr, "options": options or None,
            "flops_ratio": baseline["macs"] / cost["macs"], "params_ratio": baseline["weights"] / cost["weights"],
            "test_accuracy": accuracy, "val_accuracy": val_accuracy,
            "baseline_accuracy": baseline["accuracy"], "epochs": args.epochs, "achieved_ratio": achieved,
            # latency.whole_model_check: the end-to-end timings of the selection (vs the model it was given)
            "whole_model_check": check,
            "seconds": time.perf_counter() - start, "ir": str(xml), "ir_int8": str(int8)}


def compress_and_finetune(model, block, loaders, args, epochs):
    """``create_compressed_model`` with ``block`` (None: no compression) and, with --kd, NNCF's knowledge
    distillation from ``model`` as it comes in (its loss is part of ctrl.loss(); the same for every method), then
    ``epochs`` epochs of fine-tuning."""
    train_loader, _ = loaders
    kd = [{"algorithm": "knowledge_distillation", "type": "softmax", "temperature": args.kd_temperature}] \
        if args.kd else []
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": INPUT},
                                        "compression": kd + ([block] if block else [])})
    config = register_default_init_args(config, train_loader)
    ctrl, compressed = create_compressed_model(model, config)
    finetune(ctrl, compressed, train_loader, epochs, args.lr, log=(print if args.verbose else lambda *a: None),
             progress=args.verbose)
    return ctrl, compressed


SEARCH_METHODS = ("search+finetune", "search_aa+finetune")  # the rows whose FLOPs ratio pruning matches, in order


def flops_to_match(rows, label: str) -> float | None:
    """The FLOPs ratio filter_pruning targets at budget ``label``: that of the plain search rows of that budget
    (deterministic, the same for every seed), or where there are none, the mean over the activation-aware search's
    rows (its ranks depend a little on the calibration images, so its seeds can differ in the third digit); rows
    with --td-options or an error do not count. None when neither ran."""
    rows = [r for r in rows if r.get("budget") == label and not r.get("options") and "error" not in r]
    for method in SEARCH_METHODS:
        ratios = [r["flops_ratio"] for r in rows if r["method"] == method]
        if ratios:
            return float(np.mean(ratios))
    return None


def row_key(r: dict) -> tuple:
    """(method, budget, seed, lr, options) of a row; rows made before --seeds, --lr and --td-options were recorded ran
    at seed 0, lr 0.01, without options ("")."""
    return r["method"], r["budget"], r.get("seed") or 0, r.get("lr") or DEFAULT_LR, r.get("options") or ""


def row_tag(method: str, budget: str, seed: int, lr: float = DEFAULT_LR, options: str = "") -> str:
    """File stem of a row's IRs (seed 0, the default learning rate and no options keep the names of the runs made
    before --seeds, --lr and --td-options were recorded)."""
    if method == "dense":
        return "dense"
    suffix = ((f"_s{seed}" if seed else "") + (f"_lr{lr:g}" if lr != DEFAULT_LR else "")
              + (f"_o{options_slug(options)}" if options else ""))
    if method == "dense+finetune":
        return "dense_finetune" + suffix
    return f"{method.replace('+', '_')}_{budget.replace(':', '').replace('+', '_')}" + suffix


def measure_column(irs: list, label: str, threads: int, iterations: int, repeats: int) -> tuple[list, str]:
    """(measure_many results, precision hint) of one latency column: every IR at one precision, the CPU's default,
    or f32 for all of them if OpenVINO cannot compile one of the IRs at the default (seen for the INT8 IRs of this
    network on AVX512-BF16 CPUs without AMX while they were compiled with a dynamic batch: "No suitable
    implementations"; measure_many now compiles every IR for the static INPUT); INT8 layers run in INT8 either way,
    the hint sets the precision of the rest. Repeats interleaved, each repeat of each IR in its own process (the
    sample's ``latencies``)."""
    return latencies(irs, INPUT, threads, iterations, repeats, label)


def other_base_model(rows: list[dict], holdout: int) -> str:
    """Why ``rows`` cannot join a run from the base model trained without the last ``holdout`` training images (a
    row of another base model: its accuracies are not comparable), or "" when they can. Rows without
    ``base_holdout`` come from runs before it was recorded, all from the base model trained on every image."""
    for r in rows:
        if r.get("base_holdout", 0) != holdout:
            return (f"its {r['method']} row at {r.get('budget')} fine-tuned the base model trained without the last "
                    f"{r.get('base_holdout', 0)} training images, this run --base-holdout {holdout}: rows of two "
                    f"base models cannot be compared")
    return ""


# what a row's accuracy depends on besides (method, budget, seed, lr, options): rows of a run with other values are
# not comparable with this run's, and --resume refuses them (a field a row did not record is not checked)
RUN_SETTINGS = ("epochs", "train_subset", "test_subset", "knowledge_distillation", "kd_temperature", "widths",
                "base_epochs", "update_every")


def run_settings(args, widths, base_epochs: int) -> dict:
    return {"epochs": args.epochs, "train_subset": args.train_subset, "test_subset": args.test_subset,
            "knowledge_distillation": args.kd, "kd_temperature": args.kd_temperature if args.kd else None,
            "widths": list(widths), "base_epochs": base_epochs, "update_every": args.update_every}


def other_settings(rows: list[dict], settings: dict) -> str:
    """Why ``rows`` cannot join a run with ``settings`` (:data:`RUN_SETTINGS`), or "" when they can. The dense row
    has no fine-tuning, so only its test subset and the base model count for it."""
    for r in rows:
        if "error" in r:
            continue
        checked = ("test_subset", "widths", "base_epochs") if r["method"] == "dense" else RUN_SETTINGS
        for name in checked:
            if name in r and r[name] != settings[name]:
                return (f"its {r['method']} row at {r.get('budget')} ran with {name}={r[name]!r}, this run "
                        f"{name}={settings[name]!r}: rows of the two runs cannot be compared (use another --json, or "
                        f"the earlier run's settings)")
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="output rows")
    parser.add_argument("--quick", action="store_true",
                        help="one budget (flops:3), 2 epochs of 2000 images, 2000 test images, fewer timings")
    parser.add_argument("--budgets", default="flops:3,params:5",
                        help="metric:ratio,... with metric flops, params, latency or latency_int8; metric:ratio+metric:ratio "
                             "adds budget.additional (params or flops) to a budget (default %(default)s)")
    parser.add_argument("--methods", default="search+finetune,rank_learning,uniform+finetune,filter_pruning",
                        help="of search+finetune, search_aa+finetune, rank_learning, rank_learning_fisher, "
                             "rank_learning_aa, "
                             "uniform+finetune, filter_pruning, pruning+search_aa, dense+finetune")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds of the fine-tuning runs (data order, augmentation): each method "
                             "and budget runs once per seed, and the table ends with the mean over seeds")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)),
                        help="stage widths of the trained network to compress (default %(default)s; 64,128,256,512 "
                             "is ResNet-18's; a network not in the cache is trained first)")
    parser.add_argument("--base-epochs", type=int, default=DEFAULT_EPOCHS,
                        help="training epochs of the cached network (part of its cache name; default %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help="fine-tuning learning rate of every row of this run (recorded in the rows: rows of "
                             "several learning rates are kept apart, and --resume keeps each)")
    parser.add_argument("--td-options", default="",
                        help="JSON object merged into the tensor_decomposition block of every row (e.g. "
                             "'{\"rank_learning\": {\"num_epochs\": 1}}'), recorded as the rows' options and kept "
                             "apart like a learning rate; only with methods that have that block")
    parser.add_argument("--pruning-options", default="",
                        help="JSON object merged into the filter_pruning block of the filter_pruning rows (e.g. "
                             "'{\"params\": {\"pruning_steps\": 1}}'), recorded as their options; only with "
                             "--methods filter_pruning")
    parser.add_argument("--val-size", type=int, default=0,
                        help="also report val_accuracy on the last N training images (not in --train-subset; the "
                             "base model saw them, the fine-tuning did not): the split to choose a learning rate on")
    parser.add_argument("--base-holdout", type=int, default=0,
                        help="start from the base model trained without the last N training images (an unbiased "
                             "--val-size split of at most N; cached apart and trained first if missing)")
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--test-subset", type=int)
    parser.add_argument("--kd", action="store_true",
                        help="fine-tune every method with NNCF's knowledge_distillation from the original model")
    parser.add_argument("--kd-temperature", type=float, default=2.0)
    parser.add_argument("--update-every", type=int, default=50, help="rank learning: steps between Z-steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--latency-threads", type=int, default=2)
    parser.add_argument("--out-dir", default="out/finetune")
    parser.add_argument("--resume", help="rows of an earlier run with the same --out-dir (its --json, or the "
                        "JSON.partial file written after each row): keep its rows (and IRs), run only the missing or "
                        "failed ones, then time every IR again together; its rows of other budgets or methods are "
                        "kept too, so that runs of different budgets end timed side by side")
    parser.add_argument("--no-timing", action="store_true",
                        help="write the rows without timing the IRs (a later --resume run times them all together)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.budgets = "flops:3" if args.budgets == parser.get_default("budgets") else args.budgets
        args.epochs = 2 if args.epochs == parser.get_default("epochs") else args.epochs
        args.train_subset = args.train_subset or 2000
        args.test_subset = args.test_subset or 2000
        args.update_every = 5
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_nncf()
    torch.manual_seed(0)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        budgets = [parse_budget(b) for b in args.budgets.split(",")]
    except ValueError:
        parser.error(f"--budgets must be metric:ratio[+metric:ratio],..., got {args.budgets!r}")
    # pruning matches the FLOPs ratio the search rows of its budget reached: they run first, whatever the order given
    methods = sorted(args.methods.split(","), key=lambda m: m == "filter_pruning")
    try:
        td_options = parse_options(args.td_options)[1]
        pruning_options = parse_options(args.pruning_options, "--pruning-options")[1]
    except ValueError as e:
        parser.error(str(e))
    if td_options and set(methods) - set(TD_METHODS):
        parser.error(f"--td-options applies to the tensor_decomposition block, which methods "
                     f"{sorted(set(methods) - set(TD_METHODS))} do not have; run them without it")
    if pruning_options and set(methods) != {"filter_pruning"}:
        parser.error(f"--pruning-options applies to the filter_pruning block: run it with --methods filter_pruning "
                     f"alone, not {sorted(set(methods) - {'filter_pruning'})}")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")

    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        parser.error(f"--widths must be 4 comma-separated integers, got {args.widths!r}")
    holdout = args.base_holdout
    if holdout and args.val_size > holdout:
        parser.error(f"--val-size {args.val_size} is more than --base-holdout {holdout}: the validation split would "
                     f"hold images the base model was trained on")
    x, y = load_fashion_mnist("train")
    total = len(y)
    if not 0 <= holdout < total or (args.train_subset or 0) + holdout > total:
        parser.error(f"--base-holdout {holdout} must be in [0, {total}) and leave the --train-subset "
                     f"{args.train_subset} images apart (the training set has {total})")
    train_loader, test_loader = fashion_mnist_loaders(128, train_subset=args.train_subset, holdout=holdout)
    val_loader = None
    if args.val_size:
        if args.val_size < 0 or (args.train_subset or total - holdout) + args.val_size > total:
            parser.error(f"--val-size {args.val_size} must be positive and leave the --train-subset "
                         f"{args.train_subset or total - holdout} images apart (the training set has {total})")
        val_loader = torch.utils.data.DataLoader(
            FashionMNISTDataset(x[total - args.val_size:], y[total - args.val_size:], False), batch_size=512)
    base_epochs, full_epochs = args.base_epochs, parser.get_default("base_epochs")
    if args.quick and base_epochs == full_epochs and not cache_paths(widths, base_epochs, holdout=holdout)[0].exists():
        # a fresh machine: the full base model trains for tens of minutes; --quick stays a run of minutes
        base_epochs = 1
        print(f"--quick: no cached {full_epochs}-epoch base model; training (and caching) a 1-epoch one instead "
              f"(below the 92% of the full runs; --base-epochs {full_epochs} trains the full one)")
    base, _ = get_trained_resnet_fmnist(widths, base_epochs, holdout=holdout)
    settings = run_settings(args, widths, base_epochs)
    if args.test_subset:
        test_loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(test_loader.dataset, range(args.test_subset)), batch_size=512)
    calibration = calibration_images()
    example = torch.randn(*INPUT)
    prior = {}
    if args.resume:
        resumed = json.loads(pathlib.Path(args.resume).read_text())
        other = other_base_model(resumed, holdout) or other_settings(resumed, settings)
        if other:
            parser.error(f"--resume {args.resume}: {other}")
        for r in resumed:
            if "error" in r:
                continue
            r.setdefault("seed", None if r["method"] == "dense" else 0)
            r.setdefault("lr", None if r["method"] == "dense" else DEFAULT_LR)
            tag = row_tag(*row_key(r))
            r.setdefault("ir", str(out_dir / f"{tag}.xml"))
            r.setdefault("ir_int8", str(out_dir / f"{tag}_int8.xml"))
            prior[row_key(r)] = r
        # the earlier run's dense latencies go with its rows: a row whose IRs are gone (another machine, a fresh
        # checkout) keeps its timing, and the report compares it with this run's rows as a speedup over its own dense
        prior_dense = prior.get(("dense", "-", 0, DEFAULT_LR, ""), {})
        for r in prior.values():
            for key in LATENCY_KEYS:
                r.setdefault(f"dense_{key}", prior_dense.get(key))
            # the CPU it was timed on (None: an earlier run that did not record it); the report compares latencies
            # of different runs only on the same CPU
            r.setdefault("timing_cpu", prior_dense.get("timing_cpu"))
    dense_xml = export_openvino(base, example, out_dir / "dense.xml")
    baseline = {"accuracy": evaluate(base, test_loader, progress=False), **ir_cost(dense_xml, INPUT)}
    rows = [{"method": "dense", "budget": "-", "seed": None, "flops_ratio": 1.0, "params_ratio": 1.0,
             "test_accuracy": baseline["accuracy"], "baseline_accuracy": baseline["accuracy"], "epochs": 0,
             "val_accuracy": evaluate(base, val_loader, progress=False) if val_loader is not None else None,
             "ir": str(dense_xml), "ir_int8": str(quantize_ir(dense_xml, calibration, out_dir / "dense_int8.xml"))}]
    def save_partial(rows):  # rows so far (untimed), so that a long run cut short can go on with --resume
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json + ".partial").write_text(json.dumps(rows, indent=2))

    for seed in seeds if "dense+finetune" in methods else ():
        where = "dense+finetune" + (f", seed {seed}" if len(seeds) > 1 or seed else "")
        if ("dense+finetune", "-", seed, args.lr, "") in prior:
            rows.append(prior[("dense+finetune", "-", seed, args.lr, "")])
            print(f"== {where}: kept from {args.resume}")
            continue
        print(f"== {where}", flush=True)
        row = run_method("dense+finetune", ("-", None, ()), base, (train_loader, test_loader), args, out_dir,
                         calibration, baseline, seed=seed, val_loader=val_loader)
        rows.append(row)
        save_partial(rows)
        print(f"   accuracy {row['test_accuracy']:.4f}, {row['seconds']:.0f} s", flush=True)
    for budget in budgets:
        label = budget_label(budget)
        flops_target = dict([budget[:2], *budget[2]]).get("flops")
        # the ratio pruning matches (an earlier run's search rows set it when this run does not run the search)
        search_flops = flops_to_match(prior.values(), label)
        for seed, name in [(seed, name) for seed in seeds for name in methods]:
            if name == "dense+finetune":  # no budget: run once per seed, before the budgets (below)
                continue
            if name == "filter_pruning":
                ratio = search_flops or flops_target
                if ratio is None:
                    print(f"skip filter_pruning at {budget}: no FLOPs ratio to match (run search+finetune first)")
                    continue
            where = f"{name} at {label}" + (f", seed {seed}" if len(seeds) > 1 or seed else "")
            key = (name, label, seed, args.lr, method_options(name, args)[1])
            if key in prior:
                row = prior[key]
                rows.append(row)
                print(f"== {where}: kept from {args.resume}")
                continue
            print(f"== {where}", flush=True)
            try:
                row = run_method(name, budget, base, (train_loader, test_loader), args, out_dir, calibration,
                                 baseline, flops_for_pruning=search_flops or flops_target, seed=seed,
                                 val_loader=val_loader)
            except Exception as e:  # noqa: BLE001 - a failing method must not lose the other rows
                print(f"   failed: {type(e).__name__}: {e}", flush=True)
                if args.verbose:
                    traceback.print_exc()
                rows.append({"method": name, "budget": label, "seed": seed, "lr": args.lr,
                             "options": method_options(name, args)[1] or None, "error": str(e)})
                continue
            rows.append(row)
            if name in SEARCH_METHODS:  # this run's rows replace the earlier run's of the same key
                search_flops = flops_to_match({row_key(r): r for r in [*prior.values(), *rows]}.values(), label)
            save_partial(rows)
            print(f"   accuracy {row['test_accuracy']:.4f}, flops {row['flops_ratio']:.2f}x, params "
                  f"{row['params_ratio']:.2f}x, {row['seconds']:.0f} s", flush=True)
    ran = {row_key(r) for r in rows}
    for key, row in prior.items():  # rows of the earlier run that this one did not cover
        if key not in ran:
            print(f"== {key[0]} at {key[1]}, seed {key[2]}, lr {key[3]:g}{', ' + key[4] if key[4] else ''}: kept from "
                  f"{args.resume}")
            rows.append(row)
    timed = [r for r in rows if "ir" in r and all(pathlib.Path(r[k]).exists() for k in ("ir", "ir_int8"))] \
        if not args.no_timing else []
    timed_ids = {id(r) for r in timed}
    for r in rows if timed else ():
        if id(r) not in timed_ids and "error" not in r:
            print(f"{r['method']} at {r['budget']}, seed {r.get('seed')}: IRs not in {out_dir}, keeping the latencies "
                  f"of its earlier timing run (dense there: {r.get('dense_latency_ms_default')} ms)")
    iterations, repeats = (30, 2) if args.quick else (100, 5)
    for key, latency_key in zip(("ir", "ir_int8"), LATENCY_KEYS) if timed else ():
        results, precision = measure_column([r[key] for r in timed], latency_key, args.latency_threads, iterations,
                                            repeats)
        for r, result in zip(timed, results):
            r[latency_key], r[latency_key.replace("latency_ms", "precision")] = result.median_ms, precision
    run_id, cpu = time.strftime("%Y-%m-%dT%H:%M"), cpu_identity()
    for r in timed:  # rows[0] is this run's dense row, always timed
        r["timing_run"], r["timing_cpu"] = run_id, cpu
        r["timing_static_shapes"] = True  # measure_many compiles every IR for INPUT (dynamic batch reshaped)
        for key in LATENCY_KEYS:
            r[f"dense_{key}"] = rows[0].get(key)
    kept = {id(r) for r in prior.values()}
    for r in rows:  # rows of this run record its settings; kept rows keep what they recorded (nothing is guessed)
        if id(r) not in kept:
            r.update({k: v for k, v in settings.items() if k not in r}, base_holdout=holdout)
    write_and_print(rows, COLUMNS, args.json)
    summary = [r for r in aggregate(rows) if r.get("seeds")]
    if summary:
        print("\nmean over seeds:")
        write_and_print(summary, ["method", "budget", "seeds", "test_accuracy", "accuracy_range", "flops_ratio",
                                  "params_ratio", "latency_ms_default", "latency_ms_int8"], None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
