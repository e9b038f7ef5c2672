"""How launch.supervisor starts role processes: forked from a server process that has
imported the roles' libraries, so a role does not import TensorFlow, Reverb, torch and
envpool itself."""

from __future__ import annotations

import os
import sys

from launch.supervisor import ROLE_MODULES, Supervisor


def report_start(connection) -> None:
    """A role's first act: which of ROLE_MODULES it already has, and its parent (sent
    at once: a role process ends with os._exit, which a Queue's feeder thread would not
    outlive)."""
    connection.send((sorted(name for name in ROLE_MODULES if name in sys.modules),
                     os.getppid()))


def test_a_role_process_starts_with_the_role_libraries_imported(tmp_path):
    supervisor = Supervisor(run_dir=tmp_path)
    receive, send = supervisor.ctx.Pipe(duplex=False)
    try:
        supervisor.start("probe", report_start, send)
        assert receive.poll(120), "the role process sent nothing"
        imported, parent = receive.recv()
        supervisor.join(["probe"], timeout=60)
    finally:
        supervisor.kill_all(grace_s=1.0)
    assert supervisor.children["probe"].exitcode == 0
    assert imported == sorted(ROLE_MODULES)
    assert parent != os.getpid()  # forked by the server, not by this process
