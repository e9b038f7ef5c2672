"""Tests for models/: the Decision Transformer, its action heads and the twin-Q critic."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from models import (
    MODELS,
    CriticConfig,
    DecisionTransformer,
    DeterministicAction,
    ModelConfig,
    SquashedGaussian,
    TwinQ,
    build_model,
    register_model,
)
from models.heads import SquashedGaussianHead

S, A, K = 3, 2, 6


def tiny_config(**overrides) -> ModelConfig:
    values = {
        "state_dim": S,
        "act_dim": A,
        "context_len": K,
        "embed_dim": 16,
        "n_layer": 2,
        "n_head": 2,
        "ffn_dim": 32,
        "dropout": 0.0,
        "return_scale": 0.1,
    }
    return ModelConfig(**{**values, **overrides})


def tiny_model(seed: int = 0, head: str = "gaussian", **overrides) -> DecisionTransformer:
    torch.manual_seed(seed)
    return DecisionTransformer(tiny_config(**overrides), head=head).eval()


def random_inputs(B: int, T: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, T, S, generator=g),
        "actions": torch.rand(B, T, A, generator=g) * 2 - 1,
        "returns_to_go": torch.randn(B, T, generator=g) * 10,
        "timesteps": torch.randint(0, 50, (B, T), generator=g),
        "mask": torch.ones(B, T),
    }


def head_output(model: DecisionTransformer, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's output as one tensor: (mu, log_std) stacked for the Gaussian, else the action."""
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, SquashedGaussian):
        return torch.cat((out.mu, out.log_std), dim=-1)
    assert isinstance(out, DeterministicAction)
    return out.action


