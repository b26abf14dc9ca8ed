"""``ablagen status``: where a study stands, per variant and seed, and what is left.

:func:`study_status` reads the store (read-only) against the current manifest: only
runs of the scripts the manifest lists count (older scripts' rows are "stale").
A cell (variant, seed) shows its most recent outcome, whatever its run arguments,
or ``running`` (a live orchestrator holds it), or ``pending`` when it never ran
(or its orchestrator died mid-run: the next ``ablagen run`` redoes it). :meth:`StudyStatus.to_json` is the
stable ``--json`` form (``schema`` 1; keys are sorted when printed)::

    {"schema": 1, "study": "generated/digits", "seeds": [0, 1],
     "total": 4,                       # cells: variants x seeds
     "counts": {"ok": 2, "failed": 0, "diverged": 0, "timeout": 0, "crashed": 1,
                "running": 0, "pending": 1},
     "left": [{"variant": "conv1:zero", "seed": 1}],          # pending cells
     "not_ok": [{"variant": "fc1:zero", "seed": 0, "status": "crashed",
                 "log": "logs/fc1__zero__seed0__1a2b3c4d.log"}],
     "stale_runs": 0,                  # rows of scripts no longer in the manifest
     "variants": [{"id": "baseline", "script": "baseline.py", "status": "ok",
                   "seeds": {"0": {"status": "ok", "args": {"device": "cpu"},
                                   "wall_time_s": 1.2, "exit_code": 0,
                                   "log": "logs/...", "final": {"val_acc": 0.9}}}}]}

A variant's ``status`` is ``ok`` when every seed is ok, ``pending`` when none ran,
else the first present of running, crashed, timeout, diverged, failed, pending.

Mid-run checkpoints (see :mod:`.checkpoints`): a cell that is not ok and has a
checkpoint of its current script is resumable; its JSON gains ``"resumable_epoch"``
(the last saved epoch, ``null`` when the script wrote no note) and
``"checkpoint"`` (the file). The top level gains their disk use::

     "checkpoints": {"files": 3, "bytes": 120000, "stale_files": 1, "stale_bytes": 40000}

``stale``: checkpoints of scripts no longer in the manifest (removed when the new
script's run of that seed finishes). A study run on Ray with ``--storage`` records
the URI in the study (``storage.json``): the checkpoints there count too (a node
that cannot see the study saves only there), the furthest copy of each file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablagen.orchestrate import checkpoints
from ablagen.orchestrate.checkpoints import Checkpoint
from ablagen.orchestrate.options import RunOptions, args_json, check_seeds
from ablagen.orchestrate.owner import Owner
from ablagen.orchestrate.run_record import STATUSES, RunRecord
from ablagen.orchestrate.runner import resolve_seeds
from ablagen.orchestrate.store import ResultStore
from ablagen.core.studydir import load_manifest

STATUS_SCHEMA = 1
CELL_STATUSES = (*STATUSES, "running", "pending")
_SEVERITY = ("running", "crashed", "oom", "timeout", "diverged", "failed", "pending")


@dataclass(frozen=True)
class Cell:
    variant_id: str
    seed: int
    status: str  # one of CELL_STATUSES
    record: RunRecord | None = None
    #: the furthest checkpoint of this cell's current script, when it is not ok
    resume: Checkpoint | None = None


@dataclass(frozen=True)
class VariantStatus:
    id: str
    script: str
    status: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class StudyStatus:
    study_dir: str
    seeds: tuple[int, ...]
    variants: tuple[VariantStatus, ...]
    stale_runs: int = 0
    checkpoints: tuple[Checkpoint, ...] = ()
    stale_checkpoints: tuple[Checkpoint, ...] = ()

    @property
    def resumable(self) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.resume is not None)

    @property
    def cells(self) -> tuple[Cell, ...]:
        return tuple(c for v in self.variants for c in v.cells)

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(CELL_STATUSES, 0)
        for cell in self.cells:
            counts[cell.status] += 1
        return counts

    @property
    def left(self) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.status == "pending")

    @property
    def not_ok(self) -> tuple[Cell, ...]:
        return tuple(
            c for c in self.cells if c.status not in ("ok", "pending", "running")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": STATUS_SCHEMA,
            "study": self.study_dir,
            "seeds": list(self.seeds),
            "total": len(self.cells),
            "counts": self.counts,
            "left": [{"variant": c.variant_id, "seed": c.seed} for c in self.left],
            "not_ok": [
                {
                    "variant": c.variant_id,
                    "seed": c.seed,
                    "status": c.status,
                    "log": c.record.log_path if c.record else None,
                }
                for c in self.not_ok
            ],
            "stale_runs": self.stale_runs,
            "checkpoints": {
                "files": len(self.checkpoints),
                "bytes": sum(c.bytes for c in self.checkpoints),
                "stale_files": len(self.stale_checkpoints),
                "stale_bytes": sum(c.bytes for c in self.stale_checkpoints),
            },
            "variants": [
                {
                    "id": v.id,
                    "script": v.script,
                    "status": v.status,
                    "seeds": {str(c.seed): _cell_json(c) for c in v.cells},
                }
                for v in self.variants
            ],
        }


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cell_json(cell: Cell) -> dict[str, Any]:
    resume = (
        {}
        if cell.resume is None
        else {"resumable_epoch": cell.resume.epoch, "checkpoint": cell.resume.path}
    )
    rec = cell.record
    if rec is None:
        return {"status": cell.status, **resume}
    final = (rec.result or {}).get("final")
    return {
        **resume,
        "status": cell.status,
        "args": rec.args,
        "wall_time_s": round(rec.wall_time_s, 3),
        "exit_code": rec.exit_code,
        "log": rec.log_path,
        "peak_memory_bytes": rec.peak_memory_bytes,
        "final": (
            {k: _finite(v) for k, v in final.items()}
            if isinstance(final, dict)
            else None
        ),
    }


def _variant_status(cells: list[Cell]) -> str:
    present = {c.status for c in cells}
    if present == {"ok"}:
        return "ok"
    if present == {"pending"}:
        return "pending"
    return next(s for s in _SEVERITY if s in present)


def _stored_checkpoints(study: Path) -> list[Checkpoint]:
    """The checkpoints in the ``--storage`` the study's Ray runs used (recorded in
    the study by ``ablagen run --storage``): a run on a node that cannot see the
    study saves there, not in ``runs/``. Unreachable storage: a warning, none."""
    import sys

    from ablagen.orchestrate.ray_backend import recorded_storage
    from ablagen.orchestrate.ray_warm import Storage

    uri = recorded_storage(study)
    if uri is None:
        return []
    try:
        store = Storage(uri)
        sizes = store.glob(f"{checkpoints.RUNS_DIR}/*/*.pt")
        notes = store.glob(f"{checkpoints.RUNS_DIR}/*/*.pt{checkpoints.NOTE_SUFFIX}")
        found = []
        for path, size in sizes.items():
            note = path + checkpoints.NOTE_SUFFIX
            text = store.read_text(note) if note in notes else None
            ckpt = checkpoints.named(path, size + notes.get(note, 0), text)
            if ckpt is not None:
                found.append(ckpt)
    except (ImportError, ValueError, OSError) as exc:
        print(
            f"warning: cannot read the checkpoints in --storage {uri}"
            f" ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
            file=sys.stderr,
        )
        return []
    return found


def _merged(*found: list[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per path (the study's and storage's copy): the furthest."""
    best: dict[str, Checkpoint] = {}
    for ckpt in (c for group in found for c in group):
        held = best.get(ckpt.path)
        if held is None or (ckpt.epoch or 0) > (held.epoch or 0):
            best[ckpt.path] = ckpt
    return sorted(best.values(), key=lambda c: c.path)


