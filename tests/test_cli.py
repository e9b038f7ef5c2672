"""Every entry point's `--help` lists exactly the flags it reads, each with its default.

absl's `--help` shows the main module's key flags; `launch.flags.run_main` makes every
flag that onramp's own modules define a key flag of the entry point, so flags shared
through `launch.flags` are listed too. The expected sets are written out here: a flag
added to an entry point must be added to its list, and a flag listed here but no
longer defined fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CONFIG = ["preset", "dataset", "seed", "device", "objective", "eval_episodes", "set"]
PRETRAIN = ["pretrain_updates", "critic_pretrain_updates", "collect_episodes"]
FINETUNE = ["envs_per_actor", "env_steps"]

ENTRY_POINTS = {
    "actors.collect": ["env_id", "policy", "episodes", "num_envs", "noise", "seed", "out",
                       "format"],
    "actors.evaluate": ["checkpoint", "episodes", "target_return", "context_len", "env_id",
                        "task_id", "seed"],
    "learner.pretrain": [*CONFIG, *PRETRAIN, "logdir"],
    "launch.main": [*CONFIG, *PRETRAIN, "logdir", "num_actors", *FINETUNE, "mode", "resume",
                    "online", "games"],
    "launch.local": ["checkpoint", *CONFIG, "logdir", "num_actors", *FINETUNE, "mode",
                     "resume"],
    "launch.node": ["role", "replay_address", "port", "actor_id", "checkpoint",
                    "replay_wait_s", "stop_grace_s", *CONFIG, "logdir", *FINETUNE],
    "launch.ray": ["address", "checkpoint", "learner_gpus", "max_restarts", *CONFIG, "logdir",
                   "num_actors", *FINETUNE],
    "launch.slurm": ["checkpoint", "actor_nodes", "actors_per_node", "cpus_per_actor", "port",
                     "gpus", "gpu_node_cpus", "partition", "actor_partition", "time",
                     "job_name", "python", "out", "dry_run", *CONFIG, "logdir", *FINETUNE],
    "launch.report": ["logdir", "out"],
    "replay.export": ["logdir", "out"],
    "bench.learning": ["seeds", "env_steps", "out", "preset", "objectives", "set", "jobs"],
}

# A flag line in absl's help: "  --name: help" or "  --[no]name: help".
FLAG_LINE = re.compile(r"^  --(?:\[no\])?(\w+):", re.MULTILINE)


def help_blocks(text: str) -> dict[str, str]:
    """flag name -> its help block (the flag line and the indented lines under it)."""
    matches = list(FLAG_LINE.finditer(text))
    blocks = {}
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text)
        blocks[match.group(1)] = text[match.start():end]
    return blocks


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
@pytest.mark.slow
def test_help_lists_every_flag_the_entry_point_reads(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    # absl's --help prints the usage to stdout and exits with status 1.
    assert proc.returncode == 1 and "Try --helpfull" in proc.stdout, proc.stderr[-3000:]
    blocks = help_blocks(proc.stdout)
    assert set(blocks) == set(ENTRY_POINTS[module]), (
        f"listed but not expected: {sorted(set(blocks) - set(ENTRY_POINTS[module]))}; "
        f"expected but not listed: {sorted(set(ENTRY_POINTS[module]) - set(blocks))}")
    # absl prints "(default: ...)" for every flag whose default is not None; a flag
    # without one says in its help what it falls back to (the preset's value, ...).
    for name, block in blocks.items():
        assert "(default: " in block or "default" in block.lower() or "required" in block \
            or name in NO_DEFAULT, f"{module} --{name}: no default shown:\n{block}"


# Flags with no default at all: the entry point refuses to run without them, or, for
# --role and --checkpoint of the launchers, without them as their docs say.
NO_DEFAULT = {"checkpoint", "env_id", "out", "role", "replay_address", "port",
              "actor_nodes", "logdir", "partition", "actor_partition"}


def test_help_marks_a_changed_flag_set():
    """The parser above finds both absl flag forms, so the set comparison can fail."""
    text = ("flags:\n\nmain.py:\n  --alpha: a.\n    (default: '1')\n"
            "  --[no]beta: b.\n    (default: 'false')\n")
    assert set(help_blocks(text)) == {"alpha", "beta"}
