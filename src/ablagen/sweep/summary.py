"""What a sweep writes for people: ``sweep.json``, ``sweep.png`` and its report section.

:func:`sweep_section` returns the section as ``(title, markdown)``, the shape
:func:`ablagen.report.markdown.write_report` takes in ``extra_sections``; the report writer
can also find every sweep of a study with :func:`study_sweep_sections`. Until it
does, :func:`update_report` puts the section into an existing ``report.md`` between
markers (replacing the sweep's earlier section), or writes the sweep's own report.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from ablagen.core.atomic import atomic_write_bytes, atomic_write_text
from ablagen.sweep.analysis import SweepResult, load_sweep_json
from ablagen.sweep.grid import series_label

SWEEP_JSON = "sweep.json"
SWEEP_PNG = "sweep.png"
REPORT_MD = "report.md"
TITLE = "Learning-rate sweep"


def write_sweep_json(out: Path, result: SweepResult) -> Path:
    path = out / SWEEP_JSON
    text = json.dumps(result.to_json(), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")
    return path


def plot_sweep(result: SweepResult) -> bytes:
    """Final metric against lr (log axis), one line per arm, 95 % band over seeds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    ax = fig.add_subplot()
    for series in result.series:
        pts = [p for p in series.points if p.values]
        lrs = [p.lr for p in pts]
        scale = result.scale
        mean = [p.mean.value * scale for p in pts]
        line = ax.plot(lrs, mean, marker="o", ms=3.5, label=series.label)[0]
        low = [
            (p.mean.low if p.mean.low is not None else p.mean.value) * scale
            for p in pts
        ]
        high = [
            (p.mean.high if p.mean.high is not None else p.mean.value) * scale
            for p in pts
        ]
        ax.fill_between(lrs, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    unit = " (%)" if result.scale == 100 else ""
    ax.set_ylabel(f"final {result.metric}{unit}")
    ax.set_title(
        f"{result.metric} vs learning rate: mean and 95% band over {len(result.seeds)} seeds",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write_sweep_png(out: Path, result: SweepResult) -> Path:
    path = out / SWEEP_PNG
    atomic_write_bytes(path, plot_sweep(result))
    return path


def _ci(low: float | None, high: float | None, fmt: str) -> str:
    return "n/a" if low is None or high is None else f"[{low:{fmt}}, {high:{fmt}}]"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figure_cell(series, name: str, fmt: str) -> str:
    fig = series.figures.get(name)
    if fig is None:
        return "n/a"
    est = fig.estimate
    cell = f"{est.value:{fmt}} {_ci(est.low, est.high, fmt)}"
    if fig.vs_plain is not None:
        d = fig.vs_plain.diff
        cell += f"; Δ {d.value:+{fmt}}, p {_p(fig.vs_plain.p_value)}"
    return cell


def figures_markdown(result: SweepResult) -> str:
    unit = result.unit
    lines = [
        f"| arm | best lr | best {result.metric} | LR window (decades) | worst-case drop ({unit}) | seed variance ({unit}²) | diverged runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result.series:
        best = (
            "n/a"
            if s.best is None
            else f"{s.best.value * result.scale:.2f} {_ci(*(None if v is None else v * result.scale for v in (s.best.low, s.best.high)), '.2f')}"
        )
        lines.append(
            f"| {s.label} | {'n/a' if s.best_lr is None else format(s.best_lr, 'g')} | {best} | "
            f"{_figure_cell(s, 'lr_window_decades', '.2f')} | {_figure_cell(s, 'worst_case_drop', '.2f')} | "
            f"{_figure_cell(s, 'seed_variance', '.3g')} | {s.diverged} |"
        )
    return "\n".join(lines) + "\n"


def curves_markdown(result: SweepResult) -> str:
    """Mean ± half-width of the 95 % interval per arm and lr."""
    head = "| arm | " + " | ".join(f"lr {lr:g}" for lr in result.lrs) + " |"
    lines = [head, "|---|" + "---:|" * len(result.lrs)]
    for s in result.series:
        by_lr = {p.lr: p for p in s.points}
        cells = []
        for lr in result.lrs:
            p = by_lr.get(lr)
            if p is None or not p.values:
                cells.append("n/a")
                continue
            half = (
                ""
                if p.mean.high is None
                else f" ± {(p.mean.high - p.mean.value) * result.scale:.1f}"
            )
            div = sum(1 for st in p.statuses.values() if st == "diverged")
            cells.append(
                f"{p.mean.value * result.scale:.1f}{half}"
                + (f" ({div} div.)" if div else "")
            )
        lines.append(f"| {s.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_section(result: SweepResult, link: str | None = SWEEP_PNG) -> tuple[str, str]:
    """The report section: ``(title, markdown)``; ``link``: sweep.png relative to the report."""
    tol = result.tolerance * result.scale
    text = [
        f"Final `{result.metric}` over learning rates {', '.join(format(lr, 'g') for lr in result.lrs)} "
        f"and seeds {', '.join(map(str, result.seeds))} (`sweep.json`). Reproduce: `{result.command}` "
        "(from the sweep directory).",
        "",
        f"Per arm: the best lr of the mean curve and its value (95 % interval); the **LR window**, the width "
        f"in decades of the lr range within {tol:g} {'point(s)' if result.scale == 100 else result.metric} of the arm's best (per seed, interpolated in "
        f"log10 lr); the **worst-case drop**, best minus worst over the grid; the **seed variance**, averaged "
        f"over lrs. Each with its 95 % interval, then Δ against plain and the p-value of a paired test "
        f"(window and drop: paired t-test over seeds; variance: Wilcoxon signed-rank over lrs). "
        f"A diverged run scores the worst value.",
        "",
        figures_markdown(result),
        f"Mean {result.metric}{' (%)' if result.scale == 100 else ''} ± half-width of the 95 % interval over seeds:",
        "",
        curves_markdown(result),
    ]
    if link:
        text.append(f"![{SWEEP_PNG}]({link})")
    return TITLE, "\n".join(text)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- ablagen:sweep {name} -->", f"<!-- /ablagen:sweep {name} -->"


def update_report(report: Path, sweep: Path, result: SweepResult) -> Path:
    """Put the sweep's section into ``report`` (replacing its earlier one), atomically;
    a missing report becomes a report holding only this section."""
    link = Path(os.path.relpath(sweep / SWEEP_PNG, report.parent)).as_posix()
    title, body = sweep_section(result, link if (sweep / SWEEP_PNG).is_file() else None)
    name = Path(os.path.relpath(sweep, report.parent)).as_posix()
    name = sweep.name if name == "." else name
    start, end = _markers(name)
    block = f"{start}\n## {title} (`{name}`)\n\n{body.strip()}\n{end}\n"
    old = report.read_text(encoding="utf-8") if report.is_file() else f"# {TITLE}\n\n"
    if start in old and end in old:
        head, _, rest = old.partition(start)
        _, _, tail = rest.partition(end)
        new = head + block.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + block
    atomic_write_text(report, new)
    return report


def study_sweep_sections(study: Path) -> list[tuple[str, str]]:
    """Every sweep under ``study`` (a folder with sweep.json) as a report section,
    for :func:`ablagen.report.markdown.write_report`'s ``extra_sections``."""
    sections = []
    for path in sorted(study.glob(f"*/{SWEEP_JSON}")):
        data = load_sweep_json(path)
        rel = path.parent.relative_to(study).as_posix()
        link = f"{rel}/{SWEEP_PNG}" if (path.parent / SWEEP_PNG).is_file() else None
        sections.append((f"{TITLE} (`{rel}`)", json_section(data, link)))
    return sections


def json_section(data: dict, link: str | None) -> str:
    """A short section from a written sweep.json (figures only)."""
    lines = [
        f"Final `{data['metric']}`, {len(data['lrs'])} learning rates x {len(data['seeds'])} seeds; "
        f"reproduce with `{data['command']}` from the sweep directory.",
        "",
        "| arm | best lr | LR window (decades) | worst-case drop | seed variance |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in data["series"]:
        f = s["figures"]
        cells = [
            "n/a" if name not in f else f"{f[name]['value']:.3g}"
            for name in ("lr_window_decades", "worst_case_drop", "seed_variance")
        ]
        label = series_label(s["arm"], s["sigma"])
        lines.append(f"| {label} | {s['best_lr']} | " + " | ".join(cells) + " |")
    if link:
        lines += ["", f"![{SWEEP_PNG}]({link})"]
    return "\n".join(lines) + "\n"
