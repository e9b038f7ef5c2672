"""Local fine-tuning: every role as its own OS process on this host.

    python -m launch.local --preset=quickstart --checkpoint=runs/x/pretrain/checkpoint.pt \
        [--objective=odt|odt_td3] [--num_actors=2 --envs_per_actor=4] [--env_steps=...] \
        [--logdir=runs/...] [--set=finetune.checkpoint_every=500 ...]
    python -m launch.local --resume --logdir=runs/... [--env_steps=...]

Starts the replay server (preloading the top offline trajectories when the
checkpoint's dataset is at hand, or restoring the run's replay checkpoint on
--resume), waits until it answers, then the learner, N actors and the evaluator;
prints a status line; stops everything at the environment-step budget, and never
leaves a child process behind. Ends with a final evaluation of the learner's last
weights.

Faults: a crashed actor or evaluator is restarted after 1 s, 2 s, 4 s, ...
(finetune.max_restarts times each) and the run goes on. A crashed learner or replay
server, or a role past its restarts, stops the run (exit status 1): the learner's
last checkpoint stays, the replay tables are checkpointed, and the message says how
to resume. SIGINT or SIGTERM stops every child within 10 s after a final learner and
replay checkpoint (exit status 130 or 143). Children ignore SIGINT, so a Ctrl-C that
reaches the whole process group is handled by the launcher alone.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from absl import flags

from launch.flags import (
    RunFailed,
    RunInterrupted,
    define_config_flags,
    define_finetune_flags,
    define_logdir_flag,
    define_mode_flag,
    define_resume_flag,
    new_run_dir,
    require_checkpoint,
    resolve_config,
    run_main,
)
from launch.program import env_steps, run_roles, stop_order

SIGNAL_STOP_S = 10.0
"""Every child is gone this long after SIGINT or SIGTERM."""


@dataclass
class FinetuneSummary:
    env_steps: int
    updates: int
    seconds: float
    final_return: float
    final_normalized: float | None
    learner_checkpoint: Path

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds else 0.0

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    def rows(self, objective: str) -> list[tuple[str, str]]:
        """The summary table an entry point prints at the end of a run."""
        return [
            ("objective", objective),
            ("env steps", str(self.env_steps)),
            ("updates", str(self.updates)),
            ("fine-tuned eval return", f"{self.final_return:.1f}"),
            ("wall time", f"{self.seconds:.0f} s"),
            ("env steps/s", f"{self.env_steps_per_s:.0f}"),
            ("updates/s", f"{self.updates_per_s:.1f}"),
            ("checkpoint", str(self.learner_checkpoint)),
        ]


def _env_info(env_id: str) -> dict:
    from actors.envs import env_spec

    spec = env_spec(env_id)
    return {
        "observation_shape": spec.observation_shape,
        "action_shape": spec.action_shape,
        "action_low": spec.action_low.tolist(),
        "action_high": spec.action_high.tolist(),
        "max_episode_steps": spec.max_episode_steps,
    }


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
        self.ctx = mp.get_context("spawn")
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


class _Signal(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_on_stop_signals() -> dict:
    """Make SIGINT and SIGTERM raise _Signal in the main thread; returns the handlers
    they replace (for `_restore_signals`). A second signal is ignored until the first
    is handled."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise _Signal(signum)

    for sig in previous:
        signal.signal(sig, on_signal)
    return previous


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def resume_hint(run_dir: Path) -> str:
    return f"resume with: python -m launch.local --resume --logdir={run_dir}"


def fit_model_to_checkpoint(cfg, payload: dict, checkpoint, env_info: dict):
    """`cfg` with the checkpoint's model; CheckpointError when it cannot act in cfg's env.

    The checkpoint defines the network (its width and depth come from pretraining);
    its observation, action and context sizes must fit the environment and the
    replay windows of this run.
    """
    from learner.checkpoint import CheckpointError, model_config_from

    model = model_config_from(payload)
    obs, act = tuple(env_info["observation_shape"]), tuple(env_info["action_shape"])
    if (model.state_dim,) != obs or (model.act_dim,) != act:
        raise CheckpointError(
            f"{checkpoint}: its model takes observations of size {model.state_dim} and "
            f"actions of size {model.act_dim}, but {cfg.env.env_id} has observation shape "
            f"{obs} and action shape {act}; was it pretrained for another preset?"
        )
    return replace(cfg, model=model)


