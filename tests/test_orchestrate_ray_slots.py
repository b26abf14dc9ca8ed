"""A Ray slot's folder (``ablagen-ray-slot-*`` in the node's temp dir) never outlives
its slot: the slot removes it when its driver is gone, and a slot killed outright
leaves it to the next slot of that node, which removes every folder whose lock is
free (:func:`ablagen.orchestrate.ray_warm.clear_stale_slots`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest_orchestrate import make_study

from ablagen.orchestrate import ray_warm

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_only_the_folders_of_gone_slots_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_warm.tempfile, "tempdir", str(tmp_path))
    # (a process may always take its own locks: the slots' are held elsewhere)
    live, live_fd = ray_warm.new_slot_dir()
    os.close(live_fd)
    holder = subprocess.Popen(  # a live slot: another process holds its lock
        [sys.executable, "-c", HOLD, os.path.join(live, ray_warm.SLOT_LOCK)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        gone, gone_fd = ray_warm.new_slot_dir()
        os.close(gone_fd)  # as the kernel does for a killed slot
        old = tmp_path / "ablagen-ray-slot-old"  # an older version's: no lock file
        young = tmp_path / "ablagen-ray-slot-young"
        for folder in (old, young):
            (folder / "run-1").mkdir(parents=True)
        hour_ago = time.time() - ray_warm.UNLOCKED_STALE_S - 10
        os.utime(old, (hour_ago, hour_ago))
        unrelated = tmp_path / "ablagen-ray-data"
        unrelated.mkdir()

        assert ray_warm.clear_stale_slots(str(tmp_path)) == 2
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {Path(live).name, young.name, unrelated.name}
        assert Path(live, ray_warm.SLOT_LOCK).exists()
    finally:
        holder.kill()
        holder.wait()
    # its holder gone, the next slot of this node removes it (and keeps its own)
    fresh, fresh_fd = ray_warm.new_slot_dir()
    os.close(fresh_fd)
    slots = {p.name for p in tmp_path.glob("ablagen-ray-slot-*")}
    assert slots == {Path(fresh).name, young.name}
    assert not Path(gone).exists()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_driver_leaves_no_slot_folder(tmp_path, request):
    pytest.importorskip("ray")
    # the temp dir of the driver and its Ray's actors (short: Ray's socket paths)
    tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    study = make_study(tmp_path / "study", {"baseline": ("hang", 0)})
    env = dict(os.environ, TMPDIR=str(tmp))
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", str(study), "--backend", "ray",
         "--jobs", "1", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(
            tmp.glob("ablagen-ray-slot-*/run-1")
        ):
            assert driver.poll() is None, "the driver ended before its run started"
            time.sleep(0.2)
        assert list(tmp.glob("ablagen-ray-slot-*/run-1")), "no run started"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and list(tmp.glob("ablagen-ray-slot-*")):
            time.sleep(0.2)
        assert not list(tmp.glob("ablagen-ray-slot-*"))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        with contextlib.suppress(ProcessLookupError):  # what its Ray left, if any
            os.killpg(driver.pid, signal.SIGKILL)
