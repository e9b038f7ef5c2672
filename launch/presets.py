"""Run configuration: one frozen dataclass per component, and the presets that build them.

Presets:
- `quickstart`: InvertedPendulum-v4 with a small model; records its own dataset
  with a noisy scripted controller and finishes on a 2-core CPU.
- `{hopper,halfcheetah,walker2d,ant}-{random,medium,medium-replay}`: ODT's
  hyperparameters (Zheng et al. 2022, appendix; online-dt defaults; vitamin README)
  on D4RL-comparable envpool tasks. `*-random` records its dataset with a uniform
  random policy when no file is given; the others read the D4RL HDF5 file.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

from actors.qlearning import QLearningConfig
from learner.config import ComputeConfig, ObjectiveConfig, OptimConfig
from learner.objectives import OBJECTIVES
from models import RETIRED_MODEL_FIELDS, CriticConfig, ModelConfig
from replay.formats import ITEM_FORMATS


@dataclass(frozen=True)
class EnvConfig:
    env_id: str
    """envpool task id, e.g. Hopper-v4."""
    task_id: str | None = None
    """D4RL task id whose reference scores normalize evaluation returns, if any."""
    options: dict = field(default_factory=dict)
    """envpool task options by name, passed to `envpool.make_gymnasium` (checked by
    `actors.envs.check_options`) by the multi_game pipeline, the one that takes them
    (`validate` refuses them elsewhere); empty keeps envpool's defaults. The Multi-Game
    Decision Transformer's Atari takes `actors.envs.MGDT_OPTIONS`: `stack_num=1` (one
    (1, 84, 84) frame per step) and `full_action_space=True` (Discrete(18) in every
    game). onramp's own task families (Dark Room) take none."""


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None
    """Offline dataset: a D4RL HDF5 file or a Minari folder. None: record one."""
    collect_policy: str = "random"
    """Behaviour policy when recording: 'random', 'scripted', or a checkpoint path."""
    collect_noise: float = 0.0
    """Std of Gaussian noise added to the behaviour policy's actions (in [-1, 1] units);
    on discrete actions, the chance of a uniformly random action instead."""
    collect_episodes: int = 100
    collect_num_envs: int = 10
    collect_format: str = "minari"
    """How a recorded dataset is written: 'minari' (a folder, one HDF5 group per
    episode) or 'd4rl' (one HDF5 file of flat arrays; for 10k episodes and more it
    writes several times faster and reads in a fraction of a second)."""
    collect_seed: int = 1
    state_std_floor: float = 0.0
    """Least per-dimension std of the model's state normalization, which is computed
    over the offline states and frozen with the checkpoint (0: ODT's std + 1e-6). Narrow
    data such as a random policy's makes a tiny std, so states that fine-tuning
    reaches later arrive far outside the inputs the model was trained on."""


@dataclass(frozen=True)
class PretrainConfig:
    updates: int = 5000
    """Offline gradient steps (ODT hopper: 5000)."""
    log_every: int = 100
    eval_every: int = 1000
    """Evaluate every this many updates (and at the end); 0 evaluates at the end only."""
    checkpoint_every: int = 1000


@dataclass(frozen=True)
class EvalConfig:
    episodes: int = 10
    """Deterministic evaluation episodes, one env each (ODT: 10)."""
    target_return: float = 3600.0
    """Return-to-go the policy is conditioned on (ODT hopper: 3600)."""
    context_len: int = 5
    """Steps of context at evaluation and rollout (ODT: 5)."""
    seed: int = 10_000
    """First evaluation seed; differs from collection and training seeds."""


@dataclass(frozen=True)
class ReplayConfig:
    capacity_trajectories: int = 1000
    """Replay capacity in trajectories (ODT: 1000); held as windows, sized with the
    environment's episode limit (a bound on what that many trajectories can fill)."""
    preload_trajectories: int = 1000
    """Top-N offline trajectories by return preloaded, inserted worst first (ODT: capacity)."""
    updates_per_env_step: float = 0.3
    """Learner updates per environment step (ODT: 300 updates per ~1000-step episode)."""
    tolerance_steps: float = 1000.0
    """Slack of the sample-to-insert ratio, in environment steps, either way."""
    port: int = 0
    """Port of the replay server; 0 picks a free one (local runs)."""
    item_format: str = "episode_window"
    """What one replay item is (`replay.formats.ITEM_FORMATS`); the same for the offline
    sampler of pretraining and the online tables."""