def _start_run(cfg, checkpoint, run_dir: Path, dataset_path: str | None):
    """What both modes do first: the config fitted to the checkpoint, the run's record
    of what it started from (`finetune.json`, kept on resume), and its paths.
    Returns (cfg, checkpoint payload, env info, dataset path, RunPaths)."""
    from launch import roles
    from launch.pipeline import save_config
    from learner.checkpoint import load_checkpoint

    payload = load_checkpoint(checkpoint)
    env_info = _env_info(cfg.env.env_id)
    cfg = fit_model_to_checkpoint(cfg, payload, checkpoint, env_info)
    dataset_path = dataset_path or payload.get("dataset")
    started_from = run_dir / "finetune.json"
    if not started_from.exists():
        save_config(run_dir, cfg)
        started_from.write_text(json.dumps({"checkpoint": str(Path(checkpoint).absolute()),
                                            "dataset": dataset_path}))
    return cfg, payload, env_info, dataset_path, roles.RunPaths(str(run_dir), str(checkpoint))


def run_inline(cfg, checkpoint: str | Path, run_dir: Path, *, dataset_path: str | None = None,
               status: bool = True) -> FinetuneSummary:
    """The run program in this one process, for debugging and for small CPU runs where
    starting five processes that each import TensorFlow and torch costs seconds.

    The replay server, the learner, one actor (of `actor.envs_per_actor` envs;
    `actor.num_actors` does not apply) and the evaluator run as threads of this
    process, with the same role functions, results, checkpoints and TensorBoard tags
    as `run_local`; the budget, the rate limiter and resuming work the same way. A role
    that fails stops the run (nothing is restarted) and its traceback is printed.
    SIGINT or SIGTERM stop it after the learner's final checkpoints.
    """
    import threading

    from launch import roles  # imports reverb before torch in this process
    from replay.tables import wait_for_server

    run_dir = Path(run_dir)
    cfg, payload, env_info, dataset_path, paths = _start_run(cfg, checkpoint, run_dir,
                                                             dataset_path)
    program = run_roles(1)
    # One stop event per role, set in `stop_order`: an actor held by the rate limiter is
    # released by the learner's samples, so the learner stops after the actors (a thread,
    # unlike a process, cannot be killed).
    stops = {role.name: threading.Event() for role in program}
    ready: queue.Queue = queue.Queue()
    threads: dict[str, threading.Thread] = {}
    failures: list[str] = []

    def start(name: str, target, *args) -> None:
        def body():
            try:
                target(*args)
            except BaseException:  # reported by the watch loop, which stops the run
                traceback.print_exc()
                failures.append(name)

        threads[name] = threading.Thread(target=body, name=name, daemon=True)
        threads[name].start()

    def check() -> None:
        if failures:
            raise RoleDied(f"{', '.join(failures)} failed (traceback above)")

    def stop_in_order(timeout_s: float) -> None:
        """Stop each role in `stop_order`, waiting up to timeout_s for each."""
        for role in stop_order(program):
            stops[role.name].set()
            if role.name in threads:
                threads[role.name].join(timeout_s)

    start_time = time.perf_counter()
    previous = _raise_on_stop_signals()
    try:
        try:
            start(program[0].name, roles.replay_role, cfg, env_info, dataset_path,
                  cfg.replay.port, ready, stops[program[0].name], str(paths.replay_checkpoints))
            deadline = time.monotonic() + 300
            while True:
                check()
                try:
                    port, preload_items = ready.get(timeout=0.5)
                    break
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise RunFailed("replay server not ready within 300 s") from None
            if port == "error":
                raise ValueError(preload_items)
            address = f"localhost:{port}"
            wait_for_server(address, timeout_s=30)
            spec = roles.replay_spec(cfg, env_info["observation_shape"],
                                     env_info["action_shape"], env_info["max_episode_steps"],
                                     preload_items)
            for role in program[1:]:
                start(role.name, roles.worker_role, role, cfg, paths, address, spec,
                      stops[role.name], 0, False)
            _watch_budget(address, preload_items, cfg.finetune.env_steps, status, check)
        except _Signal as sig:
            stop_in_order(30)  # the learner writes its final checkpoints
            name = signal.Signals(sig.signum).name
            raise RunInterrupted(f"{name} received; the learner's last checkpoint is "
                                 f"{paths.learner_checkpoint}; {resume_hint(run_dir)}",
                                 sig.signum) from None
        except RoleDied as died:
            raise RunFailed(f"{died}; the run stopped. The learner's last checkpoint is "
                            f"{paths.learner_checkpoint}; {resume_hint(run_dir)}") from None
        stop_in_order(120)
        check()
    finally:
        stop_in_order(5)
        _restore_signals(previous)
    return final_summary(cfg, paths, payload, time.perf_counter() - start_time)


