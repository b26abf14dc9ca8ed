"""The study's report: importance and curve plots (PNG) and ``report.md``.

Everything written here is deterministic: same inputs, same bytes (fixed figure
size and dpi, no timestamps or software tags in the PNGs, sorted tables), so a
committed study can be regenerated and diffed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablagen.arms import noise_scales as noise_mod
from ablagen.rank import ranking as ranking_mod
from ablagen.core.errors import StudyError
from ablagen.core.atomic import atomic_write_bytes, atomic_write_text
from ablagen.report.html import REPORT_HTML
from ablagen.arms.noise_scales import NoiseScales
from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import (
    readable,
    NO_INTERVAL,
    ImportanceRow,
    Ranking,
    select_records,
    single_seed_note,
)
from ablagen.study.options import RankOptions
from ablagen.core.studydir import BASELINE_ID, Manifest, load_manifest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_MD = "report.md"
IMPORTANCE_PNG = "importance.png"
CURVES_PNG = "curves.png"
MAX_BARS = 40
_DPI = 100
_PNG_META = {"Software": None}


# --------------------------------------------------------------------------- plots
def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata=_PNG_META)
    return buf.getvalue()


def plot_importance(ranking: Ranking, max_bars: int = MAX_BARS) -> bytes:
    """Horizontal bars of mean importance (top ``max_bars``) with their CI as error bars."""
    from matplotlib.figure import Figure  # lazy: --no-plots never imports it

    rows = ranking.rows[:max_bars]
    fig = Figure(figsize=(8.0, max(2.5, 0.32 * len(rows) + 1.4)), layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(rows)))[::-1]
    means = [r.mean for r in rows]
    lower = [r.mean - r.ci_low if r.ci_low is not None else 0.0 for r in rows]
    upper = [r.ci_high - r.mean if r.ci_high is not None else 0.0 for r in rows]
    colors = ["tab:gray" if r.ci_includes_zero else "tab:blue" for r in rows]
    ax.barh(ys, means, xerr=[lower, upper], color=colors, capsize=3, ecolor="black")
    ax.set_yticks(ys, [r.variant for r in rows], fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    shown = (
        f" (top {len(rows)} of {len(ranking.rows)})"
        if len(rows) < len(ranking.rows)
        else ""
    )
    ax.set_xlabel(
        f"importance on {ranking.metric}{shown}; grey: {ranking.confidence:.0%} CI includes 0"
    )
    ax.set_title("Ablation importance (mean ± CI over seeds)")
    return _png(fig)


def _mean_curve(recs: Sequence[RunRecord], key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for rec in recs:
        for i, entry in enumerate((rec.result or {}).get("history") or []):
            value = entry.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                by_epoch.setdefault(int(entry.get("epoch", i + 1)), []).append(
                    float(value)
                )
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def plot_curves(
    manifest: Manifest, ranking: Ranking, records: Sequence[RunRecord], top_k: int = 5
) -> bytes | None:
    """Baseline vs the ``top_k`` most important variants: per-epoch mean over seeds.

    Plots ``history[*][ranking.metric]`` when the histories have it, else
    ``val_acc``; returns None when no record has a usable history.
    """
    runs = select_records(manifest, records).runs
    ids = [BASELINE_ID] + [r.variant for r in ranking.rows[:top_k]]
    curves = {}
    for key in (ranking.metric, "val_acc"):
        curves = {
            v: _mean_curve([r for r in runs.get(v, {}).values() if r.ok], key)
            for v in ids
        }
        if any(epochs for epochs, _ in curves.values()):
            break
    else:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for vid in ids:
        epochs, values = curves[vid]
        if epochs:
            style = (
                {"color": "black", "linestyle": "--", "zorder": 3}
                if vid == BASELINE_ID
                else {}
            )
            ax.plot(epochs, values, marker="o", markersize=3, label=vid, **style)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key} (mean over seeds)")
    ax.set_title(f"Baseline vs the top {len(ids) - 1} variants")
    ax.legend(fontsize=8)
    return _png(fig)


def write_plots(
    study_dir: str | Path,
    manifest: Manifest,
    ranking: Ranking,
    records: Sequence[RunRecord],
    top_k: int = 5,
) -> tuple[Path, ...]:
    """Write ``importance.png`` and (when histories exist) ``curves.png``."""
    study = Path(study_dir)
    written = [study / IMPORTANCE_PNG]
    atomic_write_bytes(written[0], plot_importance(ranking))
    curves = plot_curves(manifest, ranking, records, top_k)
    if curves is not None:
        written.append(study / CURVES_PNG)
        atomic_write_bytes(written[1], curves)
    return tuple(written)


# --------------------------------------------------------------------------- markdown
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def _interval(r: ImportanceRow) -> str:
    """``[low, high]``, or "–" for a variant ranked on one seed (no interval)."""
    if r.ci_low is None or r.ci_high is None:
        return NO_INTERVAL
    return f"[{readable(r.ci_low)}, {readable(r.ci_high)}]"


def ranking_markdown(ranking: Ranking) -> str:
    """The ranking table (every row) as markdown."""
    rows = [
        [
            r.rank,
            f"`{r.variant}`",
            r.kind,
            r.method,
            readable(r.mean),
            _interval(r),
            r.n,
            r.mark,
        ]
        for r in ranking.rows
    ]
    ci = f"{ranking.confidence:.0%} CI"
    return _table(
        ["rank", "variant", "kind", "method", "importance", ci, "n", "≈0"], rows
    )


def _failed_markdown(ranking: Ranking) -> str:
    if not ranking.failed:
        return "None: every variant has an `ok` result for every baseline seed."
    rows = [
        [f"`{f.variant}`", f.kind, ", ".join(f"seed {s}: {st}" for s, st in f.statuses)]
        for f in ranking.failed
    ]
    note = "Not ranked (a failure is not evidence of unimportance); see `logs/` for each run.\n\n"
    return note + _table(["variant", "kind", "statuses"], rows)


def _noise_markdown(noise: NoiseScales | None) -> str:
    if noise is None:
        return "Not computed (run `ablagen rank` to write `noise_scales.json`)."
    head = (
        f"`noise_scales.json`: σ multiplier per parameter, from importance on `{noise.metric}`; "
        f"range [{noise.min_scale}, {noise.max_scale}], temperature {noise.temperature}, "
        f"default {noise.default} for unranked modules ({len(noise.parameters)} parameters).\n\n"
    )
    rows = [
        [f"`{c}`", readable(v["importance"]), f"{v['scale']:.4f}"]
        for c, v in sorted(
            noise.components.items(), key=lambda kv: (kv[1]["scale"], kv[0])
        )
    ]
    return head + _table(["component", "importance (max over methods)", "scale"], rows)


PRUNE_JSON = Path("prune") / "prune.json"  # written by ``ablagen prune``
PRUNE_PNG = Path("prune") / "prune.png"


def _stat(stats: dict, key: str, fmt: str) -> str:
    s = stats.get(key)
    if s is None or s.get("value") is None:
        return "n/a"
    if s.get("ci_low") is None or s.get("ci_high") is None:
        return f"{s['value']:{fmt}}"
    return f"{s['value']:{fmt}} [{s['ci_low']:{fmt}}, {s['ci_high']:{fmt}}]"


def prune_markdown(study: Path) -> str | None:
    """The Pruning section from ``STUDY/prune/prune.json`` (``ablagen prune``):
    per ratio the size, CPU latency and validation accuracy right after pruning and
    after fine-tuning, with 95 % intervals over seeds; None where there is none."""
    path = study / PRUNE_JSON
    if not path.is_file():
        return None
    import json

    summary = json.loads(path.read_text())
    rows = sorted(
        (r for r in summary.get("scripts", {}).values() if r.get("stats")),
        key=lambda r: r["ratio"],
    )
    intro = (
        f"`ablagen prune`: {len(summary.get('seeds', []))} seed(s), "
        f"{summary.get('finetune_epochs')} fine-tuning epoch(s); mean [95 % CI] over "
        "seeds. `prune/prune.json` holds every run."
    )
    if not rows:
        return intro + "\n\nNo pruned run finished ok."
    table = [["baseline", *(_stat(rows[0]["stats"], f"before.{k}", f) for k, f in (("params", ".0f"), ("macs", ".0f"), ("latency_ms_b1", ".2f"), ("latency_ms_b64", ".2f"), ("val_acc", ".4f"))), "–"]]  # fmt: skip
    for r in rows:
        st = r["stats"]
        table.append([f"{r['ratio']:g}", _stat(st, "pruned.params", ".0f"), _stat(st, "pruned.macs", ".0f"),
                      _stat(st, "pruned.latency_ms_b1", ".2f"), _stat(st, "pruned.latency_ms_b64", ".2f"),
                      _stat(st, "pruned.val_acc", ".4f"), _stat(st, "finetuned.val_acc", ".4f")])  # fmt: skip
    header = ["ratio", "params", "MACs", "ms b1", "ms b64", "val_acc pruned", "val_acc fine-tuned"]  # fmt: skip
    failed = [f"{r['runs'] - r['ok']} run(s) of ratio {r['ratio']:g} failed: {r['errors'][0]}" for r in rows if r.get("errors")]  # fmt: skip
    return "\n\n".join([intro, _table(header, table), *failed])


def report_extra_sections(report_md: str) -> list[tuple[str, str]]:
    """The sections a ``report.md`` has after its Reproduce section (those a caller
    passed as ``extra_sections``), read back so a rewrite keeps them."""
    _, found, rest = report_md.partition("\n\n## Reproduce\n\n")
    parts = rest.split("\n\n## ")[1:] if found else []
    return [(p.partition("\n\n")[0], p.partition("\n\n")[2]) for p in parts]


def config_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """The study's settings as (name, plain value) rows, for report.md and report.html:
    the mode once, the command as typed, nested settings one per row (``train.lr``),
    unset and empty ones left out."""
    rows = [
        ("mode", str(manifest.mode)),
        ("model", str(manifest.model.get("path", "?"))),
        ("model sha256", str(manifest.model.get("sha256", "?"))),
    ]
    if manifest.config.get("command"):
        rows.append(("command", str(manifest.config["command"])))
    skip = ("mode", "command")
    rows += _setting_rows(
        {k: v for k, v in manifest.config.items() if k not in skip}, ""
    )
    return rows


def _setting_rows(values: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    rows = []
    for key in sorted(values):
        value = values[key]
        if isinstance(value, dict):
            rows += _setting_rows(value, f"{prefix}{key}.")
        elif value is None or (isinstance(value, (list, tuple)) and not value):
            continue  # unset, or empty: the default
        elif isinstance(value, (list, tuple)):
            rows.append((prefix + key, ", ".join(str(v) for v in value)))
        elif isinstance(value, bool):
            rows.append((prefix + key, "yes" if value else "no"))
        else:
            rows.append((prefix + key, str(value)))
    return rows


def _config_markdown(manifest: Manifest) -> str:
    rows = [[key, f"`{value}`"] for key, value in config_rows(manifest)]
    return _table(["setting", "value"], rows)


def _flag(key: str, value: Any) -> str:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{key.replace('_', '-')}"
    if isinstance(value, (list, tuple)):
        return f"{flag} {','.join(str(v) for v in value)}"
    return f"{flag} {value}"


def _runs_summary(records: Sequence[RunRecord]) -> str:
    ok = sum(1 for r in records if r.ok)
    wall = sum(r.wall_time_s for r in records)
    return f"The store holds {len(records)} run record(s), {ok} ok, {wall:.1f} s of run time."


def _study_label(study: Path) -> str:
    """The study path as typed; an absolute one relative to the cwd when it lies below it."""
    if not study.is_absolute():
        return study.as_posix()
    relative = Path(os.path.relpath(study))
    return study.as_posix() if relative.parts[:1] == ("..",) else relative.as_posix()


def reproduce_commands(
    study_dir: str | Path, manifest: Manifest, ranking: Ranking
) -> list[str]:
    """``generate``, ``run`` and ``rank`` command lines, run from the current directory.

    ``generate`` repeats ``config["command"]`` when the manifest recorded one;
    otherwise it spells each scalar/list config value as ``--key value``.
    """
    label = _study_label(Path(study_dir))
    model = Path(
        os.path.normpath(Path(label) / str(manifest.model.get("path", "MODEL")))
    ).as_posix()
    recorded = manifest.config.get("command")
    if isinstance(recorded, str) and recorded:
        generate = recorded
    else:
        opts = [
            _flag(k, v)
            for k, v in sorted(manifest.config.items())
            if k != "command" and v is not None and not isinstance(v, dict)
        ]
        generate = " ".join(["ablagen generate", model, "--out", label, *opts])
    run_opts = [_flag(k, v) for k, v in sorted(ranking.args.items()) if v is not None]
    seeds = ",".join(str(s) for s in ranking.baseline_seeds)
    return [
        generate,
        " ".join(["ablagen run", label, "--seeds", seeds, *run_opts]),
        f"ablagen rank {label} --metric {ranking.metric}",
    ]


def write_report(
    study_dir: str | Path,
    manifest: Manifest,
    ranking: Ranking,
    records: Sequence[RunRecord],
    extra_sections: Sequence[tuple[str, str]] = (),
    *,
    noise: NoiseScales | None = None,
    link_plots: bool = True,
) -> Path:
    """Write ``report.md`` (config, ranking, failures, plots, noise scales, commands)
    and ``report.html`` (the same, one self-contained page; :mod:`ablagen.report.html`).

    Plots are linked (unless ``link_plots=False``) when their PNG exists; each
    ``(title, markdown)`` in ``extra_sections`` is appended as a section.
    """
    study = Path(study_dir)
    better = "higher" if ranking.higher_is_better else "lower"
    sign = "baseline − variant" if ranking.higher_is_better else "variant − baseline"
    intro = (
        f"Importance = {sign} on `{ranking.metric}` ({better} is better), paired by seed "
        f"over {len(ranking.baseline_seeds)} baseline seed(s); baseline mean "
        f"{ranking.baseline_mean:.4f}. Intervals are two-sided Student-t; "
        f"≈0 marks an interval that includes zero, {NO_INTERVAL} a variant ranked on one "
        f"seed (no interval). {_runs_summary(records)}"
    )
    note = single_seed_note(ranking, _study_label(study))
    if note:
        intro += f"\n\n**Note:** {note[0].upper()}{note[1:]}."
    names = (IMPORTANCE_PNG, CURVES_PNG) if link_plots else ()
    plots = [f"![{name}]({name})" for name in names if (study / name).is_file()]
    commands = "\n".join(reproduce_commands(study, manifest, ranking))
    pruning = prune_markdown(study)
    prune_png = f"\n\n![prune.png]({PRUNE_PNG.as_posix()})" if (study / PRUNE_PNG).is_file() else ""  # fmt: skip
    sections = [
        ("Configuration", _config_markdown(manifest)),
        ("Importance ranking", intro + "\n\n" + ranking_markdown(ranking)),
        ("Failed variants", _failed_markdown(ranking)),
        ("Plots", "\n\n".join(plots) or "None written (`--no-plots`)."),
        ("Noise scales", _noise_markdown(noise)),
        *([("Pruning", pruning + prune_png)] if pruning else []),
        ("Reproduce", f"```sh\n{commands}\n```"),
        *extra_sections,
    ]
    title = (
        manifest.model.get("name")
        or Path(str(manifest.model.get("path", "model"))).stem
    )
    body = [f"# Ablation study: {title}"] + [
        f"## {head}\n\n{text.strip()}" for head, text in sections
    ]
    path = study / REPORT_MD
    atomic_write_text(path, "\n\n".join(body) + "\n")
    from ablagen.report.html import write_html_report  # report.html, same content

    write_html_report(
        study,
        manifest,
        ranking,
        records,
        title=str(title),
        intro=intro,
        sections=[*([("Pruning", pruning)] if pruning else []), *extra_sections],
        commands=commands.splitlines(),
        plots=[name for name in names if (study / name).is_file()]
        + ([PRUNE_PNG.as_posix()] if pruning and (study / PRUNE_PNG).is_file() else []),
        noise=noise,
    )
    return path


def write_stage_index(
    out: Path,
    title: str,
    lead: str,
    stages: Sequence[tuple[str, Path]],
    sections: Sequence[tuple[str, str]] = (),
) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` at the top of a study made of stages (a
    two-stage study): one line per stage linking its own report, then ``sections``."""
    from ablagen.report.html import write_index_html

    links = [(name, (p / REPORT_MD).relative_to(out).as_posix()) for name, p in stages]
    body = [f"# {title}", lead, "## Stages"]
    body.append(
        "\n".join(
            f"- [{name}]({href}) ([html]({href[: -len('.md')]}.html))"
            for name, href in links
        )
    )
    body += [f"## {head}\n\n{text.strip()}" for head, text in sections]
    md = out / REPORT_MD
    atomic_write_text(md, "\n\n".join(body) + "\n")
    html_links = [(name, href[: -len(".md")] + ".html") for name, href in links]
    return md, write_index_html(out, title, lead, html_links, sections)