@dataclass(frozen=True)
class ActorConfig:
    num_actors: int = 2
    envs_per_actor: int = 4
    """Environments per actor process, acted for with one batched forward pass."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise on ODT+TD3's deterministic actions (vitamin paper: 0.1)."""
    params_interval_s: float = 1.0
    """How often actors look for newer weights."""
    env_batch_size: int = 0
    """Envs per inference batch through envpool's send/recv; 0: all envs_per_actor in
    lockstep. Smaller batches let the others step during inference, which pays only
    when an env step costs about as much as a forward pass (bench/actor.py)."""
    background_writes: bool = True
    """Write finished episodes to Reverb in a thread of the actor, off the inference
    path (bench/actor.py)."""
    log_episodes: bool = True
    """Also append each finished episode, in the environment's units, to an HDF5 log in
    the actor's directory (`replay.episode_log`), from which `python -m replay.export`
    makes a Minari dataset of the run's online episodes."""


@dataclass(frozen=True)
class FinetuneConfig:
    env_steps: int = 200_000
    """Online budget in environment steps (ODT reports 200k)."""
    publish_every: int = 50
    """Learner updates between weight publications."""
    log_every: int = 100
    checkpoint_every: int = 5000
    eval_every_env_steps: int = 10_000
    """The evaluator runs every this many environment steps."""
    max_nonfinite_updates: int = 10
    """Consecutive updates with a NaN or inf loss (each skipped) that stop the run."""
    max_restarts: int = 3
    """Restarts of each crashed actor or evaluator before the run gives up."""
    restart_backoff_s: float = 1.0
    """Wait before the first restart of a role; doubles with each further restart."""


@dataclass(frozen=True)
class InContextConfig:
    """The in-context pipeline's stages (`launch.incontext`; pipeline 'in_context')."""

    held_out_fraction: float = 0.2
    """Share of the family's tasks held out of the histories and evaluated in context."""
    split_seed: int = 0
    """Seed of the train/held-out split; fixed across run seeds, so every seed is
    evaluated on the same held-out tasks."""
    max_train_tasks: int = 0
    """Training tasks the source learns (a seeded draw from the training side of the
    split); 0: all of them. Dark Key-to-Door has 5184."""
    max_eval_tasks: int = 0
    """Held-out tasks evaluated (a seeded draw); 0: all of them."""
    histories_per_task: int = 4
    """Source histories recorded per training task, each from scratch."""
    source_episodes: int = 200
    """Episodes the source plays per history (tabular Q-learning: from random to near
    optimal within 200 on Dark Room, actors/qlearning.py)."""
    keep_every: int = 4
    """Every this many episodes of a source history is kept for training: AD learns an
    improvement operator that many times faster than the source's."""
    expert_episodes: int = 5
    """Expert distillation trains on the last this many kept episodes of each history."""
    eval_episodes: int = 40
    """Episodes in context per held-out task."""
    action_temperature: float = 0.5
    """AD's and ED's actions are sampled from their policy's logits divided by this.
    Chosen on training goals (seed 0, 16 of them): AD's return over episodes 30-40 was
    52% of optimal at 1.0 and 74% at 0.5; the source it imitates plays near-greedily
    once it has learnt (epsilon 0.02), which the trained policy's spread at 1.0 does
    not reproduce."""
    source: QLearningConfig = field(default_factory=QLearningConfig)
    """The source algorithm's settings."""