# ---- causality -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["gaussian", "deterministic"])
@pytest.mark.parametrize("timestep_embedding", [False, True])
def test_future_inputs_do_not_change_earlier_outputs(policy, timestep_embedding):
    """Changing any input at steps j > t leaves the head output at t unchanged, and the
    action at t itself is not seen by step t's state token; changing R_t or s_t does
    change it (so the check has teeth)."""
    model = tiny_model(head=policy, use_timestep_embedding=timestep_embedding)
    base = random_inputs(2, K)
    out = head_output(model, base)
    for t in range(K - 1):
        changed = {k: v.clone() for k, v in base.items()}
        changed["states"][:, t + 1 :] += 5.0
        changed["actions"][:, t:] = -changed["actions"][:, t:]  # a_t comes after s_t
        changed["returns_to_go"][:, t + 1 :] -= 7.0
        changed["timesteps"][:, t + 1 :] = (changed["timesteps"][:, t + 1 :] + 13) % 50
        new = head_output(model, changed)
        torch.testing.assert_close(new[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
        assert (new[:, t + 1 :] - out[:, t + 1 :]).abs().max() > 1e-5

    for key in ("states", "returns_to_go"):
        changed = {k: v.clone() for k, v in base.items()}
        # Negated: at init (zero bias) Linear(1, D) + LayerNorm sees only the sign of R.
        changed[key][:, 2] = -changed[key][:, 2] - 3.0
        new = head_output(model, changed)
        torch.testing.assert_close(new[:, :2], out[:, :2], rtol=0, atol=1e-6)
        assert (new[:, 2] - out[:, 2]).abs().max() > 1e-5, key


# ---- padding ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["gaussian", "deterministic"])
def test_left_padding_matches_unpadded_sequence(policy):
    """Left-padded windows (mask 0, garbage in the padded slots) give the same outputs at
    real positions as the unpadded shorter sequence, and finite outputs everywhere."""
    model = tiny_model(head=policy, use_timestep_embedding=True)
    g = torch.Generator().manual_seed(3)
    lengths = [1, 3, K - 1, K]
    full = random_inputs(len(lengths), K, seed=4)
    padded = {k: v.clone() for k, v in full.items()}
    for b, n in enumerate(lengths):
        pad = K - n
        padded["mask"][b, :pad] = 0.0
        padded["states"][b, :pad] = torch.randn(pad, S, generator=g) * 100
        padded["actions"][b, :pad] = torch.randn(pad, A, generator=g) * 100
        padded["returns_to_go"][b, :pad] = torch.randn(pad, generator=g) * 1e4
        padded["timesteps"][b, :pad] = torch.randint(0, 2000, (pad,), generator=g)
    out = head_output(model, padded)
    assert torch.isfinite(out).all()

    for b, n in enumerate(lengths):
        short = {k: v[b : b + 1, K - n :] for k, v in full.items()}
        torch.testing.assert_close(
            out[b : b + 1, K - n :], head_output(model, short), rtol=1e-5, atol=1e-5
        )

    # The comparison is sensitive: without the mask, the garbage leaks into real steps.
    unmasked = dict(padded, mask=torch.ones_like(padded["mask"]))
    assert (head_output(model, unmasked)[1, K - 3 :] - out[1, K - 3 :]).abs().max() > 1e-4


def test_all_padding_row_is_finite():
    """A window that is all padding (mask all 0) gives finite outputs, not NaN."""
    model = tiny_model()
    inputs = random_inputs(2, K)
    inputs["mask"][0] = 0.0
    out = model(**inputs)
    assert torch.isfinite(out.mu).all() and torch.isfinite(out.log_std).all()


# ---- squashed Gaussian -----------------------------------------------------------------


def reference_distribution(mu: torch.Tensor, std: torch.Tensor) -> TransformedDistribution:
    return TransformedDistribution(Normal(mu, std), [TanhTransform()])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_squashed_gaussian_log_prob_matches_torch(dtype):
    """log_prob equals torch's tanh-transformed Normal log-prob summed over actions."""
    g = torch.Generator().manual_seed(0)
    B, T, AA = 3, 5, 4
    mu = torch.randn(B, T, AA, generator=g, dtype=torch.float64)
    log_std = torch.rand(B, T, AA, generator=g, dtype=torch.float64) * 2.5 - 2.0
    action = (torch.rand(B, T, AA, generator=g, dtype=torch.float64) * 2 - 1) * 0.99
    mu, log_std, action = mu.to(dtype), log_std.to(dtype), action.to(dtype)

    ours = SquashedGaussian(mu, log_std).log_prob(action)
    ref = reference_distribution(mu, log_std.exp()).log_prob(action).sum(-1)
    assert ours.shape == (B, T)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_squashed_gaussian_log_prob_finite_at_box_edges():
    """Actions at exactly +-1 (clamped inside) give finite log-probs and gradients."""
    mu = torch.zeros(2, 3, requires_grad=True)
    dist = SquashedGaussian(mu, torch.zeros(2, 3))
    logp = dist.log_prob(torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -1.0]]))
    logp.sum().backward()
    assert torch.isfinite(logp).all() and torch.isfinite(mu.grad).all()


def test_squashed_gaussian_rsample_is_consistent_with_log_prob():
    """rsample gives actions strictly inside (-1, 1), a log-prob equal to log_prob(action),
    and a gradient to mu and log_std (reparameterized)."""
    torch.manual_seed(0)
    B, T, AA = 3, 5, 4
    mu = (torch.randn(B, T, AA, dtype=torch.float64) * 0.5).requires_grad_()
    log_std = (torch.rand(B, T, AA, dtype=torch.float64) * 1.5 - 1.5).requires_grad_()
    dist = SquashedGaussian(mu, log_std)
    action, logp = dist.rsample()
    assert action.shape == (B, T, AA) and logp.shape == (B, T)
    assert (action.abs() < 1).all()
    torch.testing.assert_close(logp, dist.log_prob(action), rtol=1e-6, atol=1e-6)
    (action.sum() + logp.sum()).backward()
    assert mu.grad.abs().sum() > 0 and log_std.grad.abs().sum() > 0

    # float32, the training dtype: still consistent to a loose tolerance.
    dist32 = SquashedGaussian(mu.detach().float(), log_std.detach().float())
    action32, logp32 = dist32.rsample()
    assert (action32.abs() < 1).all()
    torch.testing.assert_close(logp32, dist32.log_prob(action32), rtol=1e-3, atol=1e-3)


