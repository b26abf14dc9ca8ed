"""The result store: ``results.sqlite`` (WAL) inside the study directory.

One row per run key (variant id, seed, run arguments, script sha256)::

    CREATE TABLE runs (
      id            INTEGER PRIMARY KEY,
      variant_id    TEXT NOT NULL,
      seed          INTEGER NOT NULL,
      args_json     TEXT NOT NULL,     -- canonical JSON of the arguments beyond --seed/--out
      script_sha256 TEXT NOT NULL,     -- hash of the script file that ran
      script        TEXT NOT NULL,     -- its file name in the study directory
      status        TEXT NOT NULL,     -- running | ok | failed | diverged | timeout | crashed | oom
      result_json   TEXT,              -- the script's result JSON, NULL if it wrote none
      wall_time_s   REAL NOT NULL DEFAULT 0,
      log_path      TEXT,              -- relative to the study directory
      exit_code     INTEGER,           -- negative: killed by that signal
      error_tail    TEXT,              -- last lines of the log for any status but ok
      peak_memory_bytes INTEGER,       -- the run's peak memory, where the backend measured it
      attempts      INTEGER NOT NULL DEFAULT 0,
      backend       TEXT,
      started_at    REAL, finished_at REAL,                    -- unix times
      owner_host TEXT, owner_pid INTEGER, owner_started TEXT,  -- who holds a running row
      owner_token TEXT, prev_status TEXT,                      -- prev_status: before a retry
      UNIQUE (variant_id, seed, args_json, script_sha256))

Every write is one ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL``, so a
reader (another process included) sees a run's old state or its whole new state,
and a committed outcome survives ``kill -9``. A row is ``running`` only while an
orchestrator holds it; rows of an orchestrator that is gone (same host, pid dead or
reused, or an older session of this very process) are reset by
:meth:`ResultStore.reset_stale`, which :func:`~ablagen.orchestrate.run_study` calls
on start: a first attempt's row is deleted, a retried one gets its old status back.

A write that fails (full disk, read-only filesystem, permissions) raises
:class:`~ablagen.core.atomic.WriteError` naming the database and the fix, and the
transaction is rolled back. Reading never writes: on a full disk, where SQLite cannot
create the WAL index of a cleanly closed store, a reader opens it immutable.
Schema 2 added the ``oom`` status and ``peak_memory_bytes``; a schema-1 store is
migrated when an orchestrator opens it for writing, and read as it is otherwise.

Reading API (what ranking and reports use)::

    with ResultStore(study_dir, readonly=True) as store:
        store.records(status="ok")            # every stored row, as RunRecord
        store.latest_ok()                     # current manifest: one per (variant, seed)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablagen.core.errors import StudyError
from ablagen.core.atomic import WriteError, io_fix
from ablagen.orchestrate.options import RunSpec, args_json
from ablagen.orchestrate.owner import Owner
from ablagen.orchestrate.run_record import STATUSES, RunRecord
from ablagen.core.studydir import RESULTS_DB, Manifest, load_manifest

SCHEMA_VERSION = 2
WAL_LIMIT_BYTES = 1 << 20
LOW_SPACE_BYTES = 1 << 20  # less free than this and a failed write means "disk full"
READABLE_SCHEMAS = ("1", "2")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY,
  variant_id TEXT NOT NULL,
  seed INTEGER NOT NULL,
  args_json TEXT NOT NULL,
  script_sha256 TEXT NOT NULL,
  script TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN
    ('running', 'ok', 'failed', 'diverged', 'timeout', 'crashed', 'oom')),
  result_json TEXT,
  wall_time_s REAL NOT NULL DEFAULT 0,
  log_path TEXT,
  exit_code INTEGER,
  error_tail TEXT,
  peak_memory_bytes INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  backend TEXT,
  started_at REAL,
  finished_at REAL,
  owner_host TEXT,
  owner_pid INTEGER,
  owner_started TEXT,
  owner_token TEXT,
  prev_status TEXT,
  UNIQUE (variant_id, seed, args_json, script_sha256)
);
CREATE INDEX IF NOT EXISTS runs_variant_seed ON runs (variant_id, seed);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
"""

