"""Learning comparison: ODT vs ODT+TD3 fine-tuned from one low-quality pretrained policy.

On a preset (quickstart by default): one dataset; per seed, one pretraining (ODT's
objective), then one local fine-tuning run per objective from that same checkpoint,
with the same env-step budget. Prints one JSON line per seed, then one JSON object
with the per-seed returns, the medians, each objective's median score at 25/50/75/100%
of the budget, and each run's dip below the pretrained score (lowest evaluation, and
the env step where it is back above); writes `<out>/learning.png` (launch.report: one
line per objective, the seeds' min-max band, the pretrained score dashed). Scores are
D4RL-normalized where the task has reference returns.

    python -m bench.learning --seeds=0,1,2 [--preset=hopper-random-cpu] [--env_steps=6000]
        [--out=runs/learning] [--objectives=odt,odt_td3] [--set=objective.rl_coeff=0.5 ...]
        [--jobs=1]

`--jobs=N` runs up to N seeds at once, each in a process of its own (pretraining, then
its objectives one after the other); their learners get the cores divided by N
(`compute.cpu_threads`, unless it is set): torch threads that outnumber the cores slow
every process far more than their share (DESIGN.md, "Threads"). The seeds' processes
share the benchmark's process group, so Ctrl-C in its terminal stops them all; a
signal to the benchmark's process alone does not.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

from absl import flags

from launch.flags import run_main

flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_integer("env_steps", None, "Online budget per run; default: the preset's.")
flags.DEFINE_string("out", "runs/learning", "Folder for the runs (must not exist).")
flags.DEFINE_string("preset", "quickstart", "Preset.")
flags.DEFINE_list("objectives", ["odt", "odt_td3"],
                  "Objectives to fine-tune with (keys of learner.objectives.OBJECTIVES).")
flags.DEFINE_multi_string("set", [], "Config override, dotted field=value, "
                          "e.g. --set=objective.rl_coeff=0.5; repeatable.")
flags.DEFINE_integer("jobs", 1, "Seeds run at once, each in its own process.")


def main(argv) -> None:
    del argv
    from bench.seeds import run_seeds
    from launch.flags import apply_setting, checked
    from launch.pipeline import obtain_dataset
    from launch.presets import get_preset
    from launch.report import dip, load_run, objective_curves
    from learner.objectives import OBJECTIVES

    FLAGS = flags.FLAGS
    unknown = [kind for kind in FLAGS.objectives if kind not in OBJECTIVES]
    if unknown:
        raise ValueError(f"--objectives: unknown {', '.join(unknown)}; "
                         f"registered: {', '.join(OBJECTIVES)}")
    out = Path(FLAGS.out)
    if out.exists():
        raise FileExistsError(f"--out={out} already exists")
    out.mkdir(parents=True)
    base = get_preset(FLAGS.preset)
    for item in FLAGS.set:
        base = apply_setting(base, item)
    base = checked(base)
    if FLAGS.env_steps is not None:
        base = replace(base, finetune=replace(base.finetune, env_steps=FLAGS.env_steps))
    dataset = obtain_dataset(base, out, progress=False)
    jobs = max(1, FLAGS.jobs)
    if jobs > 1:
        threads = base.compute.learner_cpu_threads(learners=jobs)
        base = replace(base, compute=replace(base.compute, cpu_threads=threads))
    results = run_seeds(base, dataset.source, [int(s) for s in FLAGS.seeds.split(",")], out,
                        FLAGS.objectives, jobs)
    keys = ["pretrained_return"] + [f"{kind}_return" for kind in FLAGS.objectives]
    if base.env.task_id:
        keys += ["pretrained_score"] + [f"{kind}_score" for kind in FLAGS.objectives]
    median = {key: statistics.median(r[key] for r in results) for key in keys}
    curves = [load_run(out / f"{kind}-seed{r['seed']}")
              for r in results for kind in FLAGS.objectives]
    pretrained = [r["pretrained_score" if base.env.task_id else "pretrained_return"]
                  for r in results]
    at_budget = objective_curves(curves, out / "learning.png", base.finetune.env_steps,
                                 pretrained)
    dips = {f"{c.objective}-{c.name.rsplit('-', 1)[-1]}": dip(c, p)
            for c, p in zip(curves, [p for p in pretrained for _ in FLAGS.objectives])}
    print(json.dumps({
        "benchmark": "learning",
        "preset": base.name,
        "env_id": base.env.env_id,
        "dataset": {"policy": base.data.collect_policy, "episodes": len(dataset.episodes),
                    "mean_return": float(dataset.returns.mean())},
        "env_steps": base.finetune.env_steps,
        "updates_per_env_step": base.replay.updates_per_env_step,
        "overrides": FLAGS.set,
        "median": median,
        "median_at_budget_fraction": at_budget,
        "dips": dips,
        "png": str(out / "learning.png"),
        "runs": results,
    }))


if __name__ == "__main__":
    run_main(main)
