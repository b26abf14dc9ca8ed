"""What the CLI shows: progress (a rich bar, or one plain line per run), the run
summary and the status table. Pure presentation over the runner's dataclasses."""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBar
from rich.table import Table

from ablagen.orchestrate.options import RunSummary
from ablagen.orchestrate.outcome import gigabytes
from ablagen.orchestrate.run_record import RunRecord
from ablagen.orchestrate.runner import Progress
from ablagen.orchestrate.status import CELL_STATUSES, Cell, StudyStatus

STYLE = {
    "ok": "green",
    "failed": "red",
    "diverged": "magenta",
    "timeout": "yellow",
    "crashed": "red bold",
    "oom": "red bold",
    "running": "cyan",
    "pending": "dim",
}
HEADLINE_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


def headline(result: dict[str, Any] | None) -> str:
    """The first of val_acc, val_loss, ... in a result's ``final`` block, as text."""
    final = (result or {}).get("final")
    if not isinstance(final, dict):
        return ""
    for name in (*HEADLINE_METRICS, *sorted(final)):
        value = final.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{name}={value:.4g}"
    return ""


def reason(record: RunRecord) -> str:
    """The one-line cause of a failed run (the error tail's last line)."""
    lines = (record.error_tail or "").strip().splitlines()
    return lines[-1].removeprefix("[ablagen] ") if lines else record.status


def _run_line(rec: RunRecord) -> str:
    detail = headline(rec.result) if rec.ok else f"{reason(rec)} (log: {rec.log_path})"
    return f"{rec.variant_id} seed={rec.seed} {rec.wall_time_s:.1f}s {detail}".rstrip()


def _finished_line(ev: Progress) -> str:
    assert ev.record is not None
    width = len(str(ev.total))
    return (
        f"[{ev.done:>{width}}/{ev.total}] {ev.record.status:<8} {_run_line(ev.record)}"
    )


def _waiting_line(ev: Progress) -> str:
    assert ev.spec is not None
    return f"waiting for {ev.spec.label}: another orchestrator is running it"


def _elsewhere_line(ev: Progress) -> str:
    assert ev.record is not None
    return f"{ev.record.status:<8} {_run_line(ev.record)} (run by another orchestrator)"


def _start_line(ev: Progress) -> str:
    skipped = []
    if ev.skipped_ok:
        skipped.append(f"{ev.skipped_ok} already ok")
    if ev.skipped_failed:
        skipped.append(f"{ev.skipped_failed} failed before, not retried")
    extra = f" ({', '.join(skipped)})" if skipped else ""
    return f"running {ev.total} run{'s' * (ev.total != 1)} on {ev.backend}{extra}"


class PlainProgress:
    """One line per finished run: for logs and pipes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, ev: Progress) -> None:
        if ev.event == "start":
            print(_start_line(ev), file=self.stream, flush=True)
        elif ev.event == "finished":
            print(_finished_line(ev), file=self.stream, flush=True)
        elif ev.event == "waiting":
            print(_waiting_line(ev), file=self.stream, flush=True)
        elif ev.event == "elsewhere":
            print(_elsewhere_line(ev), file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to tear down."""


class RichProgress:
    """A progress bar with done / failed / running counts and an ETA; failures are
    printed above the bar as they happen."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: RichBar | None = None
        self.task: TaskID | None = None

    def __call__(self, ev: Progress) -> None:
        if ev.event == "start":
            self.console.print(escape(_start_line(ev)), highlight=False)
            self.bar = RichBar(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
                    "[cyan]{task.fields[running]} running[/]"
                ),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                refresh_per_second=4,  # redraws cost the runs CPU (10 by default)
            )
            self.bar.start()
            self.task = self.bar.add_task(
                "runs", total=ev.total, ok=0, failed=0, running=0
            )
        elif (
            self.bar is not None
            and self.task is not None
            and ev.event in ("started", "finished")
        ):
            self.bar.update(
                self.task,
                total=ev.total,
                completed=ev.done,
                ok=ev.done - ev.failed,
                failed=ev.failed,
                running=ev.running,
            )
            if ev.event == "finished" and ev.record is not None and not ev.record.ok:
                style = STYLE.get(ev.record.status, "red")
                self.bar.console.print(
                    f"[{style}]{ev.record.status}[/] {escape(_run_line(ev.record))}",
                    highlight=False,
                )
        elif ev.event in ("waiting", "elsewhere"):
            line = _waiting_line(ev) if ev.event == "waiting" else _elsewhere_line(ev)
            (self.bar.console if self.bar else self.console).print(
                escape(line), highlight=False
            )
        elif ev.event == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_summary(summary: RunSummary, console: Console, quiet: bool = False) -> None:
    """The run's outcome: one line of counts, then every run that did not succeed."""
    by_status: dict[str, int] = {}
    for rec in summary.ran_failed:
        by_status[rec.status] = by_status.get(rec.status, 0) + 1
    parts = [f"{summary.ran_ok} ok"]
    if by_status:
        parts.append(
            f"{sum(by_status.values())} not ok ("
            + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
            + ")"
        )
    if summary.skipped_ok:
        parts.append(f"{summary.skipped_ok} already ok")
    if summary.skipped_failed:
        parts.append(f"{len(summary.skipped_failed)} failed before (not retried)")
    if summary.finished_elsewhere:
        parts.append(
            f"{summary.finished_elsewhere} run by another orchestrator"
            f" ({summary.elsewhere_ok} ok)"
        )
    if summary.running_elsewhere:
        parts.append(
            f"{len(summary.running_elsewhere)} still running in another orchestrator"
        )
    console.print(
        f"{escape(', '.join(parts))} in {summary.wall_time_s:.1f} s", highlight=False
    )
    holders: dict[str, list[str]] = {}
    for held in summary.running_elsewhere:
        holders.setdefault(held.holder, []).append(held.spec.label)
    for holder, labels in holders.items():
        shown = ", ".join(labels[:6]) + (
            f" and {len(labels) - 6} more" if len(labels) > 6 else ""
        )
        console.print(
            escape(
                f"  {holder} holds {shown}; `ablagen status {summary.study_dir}` shows their outcome"
            ),
            highlight=False,
            soft_wrap=True,
        )
    if quiet:
        return
    for rec in summary.failures:
        style = STYLE.get(rec.status, "red")
        console.print(
            f"  [{style}]{rec.status:<8}[/] {escape(f'{rec.variant_id} seed={rec.seed}: {reason(rec)} (log: {rec.log_path})')}",
            highlight=False,
            soft_wrap=True,
        )
    if summary.skipped_failed:
        console.print("rerun the failed runs with --retry-failed", highlight=False)


