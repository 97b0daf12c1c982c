"""Report of a benchmarks/finetune.py run: a markdown table, the issue-4 targets checked against the rows, and the
accuracy-vs-latency plot (one panel per latency column).

    python benchmarks/finetune_report.py benchmarks/results/finetune.json --plot docs/finetune_accuracy_latency.png

Targets (issue 4), with "ours" = search+finetune (plain or activation-aware), rank_learning (either importance, or
from an activation-aware decomposition) and
pruning+search_aa (the activation-aware search on top of NNCF's filter pruning):
- at a budget with ``flops:3``: the best of ours within 0.3 points of the dense model;
- at a budget with ``params:5``: the best of ours within 1 point (other ratios, like the pruning stage ``flops:2`` of
  ``pruning+search_aa``'s ``flops:2+latency:1.6``, answer neither);
- at every budget, the best of ours ahead of uniform+finetune and filter_pruning in accuracy;
- every filter_pruning point dominated by a point of ours (higher accuracy at equal or lower latency), for each
  latency column.
A method and budget that ran with several seeds (finetune.py --seeds) enters the targets and the plot as its mean
over the seeds (accuracy, ratios and latencies; no latency when its seeds were timed on different CPUs). Rows timed
in an earlier run (their IRs gone) are rescaled to the file's dense timing by the dense latencies of their own run
(``rescale``; the table marks them with "*"), if that run was on the same CPU (``timing_cpu``, or neither run
recorded one) and with the same input-shape handling (``timing_static_shapes``: since session 22 every IR is compiled
for the static input shape; before, IRs exported with a dynamic batch ran dynamically shaped); other rows keep their
measurements only as ``<key>_other_timing``, out of the plot and the latency targets (the table shows "other CPU"
or "dynamic shapes").

Rows of several fine-tuning settings are kept apart: the learning rate (finetune.py --lr; rows without ``lr`` ran at
0.01) and the options merged into the method's block (finetune.py --td-options or --pruning-options, the row's
``options``; none by default). The targets and the plot take, per method and budget, one setting, chosen without the
test set: the one with the highest mean ``val_accuracy`` (finetune.py --val-size: held-out training images) if every
setting of that method and budget has one, else the default (lr 0.01, no options) (``select_setting``).
"""

import argparse
import json
import pathlib
import sys

DEFAULT_LR = 0.01  # rows made before finetune.py recorded --lr

OURS = ("search+finetune", "search_aa+finetune", "rank_learning", "rank_learning_fisher", "rank_learning_aa",
        "pruning+search_aa")
LATENCIES = (("latency_ms_default", "default precision"), ("latency_ms_int8", "INT8"))
MARKERS = {"dense": ("k", "*"), "search+finetune": ("tab:blue", "o"), "rank_learning": ("tab:green", "s"),
           "rank_learning_fisher": ("tab:olive", "D"), "rank_learning_aa": ("tab:brown", "p"), "dense+finetune": ("grey", "P"),
           "search_aa+finetune": ("tab:cyan", "h"), "pruning+search_aa": ("tab:purple", "X"),
           "uniform+finetune": ("tab:orange", "^"), "filter_pruning": ("tab:red", "v")}


def _ok(rows):
    return [r for r in rows if "error" not in r and r.get("test_accuracy") is not None]


def timing_mismatch(r: dict, dense: dict, key: str = "") -> str:
    """Why latencies of row ``r`` cannot be compared with those of the ``dense`` row's timing run ("" if they can):
    "other CPU" (``timing_cpu`` differs, or only one of them recorded it), "dynamic shapes" (one of the two runs
    timed IRs with a dynamic input dimension as exported, the other compiled every IR for the static input shape,
    ``timing_static_shapes``), or, for the latency column ``key``, "other precision" (one of them fell back to the
    f32 hint: ``precision_*``)."""
    if r.get("timing_cpu") != dense.get("timing_cpu"):
        return "other CPU"
    if bool(r.get("timing_static_shapes")) != bool(dense.get("timing_static_shapes")):
        return "dynamic shapes"
    if key:
        hint = key.replace("latency_ms", "precision")
        if (r.get(hint) or "default") != (dense.get(hint) or "default"):
            return "other precision"
    return ""


