"""Bad configs fail early, naming the key and the value at fault."""

import subprocess
import sys

import jsonschema
import nncf
import pytest

from nncf_tdplugin import TDConfigError, validate_config
from tests.nncf_helpers import compress, make_config


@pytest.mark.parametrize(
    "block,message",
    [
        ({"method": "tt"}, r"tensor_decomposition\.method: 'tt' is not one of"),
        ({"budget": {"target_ratio": 1.0}}, r"tensor_decomposition\.budget\.target_ratio: 1\.0 is less than or equal"),
        ({"budget": {"metric": "joules"}}, r"tensor_decomposition\.budget\.metric: 'joules'"),
        ({"layers": {"conv3": {"ranks": -3}}}, r"tensor_decomposition\.layers\.conv3\.ranks: -3 is not valid"),
        ({"layers": {"conv3": {"rank": 3}}}, r"tensor_decomposition\.layers\.conv3: unknown key\(s\) \['rank'\]"),
        ({"ranks": 3}, r"tensor_decomposition: unknown key\(s\) \['ranks'\]"),
        ({"rank_selection": "fraction"}, r"tensor_decomposition\.rank_fraction: required"),
        ({"rank_fraction": 0.5, "rank_selection": "uniform"}, r"rank_fraction: only used with rank_selection"),
        ({"constraints": {"rank_multiple": 0}}, r"tensor_decomposition\.constraints\.rank_multiple: 0"),
        ({"method": "auto", "rank_selection": "vbmf"}, r"tensor_decomposition\.method: 'auto' needs rank_selection 'search'"),
        ({"rank_selection": "energy", "energy_threshold": 0.9, "budget": {"target_ratio": 2}},
         r"tensor_decomposition\.budget: a fixed 'energy_threshold' sets the ranks"),
        ({"rank_selection": "uniform", "search": {"steps": 10}},
         r"tensor_decomposition\.search: only used with rank_selection 'search'"),
        ({"rank_selection": "search", "search": {"layer_weighting": "depth"}},
         r"tensor_decomposition\.search\.layer_weighting: 'depth' is not one of"),
        ({"latency": {"threads": 2}},
         r"tensor_decomposition\.latency: only used with budget\.metric 'latency', but the metric is 'params'"),
        ({"budget": {"metric": "latency"}, "latency": {"precision": "fp16"}},
         r"tensor_decomposition\.latency\.precision: 'fp16' is not one of"),
        ({"budget": {"metric": "latency"}, "latency": {"rank_multiple": 0}},
         r"tensor_decomposition\.latency\.rank_multiple: 0 is less than the minimum of 1"),
        ({"budget": {"metric": "latency"}, "latency": {"grid_points": 1}},
         r"tensor_decomposition\.latency\.grid_points: 1 is less than the minimum of 2"),
        ({"budget": {"metric": "params", "additional": [{"metric": "params", "target_ratio": 3}]}},
         r"tensor_decomposition\.budget\.additional\[0\]\.metric: 'params' is already the metric of budget\.metric"),
        ({"budget": {"additional": [{"metric": "flops", "target_ratio": 2}, {"metric": "flops", "target_ratio": 3}]}},
         r"budget\.additional\[1\]\.metric: 'flops' is already the metric of budget\.additional\[0\]"),
        ({"budget": {"additional": [{"metric": "latency", "target_ratio": 2}]}},
         r"tensor_decomposition\.budget\.additional\[0\]\.metric: 'latency' is not one of \['params', 'flops'\]"),
        ({"budget": {"additional": [{"metric": "flops", "target_ratio": 0.5}]}},
         r"tensor_decomposition\.budget\.additional\[0\]\.target_ratio: 0\.5 is less than or equal to"),
        ({"budget": {"additional": [{"metric": "flops"}]}},
         r"tensor_decomposition\.budget\.additional\[0\]: 'target_ratio' is a required property"),
        ({"budget": {"additional": [{"metric": "flops", "target_ratio": 2, "foo": 1}]}},
         r"tensor_decomposition\.budget\.additional\[0\]: unknown key\(s\) \['foo'\]; allowed keys are "
         r"\['metric', 'target_ratio'\]$"),
        ({"layers": {"conv4": {"ranks": 2.0}}},
         r"tensor_decomposition\.layers\.conv4\.ranks: 2\.0 is a float above 1; write an integer rank \(e\.g\. 2\) or "
         r"a fraction in \(0, 1\]"),
        ({"layers": {"conv4": {"ranks": 2.5}}},
         r"tensor_decomposition\.layers\.conv4\.ranks: 2\.5 is a float above 1; write an integer rank"),
        ({"layers": {"conv2": {"ranks": [12.0, 6]}}},
         r"tensor_decomposition\.layers\.conv2\.ranks: \[12\.0, 6\]: the ranks in a list must be integers"),
        ({"layers": {"conv4": {"ranks": 0.0}}}, r"tensor_decomposition\.layers\.conv4\.ranks: 0\.0 is not valid"),
        ({"budget": {"metric": "latency", "target_ratio": 2, "additional": [{"metric": "flops", "target_ratio": 2}]},
          "rank_learning": {"num_epochs": 2}},
         r"tensor_decomposition\.budget\.additional: not supported with 'rank_learning' under budget\.metric "
         r"'latency' yet"),
    ],
)
def test_schema_errors_name_the_key(block, message):
    with pytest.raises(TDConfigError, match=message):
        compress(td_block={"algorithm": "tensor_decomposition", **block}, quantization=False)


