"""Who holds a ``running`` row of the result store, and whether it is still alive.

An orchestrator session is (host, pid, that pid's start time, a random token). A
row it holds is stale when, on the same host, the pid is gone, the pid now names
another process (a different start time: pid reuse), or the pid is this very
process but the token is an earlier session's. A row held on another host cannot
be checked and is taken as alive.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path


def _process_started(pid: int) -> str:
    """The start time of process ``pid`` (Linux ``/proc``), "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22: starttime in clock ticks


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a ``running`` row: host, pid, that pid's start time, a session token."""

    host: str
    pid: int
    started: str
    token: str

    @staticmethod
    def current() -> Owner:
        pid = os.getpid()
        return Owner(socket.gethostname(), pid, _process_started(pid), uuid.uuid4().hex)

    def holds_alive(
        self, host: str | None, pid: int | None, started: str | None, token: str | None
    ) -> bool:
        """Whether the row owner (host, pid, started, token) may still be running."""
        if token == self.token:
            return True
        if host is None or pid is None:
            return False  # no owner recorded
        if host != self.host:
            return True  # another machine's orchestrator: cannot tell, assume alive
        if pid == self.pid:
            return False  # an earlier session of this very process
        if not pid_alive(pid):
            return False
        return not (started and _process_started(pid) not in ("", started))
