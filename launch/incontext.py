"""The in-context pipeline (`RunConfig.pipeline = "in_context"`): Algorithm Distillation.

Laskin et al. 2022 ("In-context Reinforcement Learning with Algorithm Distillation"):
a causal transformer trained on the learning histories of a source RL algorithm
improves from episode to episode on tasks it has not seen, with frozen weights, by
reading its own history. The stages, each writing under the run directory:

1. `histories/`: the source (tabular Q-learning, `actors.qlearning`) learns every
   training task from scratch, `incontext.histories_per_task` times, while each
   history is recorded; every `incontext.keep_every`-th episode is kept
   (`replay.histories`, Minari layout, task and episode order as tags).
2. `ad/`: AD trained on those histories (`replay.history_window` windows of
   `model.context_len` steps across episode boundaries; the 'ad' objective).
   `ed/`: expert distillation, the same model and updates on the last
   `incontext.expert_episodes` kept episodes of each history only.
3. Evaluation on the held-out tasks, weights frozen: AD and ED act for
   `incontext.eval_episodes` episodes per task with a context that carries across
   episode resets (`models.ad_transformer.InContextPolicy`); the source learns the
   same tasks from scratch for comparison. Each writes `incontext/return` (the mean
   over tasks) and `incontext/return/task_<i>` against the episode index (TensorBoard
   step = episode, from 1) in its directory, and `incontext.png` shows the three.

    python -m launch.main --preset=ad-darkroom
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from actors.darkroom import ENVS as GRID_FAMILIES
from actors.darkroom import optimal_returns, split_tasks
from actors.envs import VectorEnv, env_spec
from actors.qlearning import record_histories
from launch.report import incontext_curves
from learner.pretrain import PretrainResult, train_offline
from learner.tensorboard import SummaryWriter
from replay.histories import LearningHistory, history_returns, write_histories
from replay.history_window import HistorySampler, concat_histories

LATE = slice(29, 40)
"""Episodes 30-40 in context (1-based), where the acceptance reads AD's return."""

ROLE_DIRS = {"AD": "ad", "ED": "ed", "source": "source"}
"""Method shown in the plot -> its directory under the run directory."""


@dataclass
class InContextResult:
    """Per method, the return of each held-out task at each episode in context,
    (tasks, episodes); the tasks' optimal returns, a random policy's mean return, and
    seconds per stage."""

    returns: dict[str, np.ndarray]
    held_out: np.ndarray
    optimal: np.ndarray
    random_return: float
    seconds: dict[str, float]
    training: dict[str, PretrainResult]


def subsample(history: LearningHistory, keep_every: int) -> LearningHistory:
    """Every `keep_every`-th episode of `history` from its first, with its update counts:
    the history the transformer reads, where each episode is `keep_every` of the
    source's episodes further on."""
    keep = list(range(0, history.num_episodes, keep_every))
    return LearningHistory(task_id=history.task_id, history_id=history.history_id,
                           episodes=[history.episodes[i] for i in keep],
                           source_updates=history.source_updates[keep])


def last_episodes(history: LearningHistory, n: int) -> LearningHistory:
    """The last `n` episodes of `history`: what expert distillation trains on."""
    return LearningHistory(task_id=history.task_id, history_id=history.history_id,
                           episodes=history.episodes[-n:],
                           source_updates=history.source_updates[-n:])


