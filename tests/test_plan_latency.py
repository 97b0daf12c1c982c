"""benchmarks/plan_latency.py: variants are checked before any work, and a run times every IR it writes."""

import json

import pytest

from benchmarks.plan_latency import load_variants, main, parse_reference


@pytest.mark.parametrize("text, message", [
    ("{tucker2: {}}", "not JSON"),
    ("[]", "non-empty JSON object"),
    ('{"a b": {}}', "variant name 'a b'"),
    ('{"dense": {}}', "variant name 'dense'"),
    ('{"t": 3}', "variant 't' must be a JSON object"),
    ('{"t": {"algorithm": "tensor_decomposition"}}', "variant 't' sets 'algorithm'"),
    ('{"t": {"rank_learning": {}}}', "variant 't' sets 'rank_learning'"),
])
def test_bad_variants_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        load_variants(text)


def test_variants_become_blocks_without_changing_the_input():
    raw = {"t": {"budget": {"metric": "params", "target_ratio": 2.0}}}
    blocks = load_variants(json.dumps(raw))
    assert blocks == {"t": {"algorithm": "tensor_decomposition", "budget": {"metric": "params", "target_ratio": 2.0}}}


def test_reference_needs_both_irs(tmp_path):
    with pytest.raises(ValueError, match="NAME=path"):
        parse_reference("model.xml")
    xml = tmp_path / "row.xml"
    xml.write_text("<net/>")
    with pytest.raises(ValueError, match="row_int8.xml"):
        parse_reference(f"p={xml}")
    (tmp_path / "row_int8.xml").write_text("<net/>")
    assert parse_reference(f"p={xml}") == ("p", xml, tmp_path / "row_int8.xml")


def test_a_run_times_dense_and_each_variant(tmp_path):
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps({"svd": {"budget": {"metric": "params", "target_ratio": 2.0}, "method": "svd"}}))
    out = tmp_path / "rows.json"
    assert main(["--variants", str(variants), "--random-init", "--widths", "8,8,16,16", "--test-images", "200",
                 "--iterations", "3", "--repeats", "1", "--out-dir", str(tmp_path / "ir"), "--json", str(out)]) == 0
    dense, svd = json.loads(out.read_text())
    assert (dense["name"], dense["params_ratio"], dense["speedup_default"]) == ("dense", 1.0, 1.0)
    assert svd["kind"] == "variant" and svd["methods"] == "svd" and svd["decomposed"] >= 1
    assert svd["params_ratio"] == pytest.approx(2.0, rel=0.05)  # the IR's weights, counted independently of the plan
    assert svd["conv_nodes"] == dense["conv_nodes"] + svd["decomposed"]  # channel SVD: one extra node per layer
    assert all(r[k] > 0 for r in (dense, svd) for k in ("latency_ms_default", "latency_ms_int8"))
    assert svd["timing_cpu"] == dense["timing_cpu"] and "cpus" in dense["timing_cpu"]  # compared within one CPU
    # a column is timed at one hint for every IR: the default, or f32 where OpenVINO cannot compile one of its IRs
    # at the default (the INT8 IRs on AVX512-BF16 CPUs without AMX)
    assert all(r[k] == dense[k] in ("default", "f32")
               for r in (dense, svd) for k in ("precision_default", "precision_int8"))