@dataclass(frozen=True)
class MultiGameConfig:
    """The multi-game pipeline's stages (`launch.multigame`; pipeline 'multi_game')."""

    games: tuple[str, ...] = ("Pong-v5", "Breakout-v5", "Freeway-v5")
    """envpool Atari games, one model for all (each needs reference scores in
    `replay.atari_scores`)."""
    episodes_per_policy: dict = field(
        default_factory=lambda: {"random": 8, "noisy:0.3": 8, "noisy:0.1": 8, "cem:8": 8})
    """Behaviour policy tag (`actors.multigame`) -> episodes recorded per game. Four
    qualities: in Freeway (1000-step episodes, seed 0) uniform play scores 0, "noisy:0.3"
    0-1, "noisy:0.1" 0-2 and the best 8 of a 32-episode cross-entropy-method run 3-5."""
    max_steps_per_episode: int = 1000
    """Episode limit in agent steps (4 frames each) when recording and evaluating; 0:
    envpool's own (27,000)."""
    record_envs: int = 4
    """Environments per game while recording."""
    balance_games: bool = True
    """Pretraining draws each game equally often, whatever its share of the steps."""
    eval_episodes: int = 8
    """Evaluation episodes per game and mode."""
    kappa: float = 10.0
    """Optimality weight of expert-action inference: returns sampled from the predicted
    distribution reweighted by exp(kappa x normalized return)."""
    num_return_samples: int = 128
    """Expert-action inference conditions on the highest of this many returns drawn from
    the reweighted distribution (the official colab's 128; 1: plain sampling)."""
    return_temperature: float = 0.75
    """Temperature of those return draws (the official colab's 0.75)."""
    action_top_percentile: float = 50.0
    """Actions are sampled among those whose logits reach this percentile of the step's
    logits, in evaluation and online acting, in both modes (the official colab's
    evaluation setting, 50: the upper half; 0 keeps every action;
    `models.mgdt.top_percentile_logits`)."""
    online_env_steps: int = 30_000
    """Online fine-tuning budget in environment steps, all games together; 0 skips the
    online stage."""
    online_envs: int = 4
    """Environments per game while fine-tuning (a mixed actor holds this many of each
    game)."""
    online_round_steps: int = 500
    """Turn-taking: steps per game each actor plays with the newest weights before the
    learner's turn. With actor processes: how often (in env steps, all games) the
    stage's progress is written to TensorBoard."""
    replay_capacity_steps: int = 200_000
    """Frame windows (steps) the online replay table holds, preload included (FIFO)."""
    preload_top_episodes: int = 0
    """Online, the replay table is preloaded with this many of each game's recorded
    episodes, the highest returns, worst first (ODT's buffer of the top offline
    trajectories); 0 preloads every recorded episode."""
    actor_processes: bool = False
    """Online, run each actor as a process of its own beside the learner, which learns
    while they play; False: actors and learner take turns in one process, which makes a
    run reproducible (`launch.multigame`)."""
    mix_games: bool = False
    """Online, one actor plays every game: its batch mixes `online_envs` environments of
    each game, acted for in one forward pass (`actors.multigame.MixedGameEnv`); False:
    an actor per game."""


PIPELINES = ("offline_online", "in_context", "multi_game")
"""What `launch.main` runs: 'offline_online' (dataset, pretraining, online fine-tuning),
'in_context' (source histories, Algorithm Distillation and its in-context evaluation,
`launch.incontext`) or 'multi_game' (several Atari games' data, one Multi-Game Decision
Transformer, per-game evaluation, `launch.multigame`)."""


