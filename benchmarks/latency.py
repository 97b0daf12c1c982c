"""OpenVINO CPU latency of decomposed models: FLOPs budget vs latency budget vs NNCF filter pruning, at f32, the
CPU's default precision and INT8, against the dense model at the same precision.

    python benchmarks/latency.py --json OUT.json            # ResNet-18, ResNet-50, VGG-16, MobileNetV2; 2x and 3x
    python benchmarks/latency.py --quick --json OUT.json    # ResNet-18 and MobileNetV2 at 2x

Torchvision architectures at 224x224 with random weights (latency does not depend on the weights' values).
Phase 1 builds every variant through a JSON config and ``create_compressed_model`` and exports an IR:
- ``dense`` (f32) and ``dense_int8`` ([quantization]);
- ``td_flops``: ``budget: {metric: flops}`` (one IR for f32 and default precision) and its INT8 twin
  ([tensor_decomposition, quantization]);
- ``td_latency``: ``budget: {metric: latency}`` with the cost model measured at the row's precision (f32, default;
  INT8 measures INT8 layers because quantization follows in the config);
- ``filter_pruning`` at the same FLOPs ratio, made physically smaller by OpenVINO's pruning transformation
  (benchmarks/pruning.py), and its INT8 twin.
IRs and their metadata are kept in --workdir, so an interrupted run resumes. Phase 2 times, per model and
precision, all IRs interleaved, each run in its own OpenVINO-only process (nncf_tdplugin.export.latency), and
profiles the dense and latency-budget models by layer type. ``macs_ratio``/``params_ratio`` are counted on the IRs
(Conv/MatMul weights), so the pruned model is counted as it runs.
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks.common import quiet_nncf, write_and_print  # noqa: E402  (imports nncf_tdplugin first)

import nncf  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from nncf.torch import create_compressed_model, register_default_init_args  # noqa: E402

from benchmarks.pruning import export_pruned_ir, ir_cost, pruning_block  # noqa: E402
from nncf_tdplugin import td_controller  # noqa: E402
from nncf_tdplugin.config import TDConfigError  # noqa: E402
from nncf_tdplugin.export import export_openvino, measure_many  # noqa: E402

INPUT = (1, 3, 224, 224)
QUANTIZATION = {"algorithm": "quantization",
                "initializer": {"range": {"num_init_samples": 8},
                                "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}
COLUMNS = ["model", "method", "budget_metric", "target_ratio", "precision", "threads", "macs_ratio", "params_ratio",
           "dense_ms", "td_ms", "speedup", "speedup_over_macs", "predicted_ratio", "status"]


def _loader():
    data = [(torch.randn(*INPUT[1:]), 0) for _ in range(8)]
    return torch.utils.data.DataLoader(data, batch_size=4)


def _config(algorithms: list, quantize: bool) -> nncf.NNCFConfig:
    algos = list(algorithms) + ([QUANTIZATION] if quantize else [])
    config = nncf.NNCFConfig.from_dict({"input_info": {"sample_size": list(INPUT)}, "compression": algos})
    return register_default_init_args(config, _loader()) if quantize else config


def _td_block(metric: str, ratio: float, precision: str, threads: int) -> dict:
    block = {"algorithm": "tensor_decomposition", "budget": {"metric": metric, "target_ratio": ratio}}
    if metric == "latency":
        block["latency"] = {"precision": precision, "threads": threads}
    return block


def build_variant(model_name: str, name: str, algorithms: list, quantize: bool, workdir: pathlib.Path,
                  pruned: bool = False) -> dict:
    """Build, export and describe one variant (or read it back from ``workdir``)."""
    meta_path = workdir / model_name / f"{name}.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    xml = workdir / model_name / f"{name}.xml"
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)().eval()
    start = time.perf_counter()
    meta = {"name": name, "xml": str(xml), "status": "ok"}
    try:
        ctrl, compressed = create_compressed_model(model, _config(algorithms, quantize))
    except TDConfigError as e:
        best = getattr(e.__cause__, "best_ratio", None)
        print(f"[{model_name}] {name}: unreachable: {e}")
        td = next((a for a in algorithms if a["algorithm"] == "tensor_decomposition"), None)
        if best is None or best < 1.02 or td is None or td["budget"]["metric"] != "latency":
            meta.update(status="unreachable", message=str(e), best_ratio=best)
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.write_text(json.dumps(meta, indent=1))
            return meta
        # what a user would do next: ask for (a bit less than) the best reachable latency ratio
        retry = json.loads(json.dumps(algorithms))
        for a in retry:
            if a["algorithm"] == "tensor_decomposition":
                a["budget"]["target_ratio"] = round(1 + 0.95 * (best - 1), 3)
        meta.update(status="best_reachable", message=str(e), best_ratio=best,
                    retried_ratio=retry[0]["budget"]["target_ratio"])
        try:
            torch.manual_seed(0)
            model = getattr(torchvision.models, model_name)().eval()  # NNCF modified the first one in place
            ctrl, compressed = create_compressed_model(model, _config(retry, quantize))
        except TDConfigError as again:
            meta.update(status="unreachable", retry_message=str(again))
            meta_path.write_text(json.dumps(meta, indent=1))
            return meta
    example = torch.randn(*INPUT)
    if pruned:
        export_pruned_ir(ctrl, example, xml)
    else:
        export_openvino(ctrl, example, xml)
    td = td_controller(ctrl)
    if td is not None:
        plan = td.plan
        meta["plan_achieved_ratio"] = plan.get("achieved_ratio")
        meta["decomposed_layers"] = len(plan["layers"])
        meta["latency"] = plan.get("latency")
        meta["ranks"] = {k: [v["method"], v["ranks"]] for k, v in plan["layers"].items()}
    meta.update(ir_cost(xml, INPUT))
    meta["build_seconds"] = time.perf_counter() - start
    meta_path.write_text(json.dumps(meta, indent=1))
    print(f"[{model_name}] {name}: built in {meta['build_seconds']:.0f} s, MACs {meta['macs'] / 1e6:.0f}M")
    return meta


def build_all(model_name: str, targets, precisions, threads: int, workdir: pathlib.Path) -> dict:
    variants = {"dense": build_variant(model_name, "dense", [], False, workdir)}
    if "int8" in precisions:
        variants["dense_int8"] = build_variant(model_name, "dense_int8", [], True, workdir)
    for t in targets:
        float_precisions = [p for p in precisions if p != "int8"]
        if float_precisions:
            variants[f"td_flops_{t:g}"] = build_variant(
                model_name, f"td_flops_{t:g}", [_td_block("flops", t, "f32", threads)], False, workdir)
            variants[f"filter_pruning_{t:g}"] = build_variant(
                model_name, f"filter_pruning_{t:g}", [pruning_block(t)], False, workdir, pruned=True)
        for p in float_precisions:
            variants[f"td_latency_{t:g}_{p}"] = build_variant(
                model_name, f"td_latency_{t:g}_{p}", [_td_block("latency", t, p, threads)], False, workdir)
        if "int8" in precisions:
            variants[f"td_flops_{t:g}_int8"] = build_variant(
                model_name, f"td_flops_{t:g}_int8", [_td_block("flops", t, "f32", threads)], True, workdir)
            variants[f"td_latency_{t:g}_int8"] = build_variant(
                model_name, f"td_latency_{t:g}_int8", [_td_block("latency", t, "default", threads)], True, workdir)
            variants[f"filter_pruning_{t:g}_int8"] = build_variant(
                model_name, f"filter_pruning_{t:g}_int8", [pruning_block(t)], True, workdir, pruned=True)
    return variants


def time_all(model_name: str, variants: dict, targets, precisions, threads: int, repeats: int,
             iterations: int) -> tuple[list, dict]:
    rows, profiles = [], {}
    for precision in precisions:
        runtime = "default" if precision == "int8" else precision
        suffix = "_int8" if precision == "int8" else ""
        dense = variants["dense" + suffix]
        entries = {"dense": dense}
        for t in targets:
            entries[f"td_flops_{t:g}"] = variants[f"td_flops_{t:g}{suffix}"]
            entries[f"td_latency_{t:g}"] = variants[f"td_latency_{t:g}_{precision}" if not suffix
                                                    else f"td_latency_{t:g}_int8"]
            entries[f"filter_pruning_{t:g}"] = variants[f"filter_pruning_{t:g}{suffix}"]
        ok = {k: v for k, v in entries.items() if v["status"] != "unreachable"}
        names = list(ok)
        print(f"[{model_name}] timing {len(names)} IRs at {precision} ({threads} threads) ...", flush=True)
        results = dict(zip(names, measure_many([(ok[n]["xml"], INPUT) for n in names], precision=runtime,
                                               threads=threads, warmup=5, iterations=iterations, repeats=repeats)))
        profiled = measure_many([(ok[n]["xml"], INPUT) for n in names if n == "dense" or n.startswith("td_latency")],
                                precision=runtime, threads=threads, warmup=3, iterations=5, repeats=1, profile=True)
        for n, r in zip([n for n in names if n == "dense" or n.startswith("td_latency")], profiled):
            profiles[f"{model_name}/{precision}/{n}"] = r.profile_ms_by_type
        d = results["dense"]
        for name, meta in entries.items():
            if name == "dense":
                continue
            method, _, target = name.rpartition("_")
            row = {"model": model_name, "method": method, "precision": precision, "threads": threads,
                   "target_ratio": float(target), "budget_metric": {"td_flops": "flops", "td_latency": "latency",
                                                                   "filter_pruning": "flops"}[method],
                   "dense_ms": d.median_ms, "dense_spread_ms": d.spread_ms, "runtime_precision": d.runtime_precision,
                   "status": meta["status"]}
            if meta["status"] == "best_reachable":
                row["retried_ratio"] = meta["retried_ratio"]
                row["best_ratio"] = meta["best_ratio"]
            if meta["status"] == "unreachable":
                row["best_ratio"] = meta.get("best_ratio")
                row["message"] = meta.get("message")
                rows.append(row)
                continue
            r = results[name]
            lat = meta.get("latency") or {}
            row.update({
                "macs_ratio": dense["macs"] / meta["macs"], "params_ratio": dense["weights"] / meta["weights"],
                "td_ms": r.median_ms, "td_spread_ms": r.spread_ms, "speedup": d.median_ms / r.median_ms,
                "decomposed_layers": meta.get("decomposed_layers"),
                "predicted_ratio": lat.get("achieved_ratio"), "rank_multiple": lat.get("rank_multiple"),
                "repeat_medians_ms": r.repeat_medians_ms, "dense_repeat_medians_ms": d.repeat_medians_ms,
            })
            row["speedup_over_macs"] = row["speedup"] / row["macs_ratio"]
            rows.append(row)
    return rows, profiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the rows here (and per-layer-type profiles to *.profiles.json)")
    p.add_argument("--quick", action="store_true", help="ResNet-18 and MobileNetV2 at 2x only")
    p.add_argument("--models", default="resnet18,resnet50,vgg16,mobilenet_v2")
    p.add_argument("--targets", default="2,3")
    p.add_argument("--precisions", default="f32,default,int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--workdir", default="/tmp/nncf_tdplugin_latency_bench")
    a = p.parse_args()
    quiet_nncf()
    torch.set_num_threads(a.threads)
    models = ["resnet18", "mobilenet_v2"] if a.quick else a.models.split(",")
    targets = [2.0] if a.quick else [float(t) for t in a.targets.split(",")]
    precisions = a.precisions.split(",")
    workdir = pathlib.Path(a.workdir) / f"t{a.threads}"
    all_rows, all_profiles = [], {}
    for m in models:
        variants = build_all(m, targets, precisions, a.threads, workdir)
        rows, profiles = time_all(m, variants, targets, precisions, a.threads, a.repeats, a.iterations)
        all_rows += rows
        all_profiles.update(profiles)
        write_and_print(rows, COLUMNS, None)
        if a.json:  # after every model, so a long run leaves results behind
            out = pathlib.Path(a.json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(all_rows, indent=1))
            out.with_suffix(".profiles.json").write_text(json.dumps(all_profiles, indent=1))
    print()
    write_and_print(all_rows, COLUMNS, None)
    if a.json:
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