def task_split(cfg) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out) task indices of the run's grid family: the split of
    `incontext.split_seed`, each side cut to `incontext.max_train_tasks` /
    `max_eval_tasks` tasks (0: all) drawn with the same seed, sorted."""
    ic = cfg.incontext
    family = GRID_FAMILIES[cfg.env.env_id]
    train, held_out = split_tasks(family.num_tasks, ic.held_out_fraction, ic.split_seed)
    rng = np.random.default_rng(ic.split_seed)

    def cut(tasks: np.ndarray, most: int) -> np.ndarray:
        if not most or len(tasks) <= most:
            return tasks
        return np.sort(rng.choice(tasks, most, replace=False))

    return cut(train, ic.max_train_tasks), cut(held_out, ic.max_eval_tasks)


def task_list(tasks: np.ndarray, shown: int = 16) -> str:
    """'n: a b c ...' with at most `shown` task indices written out (Key-to-Door holds
    out over a thousand)."""
    ids = " ".join(map(str, tasks[:shown].tolist()))
    return f"{len(tasks)}: {ids}" + (" ..." if len(tasks) > shown else "")


def source_histories(cfg, tasks: np.ndarray, seed: int) -> list[LearningHistory]:
    """The source's histories on `tasks`, `incontext.histories_per_task` per task, each
    `incontext.source_episodes` episodes long."""
    ic = cfg.incontext
    repeated = np.repeat(np.asarray(tasks), ic.histories_per_task)
    return record_histories(cfg.env.env_id, repeated, ic.source_episodes, seed,
                            **asdict(ic.source))


def train(cfg, histories: list[LearningHistory], role_dir: Path, *, seed_offset: int = 0,
          desc: str = "training", evaluate_fn=None) -> PretrainResult:
    """`cfg.pretrain.updates` 'ad' updates of the model `cfg.model` on windows of
    `histories`; the checkpoint and TensorBoard events go to `role_dir`."""
    steps = concat_histories([h.steps() for h in histories], cfg.model.act_dim)
    sampler = HistorySampler(steps, cfg.model.context_len, cfg.optim.batch_size,
                             seed=cfg.seed + seed_offset)
    episodes = sum(h.num_episodes for h in histories)
    return train_offline(
        cfg, sampler, role_dir, evaluate_fn=evaluate_fn, statistics=steps.state_statistics(),
        source=str(role_dir.parent / "histories"), desc=desc, progress=True,
        dataset_scalars={"dataset/histories": len(histories), "dataset/episodes": episodes,
                         "dataset/steps": len(steps)})


def in_context_returns(model, env_id: str, tasks: np.ndarray, episodes: int, seed: int,
                       context_len: int | None = None, temperature: float = 1.0
                       ) -> np.ndarray:
    """Returns (tasks, episodes) of `model` acting on each task for `episodes` episodes in
    a row with actions sampled at `temperature`, its context carried across episode
    resets and its weights frozen. One env per task, stepped together."""
    model.eval()
    from models.ad_transformer import InContextPolicy

    device = next(model.parameters()).device
    env = VectorEnv(env_id, len(tasks), seed, tasks=np.asarray(tasks))
    policy = InContextPolicy(model, len(tasks), context_len)
    generator = torch.Generator(device=device).manual_seed(seed)
    returns = np.zeros((len(tasks), episodes), np.float64)
    episode = np.zeros(len(tasks), np.int64)
    try:
        observations = env.reset()
        resetting = np.zeros(len(tasks), bool)  # the env's next step is an auto-reset
        while (episode < episodes).any():
            actions = policy.act(observations, generator=generator, active=~resetting,
                                 temperature=temperature)
            result = env.step(actions)
            # An auto-reset entry is no step and adds no token: the next token is the new
            # episode's first observation, after the last episode's last action and reward.
            policy.record(actions, result.rewards, active=result.is_transition)
            live = result.is_transition & (episode < episodes)
            returns[live, episode[live]] += result.rewards[live]
            episode += live & result.done
            resetting = result.is_transition & result.done
            observations = result.observations
    finally:
        env.close()
    return returns


def run_in_context(cfg, run_dir: Path) -> InContextResult:
    """The three stages for `cfg` (a `launch.presets.RunConfig` with pipeline
    'in_context') in `run_dir`."""
    ic, seconds = cfg.incontext, {}
    spec = env_spec(cfg.env.env_id)
    train_tasks, held_out = task_split(cfg)
    print(f"in-context pipeline: {cfg.env.env_id}, {len(train_tasks)} training tasks, "
          f"held out {task_list(held_out)}", flush=True)

    start = time.perf_counter()
    full = source_histories(cfg, train_tasks, cfg.seed)
    histories = [subsample(h, ic.keep_every) for h in full]
    write_histories(run_dir / "histories", histories, cfg.env.env_id,
                    num_actions=spec.num_actions,
                    metadata={"keep_every": ic.keep_every, "source": asdict(ic.source)})
    seconds["source histories"] = time.perf_counter() - start
    source_curve = history_returns(full).mean(0)
    print(f"source: {len(full)} histories of {ic.source_episodes} episodes, mean return "
          f"{source_curve[:10].mean():.2f} over the first 10, {source_curve[-10:].mean():.2f} "
          f"over the last 10; kept every {ic.keep_every}th: "
          f"{sum(h.num_episodes for h in histories)} episodes", flush=True)

    training = {}
    watch = in_context_eval(cfg, held_out)
    start = time.perf_counter()
    training["AD"] = train(cfg, histories, run_dir / "ad", desc="AD", evaluate_fn=watch)
    seconds["AD training"] = time.perf_counter() - start
    start = time.perf_counter()
    experts = [last_episodes(h, ic.expert_episodes) for h in histories]
    training["ED"] = train(cfg, experts, run_dir / "ed", seed_offset=1, desc="ED",
                           evaluate_fn=watch)
    seconds["ED training"] = time.perf_counter() - start

    checkpoints = {name: result.checkpoint for name, result in training.items()}
    result = evaluate_stage(cfg, checkpoints, held_out, run_dir, seconds)
    result.training = training
    return result


def evaluate_stage(cfg, checkpoints: dict[str, Path], held_out: np.ndarray, out_dir: Path,
                   seconds: dict[str, float]) -> InContextResult:
    """Stage 3: AD and ED (`checkpoints`: method -> checkpoint) in context on `held_out`
    and the source learning those tasks from scratch; the curves go to TensorBoard
    (`out_dir/<method>`), `out_dir/incontext.png` and `out_dir/incontext.json`, with
    `seconds` (the earlier stages' times) and this stage's. Runs again on trained
    checkpoints with other inference settings (`bench.incontext --evaluate_only`)."""
    from learner.checkpoint import load_policy

    ic = cfg.incontext
    start = time.perf_counter()
    returns = {}
    for name in ("AD", "ED"):
        model, _ = load_policy(checkpoints[name])
        returns[name] = in_context_returns(model, cfg.env.env_id, held_out,
                                           ic.eval_episodes, cfg.eval.seed,
                                           temperature=ic.action_temperature)
    held_out_source = source_histories(cfg, held_out, cfg.eval.seed)
    per_task = history_returns(held_out_source)  # (tasks x histories_per_task, episodes)
    returns["source"] = per_task.reshape(len(held_out), ic.histories_per_task, -1).mean(1)
    seconds = {**seconds, "evaluation": time.perf_counter() - start}

    optimal = optimal_returns(cfg.env.env_id, held_out)
    for name, values in returns.items():
        log_in_context(out_dir / ROLE_DIRS[name], values, held_out)
    random_return = random_policy_returns(cfg.env.env_id, held_out, cfg.eval.seed)
    incontext_curves({name: values.mean(0, keepdims=True) for name, values in returns.items()},
                     out_dir / "incontext.png", optimal=float(optimal.mean()),
                     random=random_return)
    result = InContextResult(returns=returns, held_out=held_out, optimal=optimal,
                             random_return=random_return, seconds=seconds, training={})
    (out_dir / "incontext.json").write_text(json.dumps(summary(result), indent=1))
    return result


def in_context_eval(cfg, tasks: np.ndarray):
    """The evaluation training runs every `pretrain.eval_every` updates: the model in
    context on `tasks` for `incontext.eval_episodes` episodes; its `eval/return` is the
    mean over episodes 30-40 (the last 10 when fewer). The model's train/eval mode is
    restored afterwards."""
    from actors.evaluate import EvalResult

    def evaluate(model, cfg_=None) -> EvalResult:
        del cfg_
        training = model.training
        try:
            returns = in_context_returns(model, cfg.env.env_id, tasks,
                                         cfg.incontext.eval_episodes, cfg.eval.seed,
                                         temperature=cfg.incontext.action_temperature)
        finally:
            model.train(training)
        curve = returns.mean(0)
        late = curve[LATE] if len(curve) >= LATE.stop else curve[-10:]
        return EvalResult(returns=np.asarray(late), lengths=np.zeros(len(late)))

    return evaluate


def log_in_context(role_dir: Path, returns: np.ndarray, tasks: np.ndarray) -> None:
    """`incontext/return` (mean over tasks) and `incontext/return/task_<i>` against the
    episode index, from 1."""
    with SummaryWriter(role_dir) as writer:
        for e in range(returns.shape[1]):
            scalars = {f"incontext/return/task_{t}": float(returns[i, e])
                       for i, t in enumerate(tasks.tolist())}
            scalars["incontext/return"] = float(returns[:, e].mean())
            writer.scalars(scalars, e + 1)


def random_policy_returns(env_id: str, tasks: np.ndarray, seed: int,
                          episodes: int = 20) -> float:
    """Mean episode return of uniformly random actions on `tasks`."""
    spec = env_spec(env_id)
    env = VectorEnv(env_id, len(tasks), seed, tasks=np.asarray(tasks))
    rng = np.random.default_rng(seed)
    total, done = 0.0, 0
    try:
        env.reset()
        while done < episodes * len(tasks):
            result = env.step(rng.integers(spec.num_actions, size=len(tasks)))
            total += float(result.rewards[result.is_transition].sum())
            done += int((result.is_transition & result.done).sum())
    finally:
        env.close()
    return total / done


def episodes_to_reach(curve: np.ndarray, level: float) -> int | None:
    """First episode (from 1) at which `curve` is at or above `level`; None if never."""
    hits = np.flatnonzero(np.asarray(curve) >= level)
    return int(hits[0]) + 1 if len(hits) else None


def summary(result: InContextResult) -> dict:
    """The figures the pipeline and bench.incontext report: per method the first
    episode's return, the mean over episodes 30-40 (as a fraction of the optimum too),
    (the last 10 when there are fewer than 40), the episode at which the curve (mean
    over tasks) first reaches 0.7 of the optimum,
    and the slope over the episodes (a straight-line fit, return per episode)."""
    optimum = float(result.optimal.mean())
    out = {"held_out_tasks": result.held_out.tolist(), "optimal_return": optimum,
           "random_return": result.random_return,
           "seconds": {k: round(v, 1) for k, v in result.seconds.items()}}
    for name, values in result.returns.items():
        curve = values.mean(0)
        late = curve[LATE] if len(curve) >= LATE.stop else curve[-10:]
        out[name] = {
            "first_episode": float(curve[0]),
            "episodes_30_40": float(late.mean()),
            "episodes_30_40_of_optimal": float(late.mean() / optimum),
            "episodes_to_70pct_optimal": episodes_to_reach(curve, 0.7 * optimum),
            "slope_per_episode": float(np.polyfit(np.arange(len(curve)), curve, 1)[0]),
            "curve": [round(float(v), 3) for v in curve],
        }
    return out
