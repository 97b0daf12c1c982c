"""--td-options of the fine-tuning benchmark (benchmarks/finetune.py): merged into the tensor_decomposition block,
recorded canonically, kept apart in row keys and IR names, and bad values refused with the reason."""

import pytest

from benchmarks.finetune import (main, merge_options, options_slug, other_base_model, other_settings, parse_options,
                                 row_key, row_tag, td_block)


def test_options_merge_into_the_block_and_are_canonical():
    block = td_block("params", 5.0, "rank_learning", 3, 50, 94, 2)
    options, canonical = parse_options('{"rank_learning": {"num_epochs": 1, "initial_ratio": 3.5}}')
    merged = merge_options(block, options)
    assert merged["rank_learning"] == {"num_epochs": 1, "initial_ratio": 3.5, "update_every": 50,
                                       "steps_per_epoch": 94}
    assert block["rank_learning"]["num_epochs"] == 2  # the block itself is not changed
    assert canonical == '{"rank_learning":{"initial_ratio":3.5,"num_epochs":1}}'
    assert parse_options('{"rank_learning":{"num_epochs":1,"initial_ratio":3.5}}')[1] == canonical
    assert parse_options("") == ({}, "")


def test_options_keep_rows_and_ir_names_apart():
    canonical = parse_options('{"rank_learning": {"num_epochs": 1}}')[1]
    assert options_slug(canonical) == "num_epochs1"
    assert row_tag("rank_learning", "params:5", 3, 0.03, canonical) == "rank_learning_params5_s3_lr0.03_onum_epochs1"
    assert row_tag("rank_learning", "params:5", 0, 0.01) == "rank_learning_params5"  # names of older runs
    row = {"method": "rank_learning", "budget": "params:5", "seed": 3, "lr": 0.03}
    assert row_key(row) != row_key(dict(row, options=canonical))
    assert row_key(row) == row_key(dict(row, options=None))


@pytest.mark.parametrize("text, message", [
    ("{num_epochs: 1}", "is not JSON"),
    ("[1]", "non-empty JSON object"),
    ("{}", "non-empty JSON object"),
    ('{"budget": {"target_ratio": 3}}', "may not set 'algorithm' or 'budget'"),
])
def test_bad_options_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_options(text)


def test_options_with_a_method_without_the_block_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--json", "unused.json", "--methods", "rank_learning,filter_pruning",
              "--td-options", '{"rank_learning": {"num_epochs": 1}}'])
    assert "['filter_pruning'] do not have" in capsys.readouterr().err


def test_pruning_options_merge_into_the_pruning_block_but_not_its_target(capsys):
    from benchmarks.pruning import pruning_block

    options, canonical = parse_options('{"params": {"pruning_steps": 1}}', "--pruning-options")
    block = merge_options(pruning_block(1.68, steps=2), options)
    assert block["params"]["pruning_steps"] == 1 and block["params"]["pruning_flops_target"] == pytest.approx(
        1 - 1 / 1.68)
    assert canonical == '{"params":{"pruning_steps":1}}'
    with pytest.raises(ValueError, match="may not set params.pruning_flops_target"):
        parse_options('{"params": {"pruning_flops_target": 0.5}}', "--pruning-options")
    with pytest.raises(SystemExit):
        main(["--json", "unused.json", "--methods", "filter_pruning,rank_learning",
              "--pruning-options", '{"params": {"pruning_steps": 1}}'])
    assert "not ['rank_learning']" in capsys.readouterr().err


def test_a_validation_split_the_base_model_was_trained_on_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--json", "unused.json", "--base-holdout", "5000", "--val-size", "10000"])
    assert "--val-size 10000 is more than --base-holdout 5000" in capsys.readouterr().err


def test_rows_of_another_base_model_are_not_resumed():
    old = [{"method": "dense", "budget": "-"}, {"method": "rank_learning", "budget": "params:5"}]  # before the key
    assert other_base_model(old, 0) == ""
    message = other_base_model(old, 10000)
    assert "dense row at -" in message and "without the last 0 training images" in message
    assert "--base-holdout 10000" in message
    new = [dict(r, base_holdout=10000) for r in old]
    assert other_base_model(new, 10000) == "" and "without the last 10000" in other_base_model(new, 0)


def test_rows_of_another_fine_tuning_setup_are_not_resumed():
    """A row kept by --resume must have run like this run's: other epochs, subsets, distillation, widths or base
    model make another experiment (a --quick file joined to a full run was compared as the same rows)."""
    settings = {"epochs": 3, "train_subset": 12000, "test_subset": None, "knowledge_distillation": True,
                "kd_temperature": 2.0, "widths": [64, 128, 256, 512], "base_epochs": 3, "update_every": 50}
    same = [dict({"method": "dense", "budget": "-", "epochs": 0}, test_subset=None),
            dict({"method": "rank_learning", "budget": "params:5"}, **settings)]
    assert other_settings(same, settings) == ""
    old = [{"method": "rank_learning", "budget": "params:5", "epochs": 3}]  # settings not recorded then: not checked
    assert other_settings(old, settings) == ""
    quick = [dict(same[1], epochs=2, train_subset=2000)]
    message = other_settings(quick, settings)
    assert "rank_learning row at params:5 ran with epochs=2, this run epochs=3" in message
    assert "test_subset=2000" in other_settings([dict(same[0], test_subset=2000)], settings)  # the dense row too
    assert other_settings([dict(same[0], epochs=0)], dict(settings, epochs=5)) == ""  # dense: no fine-tuning


def test_pruning_matches_the_plain_search_else_the_mean_of_the_activation_aware_search():
    from benchmarks.finetune import flops_to_match

    aa = [{"method": "search_aa+finetune", "budget": "latency:1.7+params:5", "seed": s, "flops_ratio": f}
          for s, f in ((0, 2.80), (1, 2.82))]
    other = [{"method": "search_aa+finetune", "budget": "latency:1.7", "flops_ratio": 2.48},
             {"method": "search_aa+finetune", "budget": "latency:1.7+params:5", "flops_ratio": 9.0,
              "options": '{"decomposition":{"activation_aware":false}}'},
             {"method": "search_aa+finetune", "budget": "latency:1.7+params:5", "error": "refused"},
             {"method": "filter_pruning", "budget": "latency:1.7+params:5", "flops_ratio": 2.81}]
    assert flops_to_match(aa + other, "latency:1.7+params:5") == pytest.approx(2.81)
    plain = {"method": "search+finetune", "budget": "latency:1.7+params:5", "flops_ratio": 2.5, "options": None}
    assert flops_to_match(aa + other + [plain], "latency:1.7+params:5") == pytest.approx(2.5)
    assert flops_to_match(aa + other, "flops:3") is None
