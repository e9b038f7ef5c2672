"""The data-parallel learner: two gloo ranks on CPU, started with torch.multiprocessing.

Each rank builds a tiny Learner (from a different seed, so rank 0's weights have to
arrive), trains it on batches of its own through `data_parallel_finetune_loop` (the
learner role's path) and saves what it ends with; the tests compare the ranks.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from learner import distributed
from learner.config import ObjectiveConfig, OptimConfig
from learner.device import to_device
from learner.finetune import data_parallel_finetune_loop
from learner.learner import Learner
from models import CriticConfig, ModelConfig

S, A, K, B = 3, 2, 5, 4
WORLD = 2
UPDATES = 5
KINDS = ("odt", "odt_td3")
MODEL = ModelConfig(state_dim=S, act_dim=A, context_len=K, embed_dim=16, n_layer=1, n_head=2,
                    ffn_dim=32, dropout=0.0)
OPTIM = OptimConfig(lr=1e-3, warmup_steps=0, batch_size=B, seed=0)


def objective(kind: str) -> ObjectiveConfig:
    # No target-policy noise, so an odt_td3 update is a deterministic function of its batch.
    return ObjectiveConfig(kind=kind, critic=CriticConfig(hidden_dim=16), policy_noise=0.0,
                           actor_update_interval=1)


def window_batch(step: int, rank: int) -> dict[str, np.ndarray]:
    """Left-padded windows: the values are the rank's own, the padding is the same on every
    rank at a given step (so every rank's masked means average over as many positions)."""
    lengths = np.random.default_rng(step).integers(1, K + 1, B)
    mask = (np.arange(K)[None, :] >= K - lengths[:, None]).astype(np.float32)
    g = np.random.default_rng(1000 * (rank + 1) + step)
    batch = {
        "observations": g.normal(size=(B, K, S)),
        "actions": g.uniform(-0.9, 0.9, (B, K, A)),
        "rewards": g.normal(size=(B, K)),
        "returns_to_go": g.normal(size=(B, K)) * 100,
        "next_observations": g.normal(size=(B, K, S)),
        "terminated": (g.uniform(size=(B, K)) < 0.2),
    }
    batch = {k: (v * mask.reshape(B, K, *[1] * (v.ndim - 2))).astype(np.float32)
             for k, v in batch.items()}
    batch["timesteps"] = (g.integers(0, 100, (B, K)) * mask).astype(np.int32)
    batch["mask"] = mask
    return batch


def learner_state(learner: Learner) -> dict[str, torch.Tensor]:
    state = {"log_temperature": learner.log_temperature.detach().clone()}
    for name in ("model", "critic", "critic_target", "model_target"):
        module = getattr(learner, name)
        if module is not None:
            state.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    return state


class RecordingWriter:
    def __init__(self):
        self.calls = []

    def scalars(self, values, step):
        self.calls.append(step)

    def text(self, tag, markdown, step=0):
        self.calls.append(step)

    def close(self):
        pass


def run_rank(learner: Learner, batches, should_stop) -> dict:
    """One rank's fine-tuning through the learner role's loop, with recording collaborators."""
    published, checkpoints, writer = [], [], RecordingWriter()
    stats = data_parallel_finetune_loop(
        learner, iter(batches),
        publish=lambda step, arrays: published.append(step),
        counters=lambda: {"size": 1.0},
        writer=writer,
        should_stop=should_stop,
        checkpoint=lambda: checkpoints.append(learner.step),
        publish_every=2, log_every=2, checkpoint_every=3,
    )
    return {"step": learner.step, "updates": stats.updates, "published": published,
            "checkpoints": checkpoints, "logged": writer.calls}


def rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu") == (rank, WORLD)
    results = {}
    for kind in KINDS:
        learner = Learner(MODEL, objective(kind), replace(OPTIM, seed=rank))
        start = learner_state(learner)
        # Rank 1 has one batch more: the loop must still end with rank 0's last batch.
        batches = [window_batch(step, rank) for step in range(UPDATES + rank)]
        run = run_rank(learner, batches, should_stop=lambda: False)
        results[kind] = {"start": start, "end": learner_state(learner), **run}
    # Rank 1 alone asked to stop, after two updates: both ranks stop there.
    learner = Learner(MODEL, objective("odt"), OPTIM)
    batches = [window_batch(step, rank) for step in range(UPDATES)]
    results["stop"] = run_rank(learner, batches,
                               should_stop=lambda: rank == 1 and learner.step >= 2)
    distributed.shutdown()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail("the two ranks did not finish in 120 s")
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_end_with_identical_weights_that_moved_from_rank0s(ranks, kind):
    """After rank 0's weights were broadcast and five averaged updates on different batches,
    both ranks hold bit-identical transformer, critic, targets and temperature."""
    r0, r1 = ranks[0][kind], ranks[1][kind]
    assert r0["end"].keys() == r1["end"].keys()
    if kind == "odt_td3":
        assert any(k.startswith("critic.") for k in r0["end"])
    for name, value in r0["end"].items():
        assert torch.equal(value, r1["end"][name]), name
    # The ranks started apart (seeds 0 and 1), so rank 1's weights came from rank 0 ...
    assert any(not torch.equal(v, r1["start"][n]) for n, v in r0["start"].items()
               if n.startswith("model."))
    # ... and training moved them.
    moved = [n for n, v in r0["end"].items() if v.is_floating_point()
             and not torch.equal(v, r0["start"][n])]
    assert any(n.startswith("model.") for n in moved)
    assert "log_temperature" in moved if kind == "odt" else any(
        n.startswith("critic.") for n in moved)


@pytest.mark.parametrize("kind", KINDS)
def test_only_rank0_publishes_checkpoints_and_logs(ranks, kind):
    r0, r1 = ranks[0][kind], ranks[1][kind]
    assert r0["published"] == [0, 2, 4, UPDATES]  # start, every 2nd update, end
    assert r0["checkpoints"] == [3]
    assert r0["logged"] == [2, 4]
    assert r1["published"] == r1["checkpoints"] == r1["logged"] == []


def test_ranks_stop_after_the_same_update(ranks):
    """Rank 1's stream is one batch longer; rank 1 alone is asked to stop in the last run."""
    for kind in KINDS:
        assert [r[kind]["step"] for r in ranks] == [UPDATES, UPDATES]
        assert [r[kind]["updates"] for r in ranks] == [UPDATES, UPDATES]
    assert [r["stop"]["step"] for r in ranks] == [2, 2]


def test_averaged_update_equals_one_update_on_both_batches(ranks):
    """odt_td3 without target noise is deterministic: two ranks averaging gradients make the
    same updates as one process on the two ranks' batches concatenated (masked means over
    as many positions on each rank). ODT is left out: its entropy is a one-sample
    estimate, drawn differently for split and concatenated batches."""
    learner = Learner(MODEL, objective("odt_td3"), OPTIM)
    for step in range(UPDATES):
        halves = [window_batch(step, rank) for rank in range(WORLD)]
        batch = {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}
        learner.update(to_device(batch, learner.device))
    for name, value in learner_state(learner).items():
        torch.testing.assert_close(ranks[0]["odt_td3"]["end"][name], value,
                                   rtol=1e-5, atol=1e-6, msg=name)