def test_nncf_config_knows_the_block_and_validate_config_checks_it_early():
    config = make_config({"algorithm": "tensor_decomposition", "method": "tt"})  # NNCF accepts the block...
    with pytest.raises(TDConfigError, match=r"tensor_decomposition\.method: 'tt'"):  # ...and we check it
        validate_config(config)
    assert validate_config(make_config({"algorithm": "tensor_decomposition", "method": "cp"})).method == "cp"
    with pytest.raises(jsonschema.ValidationError):  # a misspelled algorithm is still NNCF's error
        make_config({"algorithm": "tensor_decompositon"})


def test_rank_larger_than_the_layer_allows():
    block = {"algorithm": "tensor_decomposition", "layers": {"conv2": {"ranks": [12, 17]}}}
    with pytest.raises(TDConfigError, match=r"layers\['conv2'\]\.ranks: rank 17 is out of range .*\[1, 16\]"):
        compress(td_block=block, quantization=False)


def test_unknown_layer_name_lists_real_ones():
    block = {"algorithm": "tensor_decomposition", "layers": {"conv9": {"ranks": 4}}}
    with pytest.raises(TDConfigError, match=r"layers\['conv9'\]: matches no Conv2d/Linear layer.*'conv3'"):
        compress(td_block=block, quantization=False)


def test_unknown_ignored_scope_is_reported():
    block = {"algorithm": "tensor_decomposition", "ignored_scopes": ["LowRankCNN/NNCFConv2d[nope]/conv2d_0"]}
    with pytest.raises(nncf.ValidationError, match=r"nope"):
        compress(td_block=block, quantization=False)


def test_ignored_scope_regex_keeps_layer_dense():
    block = {"algorithm": "tensor_decomposition", "ignored_scopes": ["{re}.*conv3.*"], "budget": {"target_ratio": 1.3}}
    ctrl, model = compress(td_block=block, quantization=False)
    assert ctrl.statistics().tensor_decomposition.skipped["conv3"] == "ignored_scopes/target_scopes"


def test_explicit_ranks_on_a_grouped_conv():
    block = {"algorithm": "tensor_decomposition", "layers": {"dw": {"ranks": 4}}}
    with pytest.raises(TDConfigError, match=r"layer 'dw' cannot be decomposed: grouped conv"):
        compress(td_block=block, quantization=False)


def test_quantization_before_decomposition_is_rejected_with_the_fix():
    config = nncf.NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": [{"algorithm": "quantization"}, {"algorithm": "tensor_decomposition"}],
    })
    from nncf.torch import create_compressed_model
    from tests.models import LowRankCNN

    with pytest.raises(TDConfigError, match=r"must come before \['quantization'\].*\['tensor_decomposition', 'quantization'\]"):
        create_compressed_model(LowRankCNN(), config)


@pytest.mark.parametrize("ranks,expected", [(1, (1,)), (1.0, (64,)), (0.25, (16,)), (5, (5,))])
def test_layer_ranks_int_is_a_rank_and_float_a_fraction(ranks, expected):
    block = {"algorithm": "tensor_decomposition", "rank_selection": "fraction", "rank_fraction": 0.5,
             "layers": {"conv4": {"ranks": ranks}}}  # conv4: 1x1, 128x64 -> SVD, full rank 64
    ctrl, model = compress(td_block=block, quantization=False)
    assert model.conv4.ranks == expected


def test_exact_layer_name_wins_over_a_regex():
    block = {"algorithm": "tensor_decomposition", "rank_selection": "fraction", "rank_fraction": 0.5,
             "layers": {"{re}conv.*": {"exclude": True}, "conv3": {"ranks": 4}}}
    ctrl, model = compress(td_block=block, quantization=False)
    assert model.conv3.ranks == (4, 4)
    assert "excluded" in ctrl.statistics().tensor_decomposition.skipped["conv2"]


def test_two_regexes_with_different_settings_for_one_layer_are_rejected():
    block = {"algorithm": "tensor_decomposition", "rank_selection": "fraction", "rank_fraction": 0.5,
             "layers": {"{re}^conv[23]$": {"ranks": 4}, "{re}^conv3$": {"exclude": True}}}
    with pytest.raises(TDConfigError, match=r"layer 'conv3' is matched by the regexes '\{re\}\^conv\[23\]\$' and "
                                            r"'\{re\}\^conv3\$', which give it different settings"):
        compress(td_block=block, quantization=False)
    same = {**block, "layers": {"{re}^conv[23]$": {"ranks": 4}, "{re}^conv3$": {"ranks": 4}}}  # same settings: fine
    assert compress(td_block=same, quantization=False)[1].conv3.ranks == (4, 4)