@dataclass(frozen=True)
class RunConfig:
    name: str
    env: EnvConfig
    model: ModelConfig
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    online_target_return: float = 7200.0
    """Exploration target while fine-tuning (ODT: twice the evaluation target)."""
    pipeline: str = "offline_online"
    """One of `PIPELINES`."""
    incontext: InContextConfig = field(default_factory=InContextConfig)
    """The in-context pipeline's settings (read when pipeline is 'in_context')."""
    multigame: MultiGameConfig = field(default_factory=MultiGameConfig)
    """The multi-game pipeline's settings (read when pipeline is 'multi_game')."""
    seed: int = 0
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda[:i]'."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """The inverse of `to_dict` (a run's saved config.json); ValueError on unknown fields."""
        return _from_dict(cls, values, "config")


def _from_dict(cls, values, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    types = typing.get_type_hints(cls)
    if cls is ModelConfig:  # saved by earlier versions, now derived from the objective
        values = {k: v for k, v in values.items() if k not in RETIRED_MODEL_FIELDS}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        if is_dataclass(types[name]):
            value = _from_dict(types[name], value, f"{where}.{name}")
        elif isinstance(value, list) and typing.get_origin(types[name]) is tuple:
            value = tuple(value)  # JSON has no tuples
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def validate(cfg: RunConfig) -> list[str]:
    """Every problem of the config, each naming the field and its value."""
    problems = (cfg.model.validate() + cfg.objective.validate() + cfg.optim.validate()
                + cfg.compute.validate())
    if cfg.pretrain.updates < 0:
        problems.append(f"pretrain.updates={cfg.pretrain.updates} must be >= 0")
    for name in ("log_every", "checkpoint_every"):
        if getattr(cfg.pretrain, name) < 1:
            problems.append(f"pretrain.{name}={getattr(cfg.pretrain, name)} must be >= 1")
    if cfg.pretrain.eval_every < 0:
        problems.append(f"pretrain.eval_every={cfg.pretrain.eval_every} must be >= 0")
    if cfg.eval.episodes < 1:
        problems.append(f"eval.episodes={cfg.eval.episodes} must be >= 1")
    if not 1 <= cfg.eval.context_len <= cfg.model.context_len:
        problems.append(
            f"eval.context_len={cfg.eval.context_len} must lie in [1, model.context_len="
            f"{cfg.model.context_len}]"
        )
    if cfg.data.collect_episodes < 1:
        problems.append(f"data.collect_episodes={cfg.data.collect_episodes} must be >= 1")
    if cfg.data.collect_num_envs < 1:
        problems.append(f"data.collect_num_envs={cfg.data.collect_num_envs} must be >= 1")
    if cfg.data.collect_format not in ("minari", "d4rl"):
        problems.append(f"data.collect_format={cfg.data.collect_format!r} must be 'minari' "
                        "or 'd4rl'")
    if cfg.data.collect_noise < 0:
        problems.append(f"data.collect_noise={cfg.data.collect_noise} must be >= 0")
    if not 0 <= cfg.data.state_std_floor < math.inf:
        problems.append(f"data.state_std_floor={cfg.data.state_std_floor} must be finite "
                        "and >= 0")
    if cfg.replay.item_format not in ITEM_FORMATS:
        problems.append(f"replay.item_format={cfg.replay.item_format!r} must be one of "
                        f"{', '.join(sorted(ITEM_FORMATS))}")
    for name in ("capacity_trajectories", "preload_trajectories"):
        if getattr(cfg.replay, name) < 0:
            problems.append(f"replay.{name}={getattr(cfg.replay, name)} must be >= 0")
    if cfg.replay.capacity_trajectories < 1:
        problems.append(
            f"replay.capacity_trajectories={cfg.replay.capacity_trajectories} must be >= 1"
        )
    if cfg.replay.updates_per_env_step <= 0:
        problems.append(
            f"replay.updates_per_env_step={cfg.replay.updates_per_env_step} must be > 0"
        )
    if cfg.replay.tolerance_steps < 1:
        problems.append(f"replay.tolerance_steps={cfg.replay.tolerance_steps} must be >= 1")
    if not 0 <= cfg.replay.port < 65536:
        problems.append(f"replay.port={cfg.replay.port} must lie in [0, 65535]")
    for name in ("num_actors", "envs_per_actor"):
        if getattr(cfg.actor, name) < 1:
            problems.append(f"actor.{name}={getattr(cfg.actor, name)} must be >= 1")
    if not 0 <= cfg.actor.env_batch_size <= cfg.actor.envs_per_actor:
        problems.append(f"actor.env_batch_size={cfg.actor.env_batch_size} must lie in "
                        f"[0, actor.envs_per_actor={cfg.actor.envs_per_actor}]")
    if cfg.actor.exploration_noise < 0:
        problems.append(f"actor.exploration_noise={cfg.actor.exploration_noise} must be >= 0")
    for name in ("env_steps", "publish_every", "log_every", "checkpoint_every",
                 "eval_every_env_steps"):
        if getattr(cfg.finetune, name) < 1:
            problems.append(f"finetune.{name}={getattr(cfg.finetune, name)} must be >= 1")
    if cfg.objective.kind in OBJECTIVES and not cfg.model.validate():
        from learner.objectives import get_objective

        space = (f"Discrete({cfg.model.act_dim})" if cfg.model.action_kind == "discrete"
                 else f"Box({cfg.model.act_dim},)")
        rule = get_objective(cfg.objective.kind)
        try:
            rule.head_for(cfg.model.action_kind, f"{space} ({cfg.env.env_id})")
        except ValueError as error:
            problems.append(str(error))
        if cfg.model.kind not in rule.model_kinds:
            problems.append(f"objective.kind={rule.kind!r} trains model.kind "
                            f"{' or '.join(map(repr, rule.model_kinds))}; the preset's "
                            f"model.kind is {cfg.model.kind!r}")
    problems += _pipeline_problems(cfg)
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        problems.append(f"device={cfg.device!r} must be 'auto', 'cpu' or 'cuda[:i]'")
    return problems


# ---- presets ---------------------------------------------------------------------


def quickstart() -> RunConfig:
    """InvertedPendulum-v4 from random-policy data; a small model, minutes on CPU.

    The dataset is low quality on purpose (random actions balance for ~7 steps of
    1000), the case where ODT+TD3's critic gradient matters (Yan et al. 2024).
    """
    return RunConfig(
        name="quickstart",
        env=EnvConfig(env_id="InvertedPendulum-v4"),
        model=ModelConfig(
            state_dim=4, act_dim=1, context_len=10, embed_dim=64, n_layer=2, n_head=2,
            ffn_dim=256, dropout=0.0, return_scale=0.001,
        ),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=200, batch_size=64),
        # A budget of 6000 updates: with the paper's tau 0.005 the targets' time constant
        # (400 updates) let TD backups reach ~15 of the ~100 steps of horizon, and Q
        # lagged the returns; tau 0.05 lets the critic keep up (DESIGN.md, "ODT+TD3's
        # critic"), with LayerNorm in the critic against the over-estimation faster
        # targets invite. Rewards of 1 per step: rl_coeff is normalized by mean |Q|
        # (TD3+BC's 2.5), and the critic is pretrained on the offline data.
        objective=ObjectiveConfig(kind="odt_td3", rl_coeff=2.5, normalize_q=True,
                                  critic_pretrain_updates=1000, tau=0.05,
                                  critic=CriticConfig(layer_norm=True)),
        data=DataConfig(collect_policy="random", collect_episodes=300, collect_num_envs=20),
        pretrain=PretrainConfig(updates=500, log_every=50, eval_every=250, checkpoint_every=250),
        eval=EvalConfig(episodes=10, target_return=1000.0, context_len=5),
        replay=ReplayConfig(updates_per_env_step=1.0, tolerance_steps=1000.0),
        actor=ActorConfig(num_actors=2, envs_per_actor=4),
        finetune=FinetuneConfig(env_steps=6000, publish_every=25, log_every=50,
                                checkpoint_every=1000, eval_every_env_steps=1500),
        online_target_return=1000.0,
    )


def cartpole() -> RunConfig:
    """CartPole-v1 (two discrete actions, 4 floats of observation) from random-policy
    data: the categorical Decision Transformer under ODT's entropy objective, minutes on
    CPU. Random play balances for about 22 of the 500 steps."""
    return RunConfig(
        name="cartpole",
        env=EnvConfig(env_id="CartPole-v1"),
        model=ModelConfig(
            state_dim=4, act_dim=2, action_kind="discrete", context_len=10, embed_dim=64,
            n_layer=2, n_head=2, ffn_dim=256, dropout=0.0, return_scale=0.01,
        ),
        objective=ObjectiveConfig(kind="odt"),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=200, batch_size=64),
        data=DataConfig(collect_policy="random", collect_episodes=300, collect_num_envs=20),
        pretrain=PretrainConfig(updates=500, log_every=50, eval_every=250, checkpoint_every=250),
        eval=EvalConfig(episodes=10, target_return=500.0, context_len=5),
        replay=ReplayConfig(capacity_trajectories=200, updates_per_env_step=0.5,
                            tolerance_steps=1000.0),
        actor=ActorConfig(num_actors=2, envs_per_actor=4),
        finetune=FinetuneConfig(env_steps=10_000, publish_every=25, log_every=50,
                                checkpoint_every=1000, eval_every_env_steps=2500),
        online_target_return=500.0,
    )


def pong() -> RunConfig:
    """Atari Pong-v5 (six discrete actions, 4 stacked 84x84 uint8 frames) from
    random-policy data: the Decision Transformer with a convolutional frame encoder,
    small enough for 2 CPU cores. A smoke-sized run of the image path (frames stay uint8
    from envpool through Reverb to the encoder), not a Pong player: learning Pong takes
    millions of frames."""
    return RunConfig(
        name="pong",
        env=EnvConfig(env_id="Pong-v5"),
        model=ModelConfig(
            state_dim=4 * 84 * 84, act_dim=6, action_kind="discrete", frame_shape=(4, 84, 84),
            context_len=4, embed_dim=64, n_layer=1, n_head=2, ffn_dim=128, dropout=0.0,
            return_scale=0.1,
        ),
        objective=ObjectiveConfig(kind="odt"),
        optim=OptimConfig(lr=3e-4, weight_decay=1e-4, warmup_steps=50, batch_size=16),
        data=DataConfig(collect_policy="random", collect_episodes=4, collect_num_envs=4),
        pretrain=PretrainConfig(updates=100, log_every=20, eval_every=0, checkpoint_every=100),
        eval=EvalConfig(episodes=2, target_return=21.0, context_len=4),
        replay=ReplayConfig(capacity_trajectories=1, preload_trajectories=2,
                            updates_per_env_step=0.05, tolerance_steps=500.0),
        actor=ActorConfig(num_actors=2, envs_per_actor=2),
        finetune=FinetuneConfig(env_steps=2000, publish_every=10, log_every=10,
                                checkpoint_every=100, eval_every_env_steps=1000),
        online_target_return=21.0,
    )


# Per robot: envpool id, observation and action sizes, and ODT's hyperparameters
# (lr, weight decay, pretraining updates, evaluation / online targets).
_D4RL_ROBOTS = {
    "hopper": ("Hopper-v4", 11, 3, 1e-4, 5e-4, 5000, 3600.0, 7200.0),
    "halfcheetah": ("HalfCheetah-v4", 17, 6, 1e-4, 5e-4, 5000, 6000.0, 12000.0),
    "walker2d": ("Walker2d-v4", 17, 6, 1e-3, 1e-3, 10000, 5000.0, 10000.0),
    "ant": ("Ant-v3", 111, 8, 1e-4, 1e-4, 5000, 5000.0, 10000.0),
}
_D4RL_SPLITS = ("random", "medium", "medium-replay")


def d4rl_file(robot: str, split: str) -> Path:
    """Where a D4RL v2 file is looked for: $D4RL_DATASET_DIR, else ~/.d4rl/datasets."""
    root = Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets"))
    return root / f"{robot}_{split.replace('-', '_')}-v2.hdf5"


def d4rl_preset(robot: str, split: str) -> RunConfig:
    env_id, obs, act, lr, wd, updates, eval_rtg, online_rtg = _D4RL_ROBOTS[robot]
    path = d4rl_file(robot, split)
    record = split == "random" and not path.exists()
    return RunConfig(
        name=f"{robot}-{split}",
        env=EnvConfig(env_id=env_id, task_id=f"{robot}-{split}-v2"),
        model=ModelConfig(state_dim=obs, act_dim=act),
        objective=ObjectiveConfig(critic=CriticConfig()),
        optim=OptimConfig(lr=lr, weight_decay=wd),
        data=DataConfig(
            path=None if record else str(path), collect_policy="random",
            collect_episodes=1000, collect_num_envs=50,
        ),
        pretrain=PretrainConfig(updates=updates),
        eval=EvalConfig(target_return=eval_rtg),
        online_target_return=online_rtg,
    )


def _pipeline_problems(cfg: RunConfig) -> list[str]:
    if cfg.pipeline not in PIPELINES:
        return [f"pipeline={cfg.pipeline!r} must be one of {PIPELINES}"]
    if cfg.pipeline == "multi_game":
        return _multigame_problems(cfg)
    problems = []
    if cfg.env.options:
        problems.append(f"env.options={cfg.env.options!r}: only the multi_game pipeline "
                        f"makes its envs with envpool options; pipeline={cfg.pipeline!r} "
                        f"collects, acts and evaluates on {cfg.env.env_id} with envpool's "
                        "defaults")
    if cfg.objective.kind in OBJECTIVES:
        from learner.objectives import get_objective

        online = get_objective(cfg.objective.kind).online
        if online != (cfg.pipeline == "offline_online"):
            problems.append(
                f"objective.kind={cfg.objective.kind!r} "
                + ("fine-tunes online" if online else "trains offline only")
                + f"; pipeline={cfg.pipeline!r} needs "
                + ("an offline-only objective such as 'ad'" if online
                   else "an online objective"))
    if cfg.pipeline != "in_context":
        return problems
    ic = cfg.incontext
    from actors.darkroom import ENVS as GRID_FAMILIES

    if cfg.env.env_id not in GRID_FAMILIES:
        problems.append(f"env.env_id={cfg.env.env_id!r}: the in-context pipeline runs on "
                        f"the grid tasks ({', '.join(GRID_FAMILIES)})")
    if ic.action_temperature <= 0:
        problems.append(f"incontext.action_temperature={ic.action_temperature} must be > 0")
    if not 0.0 < ic.held_out_fraction < 1.0:
        problems.append(f"incontext.held_out_fraction={ic.held_out_fraction} must lie in (0, 1)")
    for name in ("max_train_tasks", "max_eval_tasks"):
        if getattr(ic, name) < 0:
            problems.append(f"incontext.{name}={getattr(ic, name)} must be >= 0 (0: all)")
    for name in ("histories_per_task", "source_episodes", "keep_every", "expert_episodes",
                 "eval_episodes"):
        if getattr(ic, name) < 1:
            problems.append(f"incontext.{name}={getattr(ic, name)} must be >= 1")
    kept = -(-ic.source_episodes // max(ic.keep_every, 1))
    if ic.expert_episodes > kept:
        problems.append(f"incontext.expert_episodes={ic.expert_episodes} must be at most the "
                        f"{kept} episodes kept per history (source_episodes / keep_every)")
    return problems


def _multigame_problems(cfg: RunConfig) -> list[str]:
    from replay.atari_scores import ATARI_REFERENCE_SCORES

    mg, problems = cfg.multigame, []
    if cfg.objective.kind != "mgdt":
        problems.append(f"objective.kind={cfg.objective.kind!r}: the multi-game pipeline "
                        "trains objective 'mgdt'")
    if not mg.games:
        problems.append("multigame.games is empty")
    unknown = [g for g in mg.games if g not in ATARI_REFERENCE_SCORES]
    if unknown:
        problems.append(f"multigame.games: {', '.join(unknown)} has no Atari reference "
                        "scores (replay.atari_scores)")
    if not mg.episodes_per_policy or any(
            not isinstance(n, int) or n < 1 for n in mg.episodes_per_policy.values()):
        problems.append(f"multigame.episodes_per_policy={mg.episodes_per_policy} must map "
                        "policy tags to episode counts >= 1")
    from actors.multigame import built_in_tag, cem_rounds

    for tag, count in dict(mg.episodes_per_policy).items():
        try:
            built_in, rounds = built_in_tag(str(tag)), cem_rounds(str(tag))
        except ValueError as error:
            problems.append(f"multigame.episodes_per_policy: {error}")
            continue
        if not built_in:
            problems.append(f"multigame.episodes_per_policy: policy {tag!r} is none of "
                            "'random', 'noisy:<eps>' and 'cem:<rounds>'")
        elif rounds is not None and isinstance(count, int) and count > rounds * mg.record_envs:
            problems.append(f"multigame.episodes_per_policy[{tag!r}]={count}: {rounds} rounds "
                            f"of multigame.record_envs={mg.record_envs} environments play "
                            f"{rounds * mg.record_envs} episodes")
    for name in ("record_envs", "eval_episodes", "online_envs", "online_round_steps",
                 "replay_capacity_steps"):
        if getattr(mg, name) < 1:
            problems.append(f"multigame.{name}={getattr(mg, name)} must be >= 1")
    if mg.num_return_samples < 1:
        problems.append(f"multigame.num_return_samples={mg.num_return_samples} must be >= 1")
    if not mg.return_temperature > 0:
        problems.append(f"multigame.return_temperature={mg.return_temperature} must be > 0")
    if not 0 <= mg.action_top_percentile < 100:
        problems.append(f"multigame.action_top_percentile={mg.action_top_percentile} must "
                        "lie in [0, 100)")
    if mg.max_steps_per_episode < 0:
        problems.append(f"multigame.max_steps_per_episode={mg.max_steps_per_episode} must "
                        "be >= 0 (0: envpool's limit)")
    if mg.online_env_steps < 0:
        problems.append(f"multigame.online_env_steps={mg.online_env_steps} must be >= 0 "
                        "(0: no online fine-tuning)")
    if mg.preload_top_episodes < 0:
        problems.append(f"multigame.preload_top_episodes={mg.preload_top_episodes} must be "
                        ">= 0 (0: every recorded episode)")
    return problems


def mgdt_atari3() -> RunConfig:
    """`mgdt-atari3`: one Multi-Game Decision Transformer for Pong, Breakout and Freeway
    from onramp's own mixed-quality data, sized for 2 CPU cores (DESIGN.md,
    "Multi-Game Decision Transformer"): width 128, 3 layers, a 4-step context of 84x84
    frames (156 tokens), batch 32, LAMB at 3e-3 (at 3e-4 the action cross-entropy stayed
    at log 18 through 2000 updates); 1000 pretraining updates, then 30k online steps of
    all games together at 0.1 updates per step (3000 updates) from a replay table
    preloaded with each game's 8 best recorded episodes (the settings that raised
    Freeway on three seeds' pretrained models; DESIGN.md)."""
    return RunConfig(
        name="mgdt-atari3",
        env=EnvConfig(env_id="Pong-v5", options={"stack_num": 1, "full_action_space": True}),
        model=ModelConfig(kind="multi_game_dt", state_dim=84 * 84, act_dim=18,
                          action_kind="discrete", frame_shape=(1, 84, 84), context_len=4,
                          embed_dim=128, n_layer=3, n_head=4, ffn_dim=512, dropout=0.1),
        objective=ObjectiveConfig(kind="mgdt"),
        optim=OptimConfig(lr=3e-3, weight_decay=1e-4, warmup_steps=200, batch_size=32),
        pretrain=PretrainConfig(updates=1000, log_every=100, eval_every=0,
                                checkpoint_every=1000),
        eval=EvalConfig(episodes=4, context_len=4),
        replay=ReplayConfig(item_format="frame_window", updates_per_env_step=0.1),
        pipeline="multi_game",
        multigame=MultiGameConfig(preload_top_episodes=8),
    )


