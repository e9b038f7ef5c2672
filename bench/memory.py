"""Memory of every process of a local fine-tuning run, sampled while it runs.

Starts the main job (`launch.main`: dataset, pretraining, then `launch.local`'s
processes) with an env-step budget it will not reach, samples the resident set size
of each role (replay, learner, actors, evaluator; pids from the run's
processes.json, so a restarted role is followed) every --sample_s seconds for
--minutes of fine-tuning, then stops the run with SIGINT as a user would. Prints one
JSON object: the launcher's exit status and seconds from SIGINT to its exit; per
role the RSS at the first sample after --warmup_s, at the end and at its peak, and
the growth rate (least-squares slope, MiB per minute) after the warm-up; and how
far the learner got (updates, env steps).

    python -m bench.memory [--minutes=10] [--sample_s=10] [--warmup_s=60]
        [--preset=quickstart] [--set=objective.kind=odt ...]

Linux only: RSS is read from /proc/<pid>/status.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from launch.supervisor import rss_mib


def rss_or_none(pid: int) -> float | None:
    """Resident memory of `pid` in MiB, or None once it is gone."""
    try:
        return rss_mib(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def read_pids(run_dir: Path) -> dict[str, int]:
    """Role -> pid from the run's processes.json ({} until the launcher wrote it)."""
    try:
        table = json.loads((run_dir / "processes.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {name: int(entry["pid"]) for name, entry in table.items()}


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    t, m = np.asarray(samples).T
    return float(np.polyfit(t / 60.0, m, 1)[0])


def summarize(samples: dict[str, list[tuple[float, float]]], warmup_s: float) -> dict:
    """Per role: RSS after the warm-up, at the end, at its peak, and the slope after."""
    out = {}
    for role, series in sorted(samples.items()):
        after = [(t, m) for t, m in series if t >= warmup_s] or series[-1:]
        out[role] = {
            "rss_mib_after_warmup": round(after[0][1], 1),
            "rss_mib_end": round(series[-1][1], 1),
            "peak_rss_mib": round(max(m for _, m in series), 1),
            "growth_mib_per_min": round(slope_mib_per_min(after), 2),
            "samples": len(series),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="minutes of fine-tuning to watch")
    parser.add_argument("--sample_s", type=float, default=10.0)
    parser.add_argument("--warmup_s", type=float, default=60.0,
                        help="growth is measured after this many seconds of fine-tuning")
    parser.add_argument("--preset", default="quickstart")
    parser.add_argument("--set", action="append", default=[],
                        help="config override passed on to launch.main, dotted field=value")
    parser.add_argument("--logdir", default=None, help="run directory (must not exist); "
                        "default: a temporary one, removed afterwards")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sample_s <= 0:
        raise SystemExit("error: --minutes and --sample_s must be > 0")
    if args.logdir and Path(args.logdir).exists():
        raise SystemExit(f"error: --logdir={args.logdir} already exists")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.logdir or Path(tmp) / "run")
        command = [sys.executable, "-m", "launch.main", f"--preset={args.preset}",
                   f"--logdir={run_dir}", "--set=finetune.env_steps=1000000000",
                   *(f"--set={item}" for item in args.set)]
        # The run's output goes to a file: a pipe nobody reads while the run goes on
        # fills up and blocks every process of the run that writes to it.
        log_path = Path(tmp) / "launcher.log"
        log = open(log_path, "w")
        launcher = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=log)
        samples: dict[str, list[tuple[float, float]]] = {}
        try:
            while not read_pids(run_dir):
                if launcher.poll() is not None:
                    raise SystemExit(f"error: the run ended before fine-tuning started "
                                     f"(exit {launcher.returncode}):\n{tail(log_path)}")
                time.sleep(1.0)
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < 60.0 * args.minutes:
                if launcher.poll() is not None:
                    raise SystemExit(f"error: the run ended after {elapsed:.0f} s of "
                                     f"fine-tuning (exit {launcher.returncode}):\n"
                                     f"{tail(log_path)}")
                for role, pid in read_pids(run_dir).items():
                    rss = rss_or_none(pid)
                    if rss is not None:
                        samples.setdefault(role, []).append((elapsed, rss))
                time.sleep(args.sample_s)
        finally:
            stop_s = None
            if launcher.poll() is None:
                os.kill(launcher.pid, signal.SIGINT)
                signalled = time.monotonic()
                try:
                    launcher.wait(60)
                    stop_s = round(time.monotonic() - signalled, 1)
                except subprocess.TimeoutExpired:
                    os.killpg(launcher.pid, signal.SIGKILL)
                    launcher.wait()
            log.close()
        from learner.tensorboard import read_scalars

        env_steps = read_scalars(run_dir / "learner").get("replay/env_steps", [(0, 0.0)])
        print(json.dumps({
            "benchmark": "memory",
            "preset": args.preset,
            "overrides": args.set,
            "minutes": args.minutes,
            "warmup_s": args.warmup_s,
            "launcher_exit": launcher.returncode,
            "stop_s": stop_s,
            "roles": summarize(samples, args.warmup_s),
            "updates": env_steps[-1][0],
            "env_steps": int(env_steps[-1][1]),
        }), flush=True)


if __name__ == "__main__":
    main()