def test_squashed_gaussian_mode_and_entropy_estimate():
    """mode is tanh(mu); entropy() is a one-sample estimate of -log pi(a), whose average
    over many draws matches a Monte-Carlo entropy of torch's reference distribution."""
    mu = torch.tensor([0.3, -1.2])
    log_std = torch.tensor([-1.0, 0.2])
    torch.testing.assert_close(SquashedGaussian(mu, log_std).mode, torch.tanh(mu))
    n = 20000
    dist = SquashedGaussian(mu.expand(n, 2), log_std.expand(n, 2))
    torch.manual_seed(0)
    estimates = dist.entropy()
    assert estimates.shape == (n,)
    ref = reference_distribution(mu, log_std.exp())
    expected = -ref.log_prob(ref.sample((n,))).sum(-1).mean()
    assert abs(float(estimates.mean()) - float(expected)) < 0.05


def test_log_std_is_squashed_into_bounds():
    """The head's log-std stays within [log_std_min, log_std_max] even for huge inputs,
    and approaches both bounds."""
    torch.manual_seed(0)
    head = SquashedGaussianHead(embed_dim=8, act_dim=5, log_std_min=-4.0, log_std_max=1.5)
    h = torch.randn(64, 8) * 1e3
    log_std = head(h).log_std
    assert (log_std >= -4.0).all() and (log_std <= 1.5).all()
    assert log_std.min() < -3.9 and log_std.max() > 1.4

    model = tiny_model(log_std_min=-3.0, log_std_max=0.5)
    inputs = random_inputs(4, K)
    inputs["states"] *= 1e3
    log_std = model(**inputs).log_std
    assert (log_std >= -3.0).all() and (log_std <= 0.5).all()


# ---- state normalization ---------------------------------------------------------------


def test_state_normalization_buffers_are_used_and_saved():
    """set_state_normalization changes outputs exactly as pre-normalizing the states would,
    and the buffers travel in state_dict."""
    model = tiny_model()
    inputs = random_inputs(2, K)
    before = head_output(model, inputs)
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 3.0])
    model.set_state_normalization(mean.numpy(), std.numpy())
    after = head_output(model, inputs)
    assert (after - before).abs().max() > 1e-4
    prenormalized = dict(inputs, states=(inputs["states"] - mean) / std)
    fresh = tiny_model()
    torch.testing.assert_close(head_output(fresh, prenormalized), after, rtol=1e-5, atol=1e-6)

    state = model.state_dict()
    torch.testing.assert_close(state["state_mean"], mean)
    torch.testing.assert_close(state["state_std"], std)
    fresh.load_state_dict(state)
    torch.testing.assert_close(head_output(fresh, inputs), after)


# ---- critic ----------------------------------------------------------------------------


def test_twin_q_shapes_and_first():
    """TwinQ gives two (B, K) value maps from independent heads; first() is forward()[0];
    states are normalized with its buffers."""
    torch.manual_seed(0)
    critic = TwinQ(S, A, CriticConfig(hidden_dim=16, num_hidden=2))
    states, actions = torch.randn(3, 5, S), torch.rand(3, 5, A) * 2 - 1
    q1, q2 = critic(states, actions)
    assert q1.shape == (3, 5) and q2.shape == (3, 5)
    assert not torch.allclose(q1, q2)
    torch.testing.assert_close(critic.first(states, actions), q1)
    assert critic(states[0, 0], actions[0, 0])[0].shape == ()

    mean, std = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 0.5])
    critic.set_state_normalization(mean, std)
    torch.testing.assert_close(critic.first(mean + std * states, actions), q1, rtol=1e-5, atol=1e-6)
    assert "state_mean" in critic.state_dict() and "state_std" in critic.state_dict()


def test_twin_q_layer_norm_has_no_parameters():
    """layer_norm=True adds no parameters (it is parameter-free) but changes the outputs."""
    torch.manual_seed(0)
    plain = TwinQ(S, A, CriticConfig(hidden_dim=16))
    torch.manual_seed(0)
    normed = TwinQ(S, A, CriticConfig(hidden_dim=16, layer_norm=True))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in normed.parameters())
    states, actions = torch.randn(4, S), torch.rand(4, A)
    assert not torch.allclose(plain.first(states, actions), normed.first(states, actions))


# ---- config validation -----------------------------------------------------------------


