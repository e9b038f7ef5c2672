"""The learner's fast compute paths against eager fp32, and the benchmarks' JSON output.

The bench smoke tests run each benchmark for a fraction of a second (a real Reverb
server in a child process, real envpool) and check the keys of what it prints.
bench.e2e is not run here: it records a dataset, pretrains and fine-tunes with every
role as a process, which takes minutes (`make bench` runs it).
"""

from __future__ import annotations

# isort: off
from replay import _reverb  # noqa: F401  (reverb/TF before torch)

# isort: on
import json
import subprocess
import sys

import pytest
import torch
from common import wait_until

from bench import actor as bench_actor
from bench import e2e as bench_e2e
from bench import learner as bench_learner
from bench import memory as bench_memory
from bench import multigame_actor as bench_multigame_actor
from bench import replay as bench_replay
from bench.learner import PATHS, random_batch
from learner.config import EAGER_FP32, ObjectiveConfig, OptimConfig
from learner.learner import Learner
from models import ModelConfig

MODEL = ModelConfig(state_dim=5, act_dim=2, context_len=6, embed_dim=32, n_layer=2, n_head=2,
                    ffn_dim=64, dropout=0.0)

# (metric rtol, relative size of the parameter-update difference) per path.
TOLERANCE = {"fused": (1e-5, 1e-4), "bf16": (0.1, 0.2), "compiled_bf16": (0.1, 0.2)}

# compiled_bf16 is the CUDA default path; on CPU, bf16 has no vector units and
# torch.compile takes about a minute per model, so it runs only where CUDA is (the
# `gpu` marker keeps it out of `make test`; fused and bf16 are checked on CPU here).
cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="compiled_bf16 is the CUDA path; no CUDA device here")


@pytest.mark.parametrize("kind", ["odt", "odt_td3"])
@pytest.mark.parametrize("path", ["fused", "bf16",
                                  pytest.param("compiled_bf16", marks=[pytest.mark.gpu, cuda])])
def test_fast_paths_match_the_eager_fp32_step(kind, path):
    """Two updates on one fixed batch (under odt_td3 the second one updates the actor):
    the same metrics and the same parameter updates as eager fp32, within tolerance."""
    device = torch.device("cuda" if path.startswith("compiled") else "cpu")
    optim = OptimConfig(batch_size=16, warmup_steps=0, lr=1e-3)
    eager = Learner(MODEL, ObjectiveConfig(kind=kind), optim, device, EAGER_FP32)
    fast = Learner(MODEL, ObjectiveConfig(kind=kind), optim, device, PATHS[path])
    before = {k: v.detach().clone() for k, v in eager.model.named_parameters()}
    for name, value in fast.model.named_parameters():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    batch = random_batch(eager.model_cfg, 16, device)
    rtol, update_tol = TOLERANCE[path]
    for step in range(2):
        torch.manual_seed(step)
        expected = eager.update(batch)
        torch.manual_seed(step)
        got = fast.update(batch)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=rtol, atol=rtol * 1e-2,
                                       msg=lambda m, key=key: f"{key}: {m}")
    fast_params = dict(fast.model.named_parameters())
    for name, value in eager.model.named_parameters():
        eager_delta = value.detach() - before[name]
        fast_delta = fast_params[name].detach() - before[name]
        size = (fast_delta - eager_delta).norm() / eager_delta.norm().clamp_min(1e-12)
        assert size <= update_tol, f"{name}: update differs by {size:.3g} of its size"


