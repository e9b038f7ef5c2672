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

import numpy as np
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
    _save(fig, ax, use_normalized, path)
    return path


def _save(fig, ax, normalized: bool, path: Path, xlabel: str = "environment steps",
          ylabel: str | None = None) -> None:
    """Label the axes (by default score or return against env steps), write the PNG,
    free the figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or ("D4RL-normalized score" if normalized else "evaluation return"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def score(run: RunCurve) -> list[float]:
    """The run's evaluations: D4RL-normalized where the task has reference scores,
    else raw returns."""
    return run.normalized if len(run.normalized) == len(run.returns) else run.returns


def on_grid(run: RunCurve, steps) -> np.ndarray:
    """The run's evaluations linearly interpolated at env steps `steps` (held flat
    before the first and after the last evaluation)."""
    return np.interp(np.asarray(steps, float), run.env_steps, score(run))


def dip(run: RunCurve, pretrained: float) -> dict:
    """Where the curve falls below `pretrained` (the pretrained policy's score) and comes
    back: its lowest evaluation after online steps began (the one at env step 0 is the
    pretrained policy's own) and its env step, whether that is below `pretrained`, and
    the first env step from that lowest point on at which the curve is at or above
    `pretrained` again (None: not within the run). Scores are compared within a relative
    1e-4, as TensorBoard keeps them in float32."""
    values = np.asarray(score(run), np.float64)
    steps = np.asarray(run.env_steps)
    online = np.flatnonzero(steps > 0)
    if len(online) == 0:
        return {"lowest": None, "lowest_at": None, "dips": False, "back_above_at": None}
    floor = pretrained - 1e-4 * max(1.0, abs(pretrained))
    low = int(online[np.argmin(values[online])])
    back = next((int(steps[i]) for i in range(low, len(values)) if values[i] >= floor), None)
    return {"lowest": float(values[low]), "lowest_at": int(steps[low]),
            "dips": bool(values[low] < floor), "back_above_at": back}


def objective_curves(runs: list[RunCurve], path: Path, budget: int,
                     pretrained: list[float] | None = None,
                     fractions=(0.25, 0.5, 0.75, 1.0)) -> dict:
    """One line per objective, the median over its runs (seeds) with their min-max band,
    against env steps up to `budget`; the pretrained scores' median as a dashed line.
    Writes the PNG at `path` and returns each objective's median at `fractions` of the
    budget: {objective: {"25%": value, ...}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget, 101)
    at = {}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for objective in sorted({r.objective for r in runs}):
        curves = np.stack([on_grid(r, grid) for r in runs if r.objective == objective])
        median = np.median(curves, axis=0)
        line, = ax.plot(grid, median, label=f"{objective} (median of {len(curves)})")
        ax.fill_between(grid, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
        at[objective] = {
            f"{round(100 * f)}%": float(np.median([on_grid(r, [f * budget])[0]
                                                   for r in runs if r.objective == objective]))
            for f in fractions
        }
    if pretrained:
        ax.axhline(float(np.median(pretrained)), color="gray", linestyle="--",
                   label="pretrained (median)")
    _save(fig, ax, all(len(r.normalized) == len(r.returns) for r in runs), path)
    return at


def incontext_curves(curves: dict[str, np.ndarray], path: Path,
                     optimal: float | None = None, random: float | None = None) -> Path:
    """Return against episode index in context, one line per method: `curves[name]` is
    (runs, episodes), each row one run's return per episode averaged over its tasks;
    the line is the median over runs, the band their min-max. `optimal` and `random`
    (the tasks' mean optimal and random returns) are drawn dashed. Writes the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, values in curves.items():
        values = np.atleast_2d(np.asarray(values, float))
        episodes = np.arange(1, values.shape[1] + 1)
        line, = ax.plot(episodes, np.median(values, axis=0),
                        label=f"{name} (median of {len(values)})")
        ax.fill_between(episodes, values.min(0), values.max(0), color=line.get_color(),
                        alpha=0.2)
    for value, label, style in ((optimal, "optimal", "--"), (random, "random policy", ":")):
        if value is not None:
            ax.axhline(value, color="gray", linestyle=style, label=label)
    _save(fig, ax, False, path, xlabel="episode in context",
          ylabel="return (mean over held-out tasks)")
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
