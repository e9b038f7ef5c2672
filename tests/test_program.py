"""The run program (launch.program): one description of a run's roles that every
launcher follows. The launchers' own tests check that what they start matches it
(test_finetune: launch.local's processes; test_ray: the Ray actors); the SLURM script
is checked here."""

from __future__ import annotations

import re

import pytest

from launch.program import ROLE_KINDS, Role, env_steps, run_roles, stop_order
from launch.slurm import SlurmJob, sbatch_script


def test_run_roles_start_with_the_replay_server_and_name_each_actor():
    program = run_roles(3)
    assert [role.name for role in program] == [
        "replay", "learner", "actor_0", "actor_1", "actor_2", "evaluator"]
    assert [role.restartable for role in program] == [False, False, True, True, True, True]
    assert {role.kind for role in program} == set(ROLE_KINDS)
    with pytest.raises(ValueError, match="actor.num_actors=0 must be >= 1"):
        run_roles(0)
    with pytest.raises(ValueError, match="role 'critic' must be one of"):
        Role("critic")


def test_stop_order_is_workers_then_learner_then_replay():
    names = [role.name for role in stop_order(run_roles(2))]
    assert names[-2:] == ["learner", "replay"]
    assert set(names[:-2]) == {"actor_0", "actor_1", "evaluator"}


def test_env_steps_are_inserts_past_the_preload():
    assert env_steps({"inserts": 1500.0, "samples": 9.0}, 1200) == 300


def test_the_slurm_script_starts_every_role_of_the_program():
    job = SlurmJob(node_flags=("--preset=quickstart", "--checkpoint=/c.pt", "--logdir=/r"),
                   logdir="/r", actor_nodes=2, gpus=1, python="/venv/bin/python",
                   workdir="/src")
    started = set(re.findall(r"--role=(\w+)", sbatch_script(job)))
    assert started == set(ROLE_KINDS)
