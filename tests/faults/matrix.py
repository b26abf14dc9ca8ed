"""The fault matrix: every fault the orchestrator must survive, and what it leaves.

One row per fault: how the suite injects it, what the store records, the exit code
of ``ablagen run``, and what a resume does. The tests in this folder check each row
(no traceback anywhere, nothing lost after a resume); :func:`markdown_table` prints
the README's summary table from the same rows, so the two cannot drift apart.

Run ``python -m tests.faults.matrix`` to print the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fault:
    name: str
    injected: str  # how the suite causes it
    recorded: str  # what the store holds afterwards
    exit_code: str  # of the `ablagen run` that met it
    resume: str  # what the next `ablagen run` does
    test: str  # where it is checked: tests/faults/<file>::<test>


MATRIX = (
    Fault(
        "script crashes (segfault, abort)",
        "the script calls `ctypes.string_at(0)` / `os.abort()`",
        "`crashed`, `killed by SIGSEGV` / `SIGABRT`",
        "1",
        "kept; rerun with `--retry-failed`",
        "test_run_faults.py::test_script_faults_are_recorded",
    ),
    Fault(
        "script hangs",
        "the script sleeps for an hour; `--timeout 5`",
        "`timeout`, its process group killed",
        "1",
        "kept; rerun with `--retry-failed`",
        "test_run_faults.py::test_script_faults_are_recorded",
    ),
    Fault(
        "script raises",
        "`raise RuntimeError`",
        "`failed`, the script's traceback in the log's tail",
        "1",
        "kept; rerun with `--retry-failed`",
        "test_run_faults.py::test_script_faults_are_recorded",
    ),
    Fault(
        "corrupt result",
        "the script exits 0 without writing JSON to `--out`",
        "`failed`, `the script wrote no result JSON`",
        "1",
        "kept; rerun with `--retry-failed`",
        "test_run_faults.py::test_script_faults_are_recorded",
    ),
    Fault(
        "memory blow-up",
        "the script allocates 50 MB a step; `--max-memory 0.3`",
        "`oom`, with the peak it reached; the other runs finish",
        "1",
        "kept; rerun with `--retry-failed` (and a larger `--max-memory`)",
        "test_run_faults.py::test_script_faults_are_recorded",
    ),
    Fault(
        "run killed by SIGKILL",
        "the script sends itself signal 9 (as the kernel's OOM killer would)",
        "`crashed`, `killed by SIGKILL (out of memory?)`",
        "1",
        "kept; rerun with `--retry-failed`",
        "test_run_faults.py::test_script_faults_are_recorded",
    ),
    Fault(
        "full disk (injected)",
        "`OSError(ENOSPC)` at each write site: result store, run log, log folder,"
        " importance/noise-scale JSON, CSV, plots, report",
        "nothing half-written; the run being stored and those in flight back to pending",
        "2, one line naming the path and the fix",
        "the same command finishes the study",
        "test_disk_faults.py",
    ),
    Fault(
        "full disk (real)",
        "the study on a 700 KiB tmpfs (needs root to mount; skipped otherwise)",
        "the runs stored before it filled; no run left `running`;"
        " `ablagen status` still reads",
        "2, one line naming the path and the fix",
        "after the disk grows, the same command finishes every run, each stored once",
        "test_disk_faults.py::test_a_real_full_disk",
    ),
    Fault(
        "orchestrator killed (SIGKILL)",
        "`kill -9` of `ablagen run` mid-study",
        "finished runs kept; its runs left `running` are stale (shown `pending`)",
        "-9",
        "resets the stale runs, reruns only those; its scratch dir is swept",
        "test_orchestrator_killed.py::test_kill_9_loses_nothing_and_reruns_nothing",
    ),
    Fault(
        "orchestrator stopped (SIGTERM, Ctrl-C)",
        "SIGTERM to `ablagen run` with runs in flight",
        "runs in flight killed and given back; no row left `running`",
        "130",
        "reruns what was in flight",
        "test_orchestrator_killed.py::test_sigterm_stops_runs_and_gives_their_rows_back",
    ),
    Fault(
        "concurrent orchestrator",
        "two `ablagen run --jobs 1` started together on one study",
        "every run exactly once",
        "0 for both (each waits for the runs the other holds)",
        "nothing left to do",
        "test_concurrent.py::test_two_orchestrators_share_the_runs",
    ),
    Fault(
        "concurrent orchestrator, `--no-wait`",
        "a second `ablagen run --no-wait` while the first holds runs",
        "nothing; the holder stores them",
        "0, with a line `pid N on HOST holds ...`",
        "nothing left to do once the holder is done",
        "test_concurrent.py::test_no_wait_names_the_holder_and_exits_0",
    ),
    Fault(
        "concurrent orchestrator dies",
        "`kill -9` of the first while the second waits for its runs",
        "the second takes its runs over and stores them",
        "0 (the waiting one)",
        "nothing left to do",
        "test_concurrent.py::test_a_waiting_orchestrator_takes_over_a_dead_ones_runs",
    ),
    Fault(
        "orchestrator's process group killed",
        "`setsid ablagen run`, then `kill -9 -PGID` while each run has a forked child"
        " and a python subprocess",
        "as for `kill -9`; no process of the session is left 2 s later (zygote,"
        " workers, runs and what they started: parent-death signals and a guard)",
        "-9",
        "resets the stale runs, reruns only those",
        "test_parent_death.py::test_kill_9_leaves_no_process_of_the_study",
    ),
    Fault(
        "pool process killed while it imports",
        "`kill -9` of the zygote before it forks its workers",
        "nothing: a fresh zygote is started (twice at most)",
        "0",
        "nothing left to do",
        "test_parent_death.py::test_a_pool_process_killed_while_it_imports_is_replaced",
    ),
    Fault(
        "orchestrator killed between a run's end and its store",
        "a run's result file (`logs/...result.json`, its `--out`) left with no row",
        "the outcome, stored from that file by the next `ablagen run`",
        "-9",
        "the run is not executed again",
        "test_exactly_once.py::test_a_result_left_by_a_dead_orchestrator_is_stored_not_rerun",
    ),
    Fault(
        "run killed after it wrote its result",
        "the script writes its result, then sends itself signal 9",
        "the result's status (`ok`), not `crashed`",
        "0",
        "nothing left to do",
        "test_exactly_once.py::test_a_run_killed_after_writing_its_result_is_ok",
    ),
    Fault(
        "two claimants of one checkpoint",
        "a live process holds the checkpoint's `.lock` (an orphan of a killed"
        " orchestrator) when the run starts",
        "the run waits until it is gone (its log says so), then resumes",
        "0",
        "nothing left to do",
        "test_checkpoint_lock.py::test_a_run_waits_for_the_live_holder_of_its_checkpoint",
    ),
    Fault(
        "full disk that the run's log cannot report",
        "a failed run while the study's disk has no room left",
        "back to pending, not `failed`",
        "2, one line naming the path and the fix",
        "the same command finishes the study",
        "test_disk_faults.py::test_a_run_whose_log_cannot_say_it_hit_a_full_disk_goes_back_to_pending",
    ),
    Fault(
        "chaos soak",
        "60 runs: the driver SIGKILLed 5 times, 3 pool processes killed, the disk"
        " full once (`benchmarks/chaos.py`: 502 runs, 20 kills)",
        "every run `ok` once, bit-identical to an uninterrupted study; no orphan;"
        " `integrity_check` ok",
        "-9, 2 (full disk), then 0",
        "`ablagen run --retry-failed` until done",
        "test_chaos.py::test_chaos_soak_loses_nothing",
    ),
)


def markdown_table() -> str:
    rows = [
        "| fault | injected as | recorded | exit code | after a resume |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows += [
        f"| {f.name} | {f.injected} | {f.recorded} | {f.exit_code} | {f.resume} |"
        for f in MATRIX
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