def test_wrong_order_suggestion_keeps_knowledge_distillation_first():
    from nncf_tdplugin.nncf_integration.builder import _check_position

    kd, q, td = ({"algorithm": a} for a in ("knowledge_distillation", "quantization", "tensor_decomposition"))
    with pytest.raises(TDConfigError, match=r"must come before \['quantization'\].*Reorder the 'compression' list "
                                            r"as \['knowledge_distillation', 'tensor_decomposition', 'quantization'\]"):
        _check_position({"compression": [kd, q, td]})
    _check_position({"compression": [kd, td, q]})  # the right order passes


def test_knowledge_distillation_after_decomposition_is_rejected():
    config = nncf.NNCFConfig.from_dict({
        "input_info": {"sample_size": [1, 3, 32, 32]},
        "compression": [{"algorithm": "tensor_decomposition"}, {"algorithm": "knowledge_distillation",
                                                                 "type": "softmax"}],
    })
    from nncf.torch import create_compressed_model
    from tests.models import LowRankCNN

    with pytest.raises(TDConfigError, match=r"\['knowledge_distillation'\] must come before 'tensor_decomposition'.*"
                                            r"teacher would be the decomposed model.*Reorder the 'compression' list "
                                            r"as \['knowledge_distillation', 'tensor_decomposition'\]"):
        create_compressed_model(LowRankCNN(), config)


def test_unreachable_budget():
    block = {"algorithm": "tensor_decomposition", "budget": {"target_ratio": 50}, "constraints": {"min_rank": 8}}
    with pytest.raises(TDConfigError, match=r"budget.*unreachable.*only [0-9.]+x smaller") as error:
        compress(td_block=block, quantization=False)
    assert "default budget" not in str(error.value)  # the user's own budget


def test_an_unreachable_default_budget_says_it_is_the_default():
    """Fixed full ranks on every candidate and no 'budget': the default params 2x cannot be met, and the error
    must not read as if the user had set that target."""
    layers = {name: {"ranks": 1.0} for name in ("conv2", "conv3", "conv4", "fc1")}
    block = {"algorithm": "tensor_decomposition", "layers": layers}
    with pytest.raises(TDConfigError, match=r"unreachable.*This is the default budget \(no 'budget' key was given\)"
                                            r".*rank_selection 'fraction'"):
        compress(td_block=block, quantization=False)
    compress(td_block={**block, "rank_selection": "fraction", "rank_fraction": 1.0}, quantization=False)


def _run(code, env_extra=None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "NNCF_TORCH_LEGACY_TRACING"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_twice_and_register_twice_is_harmless():
    result = _run(
        "import importlib, nncf_tdplugin; importlib.reload(nncf_tdplugin); "
        "from nncf_tdplugin.nncf_integration import register; register(); register(); "
        "from nncf.config.schema import NNCF_CONFIG_SCHEMA as S; "
        "refs = S['properties']['compression']['oneOf'][0]['oneOf']; "
        "assert sum(r == {'$ref': '#/$defs/tensor_decomposition'} for r in refs) == 1; print('ok')"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_import_after_nncf_torch_without_legacy_tracing_says_what_to_do():
    result = _run("import nncf.torch; import nncf_tdplugin")
    assert result.returncode != 0
    assert "import nncf_tdplugin` before anything imports nncf.torch" in result.stderr
    assert "NNCF_TORCH_LEGACY_TRACING=1" in result.stderr
    ok = _run("import nncf.torch; import nncf_tdplugin; print('ok')", {"NNCF_TORCH_LEGACY_TRACING": "1"})
    assert ok.returncode == 0, ok.stderr[-2000:]


_META_CHECK = (
    "import torch\n"
    "with torch.device('meta'):\n"
    "    made = [torch.empty(2), torch.tensor([1.0]), torch.arange(3), torch.zeros(1), torch.nn.Linear(2, 2).weight]\n"
    "print(' '.join(t.device.type for t in made), torch.empty(1).device.type)\n"
)


@pytest.mark.parametrize("before", [
    "import nncf_tdplugin\n",
    # NNCF patched first and the device context used once, so torch built its set of factory functions from the
    # wrappers; importing the plugin afterwards must repair it
    "import nncf.torch, torch\nwith torch.device('meta'):\n    torch.empty(1)\nimport nncf_tdplugin\n",
])
def test_device_context_applies_under_nncf_legacy_tracing(before):
    """``with torch.device('meta')`` must still create meta tensors once NNCF's legacy tracing has wrapped torch's
    factory functions: transformers 5 builds models under it, and without the repair a BERT loaded after the
    import had uninitialised position_ids (garbage indices: a crash, or wrong embeddings)."""
    result = _run(before + _META_CHECK, {"NNCF_TORCH_LEGACY_TRACING": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "meta meta meta meta meta cpu"
