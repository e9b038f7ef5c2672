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
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from absl import flags

from launch.flags import run_main

flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("out", "runs/incontext", "Folder for the runs (must not exist).")
flags.DEFINE_string("preset", "ad-darkroom", "An in-context preset.")
flags.DEFINE_multi_string("set", [], "Config override, dotted field=value, "
                          "e.g. --set=pretrain.updates=6000; repeatable.")


def median_of(rows: list[dict], method: str, key: str):
    values = [row[method][key] for row in rows]
    if any(v is None for v in values):  # a curve that never got there counts as last
        values = [np.inf if v is None else v for v in values]
    value = statistics.median(values)
    return None if value == np.inf else value


def main(argv) -> None:
    del argv
    from launch.flags import apply_setting, checked
    from launch.incontext import run_in_context, summary
    from launch.pipeline import save_config
    from launch.presets import get_preset
    from launch.report import incontext_curves

    FLAGS = flags.FLAGS
    base = get_preset(FLAGS.preset)
    for item in FLAGS.set:
        base = apply_setting(base, item)
    base = checked(base)
    if base.pipeline != "in_context":
        raise ValueError(f"--preset={FLAGS.preset} runs the {base.pipeline!r} pipeline; "
                         "bench.incontext needs an in-context preset such as ad-darkroom")
    out = Path(FLAGS.out)
    if out.exists():
        raise FileExistsError(f"--out={out} already exists")
    out.mkdir(parents=True)
    rows, curves = [], {}
    for seed in [int(s) for s in FLAGS.seeds.split(",")]:
        cfg = replace(base, seed=seed)
        run_dir = out / f"seed{seed}"
        run_dir.mkdir()
        save_config(run_dir, cfg)
        start = time.perf_counter()
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
    png = incontext_curves({m: np.stack(curves[m]) for m in methods}, out / "incontext.png",
                           optimal=report["optimal_return"], random=report["random_return"])
    report["png"] = str(png)
    print(json.dumps(report))


if __name__ == "__main__":
    run_main(main)
