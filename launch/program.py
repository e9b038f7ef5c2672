"""The run program: the roles of an online fine-tuning run, described once.

A run is a replay server, a learner, `actor.num_actors` actors and an evaluator.
Every launcher runs this one description and only decides where each role runs:
`launch.local` spawns each as a process on this host, `launch.node` runs one in the
current process, `launch.ray` places them on a Ray cluster, and `launch.slurm`
writes them into an sbatch script.

    roles = run_roles(cfg.actor.num_actors)      # in start order
    # start roles[0] (the replay server) and wait until it has preloaded, then the rest
    # poll until env_steps(table_counts(...), preload) >= cfg.finetune.env_steps
    # stop in stop_order(roles); before the learner's stop, wait until its samples
    # reach env_steps x samples_per_insert(cfg) (`launch.runs.wait_for_owed_updates`)

Role functions live in `launch.roles` (`replay_role`, and `worker_role` for the
others); this module imports neither Reverb nor torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ROLE_KINDS = ("replay", "learner", "actor", "evaluator")


@dataclass(frozen=True)
class Role:
    kind: str
    """One of ROLE_KINDS."""
    actor_id: int = 0
    """The actor's index (seeds, log directory); 0 for the other kinds."""

    def __post_init__(self):
        if self.kind not in ROLE_KINDS:
            raise ValueError(f"role {self.kind!r} must be one of {', '.join(ROLE_KINDS)}")

    @property
    def name(self) -> str:
        """The role's process and log-directory name: replay, learner, actor_<i>, evaluator."""
        return f"actor_{self.actor_id}" if self.kind == "actor" else self.kind

    @property
    def restartable(self) -> bool:
        """Actors and the evaluator hold no state but the newest published weights, so a
        dead one is started again; without the learner or the replay server the run
        stops (with checkpoints and a resume command)."""
        return self.kind in ("actor", "evaluator")


def run_roles(num_actors: int) -> tuple[Role, ...]:
    """The run's roles in start order: the replay server first (the others connect to
    it once it has preloaded the offline windows), then the learner, the actors and the
    evaluator."""
    if num_actors < 1:
        raise ValueError(f"actor.num_actors={num_actors} must be >= 1")
    return (Role("replay"), Role("learner"),
            *(Role("actor", i) for i in range(num_actors)), Role("evaluator"))


def stop_order(roles: Sequence[Role]) -> tuple[Role, ...]:
    """The order to stop `roles` in: actors and the evaluator first, while the learner
    still samples, so inserts the rate limiter holds are admitted (an actor's held
    write also gives up at its stop, `actors.actor.BackgroundSink`; stopped before
    the actors, the learner of an inline run once took 37 s); then the learner (at the
    budget, once it has taken the samples the steps owe,
    `launch.runs.wait_for_owed_updates`); the replay server last."""
    rank = {"actor": 0, "evaluator": 0, "learner": 1, "replay": 2}
    return tuple(sorted(roles, key=lambda role: rank[role.kind]))


def env_steps(counts: Mapping[str, float], preload_items: int) -> int:
    """The run's environment steps: experience inserts minus the P preloaded offline
    windows (each real transition is one inserted window)."""
    return int(counts["inserts"] - preload_items)


def samples_per_insert(cfg) -> float:
    """Learner samples per environment step (the rate limiter's ratio):
    `replay.updates_per_env_step` updates of `optim.batch_size` windows. Every DDP rank's
    samples count, so G ranks make updates_per_env_step / G group updates per step."""
    return cfg.replay.updates_per_env_step * cfg.optim.batch_size


def samples_owed(counts: Mapping[str, float], preload_items: int, spi: float) -> float:
    """Learner samples the run's environment steps still entitle it to take:
    `env_steps x spi` less the samples taken (<= 0 once the learner has caught up)."""
    return env_steps(counts, preload_items) * spi - counts["samples"]
