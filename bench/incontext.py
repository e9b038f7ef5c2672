"""In-context learning over seeds: Algorithm Distillation against expert distillation
and the source algorithm on held-out tasks (`launch.incontext`).

Runs the preset's whole in-context pipeline once per seed (its own source histories,
model initialisation and evaluation), each in `<out>/seed<s>`. Prints one JSON line
per seed (`launch.incontext.summary`), then one JSON object with the medians over
seeds: each method's first in-context episode return, its mean over episodes 30-40
as a fraction of the optimum, the episode at which its curve first reaches 0.7 of
the optimum, and ED's slope; writes `<out>/incontext.png` (launch.report: one line
per method, the median over seeds with their min-max band).

    python -m bench.incontext --seeds=0,1,2 [--preset=ad-darkroom] [--out=runs/incontext]
        [--set=pretrain.updates=6000 ...]

With `--evaluate_only`, the seeds' runs already in `--out` are evaluated again (stage 3
only, `launch.incontext.evaluate_stage`) with their saved configs and the `--set`
overrides (inference settings such as `incontext.action_temperature`); each seed's
curves go to `<out>/seed<s>/evaluation/`, the report to `<out>/evaluation/`.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from absl import flags

from bench import pipeline_preset
from launch.flags import run_main

flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("out", "runs/incontext", "Folder for the runs (must not exist).")
flags.DEFINE_string("preset", "ad-darkroom", "An in-context preset.")
flags.DEFINE_multi_string("set", [], "Config override, dotted field=value, "
                          "e.g. --set=pretrain.updates=6000; repeatable.")
flags.DEFINE_bool("evaluate_only", False, "Evaluate the runs already in --out again "
                  "(stage 3 only) with the --set overrides.")


def median_of(rows: list[dict], method: str, key: str):
    values = [row[method][key] for row in rows]
    if any(v is None for v in values):  # a curve that never got there counts as last
        values = [np.inf if v is None else v for v in values]
    value = statistics.median(values)
    return None if value == np.inf else value


def main(argv) -> None:
    del argv
    from launch.flags import apply_setting, checked
    from launch.incontext import (
        ROLE_DIRS,
        evaluate_stage,
        run_in_context,
        summary,
        task_split,
    )
    from launch.pipeline import save_config
    from launch.presets import RunConfig
    from launch.report import incontext_curves

    FLAGS = flags.FLAGS
    base = pipeline_preset(FLAGS.preset, FLAGS.set, "in_context", "bench.incontext",
                           "ad-darkroom")
    out = Path(FLAGS.out)
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    if FLAGS.evaluate_only:
        missing = [s for s in seeds if not (out / f"seed{s}" / "ad" / "checkpoint.pt").is_file()
                   or not (out / f"seed{s}" / "ed" / "checkpoint.pt").is_file()]
        if missing:
            raise FileNotFoundError(f"--evaluate_only: {out} has no trained run for seed(s) "
                                    f"{', '.join(map(str, missing))}")
        report_dir = out / "evaluation"
        if report_dir.exists():
            raise FileExistsError(f"--evaluate_only: {report_dir} already exists")
    elif out.exists():
        raise FileExistsError(f"--out={out} already exists")
    else:
        report_dir = out
    report_dir.mkdir(parents=True)
    rows, curves = [], {}
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        start = time.perf_counter()
        if FLAGS.evaluate_only:
            cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
            for item in FLAGS.set:
                cfg = apply_setting(cfg, item)
            cfg = checked(cfg)
            (run_dir / "evaluation").mkdir()
            earlier = json.loads((run_dir / "incontext.json").read_text())["seconds"]
            _, held_out = task_split(cfg)
            result = evaluate_stage(
                cfg, {m: run_dir / ROLE_DIRS[m] / "checkpoint.pt" for m in ("AD", "ED")},
                held_out, run_dir / "evaluation",
                {k: v for k, v in earlier.items() if k != "evaluation"})
        else:
            cfg = replace(base, seed=seed)
            run_dir.mkdir()
            save_config(run_dir, cfg)
            result = run_in_context(cfg, run_dir)
        row = {"seed": seed, "wall_s": round(time.perf_counter() - start, 1), **summary(result)}
        print(json.dumps({k: v for k, v in row.items() if k not in ("AD", "ED", "source")}
                         | {m: {k: v for k, v in row[m].items() if k != "curve"}
                            for m in ("AD", "ED", "source")}), flush=True)
        rows.append(row)
        for method, values in result.returns.items():
            curves.setdefault(method, []).append(values.mean(0))
    methods = ("AD", "ED", "source")
    report = {
        "benchmark": "incontext",
        "preset": base.name,
        "seeds": [row["seed"] for row in rows],
        "optimal_return": rows[0]["optimal_return"],
        "random_return": statistics.median(row["random_return"] for row in rows),
        "median": {m: {k: median_of(rows, m, k) for k in
                       ("first_episode", "episodes_30_40", "episodes_30_40_of_optimal",
                        "episodes_to_70pct_optimal", "slope_per_episode")}
                   for m in methods},
        "per_seed": [{"seed": row["seed"], "wall_s": row["wall_s"], "seconds": row["seconds"],
                      **{m: {k: v for k, v in row[m].items() if k != "curve"}
                         for m in methods}} for row in rows],
    }
    png = incontext_curves({m: np.stack(curves[m]) for m in methods},
                           report_dir / "incontext.png",
                           optimal=report["optimal_return"], random=report["random_return"])
    report["png"] = str(png)
    print(json.dumps(report))


if __name__ == "__main__":
    run_main(main)
