"""A Ray cluster on this machine whose worker nodes cannot see the studies.

A head node (no CPUs: it runs no script) and two worker nodes, each started with
``setsid ray start --block`` in the background, so each is stopped by its own pid
(its process group), never by a broad ``ray stop``. The worker nodes run in a mount
namespace of their own (``unshare -m``) with an empty tmpfs mounted over
:attr:`RayCluster.hidden`: a study made there exists for the driver and the head,
not for the nodes that run its scripts -- as on a cluster of several machines.
Every process uses token authentication (``RAY_AUTH_MODE=token`` with a token of
its own) and loopback addresses; each node has its own temp dir, ports and a
custom resource (``w1``, ``w2``) naming it. Needs root and ``unshare``; without
them :func:`start_cluster` raises :class:`ClusterUnavailable` with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
NODE_START_S = 120.0  # a loaded machine starts three nodes slowly
WORKERS = {"w1": 1, "w2": 1}  # node name -> CPUs
#: a dead node is noticed in ~3 s instead of Ray's ~30 s
FAST_HEALTH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

WAIT_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    if sum(n["Alive"] for n in ray.nodes()) >= int(sys.argv[2]):
        break
    time.sleep(0.5)
print(sum(n["Alive"] for n in ray.nodes()))
"""


SEES = """
import json, os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
exists = lambda: os.path.exists(sys.argv[2])
seen = {"head": exists()}
for name in sys.argv[3:]:
    seen[name] = ray.get(ray.remote(num_cpus=0, resources={name: 0.01})(exists).remote())
print(json.dumps(seen))
"""


