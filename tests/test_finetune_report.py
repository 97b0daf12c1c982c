"""The fine-tuning benchmark's report (benchmarks/finetune_report.py): rows timed in different runs are compared as
speedups over the dense IR of their own run, and the pruning-domination target uses the rescaled latencies."""

import pytest

from benchmarks.finetune_report import aggregate, paired_difference, rescale, select_setting, table, targets


def _row(method, budget, acc, ms, dense_ms, seed=0):
    return {"method": method, "budget": budget, "seed": seed, "flops_ratio": 2.0, "params_ratio": 2.0,
            "test_accuracy": acc, "baseline_accuracy": 0.925, "epochs": 3,
            "latency_ms_default": ms, "latency_ms_int8": ms / 4,
            "dense_latency_ms_default": dense_ms, "dense_latency_ms_int8": dense_ms / 4}


def _rows():
    # this run: dense 4.0 ms, ours 3.0 ms; an earlier run on a slower machine: dense 5.0 ms, pruning 3.5 ms (0.70 of
    # its dense, i.e. 2.8 ms here): measured in ms the pruning point looks slower than ours, rescaled it is faster
    return [_row("dense", "-", 0.925, 4.0, 4.0, seed=None),
            _row("search+finetune", "params:5", 0.926, 3.0, 4.0),
            _row("filter_pruning", "params:5", 0.924, 3.5, 5.0)]


def test_rows_of_another_timing_run_are_rescaled_by_the_dense_latencies():
    rows = rescale(_rows())
    assert rows[1]["latency_ms_default"] == 3.0 and "latency_ms_default_measured" not in rows[1]
    assert rows[2]["latency_ms_default"] == pytest.approx(3.5 * 4.0 / 5.0)
    assert rows[2]["latency_ms_default_measured"] == 3.5
    assert rows[2]["latency_ms_int8"] == pytest.approx(3.5 / 4 * 4.0 / 5.0)
    again = rescale(rows)  # idempotent: aggregate() and table() may see rows that were rescaled already
    assert again[2]["latency_ms_default"] == pytest.approx(rows[2]["latency_ms_default"])
    assert _rows()[2]["latency_ms_default"] == 3.5  # the input rows are not modified


def test_domination_compares_speedups_across_timing_runs():
    found = {name: met for name, met, _ in targets(_rows())}
    # pruning at 2.8 ms (rescaled) is faster than ours at 3.0 ms: not dominated, although 3.5 ms > 3.0 ms measured
    assert found["filter_pruning params:5 dominated (default precision)"] is False
    rows = _rows()
    rows[2]["dense_latency_ms_default"] = rows[2]["dense_latency_ms_int8"] = 4.0  # same run: 3.5 ms, dominated
    found = {name: met for name, met, _ in targets(rows)}
    assert found["filter_pruning params:5 dominated (default precision)"] is True


def test_the_table_marks_rescaled_latencies_and_seeds_average_after_rescaling():
    rows = _rows() + [_row("filter_pruning", "params:5", 0.926, 2.8, 4.0, seed=1)]
    lines = table(rows).splitlines()
    assert "2.800*" in lines[4] and "3.000 |" in lines[3] and "*" not in lines[3]
    mean = next(r for r in aggregate(rows) if r["method"] == "filter_pruning")
    assert mean["seeds"] == 2 and mean["latency_ms_default"] == pytest.approx(2.8)


def test_rows_timed_on_another_cpu_are_not_rescaled_nor_compared():
    rows = _rows()
    rows[0]["timing_cpu"] = rows[1]["timing_cpu"] = "Xeon | 2 cpus | avx512f+amx_tile"
    rows[2]["timing_cpu"] = "Xeon | 2 cpus | avx512f"  # the earlier run: no AMX, its speed-ups are not ours
    out = rescale(rows)
    assert out[2]["latency_ms_default"] is None and out[2]["latency_ms_default_other_timing"] == 3.5
    assert "latency_ms_default_measured" not in out[2] and out[1]["latency_ms_default"] == 3.0
    assert rescale(out)[2]["latency_ms_default_other_timing"] == 3.5  # idempotent
    assert "other CPU (3.500)" in table(rows).splitlines()[4]
    found = {name for name, _, _ in targets(rows)}
    assert "filter_pruning params:5 dominated (default precision)" not in found  # no comparable latency
    rows[2]["timing_cpu"] = None  # an earlier run that did not record its CPU: not comparable either
    assert rescale(rows)[2]["latency_ms_default"] is None


