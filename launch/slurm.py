"""Write the sbatch script of a multi-node fine-tuning run as a SLURM heterogeneous job.

    python -m launch.slurm --preset=hopper-medium --checkpoint=runs/x/pretrain/checkpoint.pt \
        --actor_nodes=4 [--actors_per_node=2] [--gpus=1] [--port=8000] \
        [--partition=gpu] [--actor_partition=cpu] [--time=04:00:00] \
        [--logdir=runs/...] [--out=FILE | --dry_run]

Component 0 is one GPU node running the replay server (fixed --port), the learner and
the evaluator; component 1 is --actor_nodes CPU nodes running --actors_per_node
actors each, connected to the replay server by the first hostname of component 0.
Every role is `python -m launch.node` with the same preset and overrides. The job ends
when the learner reaches the environment-step budget; on SIGTERM (scancel --batch, or
the time limit coming) the script stops the roles in order: actors and evaluator,
learner, replay server.

--dry_run prints the script and writes nothing. Otherwise the script is written to
--out (default: <logdir>/job.sbatch), never over an existing file, and the run
directory is created (it must be on a filesystem every node sees). Paths in the
script are absolute; the interpreter is this one unless --python says otherwise.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from absl import flags

from launch.flags import (
    OVERRIDES,
    define_config_flags,
    define_finetune_flags,
    define_logdir_flag,
    new_run_dir,
    require_checkpoint,
    resolve_config,
    run_main,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SlurmJob:
    node_flags: tuple[str, ...]
    """Flags every role gets: preset, overrides, --checkpoint, --logdir."""
    logdir: str
    """Run directory; SLURM writes the job's output there."""
    actor_nodes: int
    actors_per_node: int = 1
    port: int = 8000
    """The replay server's port: the one port the nodes must reach on the GPU node."""
    gpus: int = 1
    """GPUs of the GPU node for the learner: 0 asks for none; above 1 the learner runs
    data-parallel under torchrun, one process per GPU."""
    partition: str | None = None
    """Partition of the GPU node; None: the cluster's default."""
    actor_partition: str | None = None
    """Partition of the actor nodes; None: `partition`."""
    time: str = "04:00:00"
    gpu_node_cpus: int = 8
    cpus_per_actor: int = 4
    job_name: str = "onramp"
    python: str = "python"
    workdir: str = "."
    """Where `launch` can be imported from: the repository (or any directory, when
    onramp is installed in `python`'s environment)."""
    replay_wait_s: float = 600.0
    """How long the other roles wait for the replay server, which imports TensorFlow
    and loads the dataset before it listens."""
    stop_lead_s: int = 180
    """SIGTERM the script this long before the time limit, so every role stops in order."""

    def validate(self) -> None:
        problems = []
        if self.actor_nodes < 1:
            problems.append(f"--actor_nodes={self.actor_nodes} must be >= 1")
        if self.actors_per_node < 1:
            problems.append(f"--actors_per_node={self.actors_per_node} must be >= 1")
        if not 1 <= self.port <= 65535:
            problems.append(f"--port={self.port} must lie in 1..65535")
        if self.gpus < 0:
            problems.append(f"--gpus={self.gpus} must be >= 0")
        if self.gpu_node_cpus < 1 or self.cpus_per_actor < 1:
            problems.append("CPU counts must be >= 1")
        if self.stop_lead_s < 0:
            problems.append(f"stop_lead_s={self.stop_lead_s} must be >= 0")
        if problems:
            raise ValueError("invalid SLURM job: " + "; ".join(problems))


