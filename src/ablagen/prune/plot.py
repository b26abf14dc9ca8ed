"""``prune.png``: validation accuracy against MACs per ratio, with 95 % CI bars."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

PRUNE_PNG = "prune.png"


def _bar(stat: dict | None) -> tuple[float, float, float] | None:
    if stat is None or stat.get("value") is None:
        return None
    low = stat["ci_low"] if stat.get("ci_low") is not None else stat["value"]
    high = stat["ci_high"] if stat.get("ci_high") is not None else stat["value"]
    return stat["value"], stat["value"] - low, high - stat["value"]


def plot_prune(summary: dict) -> bytes:
    """One point per ratio (right after pruning, after fine-tuning) and the baseline."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    rows = [r for r in summary["scripts"].values() if r["stats"]]
    series = (
        ("before", "baseline", "k", "s"),
        ("pruned", "pruned", "tab:red", "o"),
        ("finetuned", "fine-tuned", "tab:blue", "o"),
    )
    for stage, label, color, marker in series:
        points = []
        for row in rows:
            macs = row["stats"].get(f"{stage}.macs", {}).get("value")
            acc = _bar(row["stats"].get(f"{stage}.val_acc"))
            if macs is not None and acc is not None:
                points.append((macs, *acc, row["ratio"]))
        if stage == "before":
            points = points[:1]
        points.sort()
        if not points:
            continue
        xs, ys, lo, hi, ratios = zip(*points)
        ax.errorbar(xs, ys, yerr=[lo, hi], color=color, marker=marker, capsize=3,
                    label=label, linestyle="-" if stage != "before" else "none")  # fmt: skip
        if stage == "finetuned":
            for x, y, ratio in zip(xs, ys, ratios):
                ax.annotate(f"{ratio:g}", (x, y), textcoords="offset points", xytext=(4, 4))  # fmt: skip
    ax.set_xlabel("MACs per sample")
    ax.set_ylabel("validation accuracy")
    ax.set_title("accuracy against size per pruning ratio (95 % CI over seeds)")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