def test_rows_timed_with_dynamic_shapes_are_not_compared_with_a_static_shape_run():
    rows = _rows()
    rows[0]["timing_static_shapes"] = rows[1]["timing_static_shapes"] = True  # this run: every IR static
    out = rescale(rows)  # the earlier run timed IRs as exported (dynamic batch): a per-node cost static runs lack
    assert out[2]["latency_ms_default"] is None and out[2]["latency_ms_default_other_timing"] == 3.5
    assert out[2]["timing_mismatch"] == "dynamic shapes" and out[1]["latency_ms_default"] == 3.0
    assert "dynamic shapes (3.500)" in table(rows).splitlines()[4]
    rows[2]["timing_static_shapes"] = True  # the same setup: rescaled by the dense latencies as before
    assert rescale(rows)[2]["latency_ms_default"] == pytest.approx(3.5 * 4.0 / 5.0)


def _lr_rows(val_at_default):
    """Ours at lr 0.01 (no val row in the old results, or one) and at lr 0.003: the test accuracy favours 0.003,
    the validation accuracy 0.01."""
    rows = _rows()
    default = dict(rows[1], test_accuracy=0.920)  # rows without "lr" ran at 0.01
    if val_at_default:
        default["val_accuracy"] = 0.950
    other = dict(rows[1], lr=0.003, test_accuracy=0.930, val_accuracy=0.940)
    return [rows[0], default, other, rows[2]]


def test_learning_rates_stay_apart_and_are_chosen_on_validation_not_test():
    groups = aggregate(_lr_rows(True))
    assert sorted(r.get("lr", 0.01) for r in groups if r["method"] == "search+finetune") == [0.003, 0.01]
    chosen = [r for r in select_setting(groups) if r["method"] == "search+finetune"]
    assert len(chosen) == 1 and chosen[0]["test_accuracy"] == 0.920  # best val (0.01), not best test (0.003)
    found = {name: met for name, met, _ in targets(_lr_rows(True))}
    assert found["params:5: ours ahead of filter_pruning"] is False  # 92.0% (lr 0.01) vs 92.4%
    # without a val accuracy at every learning rate nothing is chosen: the default learning rate stands
    chosen = [r for r in select_setting(aggregate(_lr_rows(False))) if r["method"] == "search+finetune"]
    assert len(chosen) == 1 and chosen[0]["test_accuracy"] == 0.920
    assert "| 0.003 |" in table(_lr_rows(True)) and "94.00%" in table(_lr_rows(True))


def test_options_stay_apart_and_are_chosen_on_validation():
    """Rows with --td-options are another setting of the same method: aggregated apart, one setting chosen on
    val_accuracy (here the options row, despite its lower test accuracy), the default one when a val is missing."""
    rows = _rows()
    plain = [dict(rows[1], seed=s, test_accuracy=0.924 + s / 1000, val_accuracy=0.930) for s in (0, 1)]
    variant = [dict(rows[1], seed=s, options='{"rank_learning":{"num_epochs":1}}', test_accuracy=0.921,
                    val_accuracy=0.935) for s in (0, 1)]
    groups = aggregate([rows[0], *plain, *variant, rows[2]])
    ours = [r for r in groups if r["method"] == "search+finetune"]
    assert len(ours) == 2 and sorted(r["seeds"] for r in ours) == [2, 2]
    chosen = [r for r in select_setting(groups) if r["method"] == "search+finetune"]
    assert len(chosen) == 1 and chosen[0]["options"] and chosen[0]["test_accuracy"] == pytest.approx(0.921)
    found = {name: (met, evidence) for name, met, evidence in targets([rows[0], *plain, *variant, rows[2]])}
    met, evidence = found["params:5: ours ahead of filter_pruning"]
    assert met is False and '{"rank_learning":{"num_epochs":1}}' in evidence  # 92.1% vs 92.4%: named in the evidence
    for r in variant:  # a setting without validation: nothing is chosen over the default
        del r["val_accuracy"]
    chosen = [r for r in select_setting(aggregate([rows[0], *plain, *variant])) if r["method"] == "search+finetune"]
    assert len(chosen) == 1 and not chosen[0].get("options")
    assert '| search+finetune {"rank_learning":{"num_epochs":1}} | params:5 |' in table([rows[0], *variant])