def test_model_config_validate_names_bad_values():
    """validate() lists every problem with its value; a good config has none."""
    assert tiny_config().validate() == []
    problems = tiny_config(embed_dim=30, n_head=4).validate()
    assert len(problems) == 1
    assert "embed_dim=30" in problems[0] and "n_head=4" in problems[0]

    problems = tiny_config(dropout=1.5, kind="bogus", return_scale=0.0, n_layer=0).validate()
    text = "\n".join(problems)
    assert len(problems) == 4
    for fragment in ("dropout=1.5", "'bogus'", "return_scale=0.0", "n_layer=0"):
        assert fragment in text


def test_decision_transformer_rejects_bad_config():
    """Building a model from an invalid config raises ValueError naming the value."""
    with pytest.raises(ValueError, match="embed_dim=30"):
        DecisionTransformer(tiny_config(embed_dim=30, n_head=4), head="gaussian")
    with pytest.raises(ValueError, match="head='bogus'"):
        DecisionTransformer(tiny_config(), head="bogus")


def test_flops_and_param_count_are_positive():
    """num_params counts every parameter; flops_per_window exceeds 6 * params * 3K."""
    model = tiny_model()
    assert model.num_params() == sum(p.numel() for p in model.parameters()) > 0
    assert model.flops_per_window() > 6 * model.num_params() * 3 * K


# ---- registry ------------------------------------------------------------------------


def test_models_are_built_by_registry_key():
    cfg = tiny_config()
    assert cfg.kind == "decision_transformer"
    model = build_model(cfg, head="deterministic")
    assert type(model) is MODELS["decision_transformer"] and model.head == "deterministic"
    with pytest.raises(ValueError, match="model.kind='nope' is not a registered model; "
                                         "registered: algorithm_distillation, decision_transformer"):
        build_model(replace(cfg, kind="nope"), head="gaussian")
    assert any("model.kind='nope'" in p for p in replace(cfg, kind="nope").validate())


def test_a_registered_model_is_built_from_its_key():
    class Constant(nn.Module):
        def __init__(self, cfg, head):
            super().__init__()
            self.cfg, self.head = cfg, head

    try:
        register_model("constant")(Constant)
        model = build_model(replace(tiny_config(), kind="constant"), head="gaussian")
        assert isinstance(model, Constant) and model.cfg.kind == "constant"
        assert model.head == "gaussian"
        with pytest.raises(ValueError, match="already registered to Constant"):
            register_model("constant")(type("Other", (nn.Module,), {}))
    finally:
        MODELS.pop("constant", None)


@pytest.mark.parametrize("policy", ["gaussian", "deterministic"])
@pytest.mark.parametrize("n_layer", [1, 3])
@pytest.mark.parametrize("padded", [True, False])
def test_act_gives_the_newest_steps_output_of_the_full_forward(policy, n_layer, padded):
    """The acting path (newest action placeholder dropped, the last block at the newest
    state token alone, explicit attention with an additive bias) equals the full
    forward's last position, with left padding (a bias per row) and without (the cached
    causal bias), and its output does not depend on that placeholder."""
    model = tiny_model(head=policy, n_layer=n_layer, use_timestep_embedding=True)
    inputs = random_inputs(B=4, T=K)
    if padded:
        inputs["mask"][0, :4] = 0.0  # a fresh episode: one real step
        inputs["mask"][1, :2] = 0.0
    for name in ("states", "actions", "returns_to_go", "timesteps"):
        value = inputs[name]
        inputs[name] = value * inputs["mask"].reshape(4, K, *([1] * (value.ndim - 2))).to(
            value.dtype)
    full = head_output(model, inputs)[:, -1:]
    with torch.no_grad():
        out = model.act(**inputs)
        inputs["actions"][:, -1] = 0.7  # the newest action: not taken yet when acting
        again = model.act(**inputs)
    acted = (torch.cat((out.mu, out.log_std), dim=-1) if isinstance(out, SquashedGaussian)
             else out.action)
    assert acted.shape == full.shape
    torch.testing.assert_close(acted, full, rtol=1e-5, atol=1e-6)
    same = (torch.cat((again.mu, again.log_std), dim=-1)
            if isinstance(again, SquashedGaussian) else again.action)
    torch.testing.assert_close(same, acted, rtol=0, atol=0)
