"""Budget-aware rank learning on Fashion-MNIST: load the cached trained ResNet-18-style classifier, compress it with
the JSON config (tensor decomposition whose ranks are learned during fine-tuning + INT8 quantization), fine-tune,
and compare accuracy, parameters, FLOPs and OpenVINO latency before and after.

    python samples/fashion_mnist_rank_learning.py                      # the full run (an epoch: ~14 min, 2 cores)
    python samples/fashion_mnist_rank_learning.py --quick              # minutes: 3000 training images per epoch
    python samples/fashion_mnist_rank_learning.py --config my.json --epochs 4 --out out/fmnist

The config is samples/configs/fashion_mnist_rank_learning.json: FLOPs 3x, decomposed first at 1.7x by the data-free
search, the ranks shrink over 2 epochs (exponential schedule) and freeze; the remaining epochs fine-tune at the
final ranks. The trained model comes from benchmarks/data_models/fashion_mnist.py (trained once and cached in
~/.cache/nncf_tdplugin; needs the dataset package, see that module). Latency: OpenVINO, each model in its own
process, at the CPU's default precision; "before" is the original model, "after" the compressed INT8 model.
"""

import argparse
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing and registers the algorithm)
import nncf
import torch
from nncf.torch import create_compressed_model, register_default_init_args
from tqdm.auto import tqdm

from nncf_tdplugin import td_controller
from nncf_tdplugin.export import export_openvino, measure_many
from nncf_tdplugin.latency_model.specs import usable_cpus

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.data_models.fashion_mnist import (  # noqa: E402
    evaluate,
    fashion_mnist_loaders,
    get_trained_resnet_fmnist,
)

DEFAULT_CONFIG = ROOT / "samples" / "configs" / "fashion_mnist_rank_learning.json"


def schedule_end(config: dict) -> int:
    block = next(a for a in config["compression"] if a["algorithm"] == "tensor_decomposition")
    rl = block.get("rank_learning", {})
    if rl.get("schedule") == "multistep":
        return max(rl.get("freeze_epoch", 0), rl["multistep_epochs"][-1])
    return max(rl.get("freeze_epoch", 0), rl.get("num_epochs", 5))