def test_seeds_timed_on_different_cpus_get_no_mean_latency_without_a_timed_dense_row():
    """An untimed results file (its dense row has no latency) cannot rescale or set aside rows of other timing runs:
    seeds timed on an AMX CPU and on one without must not be averaged into one latency."""
    rows = _rows()
    dense = dict(rows[0], latency_ms_default=None, latency_ms_int8=None)
    amx = dict(rows[2], seed=0, timing_cpu="cpu A (amx)", latency_ms_default=0.74)
    other = dict(rows[2], seed=1, timing_cpu="cpu B", latency_ms_default=3.2)
    same = dict(rows[2], seed=2, timing_cpu="cpu A (amx)", latency_ms_default=0.76)
    mixed = next(r for r in aggregate([dense, amx, other]) if r["method"] == "filter_pruning")
    assert mixed["seeds"] == 2 and mixed["latency_ms_default"] is None
    assert mixed["test_accuracy"] == pytest.approx(0.924)
    one_cpu = next(r for r in aggregate([dense, amx, same]) if r["method"] == "filter_pruning")
    assert one_cpu["latency_ms_default"] == pytest.approx(0.75)


def test_the_ahead_target_reports_the_paired_difference_over_shared_seeds():
    """Seeds are paired (the same data order): the evidence gives the mean difference over the seeds both ran and
    its standard error; one shared seed gives no pair statistics."""
    rows = _rows()
    ours = [dict(rows[1], seed=s, test_accuracy=a) for s, a in ((0, 0.9250), (1, 0.9240), (2, 0.9262), (5, 0.93))]
    pruning = [dict(rows[2], seed=s, test_accuracy=a) for s, a in ((0, 0.9245), (1, 0.9242), (2, 0.9250))]
    groups = aggregate([rows[0], *ours, *pruning])
    a, b = (next(r for r in groups if r["method"] == m) for m in ("search+finetune", "filter_pruning"))
    seeds, mean, se = paired_difference([rows[0], *ours, *pruning], a, b)
    assert seeds == [0, 1, 2] and mean == pytest.approx(0.05)  # +0.05, -0.02, +0.12 points; seed 5 has no pair
    assert se == pytest.approx(0.07 / 3 ** 0.5 * 1)  # sample std of (0.05, -0.02, 0.12) is 0.07
    evidence = dict((name, ev) for name, _, ev in targets([rows[0], *ours, *pruning]))[
        "params:5: ours ahead of filter_pruning"]
    assert "paired over seeds 0,1,2: +0.05 +- 0.04 points" in evidence
    assert paired_difference([rows[0], ours[0], pruning[0], pruning[1]], a, b) is None


def test_the_accuracy_targets_apply_at_3x_flops_and_5x_params_only():
    """The issue's limits (0.3 points at 3x FLOPs, 1 point at 5x parameters) are not checked at other ratios: the
    'flops:2' of pruning+search_aa's budget is its pruning stage, not a FLOPs target."""
    dense = _row("dense", "-", 0.925, 4.0, 4.0, seed=None)
    rows = [dense, _row("search+finetune", "flops:3", 0.921, 3.0, 4.0),
            _row("search+finetune", "params:5", 0.914, 3.0, 4.0),
            _row("pruning+search_aa", "flops:2+latency:1.6", 0.915, 2.0, 4.0),
            _row("search+finetune", "params:5+flops:3", 0.9235, 3.0, 4.0)]
    met = {name: ok for name, ok, _ in targets(rows)}
    assert met["flops:3: best of ours within 0.3 points of dense at flops"] is False  # -0.40
    assert met["params:5: best of ours within 1.0 points of dense at params"] is False  # -1.10
    assert met["params:5+flops:3: best of ours within 0.3 points of dense at flops"] is True
    assert met["params:5+flops:3: best of ours within 1.0 points of dense at params"] is True
    assert not [name for name in met if name.startswith("flops:2+latency:1.6")]