def _process_tree() -> tuple[dict[int, list[int]], dict[int, str]]:
    """Each live process's children, and its name (``/proc``)."""
    children: dict[int, list[int]] = {}
    comm: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                comm[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children, comm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unshare_problem() -> str | None:
    """Why the worker nodes cannot be hidden from the studies here (None: they can)."""
    if sys.platform != "linux":
        return "needs Linux mount namespaces"
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a mount namespace (unshare -m)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"unshare -m with a tmpfs fails here: {probe.stderr.strip()[:200]}"
    if not Path(RAY).exists():
        return f"no ray executable at {RAY}"
    return None


@dataclass
class RayCluster:
    root: Path  # temp dirs of the nodes (short: Ray's socket paths have a limit)
    hidden: Path  # the worker nodes see an empty tmpfs here
    env: dict[str, str]  # what a driver needs to join (the token)
    address: str = ""
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    #: the first worker port of this cluster's nodes (others' clusters: elsewhere)
    ports: int = field(default_factory=lambda: random.randrange(20000, 28000, 500))

    def _start(self, name: str, argv: list[str], hide: bool) -> None:
        low = self.ports + 100 * len(self.nodes)  # each node its own 100 ports
        argv = [
            RAY,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(self.root / name),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--min-worker-port",
            str(low),
            "--max-worker-port",
            str(low + 99),
            "--disable-usage-stats",
            *argv,
        ]
        command = argv
        if hide:  # `sh` mounts the tmpfs in the new namespace, then becomes ray
            command = [
                "unshare",
                "-m",
                "sh",
                "-c",
                'mount -t tmpfs tmpfs "$0" && exec "$@"',
                str(self.hidden),
                *argv,
            ]
        tmp = self.root / f"{name}-tmp"  # what its runs leave: gone with the cluster
        tmp.mkdir(exist_ok=True)
        log = open(self.root / f"{name}.log", "wb")
        with log:
            self.nodes[name] = subprocess.Popen(
                ["setsid", *command],
                env=dict(self.env, TMPDIR=str(tmp)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start(self) -> None:
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self._start(
            "head",
            [
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "0",
                "--include-dashboard",
                "false",
                "--ray-client-server-port",
                str(_free_port()),
            ],
            hide=False,
        )
        for name, cpus in WORKERS.items():
            self._start(
                name,
                [
                    "--address",
                    self.address,
                    "--num-cpus",
                    str(cpus),
                    "--resources",
                    json.dumps({name: 1}),
                ],
                hide=True,
            )
        self.wait_alive(1 + len(WORKERS))
        marker = self.hidden / "visible"
        marker.touch()
        seen = self.sees(marker)
        marker.unlink()
        if seen != {"head": True, **{name: False for name in WORKERS}}:
            raise RuntimeError(f"the worker nodes should not see {self.hidden}: {seen}")

    def restart(self, name: str) -> None:
        """Start worker node ``name`` again (after :meth:`kill_node`)."""
        self._start(
            name,
            ["--address", self.address, "--num-cpus", str(WORKERS[name]),
             "--resources", json.dumps({name: 1})],
            hide=True,
        )  # fmt: skip
        self.wait_alive(1 + len(WORKERS))

    def sees(self, path: Path) -> dict[str, bool]:
        """Whether each node sees ``path`` (a task pinned to it by its resource)."""
        proc = subprocess.run(
            [sys.executable, "-c", SEES, self.address, str(path), *WORKERS],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.splitlines()[-1])

    def alive(self, want: int, within: float) -> int:
        """How many nodes are alive, once ``want`` are or ``within`` seconds passed."""
        proc = subprocess.run(
            [sys.executable, "-c", WAIT_NODES, self.address, str(want), str(within)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=within + 60,
        )
        return int(proc.stdout.split()[-1]) if proc.returncode == 0 else 0

    def wait_alive(self, want: int) -> None:
        got = self.alive(want, NODE_START_S)
        if got < want:
            logs = {
                p.name: p.read_text(errors="replace")[-400:]
                for p in self.root.glob("*.log")
            }
            raise RuntimeError(f"{got} of {want} Ray nodes came up: {logs}")

    def descendants(self, name: str) -> list[int]:
        """Node ``name``'s processes: its ``ray start`` and all below it."""
        children, _ = _process_tree()
        todo, found = [self.nodes[name].pid], []
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def raylet(self, name: str) -> int:
        """The pid of node ``name``'s raylet (a descendant of its ``ray start``)."""
        _, comm = _process_tree()
        for pid in self.descendants(name):
            if comm.get(pid) == "raylet":
                return pid
        raise LookupError(f"no raylet under node {name}")

    def kill_node(self, name: str) -> None:
        """Lose node ``name`` as a machine is lost: its raylet SIGKILLed, then the rest
        of its processes (the workers it started die with it, as on a dead host)."""
        processes = self.descendants(name)  # runs included: in sessions of their own
        os.kill(self.raylet(name), signal.SIGKILL)
        time.sleep(0.5)
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.nodes[name].wait()

    def _stop(self, name: str, sig: int) -> None:
        proc = self.nodes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # setsid: its pid is its group

    def stop(self) -> None:
        """Stop every node this cluster started, by its own process group."""
        for name in reversed(list(self.nodes)):
            self._stop(name, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in self.nodes.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            self._stop(name, signal.SIGKILL)  # its workers too, even if it ended
            proc.wait()


class ClusterUnavailable(Exception):
    """This machine cannot hide the studies from the worker nodes (the reason)."""


@contextlib.contextmanager
def start_cluster() -> Iterator[RayCluster]:
    """A started cluster (:class:`ClusterUnavailable` where the nodes cannot be
    hidden), always stopped on the way out, also on failure."""
    problem = unshare_problem()
    if problem is not None:
        raise ClusterUnavailable(f"multi-node Ray cluster: {problem}")
    root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    hidden = root / "studies"
    hidden.mkdir()
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        **FAST_HEALTH,
    )
    env.pop("RAY_ADDRESS", None)
    cluster = RayCluster(root=root, hidden=hidden, env=env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_dirs_with_checkpoint(cluster: RayCluster, name: str) -> list[str]:
    """The run folders of node ``name``'s processes that hold a saved checkpoint
    (``runs/*/*.pt`` under the process's cwd): a run past its first epoch there."""
    found = []
    for pid in cluster.descendants(name):
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if "ablagen-ray-slot-" in cwd and list(Path(cwd).glob("runs/*/*.pt")):
                found.append(cwd)
    return found


@dataclass
class NodeLoss:
    """What :func:`lose_a_node` measured."""

    kill_at_s: float  # from the study's start to the kill
    wall_s: float  # the whole study, kill and retries included
    returncode: int
    output: str


def _in_storage(run_dirs: list[str], storage: Path | None) -> bool:
    """Whether one of the checkpoints in ``run_dirs`` is in ``storage`` too (None:
    no storage to wait for). A run uploads each save a moment after it makes it."""
    if storage is None:
        return True
    saved = {
        (p.parent.name, p.name) for d in run_dirs for p in Path(d).glob("runs/*/*.pt")
    }
    return any((p.parent.name, p.name) in saved for p in storage.rglob("*.pt"))


def lose_a_node(
    cluster: RayCluster,
    argv: list[str],
    node: str = "w1",
    within: float = 600.0,
    storage: Path | None = None,
) -> NodeLoss:
    """Run ``ablagen run ARGV`` and SIGKILL node ``node``'s raylet (then the rest of
    it) as soon as one of its runs has saved a checkpoint (and, with ``storage``,
    uploaded it there); wait for the study."""
    start = time.monotonic()
    driver = subprocess.Popen(
        [sys.executable, "-m", "ablagen", "run", *argv],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kill_at = -1.0
    try:
        while time.monotonic() - start < within and driver.poll() is None:
            found = run_dirs_with_checkpoint(cluster, node)
            if found and _in_storage(found, storage):
                cluster.kill_node(node)
                kill_at = time.monotonic() - start
                break
            time.sleep(0.2)
        output, _ = driver.communicate(
            timeout=max(1.0, within - (time.monotonic() - start))
        )
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return NodeLoss(kill_at, time.monotonic() - start, driver.returncode, output)
