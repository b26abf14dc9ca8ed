"""Unit tests of the orchestrator's pieces: options, outcome classification, the store."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.core.errors import ConfigError, StudyError
from ablagen.orchestrate import ResultStore, RunOptions, RunSpec, parse_seeds
from ablagen.orchestrate.outcome import RawOutcome, classify, tail
from ablagen.orchestrate.owner import Owner
from ablagen.orchestrate.run_record import RunRecord
from ablagen.core.studydir import RESULTS_DB

SHA = "a" * 64


def spec(
    variant: str = "baseline", seed: int = 0, sha: str = SHA, **args: object
) -> RunSpec:
    return RunSpec(variant, "baseline.py", sha, seed, {"device": "cpu", **args})


def result(status: str = "ok", loss: float = 0.25, acc: float = 0.9) -> str:
    return json.dumps(
        {"status": status, "final": {"train_loss": loss, "val_acc": acc}, "history": []}
    )


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0,1,2", (0, 1, 2)), ("3", (3,)), ("0-3", (0, 1, 2, 3)), (" 1, 5 ", (1, 5))],
)
def test_parse_seeds(text: str, seeds: tuple[int, ...]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a,b", "-1", "0,-1", "", "1,1", "0-", "1.5"])
def test_parse_seeds_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_seeds(text)
    assert "\n" not in str(err.value) and "--seeds" in str(err.value)


def test_options_validate() -> None:
    with pytest.raises(ConfigError):
        RunOptions(jobs=0)
    with pytest.raises(ConfigError):
        RunOptions(device="tpu")
    with pytest.raises(ConfigError):
        RunOptions(timeout_s=0)
    assert RunOptions(epochs=2).script_args() == {"device": "cpu", "epochs": 2}


def test_spec_argv_and_log_path() -> None:
    s = spec("conv1:zero", seed=2, epochs=1)
    s = RunSpec(s.variant_id, "conv1__zero.py", SHA, 2, s.args)
    assert s.argv("r.json") == [
        "--seed",
        "2",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--out",
        "r.json",
    ]
    assert s.log_path.startswith("logs/conv1__zero__seed2__") and s.log_path.endswith(
        ".log"
    )
    assert (
        s.log_path
        != RunSpec(s.variant_id, s.script, SHA, 2, {"device": "cpu"}).log_path
    )


# -- classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "timed_out", "status"),
    [
        (0, result(), False, "ok"),
        (1, None, False, "failed"),
        (0, None, False, "failed"),
        (0, "not json {", False, "failed"),
        (0, "[1, 2]", False, "failed"),
        (0, result("failed"), False, "failed"),
        (3, None, False, "diverged"),
        (0, result("diverged"), False, "diverged"),
        (0, result(loss=math.nan), False, "diverged"),
        (1, result(loss=math.inf), False, "diverged"),
        (-6, None, False, "crashed"),
        (-11, result(), False, "crashed"),
        (None, None, False, "crashed"),
        (-9, None, True, "timeout"),
    ],
)
def test_classify(
    code: int | None, text: str | None, timed_out: bool, status: str
) -> None:
    raw = RawOutcome(spec(), code, 1.5, result_text=text, timed_out=timed_out)
    record = classify(raw, "line 1\nlast words")
    assert record.status == status
    assert record.exit_code == code
    if status == "ok":
        assert record.error_tail is None and record.result["final"]["val_acc"] == 0.9
    else:
        assert record.error_tail.startswith("line 1\nlast words\n[ablagen] ")


def test_classify_names_the_signal_and_worker_death() -> None:
    assert (
        classify(RawOutcome(spec(), -6, 0.1), "").error_tail
        == "[ablagen] killed by SIGABRT"
    )
    died = classify(RawOutcome(spec(), None, 0.0, error="the worker process died"), "")
    assert died.status == "crashed" and "worker process died" in died.error_tail


def test_tail_keeps_the_end() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    assert (
        tail(text).splitlines()[-1] == "line 99" and len(tail(text).splitlines()) == 30
    )


# -- the store ---------------------------------------------------------------------------


def record(s: RunSpec, status: str = "ok", acc: float = 0.9) -> RunRecord:
    return classify(
        RawOutcome(s, 0 if status == "ok" else 1, 1.0, result_text=result(acc=acc)), ""
    )


def test_store_roundtrip_and_filters(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:
        owner = Owner.current()
        for s, st in ((spec(), "ok"), (spec(seed=1), "failed"), (spec("x"), "ok")):
            assert store.claim(s, owner, "local")
            store.finish(record(s, st))
        assert [r.status for r in store.records()] == ["ok", "failed", "ok"]
        assert len(store.records(status="ok")) == 2
        assert [r.variant_id for r in store.records(variant_ids=["x"])] == ["x"]
        assert [r.seed for r in store.records(seeds=[1])] == [1]
        got = store.get(spec())
        assert (
            got is not None
            and got.result["final"]["val_acc"] == 0.9
            and got.attempts == 1
        )
        assert store.counts()["ok"] == 2 and store.counts()["failed"] == 1
    # a second connection (another reader) sees the committed state
    with ResultStore(tmp_path, readonly=True) as store:
        assert len(store.records()) == 3
    assert (
        sqlite3.connect(tmp_path / RESULTS_DB)
        .execute("PRAGMA journal_mode")
        .fetchone()[0]
        == "wal"
    )


def test_latest_ok_follows_the_manifest(tmp_path: Path) -> None:
    study = make_study(tmp_path / "s", {"baseline": "ok", "a:zero": "ok"})
    from ablagen.core.studydir import load_manifest

    manifest = load_manifest(study)
    base, var = manifest.variant("baseline"), manifest.variant("a:zero")
    with ResultStore(study) as store:
        store.finish(
            record(
                RunSpec("baseline", base.script, base.sha256, 0, {"device": "cpu"}),
                acc=0.1,
            )
        )
        store.finish(
            record(
                RunSpec(
                    "baseline",
                    base.script,
                    base.sha256,
                    0,
                    {"device": "cpu", "epochs": 1},
                ),
                acc=0.2,
            )
        )
        # old script
        store.finish(
            record(
                RunSpec("a:zero", var.script, "0" * 64, 0, {"device": "cpu"}), acc=0.3
            )
        )
        store.finish(
            record(
                RunSpec("a:zero", var.script, var.sha256, 1, {"device": "cpu"}), acc=0.4
            )
        )
        store.finish(
            record(
                RunSpec("a:zero", var.script, var.sha256, 2, {"device": "cpu"}),
                "failed",
            )
        )
        latest = store.latest_ok()
        assert [
            (r.variant_id, r.seed, r.result["final"]["val_acc"]) for r in latest
        ] == [
            ("baseline", 0, 0.2),  # newest ok wins
            ("a:zero", 1, 0.4),  # the old script's row and the failed one do not count
        ]
        only_default = store.latest_ok(args={"device": "cpu"}, variant_ids=["baseline"])
        assert [r.result["final"]["val_acc"] for r in only_default] == [0.1]


def test_claim_release_and_stale_reset(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        dead = Owner(Owner.current().host, int(gone.stdout), "", "dead-session")
        live = Owner(Owner.current().host, sleeper.pid, "", "live-session")
        with ResultStore(tmp_path) as store:
            me = Owner.current()
            first, retried, held = spec("first"), spec("retried"), spec("held")
            store.finish(record(retried, "failed"))
            assert store.claim(first, dead, "local") and store.claim(
                retried, dead, "local"
            )
            assert store.claim(held, live, "local")
            assert not store.claim(held, me, "local")  # a live orchestrator holds it
            assert store.counts()["running"] == 3
            assert store.reset_stale(me) == 2
            assert store.get(first) is None  # a first attempt's row goes away
            # a retried one gets its status back
            assert store.get(retried).status == "failed"
            assert store.get(held).status == "running"
            store.release([held], me)  # not ours: untouched
            assert store.get(held).status == "running"
            store.release([held], live)
            assert store.get(held) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_earlier_session_of_this_process_is_stale(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:
        old, new = Owner.current(), Owner.current()
        assert store.claim(spec(), old, "local")
        assert store.reset_stale(new) == 1 and store.records() == []


def test_readers_never_see_half_a_result(tmp_path: Path) -> None:
    seen: list[RunRecord] = []
    done = threading.Event()

    def read() -> None:
        with ResultStore(tmp_path, readonly=True) as reader:
            while not done.is_set():
                seen.extend(reader.records())

    with ResultStore(tmp_path) as store:
        store.claim(spec(), Owner.current(), "local")
        thread = threading.Thread(target=read)
        thread.start()
        owner = Owner.current()
        for i in range(40):
            s = spec(seed=i)
            store.claim(s, owner, "local")
            store.finish(record(s))
        done.set()
        thread.join()
    assert seen
    half = [
        r
        for r in seen
        if r.status != "running" and (r.result is None or r.finished_at is None)
    ]
    assert not half


def test_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="does not exist"):
        ResultStore(tmp_path / "nope")
    with ResultStore(
        tmp_path, readonly=True
    ) as store:  # never run: empty, nothing created
        assert store.records() == [] and store.counts()["ok"] == 0
    assert not (tmp_path / RESULTS_DB).exists()
    (tmp_path / RESULTS_DB).write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StudyError, match="not a readable result store") as err:
        ResultStore(tmp_path)
    assert "\n" not in str(err.value)
