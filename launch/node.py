"""One fine-tuning role in this process, for runs whose roles live on different hosts.

    # the replay host first: it prints the address the others connect to
    python -m launch.node --role=replay --port=8000 --preset=quickstart \
        --checkpoint=runs/x/pretrain/checkpoint.pt --logdir=runs/x-multi
    # then, on any hosts, the same flags plus the replay server's address
    python -m launch.node --role=learner --replay_address=HOST:8000 ...
    python -m launch.node --role=actor --actor_id=0 --replay_address=HOST:8000 ...
    python -m launch.node --role=evaluator --replay_address=HOST:8000 ...

Each process runs one of the functions of `launch.roles`, the same ones `launch.local`
spawns on one host; the roles talk only through the Reverb server, so all a role
needs is its address. Every role must get the same --preset and overrides: a role
compares the replay server's tables with what its own flags make and refuses to
start on a mismatch. The checkpoint must be readable on every host (and the dataset
on the replay host, which preloads it).

Roles other than replay wait up to --replay_wait_s for the server, read the number
of preloaded windows from it, wait for the preload to finish, then run until the
environment-step budget (--env_steps) is reached or they are stopped; the learner
goes on past the budget until it has taken the samples those steps owe it
(`launch.runs.wait_for_owed_updates`) while the actors stop at it. The replay
role runs until it is stopped. The learner, actors and evaluator write under
--logdir/<role> (actors under actor_<id>; the learner also writes config.json), and
refuse a role directory that already holds files; the replay role writes nothing.
A data-parallel learner runs as `torchrun --nproc_per_node=G -m launch.node
--role=learner ...` (see launch.roles.learner_role).

Stopping: SIGINT or SIGTERM asks the role to finish what it is doing (the learner
writes its checkpoint and publishes its last weights); a second signal exits at
once. Stop actors and the evaluator first, then the learner, and the replay server
last: the others need it to finish cleanly.

Exit status: 0 stopped cleanly; 2 bad input, or no replay server at the address;
3 still running --stop_grace_s after the first signal, so ended without finishing
(e.g. an actor held by the rate limiter after the learner stopped); 128+N after a
second signal N; 1 any other failure.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from absl import flags

from launch.flags import (
    define_config_flags,
    define_finetune_flags,
    define_logdir_flag,
    resolve_config,
    run_main,
)
from launch.program import ROLE_KINDS, Role, env_steps, samples_owed, samples_per_insert

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
EXIT_FORCED = 3
"""Exit status of a role that did not finish within the grace period after a signal."""

Log = Callable[[str], None]


def define_node_flags() -> None:
    flags.DEFINE_enum("role", None, list(ROLE_KINDS), "The role this process runs "
                      "(launch.program).")
    flags.DEFINE_string("replay_address", None,
                        "HOST:PORT of the replay server (every role but replay).")
    flags.DEFINE_integer("port", None, "Port the replay server listens on (--role=replay).")
    flags.DEFINE_integer("actor_id", 0, "Actor index (--role=actor): seeds and log directory; "
                         "give each actor of a run its own.")
    flags.DEFINE_string("checkpoint", None, "Pretrained checkpoint every role starts from.")
    flags.DEFINE_float("replay_wait_s", 60.0,
                       "How long a role waits for the replay server to answer.")
    flags.DEFINE_float("stop_grace_s", 30.0,
                       "After SIGINT/SIGTERM, how long the role may take to finish.")
    define_config_flags(pretrain=False)
    define_logdir_flag()
    define_finetune_flags(num_actors=False)


def parse_address(address: str | None) -> tuple[str, int]:
    """(host, port) of 'HOST:PORT' ('[v6]:PORT' too); ValueError naming the flag."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--replay_address={address!r} must be HOST:PORT with a port in "
                         "1..65535, e.g. --replay_address=node17:8000")
    return host, int(port)


def claim_role_dir(logdir: Path, name: str) -> Path:
    """logdir/name, refused when it already holds files (another run's, or a live role's)."""
    path = logdir / name
    if path.exists() and (path.is_file() or any(path.iterdir())):
        raise FileExistsError(
            f"{path} already exists and is not empty: another {name} wrote there; choose "
            "another --logdir (or --actor_id)"
        )
    return path


# ---- stopping -------------------------------------------------------------------