def run_local(cfg, checkpoint: str | Path, run_dir: Path, *, dataset_path: str | None = None,
              status: bool = True) -> FinetuneSummary:
    """Fine-tune from `checkpoint` with local processes until cfg.finetune.env_steps.

    A `run_dir` holding a replay checkpoint continues that run (`resume_run`).
    Raises RunFailed or RunInterrupted when the run ends early.
    """
    from launch import roles  # imports reverb before torch in this process
    from replay.tables import wait_for_server

    run_dir = Path(run_dir)
    cfg, payload, env_info, dataset_path, paths = _start_run(cfg, checkpoint, run_dir,
                                                             dataset_path)
    sup = Supervisor(run_dir, cfg.finetune.max_restarts, cfg.finetune.restart_backoff_s)
    stop_workers, stop_replay = StopFlag(sup.ctx), StopFlag(sup.ctx)
    ready = sup.ctx.Queue()
    start = time.perf_counter()
    previous = _raise_on_stop_signals()
    address, preload_items = None, 0
    program = run_roles(cfg.actor.num_actors)  # replay first, then the workers
    try:
        try:
            sup.start(program[0].name, roles.replay_role, cfg, env_info, dataset_path,
                      cfg.replay.port, ready, stop_replay, str(paths.replay_checkpoints))
            port, preload_items = _wait_ready(ready, sup, timeout_s=300)
            address = f"localhost:{port}"
            wait_for_server(address, timeout_s=30)
            spec = roles.replay_spec(cfg, env_info["observation_shape"],
                                     env_info["action_shape"], env_info["max_episode_steps"],
                                     preload_items)
            for role in program[1:]:
                sup.start(role.name, roles.worker_role, role, cfg, paths, address, spec,
                          stop_workers, restartable=role.restartable)
            _watch_budget(address, preload_items, cfg.finetune.env_steps, status, sup.poll,
                          lambda: sum(r.restarts for r in sup.roles.values()))
            stop_workers.set()
            sup.join(["learner"], timeout=120)
            sup.join([role.name for role in program if role.restartable], timeout=15)
            if sup.alive("learner"):
                raise RoleDied("learner did not stop within 120 s")
            sup.poll()
        except _Signal as sig:
            stop_workers.set()
            sup.join(["learner"], timeout=SIGNAL_STOP_S - 4)  # its final checkpoints
            _stop_workers(sup, 1.0)
            stop_replay.set()
            sup.join(["replay"], timeout=1.5)
            name = signal.Signals(sig.signum).name
            raise RunInterrupted(f"{name} received; the learner's last checkpoint is "
                                 f"{paths.learner_checkpoint}; {resume_hint(run_dir)}",
                                 sig.signum) from None
        except RoleDied as died:
            stop_workers.set()
            _stop_after_failure(sup, address, paths, preload_items)
            raise RunFailed(f"{died}; the run stopped. The learner's last checkpoint is "
                            f"{paths.learner_checkpoint}; {resume_hint(run_dir)}") from None
    finally:
        stop_workers.set()
        stop_replay.set()
        sup.join(["replay"], timeout=3)
        sup.kill_all(grace_s=0.5)
        _restore_signals(previous)
    return final_summary(cfg, paths, payload, time.perf_counter() - start)