def _rows(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_bench_learner_prints_one_row_per_path(capsys):
    bench_learner.main(["--configs=quickstart", "--objectives=odt_td3",
                        "--paths=eager_fp32,auto", "--seconds=0.2", "--rounds=1"])
    rows = _rows(capsys)
    assert [r["path"] for r in rows] == ["eager_fp32", "auto"]
    for row in rows:
        assert {"updates_per_s", "speedup_vs_eager_fp32", "model_tflops_per_s", "mfu",
                "peak_source", "rss_mib_start", "rss_mib_end", "peak_rss_mib"} <= row.keys()
        assert row["updates"] >= 2 and row["mfu"] > 0
    assert rows[0]["speedup_vs_eager_fp32"] == 1.0


def test_bench_actor_reports_its_limits(capsys):
    bench_actor.main(["--variants=lockstep_inline,async_background", "--batch_size=2",
                      "--seconds=0.4", "--rounds=1", "--server=thread"])
    rows = _rows(capsys)
    assert [r["variant"] for r in rows] == ["lockstep_inline", "async_background"]
    for row in rows:
        assert row["env_steps"] > 0 and row["windows_written"] > 0
        assert row["actor_steps_per_s"] > 0
        limit = min(row["env_limit_steps_per_s"], row["inference_limit_steps_per_s"])
        assert row["ratio_to_slower_limit"] == pytest.approx(row["actor_steps_per_s"] / limit,
                                                             rel=0.01)
        assert {"inference_us_per_step", "env_us_per_step", "write_us_per_step",
                "rss_mib_start", "rss_mib_end"} <= row.keys()
    assert rows[1]["num_envs"] == 4 and rows[1]["batch_size"] == 2


def test_bench_multigame_actor_compares_per_game_and_mixed_actors(capsys):
    bench_multigame_actor.main([
        "--seconds=0.2", "--rounds=1", "--set=multigame.games=Pong-v5,Freeway-v5",
        "--set=multigame.online_envs=1", "--set=multigame.num_return_samples=2",
        "--set=model.n_layer=1", "--set=model.embed_dim=32", "--set=model.ffn_dim=64"])
    *rows, summary = _rows(capsys)
    assert [(r["layout"], r["actors"]) for r in rows] == [("per_game", 2), ("mixed", 1)]
    for row in rows:
        assert row["transitions"] > 0
        assert row["env_steps_per_s"] == pytest.approx(row["transitions"] / row["seconds"],
                                                       rel=0.01)
    assert summary["mixed_over_per_game"] == pytest.approx(
        rows[1]["env_steps_per_s"] / rows[0]["env_steps_per_s"], rel=0.01)
    with pytest.raises(SystemExit, match="needs a preset of the 'multi_game' pipeline"):
        bench_multigame_actor.main(["--preset=quickstart"])


def test_bench_replay_reports_wait_fraction(capsys):
    bench_replay.main(["--configs=quickstart", "--seconds=0.3", "--episodes=1",
                       "--server=thread"])
    [row] = _rows(capsys)
    assert row["delivered_windows_per_s"] > 0 and row["consumed_windows_per_s"] > 0
    assert 0 <= row["sample_wait_fraction"] <= 1
    assert row["stream_updates"] >= 1


def test_bench_memory_growth_is_the_slope_after_the_warm_up():
    """A role growing 2 MiB per minute after a warm-up jump reads as 2 MiB/min; a flat
    one as 0; the peak and the first post-warm-up sample are reported as they are."""
    growing = [(t, 300.0 + (200.0 if t >= 60 else 0.0) + 2.0 * t / 60.0)
               for t in range(0, 600, 10)]
    flat = [(t, 500.0) for t in range(0, 600, 10)]
    out = bench_memory.summarize({"learner": growing, "replay": flat}, warmup_s=60.0)
    assert out["learner"]["growth_mib_per_min"] == pytest.approx(2.0, abs=1e-6)
    assert out["learner"]["rss_mib_after_warmup"] == pytest.approx(502.0)
    assert out["learner"]["peak_rss_mib"] == pytest.approx(300.0 + 200.0 + 2.0 * 590 / 60, abs=0.1)
    assert out["replay"]["growth_mib_per_min"] == pytest.approx(0.0, abs=1e-9)
    assert out["replay"]["samples"] == 60


BUSY = """
import sys, time
while time.process_time() < 0.5:
    pass
sys.stdin.read()
"""


def _busy_role(tmp_path, role: str) -> subprocess.Popen:
    """A process that spends 0.5 s of CPU, then waits for its stdin to close; listed
    as `role` in tmp_path/processes.json, as the launcher lists its roles."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
    (tmp_path / "processes.json").write_text(json.dumps(
        {role: {"pid": proc.pid, "restarts": 0, "exit_codes": []}}))
    return proc


def test_bench_e2e_role_cpu_sums_the_processes_a_role_had(tmp_path):
    """RoleCpu reads each listed process's CPU time from /proc while it runs, keeps the
    last reading of one that exited, and sums over the pids of a restarted role."""
    cpu = bench_e2e.RoleCpu(tmp_path, interval_s=0.05)
    try:
        for _ in range(2):  # the role, then its restart under a new pid
            proc = _busy_role(tmp_path, "actor_0")
            # /proc counts in clock ticks, so 0.5 s may read a tick short.
            wait_until(lambda pid=proc.pid: cpu.seconds.get(("actor_0", pid), 0.0) >= 0.45,
                       timeout_s=120.0, what="RoleCpu to read the role's 0.5 CPU seconds")
            proc.communicate(b"")
    finally:
        totals = cpu.stop()
    assert set(totals) == {"actor_0"}
    assert 0.9 <= totals["actor_0"] < 5.0


def test_bench_e2e_refuses_an_unknown_mode_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_e2e.main(["--modes=inline,bogus", f"--out={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    assert "bogus" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_auto_compute_picks_bf16_on_cpu_only_with_native_bf16_and_a_wide_model(tmp_path):
    from learner.config import CPU_BF16_MIN_WIDTH, ComputeConfig
    from learner.device import cpu_has_native_bf16

    cpu, auto = torch.device("cpu"), ComputeConfig()
    wide, narrow = CPU_BF16_MIN_WIDTH, CPU_BF16_MIN_WIDTH // 2
    assert auto.resolve(cpu, wide, native_bf16=True) == (True, False, False)
    assert auto.resolve(cpu, narrow, native_bf16=True) == (False, False, False)
    assert auto.resolve(cpu, wide, native_bf16=False) == (False, False, False)
    assert auto.resolve(cpu, None, native_bf16=True) == (False, False, False)
    # An explicit precision is what it says, whatever the CPU.
    assert ComputeConfig(precision="fp32").resolve(cpu, wide, native_bf16=True)[0] is False
    assert ComputeConfig(precision="bf16").resolve(cpu, narrow, native_bf16=False)[0] is True

    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_native_bf16(str(with_bf16)) is True
    assert cpu_has_native_bf16(str(without)) is False
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_the_learner_reports_the_compute_path_in_effect():
    learner = Learner(MODEL, ObjectiveConfig(kind="odt"), OptimConfig(batch_size=4), "cpu",
                      EAGER_FP32)
    assert learner.compute_path == "fp32, eager, per-tensor optimizers"


def test_a_cpu_learner_takes_every_core_unless_told():
    from learner.config import ComputeConfig

    auto = ComputeConfig()
    assert auto.learner_cpu_threads(cores=2) == 2
    assert auto.learner_cpu_threads(cores=16) == 16
    assert auto.learner_cpu_threads(cores=16, learners=4) == 4  # torchrun ranks share it
    assert auto.learner_cpu_threads(cores=2, learners=4) == 1
    assert ComputeConfig(cpu_threads=3).learner_cpu_threads(cores=2) == 3
    assert ComputeConfig(cpu_threads=-1).validate() == [
        "compute.cpu_threads=-1 must be >= 0 (0: auto)"]


def test_bench_multigame_report_takes_medians_and_compares_per_game():
    from bench.multigame import report

    def row(seed, expert, target, online, single):
        return {"seed": seed, "seconds": {"pretraining": 10.0 + seed},
                "games": {"Pong-v5": {"dataset_mean_return": -20.0, "expert_return": expert,
                                      "target_return": target, "online_expert_return": online,
                                      "single_expert_return": single}}}

    out = report([row(0, -15.0, -18.0, -14.0, -16.0), row(1, -10.0, -19.0, -12.0, -17.0),
                  row(2, -19.0, -17.0, -20.0, -11.0)])
    m, check = out["medians"]["Pong-v5"], out["checks"]["Pong-v5"]
    assert (m["expert_return"], m["target_return"], m["single_expert_return"]) == (-15, -18, -16)
    assert check == {"expert_beats_target": True, "both_beat_dataset_mean": True,
                     "multi_vs_single": 1.0, "single_seed_spread": 6.0,
                     "online_raises": True}
    assert out["online_games_raised"] == 1 and out["seconds"] == {"pretraining": 11.0}


def test_seeds_run_in_processes_of_their_own_report_each_failure_by_seed(tmp_path):
    """bench.learning --jobs=2 (`bench.seeds.run_seeds`): a seed whose process fails
    (here: no dataset) ends the benchmark with an error naming every seed that failed,
    after both have ended."""
    from bench.seeds import run_seeds
    from launch.presets import get_preset

    with pytest.raises(RuntimeError) as error:
        run_seeds(get_preset("quickstart"), str(tmp_path / "missing.hdf5"), [3, 4], tmp_path,
                  ["odt"], jobs=2)
    assert "seed 3: " in str(error.value) and "seed 4: " in str(error.value)
    assert "missing.hdf5" in str(error.value)
    assert not list(tmp_path.glob("pretrain-seed*"))
