"""TensorBoard: one run directory per variant and seed, so ``tensorboard --logdir DIR``
shows every variant's curves side by side.

Layout::

    DIR/baseline/seed0/events.out.tfevents.*      scalars, hparams, .ablagen.json
    DIR/conv1_zero/seed0/...
    DIR/_study/events.out.tfevents.*              the importance table (Text tab)

Each run directory holds ``.ablagen.json`` (the run key and digest). A re-export
leaves a directory with the same digest alone and rewrites one whose content
changed: the new events are written into a temporary sibling that then replaces the
old directory, so TensorBoard never sees a run twice or half of one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ablagen.track.deps import require_tensorboard, writable_dir
from ablagen.track.runs import TrackedRun

MARKER = ".ablagen.json"
STUDY_RUN = "_study"


class TensorBoardSink:
    """Writes :class:`TrackedRun` objects as event files under one log directory."""

    def __init__(self, root: Path) -> None:
        self.writer_cls = require_tensorboard()
        self.root = writable_dir(root, "TensorBoard directory")
        self.parents: dict[str, TrackedRun] = {}

    def sync(self, runs: Sequence[TrackedRun]) -> Iterator[tuple[TrackedRun, str]]:
        """Write the children's directories; parents go into one ``_study`` run,
        written once per call."""
        parents = [run for run in runs if run.parent_key is None]
        if parents:
            self.parents.update((run.key, run) for run in parents)
            action = self._write_study()
            for run in parents:
                yield run, action
        for run in runs:
            if run.parent_key is not None:
                yield run, self._write_run(run)

    def _replace(self, target: Path, key: str, digest: str, fill) -> str:
        marker = target / MARKER
        if marker.is_file():
            try:
                old = json.loads(marker.read_text(encoding="utf-8"))
            except ValueError:
                old = {}
            if old.get("key") == key and old.get("digest") == digest:
                return "unchanged"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            writer = self.writer_cls(log_dir=str(tmp))
            try:
                fill(writer)
            finally:
                writer.close()
            (tmp / MARKER).write_text(
                json.dumps({"key": key, "digest": digest}, sort_keys=True) + "\n",
                encoding="utf-8",
            )
            existed = target.exists()
            if existed:
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return "replaced" if existed else "created"

    def _write_run(self, run: TrackedRun) -> str:
        def fill(writer) -> None:
            wall = run.end_ms / 1000.0 if run.end_ms else None
            finals = {p.key: p.value for p in run.metrics if p.key.startswith("final/")}
            if run.hparams and finals:
                from torch.utils.tensorboard.summary import hparams

                for summary in hparams(run.hparams, finals):
                    writer.file_writer.add_summary(summary, walltime=wall)
            for p in run.metrics:
                writer.add_scalar(p.key, p.value, p.step, walltime=wall)
            lines = [f"**{run.name}**: {run.status}"]
            if run.tags.get("error"):
                lines.append(f"error: `{run.tags['error']}`")
            writer.add_text("run", "\n\n".join(lines), 0, walltime=wall)

        return self._replace(self.root / run.slug, run.key, run.digest, fill)

    def _write_study(self) -> str:
        parents = sorted(self.parents.values(), key=lambda r: r.key)
        digest = "".join(p.digest for p in parents)

        def fill(writer) -> None:
            writer.add_text("importance", importance_markdown(parents), 0)

        return self._replace(self.root / STUDY_RUN, "study", digest, fill)


def importance_markdown(parents: Sequence[TrackedRun]) -> str:
    """The variants' importance as a markdown table, most important first."""

    def value(run: TrackedRun, key: str) -> float | None:
        return next((p.value for p in run.metrics if p.key == key), None)

    def order(run: TrackedRun) -> tuple[float, str]:
        rank = value(run, "importance/rank")
        return (rank if rank is not None else float("inf"), run.name)

    rows = [
        "| rank | variant | status | importance | CI | n |",
        "|---|---|---|---|---|---|",
    ]
    for run in sorted(parents, key=order):
        mean, low, high = (
            value(run, f"importance/{k}") for k in ("mean", "ci_low", "ci_high")
        )
        rank, n = value(run, "importance/rank"), value(run, "importance/n")
        ci = (
            f"[{low:+.4f}, {high:+.4f}]" if low is not None and high is not None else ""
        )
        rows.append(
            f"| {'' if rank is None else int(rank)} | {run.name} | {run.status} | "
            f"{'' if mean is None else f'{mean:+.4f}'} | {ci} | {'' if n is None else int(n)} |"
        )
    return "\n".join(rows)