def finetune(ctrl, model, train_loader, epochs: int, lr: float, log=print, progress: bool = True) -> None:
    """NNCF's loop: epoch_step() per epoch, step() per batch, task loss + ctrl.loss(); SGD with cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    total = epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        model.train()
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress):
            ctrl.scheduler.step()
            loss = loss_fn(model(x), y) + ctrl.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen, loss_sum = seen + len(y), loss_sum + loss.item() * len(y)
        line = f"epoch {epoch + 1}/{epochs}: loss {loss_sum / max(seen, 1):.4f}, {time.perf_counter() - start:.0f} s"
        td = td_controller(ctrl)
        if td is not None:  # (the benchmark also fine-tunes other algorithms with this loop)
            stats = td.statistics().tensor_decomposition
            line += f", stage {td.compression_stage().name}, budget {stats.achieved_ratio:.3f}x"
        log(line)
        if td is not None:
            log(td.statistics().to_str().split("\n\n")[0])


def latencies(xmls, shape, threads, iterations: int = 50, repeats: int = 5, label: str = "latency"
              ) -> tuple[list, str]:
    """(``LatencyResult`` of each IR of ``xmls``, precision hint): timed together (repeats interleaved, each in its
    own OpenVINO process) with ``threads`` threads at the CPU's default precision; if OpenVINO cannot compile one of
    them at it (seen on an AVX512-BF16 CPU for INT8 IRs of this network while they were compiled with a dynamic
    batch; the latency worker now compiles for the static input shape), all of them at f32."""
    models = [(str(xml), list(shape)) for xml in xmls]
    try:
        return measure_many(models, precision="default", threads=threads, iterations=iterations,
                            repeats=repeats), "default"
    except RuntimeError as e:
        print(f"{label} at the default precision failed ({str(e).strip().splitlines()[-1][:160]}); timing every IR "
              f"of it at f32", flush=True)
    return measure_many(models, precision="f32", threads=threads, iterations=iterations, repeats=repeats), "f32"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default: end of the schedule + 1)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-subset", type=int, help="use only the first N training images per epoch")
    parser.add_argument("--test-subset", type=int, help="evaluate on the first N test images")
    parser.add_argument("--quick", action="store_true",
                        help="3000 training / 2000 test images, Z-step every 5 steps: a run of minutes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and OpenVINO threads (default: every core this process may use; OpenVINO's "
                             "count is pinned either way)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--out", default="out/fashion_mnist_rank_learning")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train_subset = args.train_subset or 3000
        args.test_subset = args.test_subset or 2000
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    config_dict = json.loads(pathlib.Path(args.config).read_text())
    if args.quick:
        for block in config_dict["compression"]:
            if block["algorithm"] == "tensor_decomposition" and "rank_learning" in block:
                block["rank_learning"]["update_every"] = 5
    epochs = args.epochs or schedule_end(config_dict) + 1

    model, info = get_trained_resnet_fmnist()
    train_loader, test_loader = fashion_mnist_loaders(args.batch_size, train_subset=args.train_subset)
    if args.test_subset:
        test_set = torch.utils.data.Subset(test_loader.dataset, range(args.test_subset))
        test_loader = torch.utils.data.DataLoader(test_set, batch_size=512)
    example = torch.randn(1, 1, 28, 28)

    before = {"accuracy": evaluate(model, test_loader, progress=False)}
    original_xml = None if args.no_latency else export_openvino(model, example, out / "original.xml")

    for block in config_dict["compression"]:  # the budget tightens at every Z-step from the first epoch on
        if block["algorithm"] == "tensor_decomposition" and "rank_learning" in block:
            block["rank_learning"].setdefault("steps_per_epoch", len(train_loader))
    config = nncf.NNCFConfig.from_dict(config_dict)
    config = register_default_init_args(config, train_loader)
    ctrl, compressed = create_compressed_model(model, config)
    td = td_controller(ctrl)
    stats = td.statistics().tensor_decomposition
    before.update(params=stats.params_before, flops=stats.macs_before)
    print(f"decomposed at {td.achieved_ratio:.3f}x (initial), learning ranks to "
          f"{td.rl['target_ratio']:.3f}x {stats.budget_metric} over {schedule_end(config_dict)} epochs; "
          f"fine-tuning {epochs} epochs")
    finetune(ctrl, compressed, train_loader, epochs, args.lr)
    print(ctrl.statistics().to_str())

    stripped = ctrl.strip(do_copy=True).eval()  # truncated to the learned ranks
    stats = td.statistics().tensor_decomposition
    after = {"accuracy": evaluate(compressed, test_loader, progress=False),
             "params": stats.params_after, "flops": stats.macs_after}
    if not args.no_latency:  # both IRs timed together: the same machine state for before and after
        compressed_xml = export_openvino(stripped, example, out / "compressed_int8.xml")
        threads = args.threads or usable_cpus()
        try:
            results, precision = latencies([original_xml, compressed_xml], example.shape, threads)
            before["latency_ms"], after["latency_ms"] = (r.median_ms for r in results)
        except RuntimeError as e:
            print(f"latency failed at f32 too: {str(e).strip().splitlines()[-1][:160]}")
            before["latency_ms"] = after["latency_ms"] = float("nan")
            precision = "failed"
        before["latency_precision"] = after["latency_precision"] = precision
        before["latency_threads"] = after["latency_threads"] = threads

    rows = [("test accuracy" + (f" ({args.test_subset} images)" if args.test_subset else ""), "accuracy", "{:.4f}"),
            ("parameters", "params", "{:,}"), ("FLOPs (MACs, conv/linear)", "flops", "{:,}")]
    if not args.no_latency:
        rows.append((f"OpenVINO ms, f32 IR / INT8 IR ({after['latency_precision']}, {after['latency_threads']} thr)",
                     "latency_ms", "{:.3f}"))
    print(f"\n{'':58s}{'before':>14s}{'after':>14s}{'ratio':>10s}")
    for label, key, fmt in rows:
        ratio = before[key] / after[key] if key != "accuracy" else after[key] - before[key]
        print(f"{label:58s}{fmt.format(before[key]):>14s}{fmt.format(after[key]):>14s}"
              f"{(f'{ratio:+.4f}' if key == 'accuracy' else f'{ratio:.2f}x'):>10s}")
    (out / "result.json").write_text(json.dumps({"before": before, "after": after, "epochs": epochs,
                                                  "train_subset": args.train_subset,
                                                  "test_subset": args.test_subset, "config": config_dict}, indent=2))
    print(f"wrote {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
