"""Markdown tables from a benchmarks/latency.py run: speedups per model/precision/method, and where the time goes
by OpenVINO layer type (dense vs latency-budget model), from the per-layer profiling.

    python benchmarks/latency_report.py benchmarks/results/latency_t1.json
"""

import json
import pathlib
import sys


def speedup_table(rows: list) -> str:
    out = ["| model | precision | target | method | MACs ratio | params ratio | dense ms | model ms | speedup | "
           "speedup / MACs ratio | predicted |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("td_ms") is None:
            out.append(f"| {r['model']} | {r['precision']} | {r['target_ratio']:g}x | {r['method']} | "
                       f"unreachable (best {r.get('best_ratio') or 0:.2f}x) | | {r['dense_ms']:.2f} | | | | |")
            continue
        method = r["method"] + (f" (asked {r['retried_ratio']:g}x: best reachable)" if r.get("retried_ratio") else "")
        predicted = f"{r['predicted_ratio']:.2f}x" if r.get("predicted_ratio") else ""
        out.append(f"| {r['model']} | {r['precision']} | {r['target_ratio']:g}x | {method} | {r['macs_ratio']:.2f} | "
                   f"{r['params_ratio']:.2f} | {r['dense_ms']:.2f} | {r['td_ms']:.2f} | **{r['speedup']:.2f}x** | "
                   f"{r['speedup_over_macs']:.2f} | {predicted} |")
    return "\n".join(out)


def profile_table(profiles: dict) -> str:
    out = []
    keys = sorted({k.rsplit("/", 1)[0] for k in profiles})
    for prefix in keys:
        dense = profiles.get(f"{prefix}/dense") or {}
        others = {k.rsplit("/", 1)[1]: v for k, v in profiles.items() if k.startswith(prefix + "/td_latency") and v}
        if not dense or not others:
            continue
        types = sorted(set(dense) | {t for v in others.values() for t in v},
                       key=lambda t: -dense.get(t, 0.0))
        names = list(others)
        out.append(f"\n{prefix} (ms per inference by executed layer type; profiling slows inference, compare shares)\n")
        out.append("| layer type | dense | " + " | ".join(names) + " |")
        out.append("|---|---|" + "---|" * len(names))
        for t in types:
            vals = [dense.get(t, 0.0)] + [others[n].get(t, 0.0) for n in names]
            if max(vals) < 0.01:
                continue
            out.append(f"| {t} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        totals = [sum(dense.values())] + [sum(others[n].values()) for n in names]
        out.append("| total | " + " | ".join(f"{v:.2f}" for v in totals) + " |")
    return "\n".join(out)


def main() -> None:
    path = pathlib.Path(sys.argv[1])
    rows = json.loads(path.read_text())
    print(speedup_table(rows))
    prof = path.with_suffix(".profiles.json")
    if prof.is_file():
        print(profile_table(json.loads(prof.read_text())))


if __name__ == "__main__":
    main()
