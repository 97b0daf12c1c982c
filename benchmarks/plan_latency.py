"""Latency of decomposition plans without training: the shapes decide an IR's latency, not its weights.

Each variant is a tensor_decomposition block (without "algorithm") in a JSON file that maps names to blocks. It is
applied to the cached Fashion-MNIST ResNet by ``create_compressed_model`` with no fine-tuning, exported to OpenVINO
IR and quantized to INT8 by NNCF's post-training quantization on the 64 training images benchmarks/finetune.py uses.
All IRs are then timed together with the dense IR and any --reference IRs: trained rows of benchmarks/finetune.py,
whose INT8 IR is the file next to it named ``<name>_int8.xml``. Each IR runs in its own process, repeats
interleaved, at the CPU's default precision and then in INT8 (both columns at the default precision hint, so on an
AMX CPU the non-INT8 layers run in bf16). A column that OpenVINO cannot compile at the default precision (the INT8
IRs of this network on AVX512-BF16 CPUs without AMX) is timed at f32 for every IR, as in benchmarks/finetune.py;
rows record the hint as precision_default / precision_int8.

    python benchmarks/plan_latency.py --widths 64,128,256,512 --base-epochs 3 --variants V.json \
        --reference pruning=out/fw/filter_pruning_params5_s3.xml --json OUT.json

with V.json for example ``{"tucker2": {"budget": {"metric": "params", "target_ratio": 5}},
"auto": {"budget": {"metric": "params", "target_ratio": 5}, "method": "auto"}}``.

Rows: name, kind (dense / reference / variant), params_ratio and flops_ratio (from the IR's Convolution and MatMul
weights, against the dense IR), conv_nodes (Convolution ops in the f32 IR), decomposed (layers) and methods
(variants), zero_shot_accuracy (variants and dense: on the first --test-images test images, no fine-tuning),
latency_ms_default, latency_ms_int8, speedup_default and speedup_int8 (dense / row), timing_run and timing_cpu (as
in benchmarks/finetune.py: latencies compare only within one run on one CPU). A zero-shot accuracy says how
far the plan is from the dense model before fine-tuning, not what it reaches after.
"""

import argparse
import copy
import json
import pathlib
import sys
import time

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing and registers the algorithm)
import openvino as ov
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from benchmarks.common import compress_with_config, logits, quiet_nncf, write_and_print  # noqa: E402
from benchmarks.data_models.fashion_mnist import (  # noqa: E402
    DEFAULT_EPOCHS, DEFAULT_WIDTHS, ResNetFMNIST, get_trained_resnet_fmnist, load_fashion_mnist, normalize)
from benchmarks.finetune import INPUT, calibration_images, measure_column, quantize_ir  # noqa: E402
from benchmarks.pruning import ir_cost  # noqa: E402
from nncf_tdplugin import td_controller  # noqa: E402
from nncf_tdplugin.export import export_openvino  # noqa: E402
from nncf_tdplugin.latency_model.specs import cpu_identity  # noqa: E402

COLUMNS = ["name", "kind", "params_ratio", "flops_ratio", "conv_nodes", "decomposed", "methods", "zero_shot_accuracy",
           "latency_ms_default", "latency_ms_int8", "speedup_default", "speedup_int8"]


def load_variants(text: str, where: str = "--variants") -> dict:
    """name -> tensor_decomposition block (a copy with "algorithm" added); refuses what could not be a block."""
    try:
        variants = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{where}: expected a non-empty JSON object mapping names to tensor_decomposition blocks, "
                         f"got {text[:80]!r}")
    blocks = {}
    for name, block in variants.items():
        if not name or not all(c.isalnum() or c in "._-" for c in name) or name == "dense":
            raise ValueError(f"{where}: variant name {name!r} must be non-empty, made of letters, digits and '._-' "
                             f"(it names the IR files), and not 'dense'")
        if not isinstance(block, dict):
            raise ValueError(f"{where}: variant {name!r} must be a JSON object (a tensor_decomposition block), "
                             f"got {type(block).__name__}")
        if "algorithm" in block:
            raise ValueError(f"{where}: variant {name!r} sets 'algorithm'; give the block without it")
        if "rank_learning" in block:
            raise ValueError(f"{where}: variant {name!r} sets 'rank_learning', which needs training; give the "
                             f"plan it starts from or time the trained row's IR with --reference")
        blocks[name] = {"algorithm": "tensor_decomposition", **copy.deepcopy(block)}
    return blocks