def sbatch_script(job: SlurmJob) -> str:
    """The job's sbatch script (pure: reads nothing, writes nothing)."""
    job.validate()
    q = shlex.quote
    gpu = f"{job.gpus} GPU{'s' if job.gpus != 1 else ''}" if job.gpus else "no GPU"
    component0 = [f"--job-name={job.job_name}",
                  f"--output={job.logdir}/slurm-%j.out",
                  f"--time={job.time}",
                  f"--signal=B:TERM@{job.stop_lead_s}"]
    if job.partition:
        component0.append(f"--partition={job.partition}")
    component0 += ["--nodes=1", "--ntasks=1", f"--cpus-per-task={job.gpu_node_cpus}"]
    if job.gpus:
        component0.append(f"--gres=gpu:{job.gpus}")
    # Explicit in both components: some options carry over to later components, some not.
    actor_partition = job.actor_partition or job.partition
    component1 = [f"--time={job.time}"]
    if actor_partition:
        component1.append(f"--partition={actor_partition}")
    component1 += [f"--nodes={job.actor_nodes}", f"--ntasks-per-node={job.actors_per_node}",
                   f"--cpus-per-task={job.cpus_per_actor}"]
    header = "\n".join(
        [f"#SBATCH {option}" for option in component0]
        + ["#SBATCH hetjob"]
        + [f"#SBATCH {option}" for option in component1]
    )
    run_flags = " ".join(q(f) for f in job.node_flags)
    if job.gpus > 1:  # a data-parallel learner: one process per GPU (launch.roles.learner_role)
        learner = (f'"$PYTHON" -m torch.distributed.run --standalone '
                   f'--nproc_per_node={job.gpus} -m launch.node')
    else:
        learner = '"$PYTHON" -m launch.node'
    return f"""#!/bin/bash
# onramp fine-tuning as a SLURM heterogeneous job (written by `python -m launch.slurm`).
#   component 0, 1 node: replay server (port {job.port}), learner ({gpu}), evaluator
#   component 1, {job.actor_nodes} node(s) x {job.actors_per_node} actor(s), connected to the replay server
# Submit: sbatch FILE. Stop early, in order: scancel --batch --signal=TERM JOBID
# The replay port must be reachable from the actor nodes and from nowhere else:
# Reverb has no authentication or TLS.
{header}

set -u
cd {q(job.workdir)}
export PYTHONUNBUFFERED=1
PYTHON={q(job.python)}
PORT={job.port}
# This script runs on the first node of component 0, with the replay server.
REPLAY_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST_HET_GROUP_0" | head -n1)
RUN_FLAGS=({run_flags})
WAIT_FLAGS=(--replay_address="$REPLAY_HOST:$PORT" --replay_wait_s={job.replay_wait_s:g})

"$PYTHON" -m launch.node --role=replay --port="$PORT" "${{RUN_FLAGS[@]}}" &
REPLAY_PID=$!
{learner} --role=learner "${{WAIT_FLAGS[@]}}" "${{RUN_FLAGS[@]}}" &
LEARNER_PID=$!
"$PYTHON" -m launch.node --role=evaluator "${{WAIT_FLAGS[@]}}" "${{RUN_FLAGS[@]}}" &
EVALUATOR_PID=$!
# One task per actor; each task's own shell expands $SLURM_PROCID (0, 1, ...).
srun --het-group=1 --kill-on-bad-exit=0 bash -c \\
    'exec "$0" -m launch.node --role=actor --actor_id="$SLURM_PROCID" "$@"' \\
    "$PYTHON" "${{WAIT_FLAGS[@]}}" "${{RUN_FLAGS[@]}}" &
ACTORS_PID=$!

# Actors and evaluator first (srun passes SIGTERM on to every actor), then the learner
# (it writes its checkpoint), the replay server last: the others need it to finish.
finish() {{
    trap '' TERM INT  # a second signal must not cut the ordered stop short
    kill -TERM "$ACTORS_PID" "$EVALUATOR_PID" 2>/dev/null
    wait "$ACTORS_PID" "$EVALUATOR_PID"
    if [ -z "${{STATUS:-}}" ]; then
        kill -TERM "$LEARNER_PID" 2>/dev/null
        wait "$LEARNER_PID"
        STATUS=$?
    fi
    kill -TERM "$REPLAY_PID" 2>/dev/null
    wait "$REPLAY_PID"
    exit "$STATUS"
}}
trap finish TERM INT
# Every role stops at the environment-step budget; the learner's exit ends the job.
wait "$LEARNER_PID"
STATUS=$?
finish
"""


