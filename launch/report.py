"""Learning curves and a summary table from one or more run directories.

    python -m launch.report --logdir=runs/a,runs/b [--out=report]

Reads each run's evaluator events (eval/return, eval/normalized_score against
environment steps) and its config, and writes `<out>/curves.png` (one line per run)
and `<out>/summary.md` (one row per run: objective, env steps, first and last
evaluation, best evaluation, learner throughput).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from absl import flags

from launch.flags import run_main
from learner.tensorboard import read_scalars


@dataclass
class RunCurve:
    name: str
    objective: str
    env_steps: list[int]
    returns: list[float]
    normalized: list[float]
    updates_per_s: float | None
    sample_wait: float | None


def load_run(run_dir: Path) -> RunCurve:
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    evaluator = run_dir / "evaluator"
    if not evaluator.is_dir():
        raise ValueError(f"{run_dir}: no evaluator logs (is it a fine-tuning run directory?)")
    scalars = read_scalars(evaluator)
    points = sorted(dict(scalars.get("eval/return", [])).items())
    if not points:
        raise ValueError(f"{run_dir}: the evaluator logged no eval/return yet")
    normalized = dict(scalars.get("eval/normalized_score", []))
    learner = read_scalars(run_dir / "learner") if (run_dir / "learner").is_dir() else {}
    config = run_dir / "config.json"
    objective = json.loads(config.read_text())["objective"]["kind"] if config.is_file() else "?"

    def last(tag):
        values = learner.get(tag)
        return values[-1][1] if values else None

    return RunCurve(
        name=run_dir.name,
        objective=objective,
        env_steps=[s for s, _ in points],
        returns=[v for _, v in points],
        normalized=[normalized[s] for s, _ in points if s in normalized],
        updates_per_s=last("throughput/run_updates_per_s"),
        sample_wait=last("throughput/run_sample_wait_fraction"),
    )


def summary_markdown(runs: list[RunCurve]) -> str:
    lines = [
        "| run | objective | env steps | first eval | last eval | best eval | updates/s | sample wait |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ups = f"{r.updates_per_s:.1f}" if r.updates_per_s is not None else "-"
        wait = f"{100 * r.sample_wait:.0f}%" if r.sample_wait is not None else "-"
        lines.append(
            f"| {r.name} | {r.objective} | {r.env_steps[-1]} | {r.returns[0]:.1f} | "
            f"{r.returns[-1]:.1f} | {max(r.returns):.1f} | {ups} | {wait} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[RunCurve], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_normalized = all(len(r.normalized) == len(r.returns) for r in runs)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in runs:
        ys = r.normalized if use_normalized else r.returns
        ax.plot(r.env_steps, ys, marker="o", markersize=3, label=f"{r.name} ({r.objective})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("D4RL-normalized score" if use_normalized else "evaluation return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dirs: list[Path], out: Path) -> tuple[Path, Path]:
    runs = [load_run(Path(d)) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    md = out / "summary.md"
    md.write_text(summary_markdown(runs))
    return plot_curves(runs, out / "curves.png"), md


def main(argv) -> None:
    del argv
    FLAGS = flags.FLAGS
    dirs = [Path(d) for d in FLAGS.logdir.split(",") if d]
    if not dirs:
        raise ValueError("--logdir names no run directory")
    png, md = write_report(dirs, Path(FLAGS.out))
    print(md.read_text(), end="")
    print(f"wrote {png} and {md}")


if __name__ == "__main__":
    flags.DEFINE_string("logdir", None, "Comma-separated run directories.", required=True)
    flags.DEFINE_string("out", "report", "Output folder for curves.png and summary.md.")
    run_main(main)