def _stop_workers(sup: Supervisor, timeout_s: float) -> None:
    """Wait up to timeout_s for actors and evaluator to stop, then kill what is left:
    an actor held by the rate limiter cannot stop once the learner is gone."""
    names = [name for name, role in sup.roles.items() if role.restartable]
    sup.join(names, timeout=max(timeout_s, 0.0))
    for name in names:
        proc = sup.children[name]
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def _stop_after_failure(sup: Supervisor, address: str | None, paths, preload_items: int) -> None:
    """After a fatal failure: let a live learner write its final checkpoints; with the
    learner dead, stop the actors and checkpoint the replay tables it left."""
    from launch import roles

    if sup.alive("learner"):
        # Its final checkpoint; a learner whose replay server died may be stuck in a
        # sample, and then its last checkpoint pair (learner and replay) is the one.
        sup.join(["learner"], timeout=15)
        _stop_workers(sup, 2)
        return
    _stop_workers(sup, 2)
    if address is not None and sup.alive("replay"):
        from replay.tables import as_client

        try:
            record = roles.checkpoint_replay_and_record(as_client(address), paths,
                                                        preload_items)
            sup.log(f"replay checkpoint written at {record['env_steps']} env steps "
                    f"({record['size']} windows)")
        except Exception as error:  # the failure being reported matters more
            sup.log(f"replay checkpoint failed: {error}")


def final_summary(cfg, paths, pretrained: dict, seconds: float) -> FinetuneSummary:
    """Evaluate the learner's last checkpoint (logged at the final env step) and sum up."""
    from launch import roles
    from learner.checkpoint import load_policy
    from learner.tensorboard import SummaryWriter

    model, final = load_policy(paths.learner_checkpoint)
    with SummaryWriter(paths.role_dir("evaluator")) as writer:
        result = roles.evaluate_and_log(cfg, model, writer, final["env_steps"],
                                        final["learner"]["step"])
    return FinetuneSummary(
        env_steps=int(final["env_steps"]),
        updates=int(final["learner"]["step"]) - int(pretrained["learner"]["step"]),
        seconds=seconds,
        final_return=result.mean_return,
        final_normalized=result.normalized_score,
        learner_checkpoint=paths.learner_checkpoint,
    )


