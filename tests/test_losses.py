"""Tests for learner.losses and ODT+TD3's shifted_window against slow loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner import losses
from learner.objectives.odt_td3 import shifted_window
from models import SquashedGaussian
from replay.windows import concatenate, flatten_episode, gather_windows

B, K, A = 3, 5, 4


def left_padded_mask(lengths) -> torch.Tensor:
    mask = torch.zeros(len(lengths), K)
    for b, n in enumerate(lengths):
        mask[b, K - n :] = 1.0
    return mask


def squashed_logp(mu: float, log_std: float, pre_tanh: float) -> float:
    """log density of tanh(x) at x = pre_tanh, for x ~ N(mu, exp(log_std)^2), textbook form."""
    std = math.exp(log_std)
    normal = -0.5 * ((pre_tanh - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return normal - math.log(1.0 - math.tanh(pre_tanh) ** 2)


def slow_odt(mu, log_std, actions, mask, eps, log_temperature, target_entropy, mask_entropy):
    """ODT's loss one position at a time; eps is the noise entropy() draws."""
    nll_sum = ent_sum = ent_all = 0.0
    n_real = 0
    for b in range(mu.shape[0]):
        for k in range(mu.shape[1]):
            logp_action = logp_sample = 0.0
            for a in range(mu.shape[2]):
                m, s = float(mu[b, k, a]), float(log_std[b, k, a])
                logp_action += squashed_logp(m, s, math.atanh(float(actions[b, k, a])))
                logp_sample += squashed_logp(m, s, m + math.exp(s) * float(eps[b, k, a]))
            ent_all += -logp_sample
            if mask[b, k]:
                n_real += 1
                nll_sum += -logp_action
                ent_sum += -logp_sample
    nll = nll_sum / n_real
    entropy = ent_sum / n_real if mask_entropy else ent_all / mu[..., 0].numel()
    temperature = math.exp(float(log_temperature))
    return {
        "nll": nll,
        "entropy": entropy,
        "loss": nll - temperature * entropy,
        "temperature_loss": temperature * (entropy - target_entropy),
    }


def to_torch(window: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value) for name, value in window.items()}


def random_policy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, K, A, generator=g, dtype=torch.float64) * 0.5
    log_std = torch.rand(B, K, A, generator=g, dtype=torch.float64) * 1.5 - 1.5
    actions = (torch.rand(B, K, A, generator=g, dtype=torch.float64) * 2 - 1) * 0.95
    return mu, log_std, actions


# ---- ODT -------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_entropy", [True, False])
def test_odt_loss_matches_slow_reference(mask_entropy):
    """NLL is the masked mean of -log pi(a); the entropy estimate is masked or a plain mean
    over padding too (mask_entropy); loss and temperature loss follow ODT's Eq. 5-7."""
    mu, log_std, actions = random_policy()
    mask = left_padded_mask([1, 3, K])
    log_temperature = torch.tensor(math.log(0.3), dtype=torch.float64)
    torch.manual_seed(5)
    eps = torch.randn_like(mu)
    torch.manual_seed(5)  # entropy() draws the same noise
    out = losses.odt_loss(
        SquashedGaussian(mu, log_std),
        actions,
        mask,
        log_temperature,
        -4.0,
        mask_entropy=mask_entropy,
    )
    ref = slow_odt(mu, log_std, actions, mask, eps, log_temperature, -4.0, mask_entropy)
    for name in ("nll", "entropy", "loss", "temperature_loss"):
        assert float(getattr(out, name)) == pytest.approx(ref[name], rel=1e-9, abs=1e-9), name


