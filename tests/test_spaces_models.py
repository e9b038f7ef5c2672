"""Tests for the model side of discrete actions and uint8 image observations: the
categorical head, the frame encoder, ModelConfig's space fields, and the ODT loss
with a categorical policy."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from learner.losses import discrete_target_entropy, odt_loss
from models import (
    HEADS,
    Categorical,
    DecisionTransformer,
    FrameEncoder,
    ModelConfig,
)
from models.decision_transformer import make_action_head
from models.heads import CategoricalHead

FRAME = (4, 84, 84)
SMALL = {"context_len": 4, "embed_dim": 32, "n_layer": 1, "n_head": 1, "ffn_dim": 64,
         "dropout": 0.0}


def discrete_vector_config(**overrides) -> ModelConfig:
    """CartPole-sized: 4 state floats, 2 actions."""
    return ModelConfig(**{"state_dim": 4, "act_dim": 2, "action_kind": "discrete",
                          **SMALL, **overrides})


def image_config(**overrides) -> ModelConfig:
    """Pong-sized: 4 stacked 84x84 frames, 6 actions."""
    return ModelConfig(**{"state_dim": math.prod(FRAME), "act_dim": 6,
                          "action_kind": "discrete", "frame_shape": FRAME, **SMALL, **overrides})


def discrete_inputs(B: int, T: int, S: int, N: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "states": torch.randn(B, T, S, generator=g),
        "actions": torch.randint(0, N, (B, T), generator=g),
        "returns_to_go": torch.randn(B, T, generator=g) * 10,
        "timesteps": torch.randint(0, 50, (B, T), generator=g),
        "mask": torch.ones(B, T),
    }


# ---- the categorical distribution -------------------------------------------------------


def test_categorical_entropy_log_prob_probs_and_mode():
    """entropy is -sum p log p, log_prob is log_softmax gathered at the index (for int32,
    int64 and float indices), probs sum to one, mode is the argmax."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g) * 3
    dist = Categorical(logits)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(dist.entropy(), -(p * p.log()).sum(-1))
    torch.testing.assert_close(dist.probs, p)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(3, 5))
    index = torch.randint(0, 4, (3, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    for action in (index, index.int(), index.float()):
        torch.testing.assert_close(dist.log_prob(action), expected)
    assert dist.mode.dtype == torch.int64 and torch.equal(dist.mode, logits.argmax(-1))


def test_categorical_entropy_is_finite_for_near_deterministic_logits():
    dist = Categorical(torch.tensor([[1000.0, 0.0, -1000.0]]))
    assert torch.isfinite(dist.entropy()).all() and dist.entropy().item() == pytest.approx(0.0)
    assert dist.entropy().shape == (1,)


def test_categorical_sample_frequencies_match_probs():
    logits = torch.tensor([0.0, 1.0, -1.0]).expand(4000, 5, 3)
    samples = Categorical(logits).sample()
    assert samples.shape == (4000, 5) and samples.dtype == torch.int64
    assert not samples.requires_grad
    freq = torch.bincount(samples.flatten(), minlength=3).float() / samples.numel()
    torch.testing.assert_close(freq, torch.softmax(logits[0, 0], -1), atol=0.015, rtol=0)


def test_categorical_head_gives_logits_over_actions():
    head = CategoricalHead(embed_dim=8, num_actions=3)
    dist = head(torch.randn(2, 5, 8))
    assert isinstance(dist, Categorical) and dist.logits.shape == (2, 5, 3)


# ---- the ODT loss with a categorical policy ---------------------------------------------


def slow_categorical_odt_loss(logits, actions, mask, log_temperature, target_entropy,
                              mask_entropy):
    """ODT's loss computed with explicit loops and a hand-written log-softmax."""
    B, K, _ = logits.shape
    nll_sum = ent_sum = ent_all = count = 0.0
    for b in range(B):
        for t in range(K):
            row = [float(x) for x in logits[b, t]]
            top = max(row)
            log_z = top + math.log(sum(math.exp(x - top) for x in row))
            log_p = [x - log_z for x in row]
            entropy = -sum(math.exp(lp) * lp for lp in log_p)
            m = float(mask[b, t])
            nll_sum += m * -log_p[int(actions[b, t])]
            ent_sum += m * entropy
            ent_all += entropy
            count += m
    nll = nll_sum / max(count, 1.0)
    entropy = ent_sum / max(count, 1.0) if mask_entropy else ent_all / (B * K)
    temperature = math.exp(float(log_temperature))
    return {
        "loss": nll - temperature * entropy,
        "nll": nll,
        "entropy": entropy,
        "temperature_loss": temperature * (entropy - target_entropy),
    }


@pytest.mark.parametrize("mask_entropy", [True, False])
def test_categorical_odt_loss_matches_slow_loop(mask_entropy):
    """Odd, unequal sizes and left padding: the vectorised loss equals the loop."""
    B, K, N = 3, 5, 4
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(B, K, N, generator=g) * 2
    actions = torch.randint(0, N, (B, K), generator=g)
    lengths = torch.tensor([5, 2, 3])
    mask = (torch.arange(K)[None, :] >= K - lengths[:, None]).float()
    actions = actions * mask.long()  # padded steps carry index 0
    log_temperature = torch.tensor(-0.3)
    target = discrete_target_entropy(N, 0.5)
    out = odt_loss(Categorical(logits), actions, mask, log_temperature, target,
                   mask_entropy=mask_entropy)
    ref = slow_categorical_odt_loss(logits, actions, mask, log_temperature, target,
                                    mask_entropy)
    for name, value in ref.items():
        assert getattr(out, name).item() == pytest.approx(value, abs=1e-5), name


def test_categorical_odt_loss_gradients():
    """The policy loss reaches the logits and not the temperature; the temperature loss
    reaches log lambda alone."""
    logits = torch.randn(2, 3, 4, requires_grad=True)
    log_temperature = torch.tensor(0.0, requires_grad=True)
    out = odt_loss(Categorical(logits), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3),
                   log_temperature, target_entropy=0.5)
    out.loss.backward()
    assert logits.grad.abs().sum() > 0 and log_temperature.grad is None
    logits.grad = None
    out.temperature_loss.backward()
    assert logits.grad is None and log_temperature.grad is not None


def test_discrete_target_entropy():
    assert discrete_target_entropy(6, 0.5) == pytest.approx(0.5 * math.log(6))
    assert discrete_target_entropy(1, 1.0) == 0.0
    with pytest.raises(ValueError, match="num_actions=0"):
        discrete_target_entropy(0, 0.5)
    with pytest.raises(ValueError, match="fraction=1.5"):
        discrete_target_entropy(2, 1.5)


# ---- image observations ------------------------------------------------------------------


def test_image_model_takes_uint8_frames_and_discrete_actions():
    """uint8 (B, T, 4, 84, 84) frames and (B, T) action indices give a Categorical with
    (B, T, N) logits, and the loss's gradient reaches the convolutions."""
    torch.manual_seed(0)
    cfg = image_config()
    model = DecisionTransformer(cfg, head="categorical")
    assert isinstance(model.embed_state, FrameEncoder)
    B, T = 2, cfg.context_len
    g = torch.Generator().manual_seed(1)
    states = torch.randint(0, 256, (B, T, *FRAME), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, cfg.act_dim, (B, T), generator=g)
    mask = torch.tensor([[0.0, 1, 1, 1], [1, 1, 1, 1]])
    dist = model(states, actions * mask.long(), torch.randn(B, T), torch.zeros(B, T), mask)
    assert isinstance(dist, Categorical) and dist.logits.shape == (B, T, cfg.act_dim)
    assert dist.logits.dtype == torch.float32 and torch.isfinite(dist.logits).all()
    out = odt_loss(dist, actions, mask, torch.tensor(0.0), target_entropy=0.5)
    out.loss.backward()
    for conv in model.embed_state.convs:
        if isinstance(conv, torch.nn.Conv2d):
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_frame_encoder_scales_pixels_and_refuses_float_frames():
    """The encoder divides by 255 itself: its output for uint8 frames equals the conv
    stack applied to frames / 255; already-float frames are refused."""
    torch.manual_seed(0)
    encoder = FrameEncoder((2, 36, 40), embed_dim=8)
    frames = torch.randint(0, 256, (3, 2, 2, 36, 40), dtype=torch.uint8)
    out = encoder(frames)
    assert out.shape == (3, 2, 8)
    by_hand = encoder.linear(encoder.convs(frames.reshape(6, 2, 36, 40).float() / 255).flatten(1))
    torch.testing.assert_close(out, by_hand.reshape(3, 2, 8))
    torch.testing.assert_close(encoder(frames.reshape(3, 2, -1)), out)  # flat frames too
    with pytest.raises(ValueError, match="uint8"):
        encoder(frames.float())
    assert encoder.conv_macs() > 0


def test_image_model_ignores_state_normalization():
    """set_state_normalization is a no-op for image models, and outputs do not depend on
    the state_mean/state_std buffers."""
    torch.manual_seed(0)
    cfg = image_config(context_len=2)
    model = DecisionTransformer(cfg, head="categorical").eval()
    states = torch.randint(0, 256, (1, 2, *FRAME), dtype=torch.uint8)
    inputs = (states, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2),
              torch.zeros(1, 2), torch.ones(1, 2))
    with torch.no_grad():
        before = model(*inputs).logits
        model.set_state_normalization(torch.full((cfg.state_dim,), 100.0),
                                      torch.full((cfg.state_dim,), 0.01))
        assert torch.equal(model.state_mean, torch.zeros(cfg.state_dim))
        model.state_mean.fill_(50.0)
        after = model(*inputs).logits
    assert torch.equal(before, after)