def _wait_ready(ready, sup: Supervisor, timeout_s: float) -> tuple[int, int]:
    """(port, preload items) from the replay role; its refusal of a restored table is
    re-raised here as ValueError (bad input: a run directory from another config)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            first, second = ready.get(timeout=0.5)
            if first == "error":
                raise ValueError(second)
            return first, second
        except queue.Empty:
            if sup.failed():
                raise RunFailed("replay server failed to start: " + ", ".join(sup.failed()))
    raise RunFailed(f"replay server not ready within {timeout_s:g} s")


def _watch_budget(address: str, preload: int, budget: int, status: bool, poll,
                  restarts=lambda: 0) -> int:
    """Read the replay server's counters every second until the env-step budget is
    reached; `poll()` raises RoleDied when a role has died (and restarts what may be);
    with `status`, a status line shows progress and `restarts()`."""
    from replay.tables import (
        EXPERIENCE_TABLE,
        ReplayUnavailable,
        as_client,
        table_counts,
    )

    client = as_client(address)
    start = time.perf_counter()
    steps = first = None
    while steps is None or steps < budget:
        time.sleep(1.0)
        poll()
        try:
            counts = table_counts(client, EXPERIENCE_TABLE)
        except (ReplayUnavailable, RuntimeError):
            poll()
            raise RoleDied("the replay server stopped answering") from None
        steps = env_steps(counts, preload)
        first = steps if first is None else first
        if status:
            elapsed = time.perf_counter() - start
            restarted = restarts()
            print(f"\r[{elapsed:6.0f} s] env steps {steps}/{budget} "
                  f"({(steps - first) / elapsed:.0f}/s)  learner samples "
                  f"{counts['samples']:.0f}  replay size {counts['size']:.0f}"
                  + (f"  restarts {restarted}" if restarted else ""),
                  end="", file=sys.stderr, flush=True)
    if status:
        print(file=sys.stderr)
    return steps


# ---- entry point -----------------------------------------------------------------


# Flags a resumed run may not change: it continues with its saved config.
_FIXED_ON_RESUME = ("preset", "dataset", "seed", "device", "objective", "pretrain_updates",
                    "critic_pretrain_updates",
                    "eval_episodes", "collect_episodes", "num_actors", "envs_per_actor",
                    "set", "checkpoint")


def saved_config(run_dir: Path):
    """The run's saved config.json, with --env_steps if given, for --resume.

    ValueError when a flag tries to change the config (only --env_steps may) or
    when there is no readable config.json.
    """
    from launch.flags import checked
    from launch.presets import RunConfig

    FLAGS = flags.FLAGS
    changed = [f"--{name}" for name in _FIXED_ON_RESUME if name in FLAGS and FLAGS[name].present]
    if changed:
        raise ValueError(f"--resume continues {run_dir} with its saved config; "
                         f"{', '.join(changed)} cannot change it (only --env_steps can)")
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"--logdir={run_dir}: no config.json; nothing to resume")
    try:
        cfg = RunConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: unreadable saved config ({exc})") from exc
    if FLAGS.env_steps is not None:
        cfg = replace(cfg, finetune=replace(cfg.finetune, env_steps=FLAGS.env_steps))
    return checked(cfg)


def resume_run(logdir: str | None) -> tuple[object, Path, Path, str | None]:
    """(config, checkpoint, run directory, dataset) of the fine-tuning run to continue.

    The config is `saved_config`; the checkpoint is the learner's latest, or the one
    the run started from when the learner never wrote one. ValueError when there is
    nothing to resume.
    """
    if not logdir:
        raise ValueError("--resume needs --logdir: the run directory to continue")
    run_dir = Path(logdir)
    cfg = saved_config(run_dir)
    started = run_dir / "finetune.json"
    if not started.is_file():
        raise ValueError(f"--logdir={run_dir}: not a fine-tuning run directory "
                         "(no finetune.json); nothing to resume")
    try:
        origin = json.loads(started.read_text())
    except ValueError as exc:
        raise ValueError(f"{started}: unreadable ({exc})") from exc
    checkpoint = run_dir / "learner" / "checkpoint.pt"
    if not checkpoint.is_file():
        checkpoint = Path(origin["checkpoint"])
    return cfg, checkpoint, run_dir, origin.get("dataset")


def main(argv) -> None:
    del argv
    from launch.pipeline import (
        preload_dataset,
        save_config,
        summary_table,
        tensorboard_command,
    )

    FLAGS = flags.FLAGS
    if FLAGS.resume:
        cfg, checkpoint, run_dir, dataset = resume_run(FLAGS.logdir)
        print(f"onramp: resuming {run_dir} from {checkpoint}", file=sys.stderr)
    else:
        from launch import roles  # noqa: F401  (reverb before torch)
        from learner.checkpoint import load_checkpoint

        checkpoint = require_checkpoint(FLAGS.checkpoint)
        cfg = resolve_config()
        # A checkpoint that cannot run here, or a dataset that cannot be preloaded, is
        # refused before the run directory exists.
        payload = load_checkpoint(checkpoint)
        fit_model_to_checkpoint(cfg, payload, checkpoint, _env_info(cfg.env.env_id))
        dataset = preload_dataset(cfg, payload)
        run_dir = new_run_dir(FLAGS.logdir, f"{cfg.name}-{cfg.objective.kind}")
        save_config(run_dir, cfg)
    run = run_inline if FLAGS.mode == "inline" else run_local
    summary = run(cfg, checkpoint, run_dir, dataset_path=dataset)
    print(summary_table(summary.rows(cfg.objective.kind)
                        + [("tensorboard", tensorboard_command(run_dir))]))


if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Pretrained checkpoint to fine-tune.")
    define_config_flags(pretrain=False)
    define_logdir_flag()
    define_finetune_flags()
    define_mode_flag()
    define_resume_flag()
    run_main(main)