def test_a_drop_of_exactly_the_limit_meets_it():
    """100 * (0.9288 - 0.9258) is 0.30000000000000027 in floating point: exactly 0.3 points below dense is met."""
    dense = dict(_row("dense", "-", 0.9288, 4.0, 4.0, seed=None), baseline_accuracy=0.9288)
    rows = [dense, dict(_row("search+finetune", "flops:3", 0.9258, 3.0, 4.0), baseline_accuracy=0.9288),
            dict(_row("search+finetune", "params:5", 0.9188, 3.0, 4.0), baseline_accuracy=0.9288)]
    met = {name: ok for name, ok, _ in targets(rows)}
    assert met["flops:3: best of ours within 0.3 points of dense at flops"] is True
    assert met["params:5: best of ours within 1.0 points of dense at params"] is True


def test_the_ahead_verdict_is_the_paired_one_when_the_seed_sets_differ():
    """Ours ran seeds 0-2, pruning 0-1: the means (92.70 vs 92.55) would say ahead, the shared seeds say behind."""
    rows = _rows()
    ours = [dict(rows[1], seed=s, test_accuracy=a) for s, a in ((0, 0.920), (1, 0.921), (2, 0.940))]
    pruning = [dict(rows[2], seed=s, test_accuracy=a) for s, a in ((0, 0.925), (1, 0.926))]
    met, evidence = next((ok, ev) for name, ok, ev in targets([rows[0], *ours, *pruning])
                         if name == "params:5: ours ahead of filter_pruning")
    assert met is False and "paired over seeds 0,1: -0.50" in evidence and "different seed sets" in evidence


def test_latencies_at_another_precision_hint_are_not_rescaled_into_a_default_run():
    rows = _rows()
    rows[2]["precision_int8"] = "f32"  # the earlier run fell back to the f32 hint for INT8
    out = rescale(rows)
    assert out[2]["latency_ms_int8"] is None and out[2]["timing_mismatch"] == "other precision"
    assert out[2]["latency_ms_default"] == pytest.approx(3.5 * 4.0 / 5.0)  # the default column still compares


def test_domination_needs_one_timing_setup_when_the_dense_row_is_untimed():
    """Nothing to rescale against: a point of ours timed on another CPU cannot dominate pruning, however its
    milliseconds compare."""
    rows = _rows()
    dense = dict(rows[0], latency_ms_default=None, latency_ms_int8=None)
    ours = dict(rows[1], latency_ms_default=1.0, timing_cpu="cpu A")
    pruning = dict(rows[2], latency_ms_default=1.5, timing_cpu="cpu B")
    found = {name: met for name, met, _ in targets([dense, ours, pruning])}
    assert found["filter_pruning params:5 dominated (default precision)"] is False
    pruning["timing_cpu"] = "cpu A"
    found = {name: met for name, met, _ in targets([dense, ours, pruning])}
    assert found["filter_pruning params:5 dominated (default precision)"] is True


def test_a_method_without_a_default_setting_does_not_drop_out():
    rows = _rows()
    a = dict(rows[1], lr=0.03, val_accuracy=0.93, test_accuracy=0.921)
    b = dict(rows[1], lr=0.003, test_accuracy=0.930)  # no validation
    chosen = [r for r in select_setting(aggregate([rows[0], a, b])) if r["method"] == "search+finetune"]
    assert len(chosen) == 1 and chosen[0]["lr"] == 0.03
    c = dict(b, lr=0.1)
    chosen = [r for r in select_setting(aggregate([rows[0], b, c])) if r["method"] == "search+finetune"]
    assert sorted(r["lr"] for r in chosen) == [0.003, 0.1]  # nothing to choose on: both stay