class StopOnSignal:
    """Turns SIGINT/SIGTERM into `stop.set()`, even while the main thread is inside C++.

    Python runs signal handlers on the main thread only, between bytecodes, and a role's
    main thread can sit inside Reverb for long (an actor's insert held by the rate
    limiter), so a handler would never run. Instead the signals are blocked in every
    thread and one thread takes them with sigwait. Threads inherit the mask when they
    start, so `install` must run before reverb, TensorFlow, torch or envpool start
    theirs (and processes started from here would inherit it; the roles start none).
    The first signal sets `stop`; a second exits at once with 128+signum; a role
    still running `grace_s` after the first is ended with EXIT_FORCED.
    """

    def __init__(self, stop: threading.Event, grace_s: float, log: Log):
        self.stop = stop
        self.grace_s = grace_s
        self.log = log

    def install(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        threading.Thread(target=self._take_signals, name="stop-on-signal", daemon=True).start()

    def _take_signals(self) -> None:
        first = signal.sigwait(STOP_SIGNALS)
        self.log(f"{signal.Signals(first).name}: stopping (send it again to exit at once)")
        self.stop.set()
        second = signal.sigtimedwait(STOP_SIGNALS, self.grace_s)
        if second is None:
            self.log(f"error: still running {self.grace_s:g} s after "
                     f"{signal.Signals(first).name}; exiting without finishing")
            os._exit(EXIT_FORCED)
        self.log(f"{signal.Signals(second.si_signo).name} again: exiting at once")
        os._exit(128 + second.si_signo)


def stop_at_budget(env_steps: Callable[[], int], budget: int, stop: threading.Event,
                   log: Log, interval_s: float = 2.0,
                   owed: Callable[[], float] | None = None) -> None:
    """Set `stop` once `env_steps()` reaches `budget` (run in a daemon thread).

    Every role watches the budget itself, so a run on many hosts ends without a
    coordinator. With `owed` (the learner's: the samples its run's environment steps
    still owe it), `stop` waits past the budget until `owed()` is at most 0, so the
    learner makes its updates per environment step once the actors have stopped
    (`launch.runs.wait_for_owed_updates`). A failing count (the replay server went
    away) is logged once and retried: the role's own calls to the server report that
    failure.
    """
    failing = reached = False
    while not stop.wait(interval_s):
        try:
            steps = env_steps()
            remaining = owed() if owed is not None and steps >= budget else 0
        except Exception as error:  # noqa: BLE001 - keep watching; the role reports it
            if not failing:
                log(f"cannot read the environment-step count ({error}); retrying")
            failing = True
            continue
        failing = False
        if steps >= budget and remaining > 0 and not reached:
            log(f"environment-step budget reached ({steps} >= {budget}); learning on "
                f"until the {remaining:.0f} samples these steps still owe are taken")
            reached = True
        elif steps >= budget and remaining <= 0:
            log(f"environment-step budget reached ({steps} >= {budget}); stopping")
            stop.set()
            return


# ---- the roles ------------------------------------------------------------------


class _Announce:
    """The replay role's `ready` queue: says where the server listens once preloaded."""

    def __init__(self, say: Log):
        self.say = say

    def put(self, item: tuple[int, int]) -> None:
        port, preload_items = item
        host = socket.gethostname()
        self.say(f"replay server listening on {host}:{port} (every interface), "
                 f"{preload_items} offline windows preloaded; connect the other roles "
                 f"with --replay_address={host}:{port}")


def run_replay(cfg, port: int, checkpoint: str, stop: threading.Event, say: Log) -> None:
    from launch import roles  # reverb before torch
    from launch.pipeline import preload_dataset
    from launch.runs import env_info
    from learner.checkpoint import load_checkpoint

    dataset_path = preload_dataset(cfg, load_checkpoint(checkpoint))  # checked: bad input exits 2
    if dataset_path:
        say(f"preloading the top {cfg.replay.preload_trajectories} trajectories of "
            f"{dataset_path}")
    roles.replay_role(cfg, env_info(cfg.env.env_id), dataset_path, port, _Announce(say), stop)


def wait_for_preload(client, preload_items: int, stop: threading.Event, say: Log,
                     log_every_s: float = 10.0) -> None:
    """Return once the server holds its preload (or on `stop`).

    The server answers before its preload is in; a role starting earlier would count
    preloaded windows as environment steps. The preload can take minutes on a large
    dataset, so there is no deadline: a server that dies raises from `table_counts`.
    """
    from replay.tables import table_counts

    last_log = time.monotonic()
    while not stop.is_set():
        inserts = table_counts(client)["inserts"]
        if inserts >= preload_items:
            return
        if time.monotonic() - last_log >= log_every_s:
            say(f"waiting for the replay server's preload: {inserts}/{preload_items} windows")
            last_log = time.monotonic()
        stop.wait(0.5)


def run_worker(role: Role, cfg, paths, address: str, wait_s: float,
               stop: threading.Event, say: Log, warn: Log) -> None:
    """The learner, an actor or the evaluator, against the replay server at `address`."""
    from launch import roles  # reverb before torch
    from launch.runs import env_info
    from replay.tables import (
        EXPERIENCE_TABLE,
        as_client,
        check_server_spec,
        preload_items_from_server,
        table_counts,
        wait_for_server,
    )

    say(f"waiting up to {wait_s:g} s for the replay server at {address}")
    wait_for_server(address, timeout_s=wait_s, log=warn)
    client = as_client(address)
    preload = preload_items_from_server(client)
    env = env_info(cfg.env.env_id)
    spec = roles.replay_spec(cfg, env, preload)
    check_server_spec(client, spec)
    wait_for_preload(client, preload, stop, say)
    if stop.is_set():
        return
    say(f"connected to {address} ({preload} preloaded windows); running until "
        f"{cfg.finetune.env_steps} environment steps or a stop signal")

    def owed() -> float:
        return samples_owed(table_counts(client, EXPERIENCE_TABLE), preload,
                            samples_per_insert(cfg))

    threading.Thread(
        target=stop_at_budget, name="budget", daemon=True,
        args=(lambda: env_steps(table_counts(client, EXPERIENCE_TABLE), preload),
              cfg.finetune.env_steps, stop, say),
        kwargs={"owed": owed if role.kind == "learner" else None},
    ).start()
    roles.worker_role(role, cfg, paths, address, spec, stop)


def _check_flags(FLAGS) -> None:
    """Refuse bad flags before anything heavy is imported or started."""
    if FLAGS.role is None:
        raise ValueError(f"--role is required: one of {', '.join(ROLE_KINDS)}")
    if FLAGS.checkpoint is None:
        raise ValueError("--checkpoint is required: the pretrained checkpoint every role "
                         "starts from")
    if not Path(FLAGS.checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint={FLAGS.checkpoint}: no such file")
    if FLAGS.role == "replay":
        if FLAGS.port is None or not 1 <= FLAGS.port <= 65535:
            raise ValueError(f"--role=replay needs a fixed --port in 1..65535 (got "
                             f"{FLAGS.port}), the one the other roles connect to")
    else:
        parse_address(FLAGS.replay_address)
        if FLAGS.logdir is None:
            raise ValueError(f"--role={FLAGS.role} needs --logdir: the run directory the "
                             "roles write under")
    if FLAGS.actor_id < 0:
        raise ValueError(f"--actor_id={FLAGS.actor_id} must be >= 0")
    if not FLAGS.replay_wait_s > 0:
        raise ValueError(f"--replay_wait_s={FLAGS.replay_wait_s} must be > 0")
    if not FLAGS.stop_grace_s > 0:
        raise ValueError(f"--stop_grace_s={FLAGS.stop_grace_s} must be > 0")


def main(argv) -> None:
    del argv
    FLAGS = flags.FLAGS
    _check_flags(FLAGS)
    role = Role(FLAGS.role, FLAGS.actor_id if FLAGS.role == "actor" else 0)
    name = role.name
    label = name if "RANK" not in os.environ else f"{name} rank {os.environ['RANK']}"

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} {label}] {message}", flush=True)

    def warn(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} {label}] {message}", file=sys.stderr, flush=True)

    stop = threading.Event()
    StopOnSignal(stop, FLAGS.stop_grace_s, warn).install()  # before any library thread

    from launch import roles  # reverb before torch (resolve_config imports torch)
    from launch.pipeline import save_config
    from launch.runs import env_info, fit_model_to_checkpoint
    from learner.checkpoint import load_checkpoint

    # The checkpoint defines the network, as in launch.local: the replay windows take its
    # context length, not the preset's.
    cfg = resolve_config()
    cfg = fit_model_to_checkpoint(cfg, load_checkpoint(FLAGS.checkpoint), FLAGS.checkpoint,
                                  env_info(cfg.env.env_id))
    if FLAGS.role == "replay":
        run_replay(cfg, FLAGS.port, FLAGS.checkpoint, stop, say)
    else:
        logdir = Path(FLAGS.logdir).absolute()
        # Under torchrun (a data-parallel learner) only rank 0 writes, so only it claims.
        if int(os.environ.get("RANK", "0")) == 0:
            claim_role_dir(logdir, name)
            logdir.mkdir(parents=True, exist_ok=True)
            if FLAGS.role == "learner" and not (logdir / "config.json").exists():
                save_config(logdir, cfg)
        paths = roles.RunPaths(str(logdir), str(Path(FLAGS.checkpoint).absolute()))
        run_worker(role, cfg, paths, FLAGS.replay_address,
                   FLAGS.replay_wait_s, stop, say, warn)
    say("stopped")


if __name__ == "__main__":
    define_node_flags()
    run_main(main)
