"""Record a dataset with envpool from any policy: random, scripted, or a checkpoint.

Episodes are written in the Minari layout (default) or as a D4RL-style HDF5 file,
with provenance: env id and version, envpool version, behaviour policy, noise, seed.
Actions are stored in the environment's own units.

    python -m actors.collect --env_id=Pendulum-v1 --policy=scripted --episodes=100 \
        --out=data/pendulum-scripted [--noise=0.3] [--format=minari|d4rl]
    python -m actors.collect --policy=runs/x/pretrain/checkpoint.pt --noise=0.1 ...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from actors.context import BatchedPolicy, ContextBuffer
from actors.envs import EnvSpec, VectorEnv
from actors.scripted import SCRIPTED_POLICIES
from replay.datasets import Episode, write_d4rl, write_minari

Policy = Callable[[ContextBuffer], np.ndarray]  # context -> actions in [-1, 1], or indices
LoadPolicy = Callable[[str], tuple]
"""A checkpoint path -> (model, payload), e.g. `learner.checkpoint.load_policy`: actors
do not import the learner, so the caller hands the checkpoint reader in."""


def make_behaviour_policy(name: str, spec: EnvSpec, *, seed: int, noise: float,
                          target_return: float | None = None,
                          load_policy: LoadPolicy | None = None) -> tuple[Policy, int, float]:
    """(policy, context length, target return) for 'random', 'scripted' or a checkpoint
    path, read with `load_policy`."""
    rng = np.random.default_rng(seed)

    def with_noise(actions: np.ndarray) -> np.ndarray:
        if spec.discrete:  # `noise` is the chance of a uniformly random action instead
            random = rng.random(len(actions)) < noise
            return np.where(random, rng.integers(0, spec.num_actions, len(actions)),
                            actions).astype(np.int32)
        if noise > 0:
            actions = actions + rng.normal(0.0, noise, size=actions.shape)
        return np.clip(actions, -1.0, 1.0).astype(np.float32)

    if name == "random":
        if spec.discrete:
            return (lambda ctx: rng.integers(0, spec.num_actions, ctx.num_envs).astype(np.int32),
                    1, 0.0)
        return (lambda ctx: rng.uniform(-1, 1, (ctx.num_envs, spec.act_dim)).astype(np.float32),
                1, 0.0)
    if name == "scripted":
        if spec.env_id not in SCRIPTED_POLICIES:
            raise ValueError(
                f"policy='scripted' has no controller for env_id={spec.env_id!r}; "
                f"scripted controllers exist for: {', '.join(SCRIPTED_POLICIES)}"
            )
        controller = SCRIPTED_POLICIES[spec.env_id]
        return (lambda ctx: with_noise(controller(ctx.states[:, -1])), 1, 0.0)
    if not Path(name).is_file():
        raise ValueError(
            f"policy={name!r} is neither 'random', 'scripted' nor an existing checkpoint file"
        )
    if load_policy is None:
        raise ValueError(f"policy={name!r} is a checkpoint, and no checkpoint reader was "
                         "given (load_policy=learner.checkpoint.load_policy)")
    model, payload = load_policy(name)
    run = payload.get("run_config", {})
    if (model.cfg.state_dim != spec.state_dim or model.cfg.act_dim != spec.act_dim
            or model.cfg.action_kind != spec.action_kind):
        raise ValueError(
            f"checkpoint {name} was trained for state_dim={model.cfg.state_dim}, "
            f"act_dim={model.cfg.act_dim}; {spec.env_id} has {spec.state_dim} and {spec.act_dim}"
        )
    target = target_return if target_return is not None else run["eval"]["target_return"]
    policy = BatchedPolicy(model, mode="mean", seed=seed)
    return (lambda ctx: with_noise(policy.act(ctx)),
            run.get("eval", {}).get("context_len", model.cfg.context_len), float(target))


def record_episodes(env: VectorEnv, policy: Policy, context_len: int, target_return: float,
                    episodes: int, progress: bool = False) -> list[Episode]:
    """Run `env` until `episodes` episodes have finished; return them in finishing order."""
    spec = env.spec
    ctx = ContextBuffer.for_env(env.num_envs, context_len, spec)
    obs = env.reset()
    ctx.start(np.ones(env.num_envs, bool), obs, target_return)
    buffers = [{"obs": [obs[i]], "act": [], "rew": []} for i in range(env.num_envs)]
    box = spec.action_box
    done_episodes: list[Episode] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"recording {spec.env_id}", unit="ep", file=sys.stderr)
    while len(done_episodes) < episodes:
        actions = policy(ctx)
        ctx.record_actions(actions)
        result = env.step(actions)
        env_actions = box.to_env(actions)
        for i in range(env.num_envs):
            if result.is_reset[i]:
                buffers[i] = {"obs": [result.observations[i]], "act": [], "rew": []}
                continue
            buf = buffers[i]
            buf["act"].append(env_actions[i])
            buf["rew"].append(result.rewards[i])
            buf["obs"].append(result.observations[i])
            if result.done[i] and len(done_episodes) < episodes:
                done_episodes.append(Episode(
                    observations=np.stack(buf["obs"]).astype(spec.observation_dtype),
                    actions=np.stack(buf["act"]).astype(
                        np.int64 if spec.discrete else np.float32),
                    rewards=np.asarray(buf["rew"], np.float32),
                    terminated=bool(result.terminated[i]),
                    truncated=bool(result.truncated[i]),
                ))
                if bar is not None:
                    bar.update(1)
        ctx.advance(result.is_transition, result.observations, result.rewards)
        ctx.start(result.is_reset, result.observations, target_return)
    if bar is not None:
        bar.close()
    return done_episodes


def collect(env_id: str, policy: str, out: str | Path, *, episodes: int, num_envs: int = 10,
            seed: int = 1, noise: float = 0.0, fmt: str = "minari",
            progress: bool = False,
            load_policy: LoadPolicy | None = None) -> tuple[Path, list[Episode]]:
    """Record `episodes` episodes of `policy` on `env_id` and write them to `out`; a
    checkpoint policy is read with `load_policy` (`make_behaviour_policy`)."""
    if fmt not in ("minari", "d4rl"):
        raise ValueError(f"format={fmt!r} must be 'minari' or 'd4rl'")
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ValueError(f"out={str(out)!r} already exists; refusing to overwrite it")
    env = VectorEnv(env_id, num_envs, seed)
    try:
        spec = env.spec
        act, context_len, target = make_behaviour_policy(policy, spec, seed=seed, noise=noise,
                                                         load_policy=load_policy)
        recorded = record_episodes(env, act, context_len, target, episodes, progress)
    finally:
        env.close()
    policy_name = policy if policy in ("random", "scripted") else f"checkpoint:{policy}"
    metadata = {
        "env_id": env_id,
        "env_version": env_id.rsplit("-", 1)[-1],
        "envpool_version": spec.envpool_version,
        "policy": policy_name,
        "action_noise": float(noise),
        "seed": int(seed),
        "description": f"Recorded by onramp from envpool {env_id} with policy {policy_name}.",
    }
    if fmt == "d4rl":
        return write_d4rl(out, recorded, metadata), recorded
    name = policy if policy in ("random", "scripted") else "checkpoint"
    if spec.discrete:
        actions = {"num_actions": spec.num_actions}
    else:
        actions = {"action_low": spec.action_low, "action_high": spec.action_high}
    image = spec.observation_dtype == "uint8"
    path = write_minari(
        out, recorded,
        dataset_id=f"onramp/{env_id.split('-')[0].lower()}/{name}-v0",
        observation_low=0 if image else -np.inf, observation_high=255 if image else np.inf,
        metadata=metadata, **actions,
    )
    return path, recorded


if __name__ == "__main__":
    from launch import collect_main

    collect_main.run()
