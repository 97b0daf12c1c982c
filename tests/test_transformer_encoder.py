"""A BERT-style encoder (token ids + attention mask, two long inputs) through the whole pipeline: SVD of every
Linear with ranks learned during training, NNCF INT8 with the percentile range initialiser recommended for
transformers (docs/transformers.md), truncation, and OpenVINO export with both inputs."""

import math

import nncf
import pytest
import torch
from nncf.api.compression import CompressionStage
from nncf.torch import create_compressed_model, register_default_init_args
from nncf.torch.initialization import PTInitializingDataLoader
from torch import nn

from nncf_tdplugin import td_controller
from nncf_tdplugin.export import compile_openvino, count_int8_weights, export_openvino, measure_latency, run_openvino
from nncf_tdplugin.layers import DecomposedLinear

SEQ, VOCAB, WIDTH, CLASSES = 12, 64, 48, 5


class Block(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(d // heads)
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x, additive_mask):
        b, n, d = x.shape
        h = self.heads

        def split(t):
            return t.view(b, n, h, d // h).transpose(1, 2)

        scores = split(self.query(x)) @ split(self.key(x)).transpose(-1, -2) * self.scale
        attn = torch.softmax(scores + additive_mask, dim=-1) @ split(self.value(x))
        x = self.ln1(x + self.out(attn.transpose(1, 2).reshape(b, n, d)))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class TinyEncoder(nn.Module):
    """Embeddings, two encoder blocks, masked mean pooling and a classifier, written as BERT computes them."""

    def __init__(self, d=WIDTH, heads=4, ff=96, layers=2):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, d), nn.Embedding(SEQ, d)
        self.blocks = nn.ModuleList(Block(d, heads, ff) for _ in range(layers))
        self.classifier = nn.Linear(d, CLASSES)

    def forward(self, input_ids, attention_mask):
        x = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1]))
        mask = attention_mask[:, None, None, :].to(x.dtype)
        additive = (1.0 - mask) * -10000.0
        for block in self.blocks:
            x = block(x, additive)
        m = attention_mask.unsqueeze(-1).to(x.dtype)
        return self.classifier((x * m).sum(1) / m.sum(1))