def rescale(rows: list[dict]) -> list[dict]:
    """Rows timed in another run than the file's dense row (finetune.py --resume after their IRs were gone), with
    each latency rescaled by the ratio of the dense IR's latencies of the two runs: the comparison is then between
    speedups over the dense model, each measured in its own run. The measured value stays in ``<key>_measured``.

    Only under the same timing setup (:func:`timing_mismatch`): a row timed on another CPU than the dense row, or
    with other input-shape handling, has its latencies moved to ``<key>_other_timing`` and the reason to
    ``timing_mismatch`` (the ratio of two speed-ups measured on CPUs with different kernels, AMX or not, says
    nothing; a dynamically shaped graph pays a per-node cost that a static one does not)."""
    dense = next((r for r in rows if r.get("method") == "dense"), None)
    out = []
    for r in rows:
        r = dict(r)
        for key, _ in LATENCIES:
            own, ref = r.get(f"dense_{key}"), dense.get(key) if dense else None
            if r.get(key) is None or not own or not ref or abs(own - ref) <= 1e-12:
                continue
            why = timing_mismatch(r, dense, key)
            if why:
                r[f"{key}_other_timing"], r[key], r["timing_mismatch"] = r[key], None, why
            else:
                r[f"{key}_measured"], r[key], r[f"dense_{key}"] = r[key], r[key] * ref / own, ref
        out.append(r)
    return out


MEAN_KEYS = ("test_accuracy", "val_accuracy", "flops_ratio", "params_ratio", "latency_ms_default", "latency_ms_int8")


def _lr(r: dict) -> float:
    return r.get("lr") or DEFAULT_LR


def _options(r: dict) -> str:
    """The row's --td-options as canonical JSON ("" for none)."""
    return r.get("options") or ""