def write_script(path: Path, script: str) -> Path:
    """Write an executable script at `path`; an existing file is refused, never replaced."""
    path = Path(path)
    try:
        with open(path, "x") as f:
            f.write(script)
    except FileExistsError:
        raise FileExistsError(f"--out={path} already exists; choose another --out") from None
    path.chmod(0o755)
    return path


def define_slurm_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Pretrained checkpoint every role starts from.")
    flags.DEFINE_integer("actor_nodes", None, "CPU nodes running actors.")
    flags.DEFINE_integer("actors_per_node", 1, "Actor processes per actor node.")
    flags.DEFINE_integer("cpus_per_actor", None, "CPUs per actor; default: --envs_per_actor.")
    flags.DEFINE_integer("port", 8000, "Port of the replay server on the GPU node.")
    flags.DEFINE_integer("gpus", 1, "GPUs for the learner's node (0: none).")
    flags.DEFINE_integer("gpu_node_cpus", 8, "CPUs of the replay/learner/evaluator node.")
    flags.DEFINE_string("partition", None, "Partition of the GPU node; default: the cluster's.")
    flags.DEFINE_string("actor_partition", None,
                        "Partition of the actor (CPU) nodes; default: --partition.")
    flags.DEFINE_string("time", "04:00:00", "Time limit of the job.")
    flags.DEFINE_string("job_name", None, "Job name; default onramp-<preset>.")
    flags.DEFINE_string("python", sys.executable,
                        "Interpreter on the nodes; default: this one (a shared venv).")
    flags.DEFINE_string("out", None, "Script to write; default <logdir>/job.sbatch.")
    flags.DEFINE_bool("dry_run", False, "Print the script; write nothing.")
    define_config_flags(pretrain=False)
    define_logdir_flag()
    define_finetune_flags(num_actors=False)


def main(argv) -> None:
    del argv
    FLAGS = flags.FLAGS
    require_checkpoint(FLAGS.checkpoint)
    if FLAGS.actor_nodes is None:
        raise ValueError("--actor_nodes is required: how many CPU nodes run actors")
    cfg = resolve_config()  # a bad preset or override fails here, not on the cluster
    logdir = Path(FLAGS.logdir or Path("runs") / f"{cfg.name}-{cfg.objective.kind}-slurm-"
                  f"{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    node_flags = [f"--preset={FLAGS.preset}"]
    for name in OVERRIDES:
        if name in FLAGS and FLAGS[name].value is not None:
            value = FLAGS[name].value
            if name == "dataset":
                value = Path(value).absolute()
            node_flags.append(f"--{name}={value}")
    node_flags += [f"--set={item}" for item in FLAGS.set]
    node_flags += [f"--checkpoint={Path(FLAGS.checkpoint).absolute()}", f"--logdir={logdir}"]
    job = SlurmJob(
        node_flags=tuple(node_flags), logdir=str(logdir), actor_nodes=FLAGS.actor_nodes,
        actors_per_node=FLAGS.actors_per_node, port=FLAGS.port, gpus=FLAGS.gpus,
        partition=FLAGS.partition, actor_partition=FLAGS.actor_partition, time=FLAGS.time,
        gpu_node_cpus=FLAGS.gpu_node_cpus,
        cpus_per_actor=FLAGS.cpus_per_actor or cfg.actor.envs_per_actor,
        job_name=FLAGS.job_name or f"onramp-{cfg.name}", python=FLAGS.python,
        workdir=str(REPO),
    )
    script = sbatch_script(job)
    if FLAGS.dry_run:
        print(script, end="")
        return
    out = Path(FLAGS.out) if FLAGS.out else logdir / "job.sbatch"
    if out.exists():
        raise FileExistsError(f"--out={out} already exists; choose another --out")
    new_run_dir(str(logdir), cfg.name)  # refuses a run directory that holds files
    write_script(out, script)
    print(f"wrote {out}\nsubmit with: sbatch {out}\n"
          f"logs and checkpoints: {logdir}\n"
          f"stop early (in order): scancel --batch --signal=TERM <job id>")


if __name__ == "__main__":
    define_slurm_flags()
    run_main(main)