def test_image_model_flops_count_convolutions_per_frame():
    torch.manual_seed(0)
    model = DecisionTransformer(image_config(), head="categorical")
    K = model.cfg.context_len
    assert model.flops_per_window() > 6 * model.embed_state.conv_macs() * K


# ---- discrete actions --------------------------------------------------------------------


def test_discrete_actions_embed_any_integer_dtype_and_stay_causal():
    """int32 and int64 indices give the same output; the action at step t does not
    change step t's prediction, an earlier action does."""
    torch.manual_seed(0)
    model = DecisionTransformer(discrete_vector_config(act_dim=3), head="categorical").eval()
    x = discrete_inputs(2, 4, 4, 3)
    with torch.no_grad():
        out = model(**x).logits
        torch.testing.assert_close(model(**{**x, "actions": x["actions"].int()}).logits, out)
        changed = x["actions"].clone()
        changed[:, 2] = (changed[:, 2] + 1) % 3
        new = model(**{**x, "actions": changed}).logits
    torch.testing.assert_close(new[:, :3], out[:, :3])
    assert (new[:, 3] - out[:, 3]).abs().max() > 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discrete_vector_model_overfits_a_state_sign_rule(seed):
    """64 CartPole-shaped windows whose action is 1 exactly when the first state
    coordinate is positive: Adam on the categorical NLL fits them to > 95% accuracy."""
    torch.manual_seed(seed)
    cfg = discrete_vector_config()
    model = DecisionTransformer(cfg, head="categorical")
    x = discrete_inputs(64, cfg.context_len, 4, 2, seed=100 + seed)
    x["actions"] = (x["states"][..., 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(150):
        out = odt_loss(model(**x), x["actions"], x["mask"], torch.tensor(-10.0), 0.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(**x).mode == x["actions"]).float().mean().item()
    assert accuracy > 0.95


# ---- configuration -----------------------------------------------------------------------


def test_model_config_validation_names_bad_space_fields():
    def problems(**overrides):
        return " | ".join(discrete_vector_config(**overrides).validate())

    assert discrete_vector_config().validate() == []
    assert image_config().validate() == []
    assert "model.action_kind='box'" in problems(action_kind="box")
    assert "model.frame_shape=(84, 84)" in problems(frame_shape=(84, 84))
    assert "model.frame_shape=(4, 0, 84)" in problems(frame_shape=(4, 0, 84))
    assert "model.frame_shape=(4, 84.0, 84)" in problems(frame_shape=(4, 84.0, 84))
    assert "model.frame_shape=7" in problems(frame_shape=7)
    mismatch = problems(frame_shape=FRAME)
    assert "model.state_dim=4" in mismatch and str(math.prod(FRAME)) in mismatch
    assert "at least 36 pixels" in problems(state_dim=4 * 20 * 84, frame_shape=(4, 20, 84))
    with pytest.raises(ValueError, match="action_kind='box'"):
        DecisionTransformer(discrete_vector_config(action_kind="box"), head="categorical")


def test_heads_must_fit_the_action_kind():
    assert "categorical" in HEADS
    discrete, continuous = discrete_vector_config(), ModelConfig(state_dim=3, act_dim=2, **SMALL)
    for head in ("gaussian", "deterministic"):
        with pytest.raises(ValueError, match=f"head='{head}'.*action_kind='discrete'"):
            make_action_head(discrete, head)
        with pytest.raises(ValueError, match=f"head='{head}'.*action_kind='discrete'"):
            DecisionTransformer(discrete, head=head)
    with pytest.raises(ValueError, match="head='categorical'.*action_kind='continuous'"):
        make_action_head(continuous, "categorical")
    with pytest.raises(ValueError, match="head='categorical'.*action_kind='continuous'"):
        DecisionTransformer(continuous, head="categorical")


def test_model_config_json_round_trip_keeps_frame_shape_a_tuple():
    cfg = image_config()
    back = ModelConfig(**json.loads(json.dumps(asdict(cfg))))
    assert back == cfg and back.frame_shape == FRAME and isinstance(back.frame_shape, tuple)
    assert hash(back) == hash(cfg) and back.validate() == []
    old = {k: v for k, v in asdict(ModelConfig(state_dim=3, act_dim=2)).items()
           if k not in ("action_kind", "frame_shape")}  # a config saved before these fields
    assert ModelConfig(**old).action_kind == "continuous" and ModelConfig(**old).frame_shape == ()


# ---- checkpoint compatibility ------------------------------------------------------------

# The keys of a one-layer continuous model with a timestep embedding, as they were before
# discrete actions and images existed; checkpoints of earlier versions hold exactly these.
CONTINUOUS_KEYS = {
    "blocks.0.attn.proj.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.qkv.bias",
    "blocks.0.attn.qkv.weight", "blocks.0.ln_1.bias", "blocks.0.ln_1.weight",
    "blocks.0.ln_2.bias", "blocks.0.ln_2.weight", "blocks.0.mlp.0.bias",
    "blocks.0.mlp.0.weight", "blocks.0.mlp.2.bias", "blocks.0.mlp.2.weight",
    "embed_action.bias", "embed_action.weight", "embed_ln.bias", "embed_ln.weight",
    "embed_return.bias", "embed_return.weight", "embed_state.bias", "embed_state.weight",
    "embed_timestep.weight", "ln_f.bias", "ln_f.weight", "state_mean", "state_std",
}
HEAD_KEYS = {
    "gaussian": {"action_head.log_std.bias", "action_head.log_std.weight",
                 "action_head.mu.bias", "action_head.mu.weight"},
    "deterministic": {"action_head.linear.bias", "action_head.linear.weight"},
}


@pytest.mark.parametrize("head", ["gaussian", "deterministic"])
def test_continuous_vector_state_dict_keys_are_unchanged(head):
    cfg = ModelConfig(state_dim=3, act_dim=2, use_timestep_embedding=True, **SMALL)
    model = DecisionTransformer(cfg, head=head)
    assert set(model.state_dict()) == CONTINUOUS_KEYS | HEAD_KEYS[head]
    assert model.state_dict()["embed_state.weight"].shape == (32, 3)
    assert model.state_dict()["embed_action.weight"].shape == (32, 2)


def test_discrete_and_image_state_dict_keys():
    """Discrete actions embed with a table (no bias); images replace embed_state's Linear
    with the frame encoder's convolutions and Linear."""
    vector = set(DecisionTransformer(discrete_vector_config(), head="categorical").state_dict())
    assert {"embed_action.weight", "action_head.logits.weight",
            "action_head.logits.bias"} <= vector
    assert "embed_action.bias" not in vector
    image = set(DecisionTransformer(image_config(), head="categorical").state_dict())
    assert {"embed_state.convs.0.weight", "embed_state.convs.4.weight",
            "embed_state.linear.weight", "state_mean", "state_std"} <= image