def parse_reference(text: str) -> tuple[str, pathlib.Path, pathlib.Path]:
    """'NAME=path/to/model.xml' -> (name, f32 IR, INT8 IR next to it); both must exist."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--reference must look like NAME=path/to/model.xml, got {text!r}")
    xml = pathlib.Path(path)
    int8 = xml.with_name(f"{xml.stem}_int8.xml")
    for p in (xml, int8):
        if not p.is_file():
            raise ValueError(f"--reference {name}: no IR at {str(p)!r} (the INT8 IR must be <name>_int8.xml next to "
                             f"the f32 one, as benchmarks/finetune.py writes them)")
    return name, xml, int8


def conv_nodes(xml) -> int:
    return sum(op.get_type_name() == "Convolution" for op in ov.Core().read_model(str(xml)).get_ops())


def accuracy(model, x, y) -> float:
    return float(logits(model, x).argmax(1).eq(y).float().mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", required=True, help="JSON file: {name: tensor_decomposition block without "
                                                          "'algorithm'}")
    parser.add_argument("--reference", action="append", default=[], help="NAME=model.xml of a trained row (its "
                                                                          "INT8 IR: model_int8.xml); repeatable")
    parser.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)))
    parser.add_argument("--base-epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--random-init", action="store_true", help="an untrained network of these widths instead "
                                                                   "of the cached one (latency only; for tests)")
    parser.add_argument("--test-images", type=int, default=3000, help="test images for the zero-shot accuracy")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and OpenVINO inference threads")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="worker processes per IR and column")
    parser.add_argument("--out-dir", default="out/plan_latency", help="where the IRs are written")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    variants = load_variants(pathlib.Path(args.variants).read_text(), args.variants)
    references = [parse_reference(r) for r in args.reference]
    names = ["dense", *variants, *(name for name, _, _ in references)]
    if len(set(names)) != len(names):
        raise ValueError("--reference and --variants names must differ from each other and from 'dense'")
    torch.set_num_threads(args.threads)
    quiet_nncf()
    widths = tuple(int(w) for w in args.widths.split(","))
    base = ResNetFMNIST(widths).eval() if args.random_init else get_trained_resnet_fmnist(widths, args.base_epochs)[0]
    x, y = load_fashion_mnist("test")
    x, y = normalize(x[:args.test_images]), y[:args.test_images]
    calibration = calibration_images()
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    example = torch.randn(*INPUT)
    dense_xml = out_dir / "dense.xml"
    export_openvino(base, example, dense_xml)
    rows = [{"name": "dense", "kind": "dense", "zero_shot_accuracy": accuracy(base, x, y), "ir": dense_xml,
             "ir_int8": quantize_ir(dense_xml, calibration, out_dir / "dense_int8.xml")}]
    rows += [{"name": name, "kind": "reference", "ir": xml, "ir_int8": int8} for name, xml, int8 in references]
    for name, block in variants.items():
        start = time.perf_counter()
        ctrl, model, _ = compress_with_config(copy.deepcopy(base), INPUT, block)
        stats = td_controller(ctrl).statistics().tensor_decomposition
        xml = export_openvino(ctrl, example, out_dir / f"{name}.xml")
        methods = sorted({e["method"] for e in stats.layers.values()})
        rows.append({"name": name, "kind": "variant", "decomposed": len(stats.layers), "methods": ",".join(methods),
                     "zero_shot_accuracy": accuracy(model, x, y), "block": block, "ir": pathlib.Path(xml),
                     "ir_int8": quantize_ir(pathlib.Path(xml), calibration, out_dir / f"{name}_int8.xml"),
                     "layers": {n: {"method": e["method"], "ranks": list(e["ranks"]),
                                    "relative_error": e["relative_error"]} for n, e in stats.layers.items()}})
        print(f"{name}: {len(stats.layers)} layers decomposed ({', '.join(methods)}), "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    dense_cost = ir_cost(dense_xml, INPUT)
    for r in rows:
        cost = ir_cost(r["ir"], INPUT)
        r["params_ratio"] = dense_cost["weights"] / cost["weights"]
        r["flops_ratio"] = dense_cost["macs"] / cost["macs"]
        r["conv_nodes"] = conv_nodes(r["ir"])
    for key, column in (("ir", "latency_ms_default"), ("ir_int8", "latency_ms_int8")):
        results, precision = measure_column([r[key] for r in rows], column, args.threads, args.iterations,
                                            args.repeats)
        for r, result in zip(rows, results):
            r[column], r[column.replace("latency_ms", "precision")] = result.median_ms, precision
        for r in rows:
            r[column.replace("latency_ms", "speedup")] = rows[0][column] / r[column]
    run_id, cpu = time.strftime("%Y-%m-%dT%H:%M"), cpu_identity()  # latencies compare only within one CPU and run
    for r in rows:
        r["ir"], r["ir_int8"] = str(r["ir"]), str(r["ir_int8"])
        r["widths"], r["random_init"], r["timing_run"], r["timing_cpu"] = list(widths), args.random_init, run_id, cpu
    write_and_print(rows, COLUMNS, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
