"""Statistics of the decomposition, printed like NNCF's own tables (``ctrl.statistics().to_str()``)."""

from dataclasses import dataclass, field
from typing import Any, Optional

from nncf.api.statistics import Statistics
from nncf.common.utils.helpers import create_table


def _fmt_int(n: float) -> str:
    return f"{n / 1e6:.3f}M" if abs(n) >= 1e5 else f"{int(n)}"


def latency_rows(latency: Optional[dict]) -> dict[str, Any]:
    """Summary rows for a latency budget (the plan's ``latency`` record), empty without one."""
    if not latency:
        return {}
    precision = latency["precision"] + (f" (runs {latency['runtime_precision']})"
                                         if latency.get("runtime_precision") not in (None, latency["precision"])
                                         else "")
    check = latency.get("whole_model_check")
    per_layer_missed = check is None and not latency["budget_met"]
    rows = {
        "Latency measured at": f"{precision}{', INT8 layers' if latency['int8'] else ''}, "
                               f"{latency.get('runtime_threads') or latency.get('threads')} threads",
        "Conv/Linear latency": f"{latency['dense_ms']:.3f} ms -> {latency['ms']:.3f} ms "
                               f"({latency['achieved_ratio']:.3f}x{', NOT MET' if per_layer_missed else ''})",
    }
    if check is not None:
        k, n, confirmed = check["kept_round"], len(check["rounds"]), check.get("confirmation")
        if confirmed:  # every round's plan timed again together: the kept plan's timing in that run
            dense_ms, ms = confirmed["dense_ms"], confirmed["measured_ms"][k]
            how = f"plan of round {k + 1} of {n}, the {n} timed again together"
        else:
            dense_ms, ms = check["rounds"][k]["dense_ms"], check["rounds"][k]["measured_ms"]
            how = f"round {k + 1} of {n} timings"
        rows["Whole model, end to end"] = (f"{check['measured_ratio']:.3f}x ({dense_ms:.3f} ms -> {ms:.3f} ms; "
                                           f"{how}){'' if check['met'] else ', NOT MET'}")
    rows["Rank multiple"] = latency["rank_multiple"]
    return rows


def additional_budget_rows(additional: Optional[list], scope: str) -> dict[str, Any]:
    """Summary rows for budget.additional (the plan's ``additional`` record), empty without it."""
    return {f"Also {b['metric']} budget": f"{b['target_ratio']:.3f}x target, {b['achieved_ratio']:.3f}x reached "
                                          f"({scope})" for b in additional or []}


@dataclass
class TensorDecompositionStatistics(Statistics):
    """Per-layer decisions and the model-level budget reached.

    ``layers`` rows: name, method, ranks, full ranks, params and MACs before/after, relative reconstruction error.
    """

    layers: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    budget_metric: str
    target_ratio: Optional[float]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    stage: str
    budget_scope: str = "model"
    achieved_ratio: Optional[float] = None  # in the budget metric and scope
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params_ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    def to_str(self) -> str:
        summary = [
            ["Compression stage", self.stage],
            ["Budget metric", self.budget_metric],
            ["Target ratio", "-" if self.target_ratio is None else f"{self.target_ratio:.3f}x ({self.budget_scope})"],
            ["Budget reached", "-" if self.achieved_ratio is None else f"{self.achieved_ratio:.3f}x ({self.budget_scope})"],
            ["Model params", f"{_fmt_int(self.params_before)} -> {_fmt_int(self.params_after)} "
                             f"({self.params_ratio:.3f}x)"],
            ["Model MACs (conv/linear)", f"{_fmt_int(self.macs_before)} -> {_fmt_int(self.macs_after)} "
                                         f"({self.macs_ratio:.3f}x)"],
            ["Decomposed layers", len(self.layers)],
            ["Layers left dense", len(self.skipped)],
        ]
        summary += [[k, v] for k, v in self.extra.items()]
        out = [f"Statistics of the tensor decomposition algorithm:\n{create_table(['Statistic', 'Value'], summary)}"]
        rows = []
        with_latency = any("latency_ms" in e for e in self.layers.values())
        with_activation = any("activation_error" in e for e in self.layers.values())
        for name, e in self.layers.items():
            err = e.get("relative_error")
            rows.append([
                name, e["method"], "x".join(map(str, e["ranks"])), "x".join(map(str, e["full_ranks"])),
                f"{_fmt_int(e['dense_params'])} -> {_fmt_int(e['params'])}",
                f"{_fmt_int(e['dense_macs'])} -> {_fmt_int(e['macs'])}",
                "-" if err is None else f"{err:.4f}",
            ] + ([f"{e['activation_error']:.4f}" if "activation_error" in e else "-"] if with_activation else [])
              + ([f"{e['dense_latency_ms']:.4f} -> {e['latency_ms']:.4f}"] if with_latency else []))
        if rows:
            header = ["Layer", "Method", "Ranks", "Full ranks", "Params", "MACs", "Rel. error"]
            header += ["Output error (data)"] if with_activation else []
            header += ["Latency (ms)"] if with_latency else []
            out.append(f"Decomposed layers:\n{create_table(header, rows)}")
        if self.skipped:
            out.append("Layers left dense:\n" + create_table(["Layer", "Reason"], [[k, v] for k, v in self.skipped.items()]))
        return "\n\n".join(out)
