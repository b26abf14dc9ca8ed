"""Turn what a finished process left behind into a :class:`RunRecord` with a status.

Every backend reports a :class:`RawOutcome`; :func:`classify` is the one place that
decides the status, so a run means the same thing on every backend:

============  ===============================================================
timeout       the run passed ``--timeout`` and was killed
oom           the run passed ``--max-memory`` and was killed (local backend), or
              Ray's memory monitor killed its task
crashed       killed by a signal (segfault, ``os.abort``; SIGKILL from outside,
              most often the kernel's OOM killer), or its worker process died
diverged      exit code 3, or the result says ``"status": "diverged"``, or a
              final metric or loss in the result is NaN/inf
failed        any other non-zero exit, a result with ``"status": "failed"`` (or
              ``"refused"``: a checkpoint that is not the run's; the reason says
              ``--retry-failed --restart``),
              or exit 0 without a readable JSON object at ``--out``
ok            exit 0 with a result whose status is ``"ok"``
============  ===============================================================
"""

from __future__ import annotations

import json
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablagen.orchestrate.options import RunSpec
from ablagen.orchestrate.run_record import RunRecord
from ablagen.core.studydir import EXIT_DIVERGED

TAIL_LINES = 30
TAIL_CHARS = 4000


@dataclass(frozen=True)
class RawOutcome:
    """A finished process: ``exit_code`` < 0 means killed by that signal."""

    spec: RunSpec
    exit_code: int | None
    wall_time_s: float
    result_text: str | None = None  # what the script wrote to --out, if anything
    timed_out: bool = False
    error: str | None = None  # a backend-level failure (worker died, task lost)
    backend: str = "local"
    oom: bool = False  # killed for passing the memory limit
    peak_memory_bytes: int | None = None  # highest memory seen, where measured
    memory_limit_bytes: int | None = None  # the limit it ran under, if any


def from_reply(
    spec: RunSpec,
    reply: dict[str, Any],
    result_text: str | None,
    backend: str,
    memory_limit_bytes: int | None,
) -> RawOutcome:
    """The outcome of a worker's reply (see :mod:`.worker`; the local pool and the
    Ray backend send the same request and get the same reply) and the result text
    the run left. A run killed after its result was complete (the script writes
    ``--out`` atomically at its very end) is the result's, not the kill's."""
    code, error = reply.get("exit_code"), reply.get("error")
    killed = error is not None or (code is not None and code < 0)
    if killed and not reply.get("timed_out") and not reply.get("oom"):
        done = finished_result(result_text)  # it died after its last write
        if done is not None:
            code, error = done[1], None
    return RawOutcome(
        spec=spec,
        exit_code=code,
        wall_time_s=float(reply.get("wall_time_s") or 0.0),
        result_text=result_text,
        timed_out=bool(reply.get("timed_out")),
        error=error,
        backend=backend,
        oom=bool(reply.get("oom")),
        peak_memory_bytes=reply.get("peak_memory_bytes"),
        memory_limit_bytes=memory_limit_bytes,
    )


def tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines of ``text``, at most ``chars`` characters."""
    kept = "\n".join(text.rstrip().splitlines()[-lines:])
    return kept[-chars:]


def read_tail(path: Path, chars: int = 64 * 1024) -> str:
    """The end of a log file ("" if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return tail(fh.read().decode("utf-8", errors="replace"))
    except OSError:
        return ""


#: the exit code a generated script gives each result status (its EXIT_CODES)
EXIT_BY_STATUS = {"ok": 0, "failed": 1, "refused": 2, "diverged": 3}


def finished_result(text: str | None) -> tuple[dict[str, Any], int] | None:
    """A complete result (the script writes ``--out`` atomically at its very end) and
    the exit code the script gives it; None if ``text`` is not one."""
    result, _ = parse_result(text)
    if result is None:
        return None
    return result, EXIT_BY_STATUS.get(str(result.get("status", "ok")), 1)


def parse_result(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    if text is None or not text.strip():
        return None, "the script wrote no result JSON to --out"
    try:
        result = json.loads(text)
    except ValueError as exc:
        return None, f"the result at --out is not JSON ({exc})"
    if not isinstance(result, dict):
        return (
            None,
            f"the result at --out is a JSON {type(result).__name__}, not an object",
        )
    return result, None


def _non_finite(result: dict[str, Any]) -> str | None:
    """The name of a final metric or loss that is NaN/inf, if any."""
    final = result.get("final")
    values = dict(final) if isinstance(final, dict) else {}
    for entry in result.get("history") or []:
        if isinstance(entry, dict):
            values.update({f"history.{k}": v for k, v in entry.items() if "loss" in k})
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            return name
    return None


def _signal_name(code: int) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"
    if -code == signal.SIGKILL:
        return f"{name} (out of memory?)"  # most often the kernel's OOM killer
    return name


def gigabytes(size: int | None) -> str:
    """A memory size for people: MB below 1 GB, else GB (10^6 and 10^9 bytes)."""
    if size is None:
        return "?"
    return f"{size / 1e6:.0f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


def classify(raw: RawOutcome, log_tail: str) -> RunRecord:
    """Decide the run's status; the error tail is the log's tail plus the reason."""
    result, result_problem = parse_result(raw.result_text)
    code = raw.exit_code
    reason: str | None = None
    if raw.oom:
        status = "oom"
        reason = (
            f"out of memory: killed at {gigabytes(raw.peak_memory_bytes)}, over the"
            f" {gigabytes(raw.memory_limit_bytes)} limit (--max-memory)"
        )
    elif raw.timed_out:
        status, reason = "timeout", f"killed after the {raw.wall_time_s:.1f} s timeout"
    elif raw.error is not None:
        status, reason = "crashed", raw.error
    elif code is None or code < 0:
        status = "crashed"
        reason = "killed by " + (
            _signal_name(code) if code is not None else "an unknown cause"
        )
    elif code == EXIT_DIVERGED or (
        result is not None and result.get("status") == "diverged"
    ):
        status, reason = (
            "diverged",
            (result or {}).get("error") or f"exit code {code}: diverged",
        )
    elif result is not None and (bad := _non_finite(result)) is not None:
        status, reason = "diverged", f"{bad} is not finite"
    elif result is not None and result.get("status") == "refused":
        said = str(result.get("error") or "its checkpoint is not this run's")
        status = "failed"  # a foreign or other-shape checkpoint at --resume-from
        reason = (
            f"{said.split('; ')[0]}; rerun with `ablagen run --retry-failed --restart`"
        )
    elif code != 0:
        said = (result or {}).get("error") or (
            log_tail.strip().splitlines()[-1:] or [""]
        )[0].strip()[:200]
        status, reason = "failed", f"exit code {code}" + (f": {said}" if said else "")
    elif result is None:
        status, reason = "failed", result_problem
    elif result.get("status", "ok") != "ok":
        status = "failed"
        reason = result.get("error") or f"result status {result.get('status')!r}"
    else:
        status = "ok"
    error_tail = None
    if status != "ok":
        error_tail = "\n".join(
            x for x in (log_tail.rstrip(), f"[ablagen] {reason}") if x
        )
    return RunRecord(
        variant_id=raw.spec.variant_id,
        seed=raw.spec.seed,
        args=dict(raw.spec.args),
        script_sha256=raw.spec.script_sha256,
        status=status,
        result=result,
        wall_time_s=raw.wall_time_s,
        log_path=raw.spec.log_path,
        exit_code=code,
        error_tail=error_tail,
        extra={"backend": raw.backend},
        script=raw.spec.script,
        peak_memory_bytes=raw.peak_memory_bytes,
    )
