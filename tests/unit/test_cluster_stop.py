"""PgCluster.stop waits for the postmaster process itself, not only its pid file: a
zombie (exited, not yet reaped) counts as gone, a running process as alive."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pagestore.pg.cluster import _pid_alive
from tests.fixtures.util import wait_until


def test_pid_alive_running_exited_and_zombie() -> None:
    assert _pid_alive(os.getpid())
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert _pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not _pid_alive(sleeper.pid)
    zombie = subprocess.Popen(["true"])
    # Not reaped yet: /proc still lists it, in state Z.
    stat = Path(f"/proc/{zombie.pid}/stat")
    wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", timeout=10,
               what="the child exited")
    assert not _pid_alive(zombie.pid)
    zombie.wait()