def ad_darkroom() -> RunConfig:
    """`ad-darkroom`: Algorithm Distillation on Dark Room (Laskin et al. 2022), sized for
    2 CPU cores (DESIGN.md, "In-context reinforcement learning")."""
    return RunConfig(
        name="ad-darkroom",
        env=EnvConfig(env_id="DarkRoom-v0"),
        model=ModelConfig(kind="algorithm_distillation", state_dim=2, act_dim=5,
                          action_kind="discrete", context_len=100, embed_dim=64, n_layer=3,
                          n_head=4, ffn_dim=256, dropout=0.1),
        objective=ObjectiveConfig(kind="ad"),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=500, batch_size=32),
        pretrain=PretrainConfig(updates=4000, log_every=100, eval_every=1000,
                                checkpoint_every=1000),
        replay=ReplayConfig(item_format="history_window"),
        pipeline="in_context",
        incontext=InContextConfig(),
    )


def ad_keytodoor() -> RunConfig:
    """`ad-keytodoor`: `ad-darkroom` on Dark Key-to-Door (key, then door, 50-step
    episodes), with 100 of its 5184 training tasks, 16 held out, and 300-episode source
    histories (the source needs about 200 episodes to reach the optimum of 2)."""
    cfg = ad_darkroom()
    return replace(cfg, name="ad-keytodoor", env=EnvConfig(env_id="DarkKeyToDoor-v0"),
                   incontext=replace(cfg.incontext, max_train_tasks=100, max_eval_tasks=16,
                                     source_episodes=300, keep_every=6))