# --------------------------------------------------------------------------- all of it
@dataclass(frozen=True)
class RankOutputs:
    ranking: Ranking
    noise: NoiseScales
    files: tuple[Path, ...]  # every file written, in writing order
    records: tuple[RunRecord, ...]  # the store's records the ranking was made from


#: the default metric of a task that scores no accuracy (``ablagen study`` ranks an
#: lm study on val_ppl too)
NO_ACCURACY = {"regression": "val_loss", "lm": "val_ppl"}


def study_metric(manifest: Manifest, metric: str) -> str:
    """The metric to rank on: ``metric``, except that a screen (which estimates the
    validation loss and no accuracy) ranks on val_loss, the metric it has; a task that
    scores no accuracy ranks on :data:`NO_ACCURACY`'s metric in place of val_acc."""
    task = (manifest.config.get("train") or {}).get("task", "classification")
    if metric == "val_acc" and task in NO_ACCURACY:
        return NO_ACCURACY[task]
    if manifest.mode != "screen" or metric == "val_loss":
        return metric
    if metric == "val_acc":  # the default: take the screen's own
        return "val_loss"
    raise StudyError(
        f"a screen study estimates val_loss only, not {metric}",
        "rank it with --metric val_loss, or verify it with a knockout study",
    )


def rank_and_write(
    study_dir: str | Path, manifest: Manifest, options: RankOptions = RankOptions()
) -> RankOutputs:
    """Rank, then write importance.json/.csv, noise_scales.json and the plots
    (unless ``options.plots`` is off); the report is left to :func:`write_report`."""
    study = Path(study_dir)
    records = ranking_mod.load_records(study)
    ranking = ranking_mod.rank(
        manifest,
        records,
        study_metric(manifest, options.metric),
        study=_study_label(study),
    )
    noise = noise_mod.noise_scales(
        manifest, ranking, options.min_scale, options.max_scale, options.temperature
    )
    files = list(ranking_mod.write_importance(study, ranking))
    files.append(noise_mod.write_noise_scales(study, noise))
    if options.plots:
        files += write_plots(study, manifest, ranking, records, options.top_k)
    return RankOutputs(ranking, noise, tuple(files), tuple(records))


def rank_study(
    study_dir: str | Path,
    options: RankOptions = RankOptions(),
    extra_sections: Sequence[tuple[str, str]] = (),
) -> RankOutputs:
    """``ablagen rank``: :func:`rank_and_write`, then report.md (the last file)."""
    study = Path(study_dir)
    manifest = load_manifest(study)
    out = rank_and_write(study, manifest, options)
    report = write_report(
        study,
        manifest,
        out.ranking,
        out.records,
        extra_sections,
        noise=out.noise,
        link_plots=options.plots,
    )
    return replace(out, files=(*out.files, report, report.with_name(REPORT_HTML)))
