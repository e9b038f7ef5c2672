"""Child processes of a run on one host, and the launcher's stop signals.

`Supervisor` starts each role as a process forked from a server process that has
imported the roles' libraries once (`role_context`), restarts the roles that may be
restarted (`launch.program.Role.restartable`) with exponential backoff, and always
stops them; `StopFlag` is the stop request the children poll. `launch.local` runs the
run program with them.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROLE_MODULES = (
    "replay._reverb",  # TensorFlow and Reverb before torch, as everywhere
    "launch.roles",
    "envpool",
    "actors.actor",
    "actors.evaluate",
    "learner.finetune",
)
"""What the role processes' server imports before it forks any of them."""


def role_context() -> mp.context.BaseContext:
    """The multiprocessing context every role process starts in: 'forkserver'.

    The first process started through it starts a server process that imports
    ROLE_MODULES (TensorFlow, Reverb, torch, envpool and the role code, seconds on a
    CPU), then forks each role process from that server, so a role starts with those
    imports done instead of making them itself, as a 'spawn' child would (a tiny
    `launch.local` run on two cores: 20-24 s spawned, 6-12 s forked). The server runs
    on one thread (torch's, TensorFlow's and gRPC's pools start in the forked roles),
    so forking it is safe. It serves every later run of this process and exits with it.
    A role process still runs the launcher's `__main__` preparation, as under 'spawn';
    it sees the environment variables of when the server started.
    """
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(list(ROLE_MODULES))
    return context


class RoleDied(RuntimeError):
    """A role process that may not be restarted (or has no restarts left) died."""


def _role_main(target, *args) -> None:
    """The body of a child process: the role, with SIGINT left to the launcher.

    The process ends with os._exit once the role returns (its files and checkpoints
    are closed by then): tearing down an interpreter holding TensorFlow, torch and
    gRPC threads takes seconds, which a signalled run does not have.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 0
    try:
        target(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@dataclass
class _Role:
    target: object
    args: tuple
    restartable: bool
    restarts: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Owns the child processes: starts, restarts, watches and always stops them.

    A restartable role (actors, evaluator) that dies is started again after
    `backoff_s`, then twice that, and so on, at most `max_restarts` times; its target
    gets the restart count as its last argument. Any other role that dies, or a
    restartable one past its limit, makes `poll` raise RoleDied. With `run_dir`, each
    role's pid and restarts are kept in `run_dir/processes.json`.
    """

    def __init__(self, run_dir: Path | None = None, max_restarts: int = 3,
                 backoff_s: float = 1.0, log=None):
        self.ctx = role_context()
        self.children: dict[str, mp.Process] = {}
        self.roles: dict[str, _Role] = {}
        self.run_dir = run_dir
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def start(self, name: str, target, *args, restartable: bool = False) -> mp.Process:
        self.roles[name] = _Role(target, args, restartable)
        return self._spawn(name)

    def _spawn(self, name: str) -> mp.Process:
        role = self.roles[name]
        args = role.args + ((role.restarts,) if role.restartable else ())
        proc = self.ctx.Process(target=_role_main, args=(role.target, *args), name=name,
                                daemon=False)
        proc.start()
        self.children[name] = proc
        self._record()
        return proc

    def _record(self) -> None:
        if self.run_dir is None:
            return
        table = {name: {"pid": p.pid, "restarts": self.roles[name].restarts,
                        "exit_codes": self.roles[name].exit_codes}
                 for name, p in self.children.items()}
        path = Path(self.run_dir) / "processes.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)

    def poll(self) -> None:
        """Restart what died and may be restarted; raise RoleDied for anything else."""
        now = time.monotonic()
        for name, role in self.roles.items():
            code = self.children[name].exitcode
            if code is None or code == 0:
                continue
            if not role.restartable:
                raise RoleDied(f"{name} exited with code {code}")
            if role.restart_at is None:
                role.exit_codes.append(code)
                if role.restarts >= self.max_restarts:
                    raise RoleDied(f"{name} exited with code {code} after {role.restarts} "
                                   f"restarts (finetune.max_restarts={self.max_restarts})")
                delay = self.backoff_s * 2 ** role.restarts
                role.restart_at = now + delay
                self.log(f"{name} exited with code {code}; restarting it in {delay:g} s "
                         f"(restart {role.restarts + 1} of {self.max_restarts})")
            elif now >= role.restart_at:
                role.restarts += 1
                role.restart_at = None
                self._spawn(name)

    def check_fatal(self) -> None:
        """Raise RoleDied for a role that may not be restarted and exited with an error.
        Restartable roles are not looked at: after a stop they may have been killed on
        purpose."""
        for name, role in self.roles.items():
            code = self.children[name].exitcode
            if not role.restartable and code not in (None, 0):
                raise RoleDied(f"{name} exited with code {code}")

    def failed(self) -> list[str]:
        return [f"{name} (exit code {p.exitcode})" for name, p in self.children.items()
                if p.exitcode not in (None, 0)]

    def alive(self, name: str) -> bool:
        proc = self.children.get(name)
        return proc is not None and proc.is_alive()

    def join(self, names, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.children.get(name)
            if proc is not None:
                proc.join(max(deadline - time.monotonic(), 0.0))

    def kill_all(self, grace_s: float = 5.0) -> None:
        alive = [p for p in self.children.values() if p.is_alive()]
        for proc in alive:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in alive:
            proc.join(max(deadline - time.monotonic(), 0.0))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)


class StopFlag:
    """A stop request shared with child processes that survives their being killed.

    multiprocessing.Event takes a shared lock in `is_set`; a child killed with
    SIGKILL while holding it (actors poll every step) would leave the launcher
    blocked forever in `set`. This flag is one lock-free shared byte; `wait` polls.
    Same interface as the events the roles take (`is_set`, `set`, `wait`).
    """

    def __init__(self, ctx):
        self._flag = ctx.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._flag.value = True

    def is_set(self) -> bool:
        return bool(self._flag.value)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class ReplayReady:
    """The replay server's port and preloaded item count, for workers started before
    the server was ready (they import TensorFlow and torch meanwhile). Lock-free
    shared integers, like StopFlag; set once."""

    def __init__(self, ctx):
        self._values = ctx.RawArray(ctypes.c_int64, 3)  # ready, port, preload items

    def set(self, port: int, preload_items: int) -> None:
        self._values[1], self._values[2] = port, preload_items
        self._values[0] = 1

    def wait(self, stop) -> tuple[int, int] | None:
        """(port, preload items) once set; None if `stop` is set first."""
        while not self._values[0]:
            if stop.is_set():
                return None
            time.sleep(0.02)
        return int(self._values[1]), int(self._values[2])


class StopSignal(BaseException):
    """SIGINT or SIGTERM, raised in the main thread by `raise_on_stop_signals`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_on_stop_signals() -> dict:
    """Make SIGINT and SIGTERM raise StopSignal in the main thread; returns the handlers
    they replace (for `restore_signals`). A second signal is ignored until the first
    is handled."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise StopSignal(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    return previous


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of process `pid` (default: this one) now, MiB (Linux /proc)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time process `pid` (default: this one) has used so far, user plus system,
    over all its threads, in seconds (Linux /proc; clock-tick resolution)."""
    # The command name, in parentheses, may hold spaces: fields are counted after it.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
