"""Fine-tuning on a Ray cluster: the same roles, placed and restarted by Ray.

    ray start --head                       # on one node
    ray start --address=HEAD:6379          # on the others
    python -m launch.ray --address=auto --preset=quickstart \
        --checkpoint=runs/x/pretrain/checkpoint.pt --num_actors=8 [--learner_gpus=1]

The replay server and the learner are placed first (the learner with `num_gpus`
when asked); actors are spread over the nodes. Each role runs inside a Ray actor
process; a role that fails ends that process, so Ray restarts a dead actor or
evaluator (up to `--max_restarts`) while a dead learner or replay server ends the
run. The run stops at the environment-step budget. Run directories must be on a
filesystem every node sees (the checkpoint is read, logs and checkpoints written).

Ray is an optional extra: `pip install .[ray]`.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

from absl import flags

from launch.flags import (
    RunFailed,
    define_config_flags,
    define_finetune_flags,
    define_logdir_flag,
    new_run_dir,
    require_checkpoint,
    resolve_config,
    run_main,
)
from launch.program import Role, run_roles, samples_per_insert
from launch.runs import (
    FinetuneSummary,
    final_summary,
    wait_for_owed_updates,
    watch_budget,
)
from launch.supervisor import RoleDied


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ValueError("launch.ray needs Ray: pip install '.[ray]'") from exc
    return ray


def _role_host_class(ray):
    @ray.remote
    class RoleHost:
        """One onramp role running in a thread of this Ray worker process."""

        def __init__(self, role: Role, args: tuple, log_dir: str):
            from launch import roles  # reverb before torch in this process

            self.name = role.name
            self.stop_event = threading.Event()
            self.ready: queue.Queue = queue.Queue()
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(log_dir) / "starts.log", "a") as f:  # restarts are visible
                f.write(f"{time.time():.3f} pid {os.getpid()}\n")
            if role.kind == "replay":
                target, args = roles.replay_role, (*args, self.ready)
            else:
                target, args = roles.worker_role, (role, *args)
            self.thread = threading.Thread(target=self._run, args=(target, args), daemon=True)
            self.thread.start()

        def _run(self, target, args) -> None:
            try:
                target(*args, self.stop_event)
            except BaseException:  # noqa: BLE001 - any failure ends the process for Ray
                import traceback

                traceback.print_exc()
                os._exit(1)

        def wait_ready(self, timeout_s: float):
            return self.ready.get(timeout=timeout_s)

        def node(self) -> tuple[str, str]:
            context = ray.get_runtime_context()
            return context.get_node_id(), ray.util.get_node_ip_address()

        def stop(self, timeout_s: float) -> bool:
            self.stop_event.set()
            self.thread.join(timeout_s)
            return not self.thread.is_alive()

    return RoleHost


def run_ray(cfg, checkpoint: str | Path, run_dir: Path, *, address: str = "auto",
            dataset_path: str | None = None, learner_gpus: float = 0, max_restarts: int = 3,
            status: bool = True, on_started=None) -> FinetuneSummary:
    """Fine-tune on the Ray cluster at `address`; returns the same summary as run_local.

    `on_started(handles)` is called with the role actors once all are placed (tests
    use it to kill an actor).
    """
    ray = _import_ray()
    from launch import roles
    from launch.runs import start_run
    from replay.tables import wait_for_server

    # The checkpoint defines the network, as in launch.local: the replay windows take
    # its context length, not the preset's.
    cfg, payload, env_info, dataset_path, paths = start_run(
        cfg, checkpoint, Path(run_dir).absolute(), dataset_path)
    run_dir = Path(paths.run_dir)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=status)
    RoleHost = _role_host_class(ray)
    start = time.perf_counter()
    handles: dict[str, object] = {}
    program = run_roles(cfg.actor.num_actors)  # replay first, then the workers
    try:
        replay = program[0]
        handles[replay.name] = RoleHost.options(num_cpus=1, max_restarts=0).remote(
            replay, (cfg, env_info, dataset_path, cfg.replay.port or 0),
            str(run_dir / replay.name))
        port, preload = ray.get(handles["replay"].wait_ready.remote(300), timeout=320)
        _, host = ray.get(handles["replay"].node.remote())
        replay_address = f"{host}:{port}"
        wait_for_server(replay_address, timeout_s=60)
        spec = roles.replay_spec(cfg, env_info, preload)
        for role in program[1:]:
            if role.restartable:  # actors spread over the nodes; Ray restarts a dead one
                options = {"num_cpus": 1, "max_restarts": max_restarts, "max_task_retries": -1}
                if role.kind == "actor":
                    options["scheduling_strategy"] = "SPREAD"
            else:
                options = {"num_cpus": 1, "num_gpus": learner_gpus, "max_restarts": 0}
            handles[role.name] = RoleHost.options(**options).remote(
                role, (cfg, paths, replay_address, spec), str(run_dir / role.name))
        if on_started is not None:
            on_started(handles)
        essential = [role.name for role in program if not role.restartable]

        def poll() -> None:
            """A dead role that is not restarted (the learner, the replay server) ends
            the run; Ray restarts the others."""
            for name in essential:
                try:
                    ray.get(handles[name].node.remote(), timeout=30)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                    raise RoleDied(f"{name} died: {exc}") from exc

        watch_budget(replay_address, preload, cfg.finetune.env_steps, status, poll)
        workers = [role.name for role in program if role.restartable]
        ray.get([handles[n].stop.remote(30) for n in workers], timeout=60)
        wait_for_owed_updates(replay_address, preload, samples_per_insert(cfg), poll, status)
        if not ray.get(handles["learner"].stop.remote(120), timeout=150):
            raise RunFailed("learner did not stop within 120 s")
    except ray.exceptions.RayActorError as exc:
        raise RunFailed(f"a role that cannot be restarted died: {exc}") from exc
    except RoleDied as died:
        raise RunFailed(str(died)) from None
    finally:
        if "replay" in handles:
            try:
                ray.get(handles["replay"].stop.remote(10), timeout=20)
            except Exception:  # noqa: BLE001 - the replay actor may already be gone
                pass
        for handle in handles.values():
            ray.kill(handle, no_restart=True)
    return final_summary(cfg, paths, payload, time.perf_counter() - start)


def main(argv) -> None:
    del argv
    from launch.pipeline import (
        preload_dataset,
        save_config,
        summary_table,
        tensorboard_command,
    )
    from learner.checkpoint import load_checkpoint

    FLAGS = flags.FLAGS
    checkpoint = require_checkpoint(FLAGS.checkpoint)
    cfg = resolve_config()
    # A dataset that cannot be preloaded is refused before the run directory exists.
    dataset = preload_dataset(cfg, load_checkpoint(checkpoint))
    run_dir = new_run_dir(FLAGS.logdir, f"{cfg.name}-{cfg.objective.kind}-ray")
    save_config(run_dir, cfg)
    summary = run_ray(cfg, FLAGS.checkpoint, run_dir, address=FLAGS.address,
                      dataset_path=dataset, learner_gpus=FLAGS.learner_gpus,
                      max_restarts=FLAGS.max_restarts)
    print(summary_table(summary.rows(cfg.objective.kind)
                        + [("tensorboard", tensorboard_command(run_dir))]))


if __name__ == "__main__":
    flags.DEFINE_string("address", "auto", "Ray cluster address ('auto' joins the local one).")
    flags.DEFINE_string("checkpoint", None, "Pretrained checkpoint to fine-tune.")
    flags.DEFINE_float("learner_gpus", 0.0, "GPUs for the learner.")
    flags.DEFINE_integer("max_restarts", 3, "Restarts of a dead actor or evaluator.")
    define_config_flags(pretrain=False)
    define_logdir_flag()
    define_finetune_flags()
    run_main(main)