def locomotion_cpu_preset(robot: str) -> RunConfig:
    """`<robot>-random-cpu`: the D4RL random task at a size 2 CPU cores finish in under
    45 minutes. A recorded uniform-random dataset (about D4RL's size: 10k episodes of
    hopper and walker2d, which fall within ~20 steps; 1000 of halfcheetah, which never
    terminates and runs 1000 steps), the reference online-dt's small model (width 128,
    3 layers, 1 head, batch 64) trained on a context of K = 5 steps (ODT's evaluation
    context), and 50k online steps of ODT+TD3 (DESIGN.md, "Locomotion on CPU").

    Hopper fine-tunes at one update per env step with normalized rl_coeff 25 and 100
    preloaded trajectories: the settings that took it past the pretrained lunge on three
    seeds. Halfcheetah and walker2d keep 0.2 updates per step, rl_coeff 2.5 and a full
    preload, the settings they were measured at."""
    env_id, obs, act, _, _, _, eval_rtg, online_rtg = _D4RL_ROBOTS[robot]
    # Replay capacity and preload count trajectories: 1000 of hopper's hold ~22k steps,
    # 100 of halfcheetah's 100k. Hopper preloads 100 (~2.2k steps), so that the online
    # windows outnumber the random ones within its first 2k online steps.
    episodes, trajectories = (1000, 100) if robot == "halfcheetah" else (10_000, 1000)
    rl_coeff, updates_per_env_step, preload = (
        (25.0, 1.0, 100) if robot == "hopper" else (2.5, 0.2, trajectories))
    return RunConfig(
        name=f"{robot}-random-cpu",
        env=EnvConfig(env_id=env_id, task_id=f"{robot}-random-v2"),
        model=ModelConfig(state_dim=obs, act_dim=act, context_len=5, embed_dim=128,
                          n_layer=3, n_head=1, ffn_dim=512, dropout=0.1),
        objective=ObjectiveConfig(kind="odt_td3", rl_coeff=rl_coeff, normalize_q=True,
                                  critic_pretrain_updates=2000, tau=0.01,
                                  critic=CriticConfig(layer_norm=True)),
        optim=OptimConfig(lr=1e-4, weight_decay=5e-4, warmup_steps=1000, batch_size=64),
        data=DataConfig(collect_policy="random", collect_episodes=episodes, collect_num_envs=50,
                        collect_format="d4rl"),
        pretrain=PretrainConfig(updates=3000, log_every=100, eval_every=1000,
                                checkpoint_every=1000),
        eval=EvalConfig(episodes=10, target_return=eval_rtg, context_len=5),
        replay=ReplayConfig(capacity_trajectories=trajectories,
                            preload_trajectories=preload,
                            updates_per_env_step=updates_per_env_step,
                            tolerance_steps=1000.0),
        actor=ActorConfig(num_actors=1, envs_per_actor=4),
        finetune=FinetuneConfig(env_steps=50_000, publish_every=50, log_every=100,
                                checkpoint_every=5000, eval_every_env_steps=5000),
        online_target_return=online_rtg,
    )


PRESETS = {"quickstart": quickstart, "cartpole": cartpole, "pong": pong,
           "ad-darkroom": ad_darkroom, "ad-keytodoor": ad_keytodoor,
           "mgdt-atari3": mgdt_atari3}
for _robot in ("hopper", "halfcheetah", "walker2d"):
    PRESETS[f"{_robot}-random-cpu"] = (lambda r=_robot: locomotion_cpu_preset(r))
for _robot in _D4RL_ROBOTS:
    for _split in _D4RL_SPLITS:
        PRESETS[f"{_robot}-{_split}"] = (lambda r=_robot, s=_split: d4rl_preset(r, s))


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()