def _is_default_setting(r: dict) -> bool:
    return _lr(r) == DEFAULT_LR and not _options(r)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (method, budget, learning rate, options): the row itself, or the mean over its seeds (with "seeds"
    and the accuracy range)."""
    groups = {}
    for r in _ok(rescale(rows)):
        groups.setdefault((r["method"], r["budget"], _lr(r), _options(r)), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        mean = dict(group[0], seeds=len(group), seed=None,
                    accuracy_range=(min(r["test_accuracy"] for r in group), max(r["test_accuracy"] for r in group)))
        for key in MEAN_KEYS:
            timed = [r for r in group if r.get(key) is not None]
            if key.startswith("latency_ms") and len({(r.get("timing_cpu"), bool(r.get("timing_static_shapes")))
                                                     for r in timed}) > 1:
                # seeds timed under different setups and not moved aside by rescale (the file's dense row is
                # untimed): their mean would mix speeds of different kernels or shape handling
                mean[key] = None
                continue
            mean[key] = sum(r[key] for r in timed) / len(timed) if timed else None
        out.append(mean)
    return out


def select_setting(rows: list[dict]) -> list[dict]:
    """Aggregated rows with one setting (learning rate, options) per (method, budget): the highest mean val_accuracy
    if every setting of the pair has one, else the default (lr 0.01, no options); never chosen on the test accuracy.
    Without a default setting, the best on validation among the settings that have one, or, with no validation at
    all, every setting (each is then compared): a method never drops out of the targets silently."""
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for group in groups.values():
        with_val = [r for r in group if r.get("val_accuracy") is not None]
        default = [r for r in group if _is_default_setting(r)]
        if len(group) == 1:
            out.extend(group)
        elif len(with_val) == len(group) or (with_val and not default):
            out.append(max(with_val, key=lambda r: r["val_accuracy"]))
        else:
            out.extend(default or group)
    return out


def _name(r: dict) -> str:
    return (f"{r['method']}" + (f" lr {_lr(r):g}" if _lr(r) != DEFAULT_LR else "")
            + (f" {_options(r)}" if _options(r) else "")
            + (f" (mean of {r['seeds']} seeds)" if r.get("seeds") else ""))


def table(rows: list[dict]) -> str:
    out = ["| method | budget | seed | lr | FLOPs ratio | params ratio | test accuracy | val accuracy | vs dense | "
           "epochs | latency default ms | latency INT8 ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rescale(rows):
        if "error" in r:
            out.append(f"| {r['method']} | {r['budget']} | {r.get('seed', '')} | {_lr(r):g} | failed: "
                       f"{r['error'][:80]} | | | | | | | |")
            continue
        delta = 100 * (r["test_accuracy"] - r["baseline_accuracy"])

        def ms(key):
            value = r.get(key)
            suffix = "" if r.get(key.replace("latency_ms", "precision"), "default") == "default" else " (f32)"
            rescaled = "*" if r.get(f"{key}_measured") is not None else ""
            if value is None and r.get(f"{key}_other_timing") is not None:
                return f"{r['timing_mismatch']} ({r[f'{key}_other_timing']:.3f})"
            return "" if value is None else f"{value:.3f}{rescaled}{suffix}"

        seed = r.get("seed", None if r["method"] == "dense" else 0)  # rows made before --seeds ran at seed 0
        seed = f"mean of {r['seeds']}" if r.get("seeds") else ("" if seed is None else seed)
        lr = "" if r["method"] == "dense" else f"{_lr(r):g}"
        val = "" if r.get("val_accuracy") is None else f"{100 * r['val_accuracy']:.2f}%"
        method = r["method"] + (f" {_options(r)}" if _options(r) else "")
        out.append(f"| {method} | {r['budget']} | {seed} | {lr} | {r['flops_ratio']:.2f} | "
                   f"{r['params_ratio']:.2f} | {100 * r['test_accuracy']:.2f}% | {val} | {delta:+.2f} | {r['epochs']} | "
                   f"{ms('latency_ms_default')} | {ms('latency_ms_int8')} |")
    return "\n".join(out)


def _group(r: dict) -> tuple:
    return r["method"], r["budget"], _lr(r), _options(r)


def paired_difference(rows: list[dict], a: dict, b: dict):
    """(seeds, mean, standard error) of the test-accuracy difference a - b (in points) over the seeds that both
    settings ran (``a`` and ``b`` are aggregated rows; the same seed is the same data order and augmentation, so
    the pairs share part of their noise), or None with fewer than two shared seeds."""
    def by_seed(group):
        return {r.get("seed", 0): r["test_accuracy"] for r in _ok(rows) if _group(r) == group}

    sa, sb = by_seed(_group(a)), by_seed(_group(b))
    shared = sorted(set(sa) & set(sb))
    if len(shared) < 2:
        return None
    diffs = [100 * (sa[s] - sb[s]) for s in shared]
    mean = sum(diffs) / len(diffs)
    se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
    return shared, mean, se


ACCURACY_LIMITS = {"flops": 0.3, "params": 1.0}  # points below dense allowed at the ratio of each metric
TARGET_RATIOS = {"flops": 3.0, "params": 5.0}


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None


def targets(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """(target, met, evidence) for each issue-4 target the rows can answer (seeds averaged, one setting per
    method and budget: ``select_setting``). Where ours and the other method share two or more seeds, the evidence
    adds the paired difference over them with its standard error, and the "ahead of" verdict is that paired mean
    (with fewer shared seeds, the means)."""
    raw, rows = rows, select_setting(aggregate(rows))
    results = []
    budgets = sorted({r["budget"] for r in rows if r["method"] != "dense"})
    for budget in budgets:
        at = [r for r in rows if r["budget"] == budget]
        ours = [r for r in at if r["method"] in OURS]
        if not ours:
            continue
        best = max(ours, key=lambda r: r["test_accuracy"])
        drop = 100 * (best["baseline_accuracy"] - best["test_accuracy"])
        for part in budget.split("+"):  # 'params:5+flops:3' (budget.additional) answers both accuracy targets
            metric, _, ratio = part.partition(":")
            limit = ACCURACY_LIMITS.get(metric)
            # the issue sets these limits at 3x FLOPs and 5x parameters only; another ratio (e.g. the pruning stage
            # 'flops:2' of pruning+search_aa's 'flops:2+latency:1.6') is no such target
            if limit is not None and _number(ratio) == TARGET_RATIOS[metric]:
                reached = best["flops_ratio" if metric == "flops" else "params_ratio"]
                # rounded: 100 * (0.9288 - 0.9258) is 0.30000000000000027, a drop of exactly the limit
                results.append((f"{budget}: best of ours within {limit} points of dense at {metric}",
                                round(drop, 6) <= limit,
                                f"{_name(best)} {-drop:+.2f} points vs dense at {reached:.2f}x {metric}"))
        others = [r for r in at if r["method"] in ("uniform+finetune", "filter_pruning")]
        for other in others:
            # with two or more shared seeds the verdict is the paired mean over them (means over different seed
            # sets would compare different data orders); otherwise the means, and the evidence says so
            paired = paired_difference(raw, best, other)
            ahead = paired[1] > 0 if paired else best["test_accuracy"] > other["test_accuracy"]
            same_seeds = paired and len(paired[0]) == best.get("seeds", 1) == other.get("seeds", 1)
            results.append((f"{budget}: ours ahead of {other['method']}", ahead,
                            f"{_name(best)} {100 * best['test_accuracy']:.2f}% vs {_name(other)} "
                            f"{100 * other['test_accuracy']:.2f}%" +
                            (f"; paired over seeds {','.join(map(str, paired[0]))}: {paired[1]:+.2f} +- "
                             f"{paired[2]:.2f} points (standard error)" if paired else
                             "; fewer than two shared seeds: compared on the means") +
                            ("" if not paired or same_seeds else "; the verdict is the paired one (the means are "
                             "over different seed sets)")))
    pruning = [r for r in rows if r["method"] == "filter_pruning"]
    ours = [r for r in rows if r["method"] in OURS]
    for key, label in LATENCIES:
        for p in pruning:
            if p.get(key) is None:
                continue
            # only latencies of one timing setup compare (rescale normalised rows to the dense row's run where it
            # could; with an untimed dense row, rows of other CPUs or precision hints are still side by side here)
            dominating = [o for o in ours if o.get(key) is not None and not timing_mismatch(o, p, key)
                          and o[key] <= p[key] and o["test_accuracy"] > p["test_accuracy"]]
            best = max(dominating, key=lambda o: o["test_accuracy"], default=None)
            evidence = (f"pruning {p['budget']} {100 * p['test_accuracy']:.2f}% at {p[key]:.3f} ms; " +
                        (f"{_name(best)} {best['budget']} {100 * best['test_accuracy']:.2f}% at {best[key]:.3f} ms"
                         if best else "no point of ours is both as fast and more accurate"))
            results.append((f"filter_pruning {p['budget']} dominated ({label})", best is not None, evidence))
    return results


def plot(rows: list[dict], path: pathlib.Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = select_setting(aggregate(rows))
    fig, axes = plt.subplots(1, len(LATENCIES), figsize=(6 * len(LATENCIES), 4.5))
    for ax, (key, label) in zip(axes, LATENCIES):
        seen = set()
        for r in rows:
            if r.get(key) is None:
                continue
            color, marker = MARKERS.get(r["method"], ("grey", "x"))
            ax.scatter(r[key], 100 * r["test_accuracy"], c=color, marker=marker, s=60,
                       label=None if r["method"] in seen else r["method"])
            seen.add(r["method"])
            if r["budget"] != "-":
                ax.annotate(r["budget"], (r[key], 100 * r["test_accuracy"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        hints = sorted({r.get(key.replace("latency_ms", "precision")) or "default" for r in rows if r.get(key)})
        ax.set_xlabel(f"OpenVINO latency, ms ({label}; precision hint: {'/'.join(hints)})")
        ax.set_ylabel("Fashion-MNIST test accuracy, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json")
    parser.add_argument("--plot", help="write the accuracy-vs-latency plot here (PNG)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    rows = json.loads(pathlib.Path(args.json).read_text())
    print(table(rows))
    if any(r.get(f"{key}_measured") is not None for r in rescale(rows) for key, _ in LATENCIES):
        print("* timed in an earlier run: rescaled by the ratio of the dense IR's latencies of the two runs")
    print()
    for name, met, evidence in targets(rows):
        print(f"- {'MET' if met else 'NOT MET'}: {name} ({evidence})")
    if args.plot:
        plot(rows, pathlib.Path(args.plot), args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