def test_odt_loss_ignores_padded_actions_and_masking_changes_entropy():
    """Actions at mask-0 positions do not change the NLL; masking the entropy gives a
    different value from averaging over padding as well."""
    mu, log_std, actions = random_policy(1)
    mask = left_padded_mask([2, 4, 1])
    t = torch.tensor(0.0, dtype=torch.float64)
    garbage = actions.clone()
    garbage[mask == 0] = -garbage[mask == 0] * 0.5
    log_std[mask == 0] = -5.0  # padded steps: a much lower entropy than the real ones
    dist = SquashedGaussian(mu, log_std)
    torch.manual_seed(0)
    a = losses.odt_loss(dist, actions, mask, t, -4.0, mask_entropy=True)
    torch.manual_seed(0)
    b = losses.odt_loss(dist, garbage, mask, t, -4.0, mask_entropy=True)
    torch.manual_seed(0)
    c = losses.odt_loss(dist, actions, mask, t, -4.0, mask_entropy=False)
    assert float(a.nll) == float(b.nll) and float(a.entropy) == float(b.entropy)
    assert float(a.nll) == float(c.nll)
    assert float(c.entropy) < float(a.entropy) - 1.0


@pytest.mark.parametrize("target_entropy, direction", [(50.0, +1), (-100.0, -1)])
def test_temperature_step_moves_lambda_toward_target(target_entropy, direction):
    """A gradient step on temperature_loss raises lambda when entropy < target and lowers
    it when entropy > target; the policy loss sends no gradient into log lambda and the
    temperature loss none into the policy."""
    mu, log_std, actions = random_policy(2)
    mu.requires_grad_()
    log_temperature = torch.tensor(math.log(0.1), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([log_temperature], lr=0.01)
    out = losses.odt_loss(
        SquashedGaussian(mu, log_std), actions, torch.ones(B, K), log_temperature, target_entropy
    )
    assert (float(out.entropy) < target_entropy) == (direction > 0)

    out.temperature_loss.backward()
    assert mu.grad is None
    before = log_temperature.item()
    opt.step()
    assert (log_temperature.item() - before) * direction > 0

    log_temperature.grad = None
    out.loss.backward()
    assert log_temperature.grad is None
    assert mu.grad.abs().sum() > 0


# ---- TD3 pieces ------------------------------------------------------------------------


def test_td_target_terminated_stops_bootstrapping_and_uses_min():
    """td_target = r + gamma (1 - terminated) min(Q1', Q2'): terminated steps give r alone,
    truncated (terminated 0) steps bootstrap from the smaller of the two Qs."""
    g = torch.Generator().manual_seed(0)
    q1, q2, r = (torch.randn(B, K, generator=g) for _ in range(3))
    terminated = (torch.rand(B, K, generator=g) < 0.4).float()
    gamma = 0.9
    target = losses.td_target(q1, q2, r, terminated, gamma)
    for b in range(B):
        for k in range(K):
            bootstrap = 0.0 if terminated[b, k] else gamma * min(float(q1[b, k]), float(q2[b, k]))
            assert float(target[b, k]) == pytest.approx(float(r[b, k]) + bootstrap, abs=1e-6)
    assert terminated.any() and (1 - terminated).any()
    assert (q1 < q2).any() and (q2 < q1).any()


def test_critic_loss_matches_loop_and_ignores_padding():
    """critic_loss is the masked mean squared error of each head, summed; values at mask 0
    do not change it, and no gradient reaches the target."""
    g = torch.Generator().manual_seed(1)
    q1 = torch.randn(B, K, generator=g, requires_grad=True)
    q2 = torch.randn(B, K, generator=g)
    target = torch.randn(B, K, generator=g, requires_grad=True)
    mask = left_padded_mask([1, 3, K])
    loss = losses.critic_loss(q1, q2, target, mask)

    n = int(mask.sum())
    p1, p2, y = q1.tolist(), q2.tolist(), target.tolist()
    expected = (
        sum(
            (p1[b][k] - y[b][k]) ** 2 + (p2[b][k] - y[b][k]) ** 2
            for b in range(B)
            for k in range(K)
            if mask[b, k]
        )
        / n
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    pad = mask == 0
    changed = [x.detach().clone() for x in (q1, q2, target)]
    for x in changed:
        x[pad] = 1e6
    assert losses.critic_loss(*changed, mask).item() == pytest.approx(loss.item(), rel=1e-6)

    loss.backward()
    assert target.grad is None
    assert (q1.grad[pad] == 0).all() and q1.grad[~pad].abs().sum() > 0


def test_masked_mean_ignores_padding():
    """masked_mean averages real positions only, and gives 0 for an all-padding mask."""
    x = torch.tensor([[5.0, 1.0, 2.0], [1e6, -1e6, 3.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert float(losses.masked_mean(x, mask)) == pytest.approx(2.0)
    assert float(losses.masked_mean(x, torch.zeros_like(mask))) == 0.0


def test_actor_rl_loss_and_supervised_mse():
    """actor_rl_loss is -mean Q over real steps; supervised_mse the masked per-step MSE."""
    from models import DeterministicAction

    mask = torch.tensor([[0.0, 1.0, 1.0]])
    q = torch.tensor([[100.0, 1.0, 3.0]])
    assert float(losses.actor_rl_loss(q, mask)) == pytest.approx(-2.0)
    pred = torch.tensor([[[0.9, 0.9], [0.5, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[-0.9, -0.9], [0.0, 0.0], [0.0, 1.0]]])
    # step 1: (0.25 + 0) / 2; step 2: (0 + 1) / 2; mean of the two real steps.
    mse = losses.supervised_mse(DeterministicAction(pred), target, mask)
    assert float(mse) == pytest.approx((0.125 + 0.5) / 2)


def test_target_policy_noise_is_clipped_and_in_box():
    """Target smoothing noise stays within +-clip and the result stays in [-1, 1]."""
    torch.manual_seed(0)
    action = torch.rand(1000, A) * 2 - 1
    noisy = losses.target_policy_noise(action, std=1.0, clip=0.3)
    assert (noisy.abs() <= 1).all()
    inside = action.abs() < 0.7
    assert ((noisy - action)[inside].abs() <= 0.3 + 1e-6).all()
    assert (noisy != action).float().mean() > 0.9


# ---- shifted window --------------------------------------------------------------------


def test_shifted_window_is_the_window_one_step_later():
    """Position i of shifted_window holds step t_i + 1: it equals the window ending one step
    later wherever the original position is real and the next step is in the same episode
    (actions everywhere but the last position, which no state token sees)."""
    rng = np.random.default_rng(0)
    parts, next_in_episode = [], []
    for length, terminated in ((7, True), (3, False), (9, False)):
        obs = rng.normal(size=(length + 1, 2)).astype(np.float32)
        act = rng.uniform(-1, 1, size=(length, A)).astype(np.float32)
        rew = rng.normal(size=length).astype(np.float32)
        parts.append(flatten_episode(obs, act, rew, terminated))
        next_in_episode += [True] * (length - 1) + [False]
    steps = concatenate(parts)
    ends = np.flatnonzero(next_in_episode)
    batch = to_torch(gather_windows(steps, ends, K))
    later = to_torch(gather_windows(steps, ends + 1, K))
    shifted = shifted_window(batch)

    real = batch["mask"].bool()
    assert real.sum() < later["mask"].sum()  # later windows can hold one more real step
    torch.testing.assert_close(shifted["mask"], batch["mask"])
    torch.testing.assert_close(shifted["observations"][real], later["observations"][real])
    torch.testing.assert_close(shifted["timesteps"][real], later["timesteps"][real])
    torch.testing.assert_close(
        shifted["returns_to_go"][real], later["returns_to_go"][real], rtol=1e-5, atol=1e-5
    )
    real_not_last = real.clone()
    real_not_last[:, -1] = False
    torch.testing.assert_close(shifted["actions"][real_not_last], later["actions"][real_not_last])
    assert (shifted["actions"][:, -1] == 0).all()