def study_status(
    study_dir: str | Path,
    seeds: tuple[int, ...] | None = None,
    args: dict[str, Any] | None = None,
) -> StudyStatus:
    """The study's state. ``seeds``: the given ones, else the recorded seeds plus the
    default seeds of ``ablagen run``. ``args``: count only runs with these arguments."""
    study = Path(study_dir)
    manifest = load_manifest(study)
    current = {v.id: v.sha256 for v in manifest.variants}
    with ResultStore(study, readonly=True) as store:
        gone = Owner.current()  # a fresh session: rows of dead orchestrators are stale
        stale_keys = {
            s.key for s, held in store.running_owners() if not gone.holds_alive(*held)
        }
        records = [
            r
            for r in store.records()
            if r.status != "running"
            or (r.variant_id, r.seed, args_json(r.args), r.script_sha256)
            not in stale_keys
        ]
    want = args_json(args) if args is not None else None
    mine = [
        r
        for r in records
        if current.get(r.variant_id) == r.script_sha256
        and (want is None or args_json(r.args) == want)
    ]
    stale = sum(1 for r in records if current.get(r.variant_id) != r.script_sha256)
    if seeds is None:
        default = resolve_seeds(manifest, RunOptions())
        seeds = tuple(sorted(set(default) | {r.seed for r in mine}))
    else:
        check_seeds(seeds)
    latest: dict[tuple[str, int], RunRecord] = {}
    for rec in mine:  # oldest first; running rows win, else the newest outcome
        key = (rec.variant_id, rec.seed)
        held = latest.get(key)
        if (
            held is None
            or held.status != "running"
            and (
                rec.status == "running"
                or (rec.finished_at or 0.0) >= (held.finished_at or 0.0)
            )
        ):
            latest[key] = rec
    saved = _merged(checkpoints.scan(study), _stored_checkpoints(study))
    scripts = {(Path(v.script).stem, v.sha256[:8]) for v in manifest.variants}
    own = [c for c in saved if (c.stem, c.sha8) in scripts]
    furthest: dict[tuple[str, int], Checkpoint] = {}
    for ckpt in own:  # one per (script, seed): the furthest, whatever its arguments
        held = furthest.get((ckpt.stem, ckpt.seed))
        if held is None or (ckpt.epoch or 0) > (held.epoch or 0):
            furthest[(ckpt.stem, ckpt.seed)] = ckpt
    variants = []
    for entry in manifest.variants:
        cells = []
        for seed in seeds:
            found = latest.get((entry.id, seed))
            status = found.status if found else "pending"
            resume = furthest.get((Path(entry.script).stem, seed))
            cells.append(
                Cell(entry.id, seed, status, found, None if status == "ok" else resume)
            )
        variants.append(
            VariantStatus(entry.id, entry.script, _variant_status(cells), tuple(cells))
        )
    stale_ckpts = tuple(c for c in saved if (c.stem, c.sha8) not in scripts)
    return StudyStatus(
        str(study), tuple(seeds), tuple(variants), stale, tuple(own), stale_ckpts
    )
