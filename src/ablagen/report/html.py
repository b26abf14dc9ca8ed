"""``report.html``: the study report as one self-contained page for a browser.

Same content as ``report.md`` (the importance table with intervals, failed
variants, the importance and curve plots, the noise scales, the arms and any
other section, the reproduce commands), rendered with Jinja2 from
``templates/report/report.html.j2``. The plots are embedded as ``data:`` URIs and
the CSS and the few lines of JavaScript that sort the table are inline, so the file
can be mailed or attached on its own. Deterministic: same inputs, same bytes.

Extra sections arrive as markdown (what ``report.md`` shows); :func:`markdown_html`
turns the subset ablagen writes (paragraphs, pipe tables, fenced code, ``code``,
``**bold**``) into HTML, escaping everything else.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from ablagen.core.atomic import atomic_write_text
from ablagen.arms.noise_scales import NoiseScales
from ablagen.orchestrate.run_record import RunRecord
from ablagen.rank.ranking import Ranking, readable
from ablagen.core.studydir import Manifest

REPORT_HTML = "report.html"
TEMPLATE = "report.html.j2"
INDEX_TEMPLATE = "index.html.j2"


def _env() -> Environment:
    from ablagen.generate.env import builtin_templates_dir

    return Environment(
        loader=FileSystemLoader(str(builtin_templates_dir() / "report")),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# --------------------------------------------------------------------------- markdown
def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    body = line.strip().strip("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _table(lines: list[str]) -> str:
    head, rows = _cells(lines[0]), [_cells(line) for line in lines[2:]]
    aligns = ["num" if c.strip().endswith(":") else "" for c in _cells(lines[1])] + [
        ""
    ] * len(head)
    parts = ["<table>", "<thead><tr>"]
    parts += [f"<th>{_inline(h)}</th>" for h in head]
    parts.append("</tr></thead><tbody>")
    for row in rows:
        cells = "".join(
            (
                f'<td class="{aligns[i]}">{_inline(c)}</td>'
                if aligns[i]
                else f"<td>{_inline(c)}</td>"
            )
            for i, c in enumerate(row)
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def markdown_html(text: str) -> Markup:
    """The markdown subset ablagen's report sections use, as safe HTML."""
    blocks: list[str] = []
    lines = text.strip("\n").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].startswith("```")),
                len(lines),
            )
            code = html.escape("\n".join(lines[i + 1 : end]), quote=False)
            blocks.append(f"<pre><code>{code}</code></pre>")
            i = end + 1
        elif (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", lines[i + 1])
        ):
            end = i + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            blocks.append(_table(lines[i:end]))
            i = end
        elif not line.strip():
            i += 1
        else:
            end = i
            while (
                end < len(lines)
                and lines[end].strip()
                and not lines[end].startswith("```")
                and not lines[end].lstrip().startswith("|")
            ):
                end += 1
            blocks.append(f"<p>{_inline(' '.join(lines[i:end]))}</p>")
            i = end
    return Markup("\n".join(blocks))


# --------------------------------------------------------------------------- context
def _png_uri(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _sort_key(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def importance_rows(ranking: Ranking) -> list[dict[str, Any]]:
    return [
        {
            "rank": r.rank,
            "variant": r.variant,
            "kind": r.kind,
            "method": r.method,
            "mean": readable(r.mean),
            "mean_key": _sort_key(r.mean),
            "low": readable(r.ci_low),
            "low_key": _sort_key(r.ci_low),
            "high": readable(r.ci_high),
            "high_key": _sort_key(r.ci_high),
            "n": r.n,
            "zero": r.ci_includes_zero,
            "mark": r.mark,  # "≈0", "–" (one seed: no interval) or ""
            "bar": 0.0,
        }
        for r in ranking.rows
    ]


def write_html_report(
    study_dir: str | Path,
    manifest: Manifest,
    ranking: Ranking,
    records: Sequence[RunRecord],
    *,
    title: str,
    intro: str,
    sections: Sequence[tuple[str, str]],
    commands: Sequence[str],
    plots: Sequence[str],
    noise: NoiseScales | None,
) -> Path:
    """Render ``report.html`` next to ``report.md``; ``sections`` are the markdown
    sections ``report.md`` has beyond the ranking (arms, comparisons, ...)."""
    study = Path(study_dir)
    rows = importance_rows(ranking)
    top = max((abs(r.mean) for r in ranking.rows), default=0.0) or 1.0
    for row, r in zip(rows, ranking.rows):
        row["bar"] = round(100.0 * max(r.mean, 0.0) / top, 1)
    failed = [
        {
            "variant": f.variant,
            "kind": f.kind,
            "statuses": ", ".join(f"seed {s}: {st}" for s, st in f.statuses),
        }
        for f in ranking.failed
    ]
    noise_rows = (
        [
            {
                "component": c,
                "importance": readable(v["importance"]),
                "scale": f"{v['scale']:.4f}",
            }
            for c, v in sorted(
                noise.components.items(), key=lambda kv: (kv[1]["scale"], kv[0])
            )
        ]
        if noise is not None
        else []
    )
    from ablagen.report.markdown import config_rows  # the same rows as report.md

    config = config_rows(manifest)
    ok = sum(1 for r in records if r.ok)
    context = {
        "title": title,
        "intro": markdown_html(intro),
        "metric": ranking.metric,
        "confidence": f"{ranking.confidence:.0%}",
        "baseline_mean": f"{ranking.baseline_mean:.4f}",
        "rows": rows,
        "failed": failed,
        "plots": [
            {"name": name, "uri": uri}
            for name in plots
            if (uri := _png_uri(study / name)) is not None
        ],
        "sections": [(head, markdown_html(text)) for head, text in sections],
        "noise": noise,
        "noise_rows": noise_rows,
        "config": config,
        "commands": list(commands),
        "runs": {"total": len(records), "ok": ok, "not_ok": len(records) - ok},
    }
    text = _env().get_template(TEMPLATE).render(**context)
    path = study / REPORT_HTML
    atomic_write_text(path, text)
    return path


def write_index_html(
    out: Path,
    title: str,
    lead: str,
    stages: Sequence[tuple[str, str]],
    sections: Sequence[tuple[str, str]],
) -> Path:
    """``report.html`` at the top of a study made of stages (two-stage): a link to
    each stage's own report and the ``(title, markdown)`` sections."""
    text = (
        _env()
        .get_template(INDEX_TEMPLATE)
        .render(
            title=title,
            lead=lead,
            stages=list(stages),
            sections=[(head, markdown_html(body)) for head, body in sections],
        )
    )
    path = out / REPORT_HTML
    atomic_write_text(path, text)
    return path