ANY = object()  # claim(seen=ANY): take the run whatever outcome it has

_COLUMNS = (
    "variant_id, seed, args_json, script_sha256, script, status, result_json, wall_time_s,"
    " log_path, exit_code, error_tail, attempts, backend, finished_at, peak_memory_bytes"
)
_COLUMNS_V1 = _COLUMNS.replace("peak_memory_bytes", "NULL")
#: columns a schema-1 ``runs`` table has (copied over by the migration)
_V1_COPY = (
    "id, variant_id, seed, args_json, script_sha256, script, status, result_json,"
    " wall_time_s, log_path, exit_code, error_tail, attempts, backend, started_at,"
    " finished_at, owner_host, owner_pid, owner_started, owner_token, prev_status"
)
_MIGRATE_1_TO_2 = f"""
ALTER TABLE runs RENAME TO runs_v1;
DROP INDEX IF EXISTS runs_variant_seed;
DROP INDEX IF EXISTS runs_status;
{_SCHEMA}
INSERT INTO runs ({_V1_COPY}) SELECT {_V1_COPY} FROM runs_v1;
DROP TABLE runs_v1;
UPDATE meta SET value = '2' WHERE key = 'schema';
"""


def _sqlite_errno(exc: sqlite3.Error, path: Path) -> int | None:
    """The OS error behind a failed SQLite write, as far as it can be told."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL") or "disk is full" in str(exc):
        return errno.ENOSPC
    if name.startswith("SQLITE_READONLY"):
        return errno.EROFS if _fs_readonly(path) else errno.EACCES
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "disk I/O" in str(exc):
        if free_bytes(path) < LOW_SPACE_BYTES:
            return errno.ENOSPC  # e.g. SQLITE_IOERR_SHMSIZE: no room for the WAL index
        if not os.access(path.parent, os.W_OK):
            return errno.EACCES
        return errno.EIO
    return None


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path``'s folder (huge where unknown)."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def _fs_readonly(path: Path) -> bool:
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def store_write_error(exc: sqlite3.Error, path: Path) -> WriteError | None:
    """A failed write to the store as a one-line WriteError; None if not an I/O fault."""
    code = _sqlite_errno(exc, path)
    if code is None:
        return None
    return WriteError(
        f"cannot write the result store {path} ({exc})", io_fix(code, path), code
    )


class ResultStore:
    """The study's SQLite result store; use as a context manager.

    ``readonly=True`` never creates or changes anything: a study that was never run
    reads as empty. A missing study directory or a corrupt database is a StudyError.
    """

    def __init__(
        self, study_dir: str | os.PathLike[str], *, readonly: bool = False
    ) -> None:
        self.study_dir = Path(study_dir)
        self.path = self.study_dir / RESULTS_DB
        self.readonly = readonly
        if not self.study_dir.is_dir():
            raise StudyError(
                f"study directory {str(self.study_dir)!r} does not exist",
                "create it with `ablagen generate MODEL --out DIR`",
            )
        self._columns = _COLUMNS
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc

    # -- connection -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly and not self.path.exists():
            conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.executescript(_SCHEMA)
            return conn
        if self.readonly:
            conn = self._connect_readonly()
        else:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # a small WAL: checkpoint every 128 pages, give back room past 1 MiB
            conn.execute("PRAGMA wal_autocheckpoint=128")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            with self._transaction(conn, self.path):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                )
                schema = conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema'"
                ).fetchone()
                if schema is not None and schema[0] == "1":
                    for statement in _MIGRATE_1_TO_2.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                elif schema is None or schema[0] == str(SCHEMA_VERSION):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                        (str(SCHEMA_VERSION),),
                    )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and (
            row[0] not in READABLE_SCHEMAS
            or not self.readonly
            and row[0] != str(SCHEMA_VERSION)
        ):
            conn.close()
            raise StudyError(
                f"{self.path} has result schema {row[0]}, this ablagen reads {SCHEMA_VERSION}",
                "move the file away to start a fresh store, or use the ablagen that wrote it",
            )
        if row is not None and row[0] == "1":
            self._columns = _COLUMNS_V1
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open for reading only. A cleanly closed WAL store has no ``-wal``/``-shm``
        files and SQLite must create the index to read it; where it cannot (a full or
        read-only disk), every committed row is in the main file: read it immutable."""
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(
                f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None
            )
            conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            return conn
        except sqlite3.OperationalError:
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise  # rows may live in the WAL only: an immutable read would miss them
        return sqlite3.connect(
            f"{uri}?immutable=1", uri=True, timeout=30, isolation_level=None
        )

    def _corrupt(self, exc: Exception) -> StudyError | WriteError:
        if isinstance(exc, sqlite3.OperationalError):  # cannot open, read-only, locked
            if not self.readonly and (fault := store_write_error(exc, self.path)):
                return fault
            return StudyError(
                f"cannot use the result store {self.path} ({exc})",
                "check that the study directory is writable and on a local disk",
            )
        return StudyError(
            f"{self.path} is not a readable result store ({exc})",
            "move it away (the runs are then redone) or restore it from a copy",
        )

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection, path: Path) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction; an I/O fault becomes a WriteError."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            fault = store_write_error(exc, path)
            if fault is None:
                raise
            raise fault from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------

    def records(
        self,
        status: str | Iterable[str] | None = None,
        variant_ids: Iterable[str] | None = None,
        seeds: Iterable[int] | None = None,
    ) -> list[RunRecord]:
        """Every stored row (``running`` ones included) matching the filters, oldest first."""
        where: list[str] = []
        params: list[Any] = []
        for column, values in (
            ("status", status),
            ("variant_id", variant_ids),
            ("seed", seeds),
        ):
            if values is None:
                continue
            wanted = [values] if isinstance(values, str) else list(values)
            where.append(f"{column} IN ({', '.join('?' * len(wanted))})")
            params += wanted
        sql = f"SELECT {self._columns} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        try:
            rows = self._conn.execute(sql + " ORDER BY id", params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(exc) from exc
        return [_record(row) for row in rows]

    def latest_ok(
        self,
        manifest: Manifest | None = None,
        variant_ids: Iterable[str] | None = None,
        seeds: Iterable[int] | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> list[RunRecord]:
        """For the current manifest, the most recent ok run per (variant_id, seed).

        Only runs of the script the manifest lists (same sha256) count, so results of
        an older, regenerated script never mix in. ``args`` (e.g. ``{"device": "cpu",
        "epochs": 5}``) keeps only runs with exactly those arguments; without it runs
        with different arguments (say ``--epochs``) compete, newest wins. Ordered by
        the manifest's variant order, then seed. ``manifest`` defaults to the study's.
        """
        manifest = manifest or load_manifest(self.study_dir)
        wanted = set(variant_ids) if variant_ids is not None else None
        current = {
            v.id: v.sha256
            for v in manifest.variants
            if wanted is None or v.id in wanted
        }
        order = {v.id: i for i, v in enumerate(manifest.variants)}
        want_args = args_json(dict(args)) if args is not None else None
        best: dict[tuple[str, int], RunRecord] = {}
        for rec in self.records(status="ok", variant_ids=list(current), seeds=seeds):
            if rec.script_sha256 != current[rec.variant_id]:
                continue
            if want_args is not None and args_json(rec.args) != want_args:
                continue
            key = (rec.variant_id, rec.seed)
            if key not in best or (rec.finished_at or 0.0) >= (
                best[key].finished_at or 0.0
            ):
                best[key] = rec
        return [best[k] for k in sorted(best, key=lambda k: (order[k[0]], k[1]))]

    def get(self, spec: RunSpec) -> RunRecord | None:
        """The stored row of one planned run, if any."""
        row = self._conn.execute(
            f"SELECT {self._columns} FROM runs WHERE variant_id = ? AND seed = ? AND args_json = ?"
            " AND script_sha256 = ?",
            spec.key,
        ).fetchone()
        return None if row is None else _record(row)

    def counts(self) -> dict[str, int]:
        """Rows by status, every status present (zeros included)."""
        counts = dict.fromkeys((*STATUSES, "running"), 0)
        for status, n in self._conn.execute(
            "SELECT status, COUNT(*) FROM runs GROUP BY status"
        ):
            counts[status] = n
        return counts

    def holder(self, spec: RunSpec) -> tuple[str, int] | None:
        """(host, pid) of the orchestrator holding a ``running`` run, else None."""
        row = self._conn.execute(
            "SELECT owner_host, owner_pid FROM runs WHERE variant_id = ? AND seed = ?"
            " AND args_json = ? AND script_sha256 = ? AND status = 'running'",
            spec.key,
        ).fetchone()
        return None if row is None or row[1] is None else (str(row[0]), int(row[1]))

    def held_alive(self, spec: RunSpec, owner: Owner) -> bool:
        """Whether a live orchestrator other than ``owner`` holds this run (read only)."""
        row = self._conn.execute(
            "SELECT owner_host, owner_pid, owner_started, owner_token FROM runs"
            " WHERE variant_id = ? AND seed = ? AND args_json = ? AND script_sha256 = ?"
            " AND status = 'running'",
            spec.key,
        ).fetchone()
        return row is not None and row[3] != owner.token and owner.holds_alive(*row)

    def running_owners(self) -> list[tuple[RunSpec, tuple[Any, ...]]]:
        rows = self._conn.execute(
            "SELECT variant_id, script, script_sha256, seed, args_json,"
            " owner_host, owner_pid, owner_started, owner_token FROM runs WHERE status = 'running'"
        ).fetchall()
        return [
            (RunSpec(r[0], r[1], r[2], r[3], json.loads(r[4])), tuple(r[5:]))
            for r in rows
        ]

    # -- writing (the orchestrator) ---------------------------------------------------

    def _writable(self) -> sqlite3.Connection:
        if self.readonly:
            raise StudyError(
                f"{self.path} was opened read-only",
                "open ResultStore(study_dir) to write",
            )
        return self._conn

    def reset_stale(self, owner: Owner) -> int:
        """Reset ``running`` rows whose orchestrator is gone; returns how many."""
        conn = self._writable()
        stale = [
            spec for spec, held in self.running_owners() if not owner.holds_alive(*held)
        ]
        with self._transaction(conn, self.path):
            for spec in stale:
                self._unclaim(conn, spec.key)
        return len(stale)

    def claim(
        self,
        spec: RunSpec,
        owner: Owner,
        backend: str,
        seen: float | None | object = ANY,
    ) -> bool:
        """Mark a run ``running`` for ``owner``; False if a live orchestrator holds it,
        or (``seen``: the ``finished_at`` the caller planned with, None for no outcome)
        if another orchestrator stored an outcome for it since."""
        conn = self._writable()
        with self._transaction(conn, self.path):
            row = conn.execute(
                "SELECT status, owner_host, owner_pid, owner_started, owner_token,"
                " finished_at FROM runs"
                " WHERE variant_id = ? AND seed = ? AND args_json = ? AND script_sha256 = ?",
                spec.key,
            ).fetchone()
            if row is not None and row[0] == "running" and owner.holds_alive(*row[1:5]):
                return False
            if row is not None and row[0] != "running" and seen is not ANY:
                if row[5] != seen:
                    return False  # finished elsewhere since it was planned
            owned = (
                owner.host,
                owner.pid,
                owner.started,
                owner.token,
                time.time(),
                backend,
            )
            if row is None:
                conn.execute(
                    "INSERT INTO runs (variant_id, seed, args_json, script_sha256, script, status,"
                    " log_path, attempts, owner_host, owner_pid, owner_started, owner_token,"
                    " started_at, backend) VALUES (?, ?, ?, ?, ?, 'running', ?, 1, ?, ?, ?, ?, ?, ?)",
                    (*spec.key, spec.script, spec.log_path, *owned),
                )
            else:
                prev = row[0] if row[0] != "running" else None
                conn.execute(
                    "UPDATE runs SET status = 'running', prev_status = COALESCE(?, prev_status),"
                    " attempts = attempts + 1, owner_host = ?, owner_pid = ?, owner_started = ?,"
                    " owner_token = ?, started_at = ?, backend = ? WHERE variant_id = ? AND seed = ?"
                    " AND args_json = ? AND script_sha256 = ?",
                    (prev, *owned, *spec.key),
                )
        return True

    def finish(self, record: RunRecord) -> RunRecord:
        """Store a run's outcome (one transaction); returns it with ``finished_at`` set."""
        conn = self._writable()
        now = time.time()
        result = (
            None if record.result is None else json.dumps(record.result, sort_keys=True)
        )
        key = (
            record.variant_id,
            record.seed,
            args_json(record.args),
            record.script_sha256,
        )
        with self._transaction(conn, self.path):
            conn.execute(
                "INSERT INTO runs (variant_id, seed, args_json, script_sha256, script, status,"
                " attempts, started_at) VALUES (?, ?, ?, ?, ?, 'running', 1, ?)"
                " ON CONFLICT DO NOTHING",
                (*key, record.script or "", now - record.wall_time_s),
            )
            conn.execute(
                "UPDATE runs SET status = ?, result_json = ?, wall_time_s = ?, log_path = ?,"
                " exit_code = ?, error_tail = ?, backend = COALESCE(?, backend), finished_at = ?,"
                " peak_memory_bytes = ?,"
                " owner_host = NULL, owner_pid = NULL, owner_started = NULL, owner_token = NULL,"
                " prev_status = NULL WHERE variant_id = ? AND seed = ? AND args_json = ?"
                " AND script_sha256 = ?",
                (
                    record.status,
                    result,
                    record.wall_time_s,
                    record.log_path,
                    record.exit_code,
                    record.error_tail,
                    record.extra.get("backend"),
                    now,
                    record.peak_memory_bytes,
                    *key,
                ),
            )
            row = conn.execute(
                f"SELECT {self._columns} FROM runs WHERE variant_id = ? AND seed = ? AND args_json = ?"
                " AND script_sha256 = ?",
                key,
            ).fetchone()
        return _record(row)

    def release(self, specs: Iterable[RunSpec], owner: Owner) -> None:
        """Give back runs ``owner`` claimed but never finished (an interrupted run)."""
        conn = self._writable()
        with self._transaction(conn, self.path):
            for spec in specs:
                held = conn.execute(
                    "SELECT 1 FROM runs WHERE variant_id = ? AND seed = ? AND args_json = ?"
                    " AND script_sha256 = ? AND status = 'running' AND owner_token = ?",
                    (*spec.key, owner.token),
                ).fetchone()
                if held:
                    self._unclaim(conn, spec.key)

    @staticmethod
    def _unclaim(conn: sqlite3.Connection, key: tuple[str, int, str, str]) -> None:
        where = "WHERE variant_id = ? AND seed = ? AND args_json = ? AND script_sha256 = ? AND status = 'running'"
        conn.execute(f"DELETE FROM runs {where} AND prev_status IS NULL", key)
        conn.execute(
            f"UPDATE runs SET status = prev_status, prev_status = NULL, owner_host = NULL,"
            f" owner_pid = NULL, owner_started = NULL, owner_token = NULL {where}",
            key,
        )


def _record(row: tuple[Any, ...]) -> RunRecord:
    (
        variant_id,
        seed,
        args,
        sha,
        script,
        status,
        result,
        wall,
        log,
        code,
        tail,
        attempts,
        backend,
        finished,
        peak,
    ) = row
    return RunRecord(
        variant_id=variant_id,
        seed=int(seed),
        args=json.loads(args),
        script_sha256=sha,
        status=status,
        result=None if result is None else json.loads(result),
        wall_time_s=float(wall or 0.0),
        log_path=log,
        exit_code=code,
        error_tail=tail,
        extra={"backend": backend} if backend else {},
        script=script or None,
        attempts=int(attempts or 0),
        finished_at=finished,
        peak_memory_bytes=None if peak is None else int(peak),
    )