def batches(n=64, batch_size=16, seed=0):
    """Token sequences with padding (id 0, mask 0) after a random length; the label is a function of the real
    tokens. A DataLoader of ((ids, mask), label), in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
    lengths = torch.randint(4, SEQ + 1, (n,), generator=g)
    mask = (torch.arange(SEQ)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = ids.sum(1) % CLASSES
    samples = [((ids[i], mask[i]), labels[i]) for i in range(n)]
    return torch.utils.data.DataLoader(samples, batch_size=batch_size)


class InitLoader(PTInitializingDataLoader):
    def get_inputs(self, batch):
        return batch[0], {}

    def get_target(self, batch):
        return batch[1]


def config(rank_learning=True):
    td = {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 2.0},
          "layers": {"classifier": {"exclude": True}}}
    if rank_learning:
        td["rank_learning"] = {"initial_ratio": 1.3, "num_epochs": 2, "update_every": 2}
    quantization = {"algorithm": "quantization",
                    "initializer": {"range": {"num_init_samples": 32, "type": "percentile",
                                              "params": {"min_percentile": 0.01, "max_percentile": 99.99}},
                                    "batchnorm_adaptation": {"num_bn_adaptation_samples": 0}}}
    spec = {"sample_size": [1, SEQ], "type": "long", "filler": "ones"}
    return nncf.NNCFConfig.from_dict({"input_info": [spec, spec], "compression": [td, quantization]})


def build(rank_learning=True):
    torch.manual_seed(0)
    data = batches()
    nncf_config = register_default_init_args(config(rank_learning), InitLoader(data))
    ctrl, model = create_compressed_model(TinyEncoder().eval(), nncf_config)
    return ctrl, model, data


def test_encoder_ranks_are_learned_under_int8_and_export_with_both_inputs(tmp_path):
    ctrl, model, data = build()
    td = td_controller(ctrl)
    decomposed = {n for n, m in model.named_modules() if isinstance(m, DecomposedLinear)}
    assert decomposed, "no Linear of the encoder was decomposed"
    assert not any(n.endswith("classifier") for n in decomposed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stages = [td.compression_stage()]
    for _ in range(3):
        ctrl.scheduler.epoch_step()
        model.train()
        for (ids, mask), y in data:
            ctrl.scheduler.step()
            loss = nn.functional.cross_entropy(model(ids, mask), y) + ctrl.loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
        stages.append(td.compression_stage())
    assert stages[0] == CompressionStage.UNCOMPRESSED and stages[-1] == CompressionStage.FULLY_COMPRESSED
    assert 2.0 <= td.achieved_ratio <= 2.0 * 1.05
    model.eval()
    (ids, mask), _ = next(iter(data))
    ranks = td.current_ranks()
    with torch.no_grad():
        masked = model(ids, mask)
        assert td.truncate() == ranks  # in place, NNCF's quantizers kept: the cut parts were gated off
        truncated = model(ids, mask)
    assert torch.allclose(masked, truncated, atol=1e-5, rtol=1e-4), (masked - truncated).abs().max()
    for name, r in ranks.items():
        layer = model.get_submodule(name)
        assert layer.in_proj.weight.shape[0] == r[-1] and layer.out_proj.weight.shape[1] == r[-1]
    with torch.no_grad():
        stripped = ctrl.strip(do_copy=True).eval()
        expected = stripped(ids, mask)
    # NNCF's stripped fake-quantization rounds in another order than its live quantizers, so a value on a rounding
    # boundary can land one level away (seen: one step of the embeddings' quantizer, 1.5% at the output)
    assert float((truncated - expected).norm() / truncated.norm()) < 2e-2
    assert all(type(stripped.get_submodule(name)) is DecomposedLinear for name in ranks)

    xml = export_openvino(stripped, (ids[:1], mask[:1]), tmp_path / "encoder.xml")
    counts = count_int8_weights(xml)
    factor_layers = sum(isinstance(m, nn.Linear) for m in stripped.modules())
    assert counts["ops"] == factor_layers and counts["int8_weight_ops"] == counts["ops"], counts["per_op"]
    compiled = compile_openvino(xml, precision="f32", threads=1)
    got = torch.from_numpy(run_openvino(compiled, (ids[:4], mask[:4])))
    assert float((got - expected[:4]).norm() / expected[:4].norm()) < 2e-2


def test_padding_stays_masked_after_decomposition_and_quantization():
    """The additive attention mask (-10000 on padding) must reach the softmax unquantized: a FakeQuantize on it would
    clip the mask into the scores' range and let padded tokens change the output."""
    ctrl, model, data = build(rank_learning=False)
    model.eval()
    (ids, mask), _ = next(iter(data))
    other = torch.where(mask.bool(), ids, torch.randint_like(ids, 1, VOCAB))  # different tokens under the padding
    assert not torch.equal(other, ids)
    with torch.no_grad():
        a, b = model(ids, mask), model(other, mask)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_an_ir_with_token_ids_and_mask_is_run_and_timed_with_one_shape_per_input(tmp_path):
    ctrl, model, data = build(rank_learning=False)
    (ids, mask), _ = next(iter(data))
    xml = export_openvino(ctrl, (ids[:1], mask[:1]), tmp_path / "encoder.xml")
    with pytest.raises(ValueError, match="the model has 2 input"):
        run_openvino(compile_openvino(xml, precision="f32", threads=1), ids[:2])
    result = measure_latency(xml, [[1, SEQ], [1, SEQ]], precision="f32", threads=1, warmup=1, iterations=3,
                             repeats=1)
    assert result.median_ms > 0 and result.reshaped_from_dynamic
    with pytest.raises(RuntimeError, match=r"has 2 input\(s\); got 1 shape"):
        measure_latency(xml, [1, SEQ], precision="f32", threads=1, warmup=0, iterations=1, repeats=1)


def test_the_text_corpus_of_the_sentence_encoder_sample_has_disjoint_deterministic_splits():
    from samples.text_corpus import sentences, splits

    parts = splits(test=100, validation=50)
    assert parts == splits(test=100, validation=50)  # a fixed shuffle
    assert [len(parts["test"]), len(parts["validation"])] == [100, 50]
    assert len(parts["train"]) == len(sentences()) - 150 > 1000
    seen = [set(p) for p in parts.values()]
    assert sum(map(len, seen)) == len(set().union(*seen))  # distinct sentences, each in one part
    assert all(40 <= len(s) <= 300 for s in parts["test"])
    with pytest.raises(ValueError, match="fewer than test="):
        splits(test=10 ** 6)
