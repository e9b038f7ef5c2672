"""Local fine-tuning: every role as its own OS process on this host.

    python -m launch.local --preset=quickstart --checkpoint=runs/x/pretrain/checkpoint.pt \
        [--objective=odt|odt_td3] [--num_actors=2 --envs_per_actor=4] [--env_steps=...] \
        [--logdir=runs/...]

Starts the replay server (preloading the top offline trajectories when the
checkpoint's dataset is at hand), waits until it answers, then the learner, N actors
and the evaluator; prints a status line; stops everything at the environment-step
budget or at the first failure, and never leaves a child process behind. Ends with
a final evaluation of the learner's last weights.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from absl import flags

from launch.flags import (
    define_run_flags,
    new_run_dir,
    require_checkpoint,
    resolve_config,
    run_main,
)


class RunFailed(RuntimeError):
    """A role process died; the message names it and its exit code."""


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


class Supervisor:
    """Owns the child processes: starts, watches and always stops them."""

    def __init__(self):
        self.ctx = mp.get_context("spawn")
        self.children: dict[str, mp.Process] = {}

    def start(self, name: str, target, *args) -> mp.Process:
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=False)
        proc.start()
        self.children[name] = proc
        return proc

    def failed(self) -> list[str]:
        return [f"{name} (exit code {p.exitcode})" for name, p in self.children.items()
                if p.exitcode not in (None, 0)]

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


def run_local(cfg, checkpoint: str | Path, run_dir: Path, *, dataset_path: str | None = None,
              status: bool = True) -> FinetuneSummary:
    """Fine-tune from `checkpoint` with local processes until cfg.finetune.env_steps."""
    from launch import roles  # imports reverb before torch in this process

    from learner.checkpoint import load_checkpoint

    from launch.pipeline import save_config

    payload = load_checkpoint(checkpoint)
    dataset_path = dataset_path or payload.get("dataset")
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        save_config(run_dir, cfg)
    env_info = _env_info(cfg.env.env_id)
    paths = roles.RunPaths(str(run_dir), str(checkpoint))
    sup = Supervisor()
    stop_workers, stop_replay = sup.ctx.Event(), sup.ctx.Event()
    ready = sup.ctx.Queue()
    start = time.perf_counter()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        sup.start("replay", roles.replay_role, cfg, env_info, dataset_path, cfg.replay.port,
                  ready, stop_replay)
        port, preload_items = _wait_ready(ready, sup, timeout_s=300)
        address = f"localhost:{port}"
        from replay.tables import wait_for_server

        wait_for_server(address, timeout_s=30)
        spec = roles.replay_spec(cfg, env_info["observation_shape"], env_info["action_shape"],
                                 env_info["max_episode_steps"], preload_items)
        sup.start("learner", roles.learner_role, cfg, paths, address, spec, stop_workers)
        for i in range(cfg.actor.num_actors):
            sup.start(f"actor_{i}", roles.actor_role, i, cfg, paths, address, spec, stop_workers)
        sup.start("evaluator", roles.evaluator_role, cfg, paths, address, spec, stop_workers)
        _watch(sup, address, preload_items, cfg.finetune.env_steps, status)
        stop_workers.set()
        sup.join(["learner"], timeout=120)
        sup.join([n for n in sup.children if n.startswith(("actor", "evaluator"))], timeout=15)
        failures = sup.failed()
        if failures:
            raise RunFailed("role process failed: " + ", ".join(failures))
        if sup.children["learner"].is_alive():
            raise RunFailed("learner did not stop within 120 s")
    finally:
        stop_workers.set()
        stop_replay.set()
        sup.join(["replay"], timeout=10)
        sup.kill_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return final_summary(cfg, paths, payload, time.perf_counter() - start)


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
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return ready.get(timeout=0.5)
        except queue.Empty:
            if sup.failed():
                raise RunFailed("replay server failed to start: " + ", ".join(sup.failed()))
    raise RunFailed(f"replay server not ready within {timeout_s:g} s")


def _watch(sup: Supervisor, address: str, preload: int, budget: int, status: bool) -> int:
    """Poll until the env-step budget is reached; raise when a role dies."""
    import reverb

    from replay.tables import EXPERIENCE_TABLE, table_counts

    client = reverb.Client(address)
    start = time.perf_counter()
    env_steps = 0
    while env_steps < budget:
        time.sleep(1.0)
        failures = sup.failed()
        if failures:
            raise RunFailed("role process failed: " + ", ".join(failures))
        counts = table_counts(client, EXPERIENCE_TABLE)
        env_steps = int(counts["inserts"] - preload)
        if status:
            elapsed = time.perf_counter() - start
            print(f"\r[{elapsed:6.0f} s] env steps {env_steps}/{budget} "
                  f"({env_steps / elapsed:.0f}/s)  learner samples {counts['samples']:.0f}  "
                  f"replay size {counts['size']:.0f}", end="", file=sys.stderr, flush=True)
    if status:
        print(file=sys.stderr)
    return env_steps


# ---- entry point -----------------------------------------------------------------


def define_finetune_flags() -> None:
    flags.DEFINE_integer("num_actors", None, "Actor processes.")
    flags.DEFINE_integer("envs_per_actor", None, "Environments per actor.")
    flags.DEFINE_integer("env_steps", None, "Online budget in environment steps.")


def main(argv) -> None:
    del argv
    from launch.pipeline import save_config, summary_table

    FLAGS = flags.FLAGS
    require_checkpoint(FLAGS.checkpoint)
    cfg = resolve_config()
    run_dir = new_run_dir(FLAGS.logdir, f"{cfg.name}-{cfg.objective.kind}")
    save_config(run_dir, cfg)
    summary = run_local(cfg, FLAGS.checkpoint, run_dir, dataset_path=cfg.data.path)
    print(summary_table(summary.rows(cfg.objective.kind)))


if __name__ == "__main__":
    flags.DEFINE_string("checkpoint", None, "Pretrained checkpoint to fine-tune.")
    define_finetune_flags()
    define_run_flags()
    run_main(main)
