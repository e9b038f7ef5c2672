"""Local fine-tuning: every role as its own OS process on this host.

    python -m launch.local --preset=quickstart --checkpoint=runs/x/pretrain/checkpoint.pt \
        [--objective=odt|odt_td3] [--num_actors=2 --envs_per_actor=4] [--env_steps=...] \
        [--logdir=runs/...] [--set=finetune.checkpoint_every=500 ...]
    python -m launch.local --resume --logdir=runs/... [--env_steps=...]

Starts the replay server (preloading the top offline trajectories when the
checkpoint's dataset is at hand, or restoring the run's replay checkpoint on
--resume) and beside it the learner, N actors and the evaluator, which begin once it
answers; prints a status line; stops everything at the environment-step budget
(actors and evaluator first, then the learner), and never leaves a child process
behind. Ends with a final evaluation of the learner's last weights.

Faults: a crashed actor or evaluator is restarted after 1 s, 2 s, 4 s, ...
(finetune.max_restarts times each) and the run goes on. A crashed learner or replay
server, or a role past its restarts, stops the run (exit status 1): the learner's
last checkpoint stays, the replay tables are checkpointed, and the message says how
to resume. SIGINT or SIGTERM stops every child within 10 s after a final learner and
replay checkpoint (exit status 130 or 143). Children ignore SIGINT, so a Ctrl-C that
reaches the whole process group is handled by the launcher alone.
"""

from __future__ import annotations

import queue
import signal
import sys
import time
import traceback
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
from launch.program import ROLE_KINDS, run_roles, samples_per_insert, stop_order
from launch.runs import (
    FinetuneSummary,
    env_info,
    final_summary,
    fit_model_to_checkpoint,
    resume_hint,
    resume_run,
    start_run,
    wait_for_owed_updates,
    watch_budget,
)
from launch.supervisor import (
    ReplayReady,
    RoleDied,
    StopFlag,
    StopSignal,
    Supervisor,
    raise_on_stop_signals,
    restore_signals,
)

SIGNAL_STOP_S = 10.0
"""Every child is gone this long after SIGINT or SIGTERM."""


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
    cfg, payload, env_info, dataset_path, paths = start_run(cfg, checkpoint, run_dir,
                                                             dataset_path)
    program = run_roles(1)
    # One stop event per role, set in `stop_order`: the actors first (a write held by the
    # rate limiter gives up at their stop), then the learner.
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

    def stop_in_order(timeout_s: float, kinds=ROLE_KINDS) -> None:
        """Stop each role of `kinds` in `stop_order`, waiting up to timeout_s for each."""
        for role in stop_order(program):
            if role.kind not in kinds:
                continue
            stops[role.name].set()
            if role.name in threads:
                threads[role.name].join(timeout_s)

    start_time = time.perf_counter()
    previous = raise_on_stop_signals()
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
            spec = roles.replay_spec(cfg, env_info, preload_items)
            for role in program[1:]:
                start(role.name, roles.worker_role, role, cfg, paths, address, spec,
                      stops[role.name], 0, False)
            watch_budget(address, preload_items, cfg.finetune.env_steps, status, check)
            stop_in_order(120, kinds=("actor", "evaluator"))
            wait_for_owed_updates(address, preload_items, samples_per_insert(cfg), check,
                                  status)
        except StopSignal as sig:
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
        restore_signals(previous)
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
    cfg, payload, env_info, dataset_path, paths = start_run(cfg, checkpoint, run_dir,
                                                             dataset_path)
    sup = Supervisor(run_dir, cfg.finetune.max_restarts, cfg.finetune.restart_backoff_s)
    # Stopped in `stop_order`: the actors and the evaluator, then the learner.
    stop_learner, stop_acting, stop_replay = (StopFlag(sup.ctx), StopFlag(sup.ctx),
                                              StopFlag(sup.ctx))

    def set_worker_stops() -> None:
        stop_learner.set()
        stop_acting.set()

    ready = sup.ctx.Queue()
    start = time.perf_counter()
    previous = raise_on_stop_signals()
    address, preload_items = None, 0
    program = run_roles(cfg.actor.num_actors)  # replay first, then the workers
    try:
        try:
            sup.start(program[0].name, roles.replay_role, cfg, env_info, dataset_path,
                      cfg.replay.port, ready, stop_replay, str(paths.replay_checkpoints))
            # The workers start now and import TensorFlow and torch while the server
            # preloads; they begin once it answers.
            replay = ReplayReady(sup.ctx)
            for role in program[1:]:
                stop = stop_learner if role.kind == "learner" else stop_acting
                sup.start(role.name, roles.worker_role_when_ready, role, cfg, paths, env_info,
                          replay, stop, restartable=role.restartable)
            port, preload_items = _wait_ready(ready, sup, timeout_s=300)
            address = f"localhost:{port}"
            wait_for_server(address, timeout_s=30)
            replay.set(port, preload_items)
            watch_budget(address, preload_items, cfg.finetune.env_steps, status, sup.poll,
                          lambda: sum(r.restarts for r in sup.roles.values()))
            stop_acting.set()
            _join_or_kill_actors(sup, 15)
            # check_fatal, not poll: the actors stopped (or killed) above stay stopped.
            wait_for_owed_updates(address, preload_items, samples_per_insert(cfg),
                                  sup.check_fatal, status)
            stop_learner.set()
            sup.join(["learner"], timeout=120)
            if sup.alive("learner"):
                raise RoleDied("learner did not stop within 120 s")
            sup.check_fatal()  # an actor killed above was held, not crashed
        except StopSignal as sig:
            set_worker_stops()
            sup.join(["learner"], timeout=SIGNAL_STOP_S - 4)  # its final checkpoints
            _join_or_kill_actors(sup, 1.0)
            stop_replay.set()
            sup.join(["replay"], timeout=1.5)
            name = signal.Signals(sig.signum).name
            raise RunInterrupted(f"{name} received; the learner's last checkpoint is "
                                 f"{paths.learner_checkpoint}; {resume_hint(run_dir)}",
                                 sig.signum) from None
        except RoleDied as died:
            set_worker_stops()
            _stop_after_failure(sup, address, paths, preload_items)
            raise RunFailed(f"{died}; the run stopped. The learner's last checkpoint is "
                            f"{paths.learner_checkpoint}; {resume_hint(run_dir)}") from None
    finally:
        set_worker_stops()
        stop_replay.set()
        sup.join(["replay"], timeout=3)
        sup.kill_all(grace_s=0.5)
        restore_signals(previous)
    return final_summary(cfg, paths, payload, time.perf_counter() - start)


def _join_or_kill_actors(sup: Supervisor, timeout_s: float) -> None:
    """Wait up to timeout_s for the actors and the evaluator to stop, then kill what is
    left: an actor writing in its own loop (no background writer) and held by the rate
    limiter cannot see its stop."""
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
        _join_or_kill_actors(sup, 2)
        return
    _join_or_kill_actors(sup, 2)
    if address is not None and sup.alive("replay"):
        from replay.tables import as_client

        try:
            record = roles.checkpoint_replay_and_record(as_client(address), paths,
                                                        preload_items)
            sup.log(f"replay checkpoint written at {record['env_steps']} env steps "
                    f"({record['size']} windows)")
        except Exception as error:  # the failure being reported matters more
            sup.log(f"replay checkpoint failed: {error}")


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


# ---- entry point -----------------------------------------------------------------


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
        fit_model_to_checkpoint(cfg, payload, checkpoint, env_info(cfg.env.env_id))
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