#: more seeds than this: one column of counts per variant instead of one per seed
#: (100 seed columns are unreadable, and took rich seconds to lay out)
MAX_SEED_COLUMNS = 8


def _seed_counts(cells: tuple[Cell, ...]) -> str:
    """A variant's cells as counts, in the order of CELL_STATUSES: '98 ok, 2 failed'."""
    counts = {s: 0 for s in CELL_STATUSES}
    for cell in cells:
        counts[cell.status] += 1
    parts = [f"[{STYLE.get(s, '')}]{n} {s}[/]" for s, n in counts.items() if n]
    resumable = sum(1 for c in cells if c.resume is not None)
    if resumable:
        parts.append(f"{resumable} resumable")
    return ", ".join(parts)


def status_table(status: StudyStatus) -> Table:
    table = Table(
        title=f"{escape(status.study_dir)}: {len(status.variants)} variants x {len(status.seeds)} seeds"
    )
    table.add_column("variant", no_wrap=True)
    table.add_column("status", no_wrap=True)
    if len(status.seeds) > MAX_SEED_COLUMNS:
        table.add_column("seeds", no_wrap=True)
        for variant in status.variants:
            table.add_row(
                escape(variant.id),
                f"[{STYLE.get(variant.status, '')}]{variant.status}[/]",
                _seed_counts(variant.cells),
            )
        return table
    for seed in status.seeds:
        table.add_column(f"seed {seed}", no_wrap=True)
    for variant in status.variants:
        cells = []
        for cell in variant.cells:
            text = f"[{STYLE.get(cell.status, '')}]{cell.status}[/]"
            if cell.status == "ok" and cell.record is not None:
                text += f" {headline(cell.record.result)}".rstrip()
            elif cell.status == "oom" and cell.record is not None:
                text += f" at {gigabytes(cell.record.peak_memory_bytes)}"
            if cell.resume is not None:
                epoch = cell.resume.epoch
                text += f", resumable at epoch {epoch}" if epoch else ", resumable"
            cells.append(text)
        table.add_row(
            escape(variant.id),
            f"[{STYLE.get(variant.status, '')}]{variant.status}[/]",
            *cells,
        )
    return table


def print_status(status: StudyStatus, console: Console) -> None:
    console.print(status_table(status))
    counts = ", ".join(f"{n} {s}" for s, n in status.counts.items() if n)
    console.print(f"{len(status.cells)} runs: {counts or 'none'}", highlight=False)
    if status.stale_runs:
        console.print(
            f"{status.stale_runs} stored runs belong to older scripts (ignored)",
            highlight=False,
        )
    if status.checkpoints or status.stale_checkpoints:
        console.print(_checkpoint_line(status), highlight=False)
    if status.left:
        console.print(
            f"left to run: {len(status.left)}; run them with `ablagen run {escape(status.study_dir)}`",
            highlight=False,
        )
    if status.not_ok:
        console.print(
            f"not ok: {len(status.not_ok)}; rerun them with `ablagen run {escape(status.study_dir)} --retry-failed`",
            highlight=False,
        )


def _checkpoint_line(status: StudyStatus) -> str:
    """Checkpoints' disk use: resumable runs, kept ones, older scripts' ones."""
    total = sum(c.bytes for c in (*status.checkpoints, *status.stale_checkpoints))
    n = len(status.resumable)
    parts = [f"{n} resumable run{'s' * (n != 1)}"]
    kept = len(status.checkpoints) - len(status.resumable)
    if kept > 0:
        parts.append(f"{kept} kept")
    if status.stale_checkpoints:
        parts.append(f"{len(status.stale_checkpoints)} of older scripts")
    files = len(status.checkpoints) + len(status.stale_checkpoints)
    size = f"{total / 1e3:.0f} kB" if total < 1e6 else gigabytes(total)
    return (
        f"checkpoints: {files} in {escape(status.study_dir)}/runs, {size}"
        f" ({', '.join(parts)})"
    )
