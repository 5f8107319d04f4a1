"""The flow-matching policy and the denoising-step maths RL relies on."""

import math

import pytest
import torch

from policy.base import flow_sde_step, gaussian_log_prob
from policy.flow import FlowPolicy
from simulator import keys

SIZE, B = 32, 3


def tiny_policy(**kw) -> FlowPolicy:
    torch.manual_seed(0)
    return FlowPolicy(**{"image_size": SIZE, "channels": (8, 8), "width": 32, "depth": 1, "heads": 2,
                         "action_mean": [0.1] * 7, "action_std": [0.5] * 7, **kw})


def observation(batch: int = B, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {keys.image_key("front"): torch.rand(batch, 3, SIZE, SIZE, generator=g),
            keys.image_key("wrist"): torch.rand(batch, 3, SIZE, SIZE, generator=g),
            keys.STATE: torch.randn(batch, 8, generator=g), keys.TASK: ["lift the cube"] * batch}


def test_gaussian_log_prob_is_the_normal_density():
    x, mean, std = torch.randn(4, 8, 7), torch.randn(4, 8, 7), torch.rand(4, 8, 7) + 0.1
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum((1, 2))
    assert torch.allclose(gaussian_log_prob(x, mean, std), expected, atol=1e-4)
    assert torch.allclose(gaussian_log_prob(x, mean, 0.3), torch.distributions.Normal(mean, 0.3).log_prob(x).sum((1, 2)),
                          atol=1e-4)


def test_flow_sde_without_noise_is_the_euler_step_and_the_floor_applies():
    x, v = torch.randn(5, 8, 7), torch.randn(5, 8, 7)
    mean, std = flow_sde_step(x, v, 0.75, 0.5, noise_level=0.0, t_max=0.9)
    assert torch.allclose(mean, x - 0.25 * v) and torch.all(std == 0)
    _, floored = flow_sde_step(x, v, 0.75, 0.5, noise_level=0.0, t_max=0.9, min_std=0.07)
    assert torch.allclose(floored, torch.full_like(x, 0.07))
    with pytest.raises(ValueError, match="0 <= s < t <= 1"):
        flow_sde_step(x, v, 0.5, 0.75, 0.5, 0.9)


def test_flow_sde_keeps_the_ode_marginals():
    """With the exact velocity of 1-D Gaussian data N(0, s^2), the SDE from N(0, 1) at t = 1 must
    end with variance s^2 (the ODE's marginal), whatever its noise level."""
    s2, steps, n = 0.25, 200, 200_000
    gen = torch.Generator().manual_seed(0)
    for noise_level in (0.0, 0.7):
        x = torch.randn(n, 1, generator=gen)
        times = torch.linspace(1.0, 0.0, steps + 1)
        for t, s in zip(times[:-1].tolist(), times[1:].tolist()):
            var = (1 - t) ** 2 * s2 + t ** 2
            v = (t - (1 - t) * s2) / var * x  # E[noise - x0 | x_t] for Gaussian data
            mean, std = flow_sde_step(x, v, t, s, noise_level, t_max=0.99)
            x = mean + std * torch.randn(x.shape, generator=gen)
        assert x.var().item() == pytest.approx(s2, rel=0.05), noise_level


def test_sample_log_prob_rescores_the_same_chain_with_ratio_one_and_gradients():
    policy = tiny_policy()
    obs = observation()
    sample = policy.sample(obs, torch.Generator().manual_seed(1))
    K = policy.spec.rl_steps
    assert sample.actions.shape == (B, 8, 7) and sample.log_probs.shape == (B, K)
    assert sample.chain.shape == (B, K + 1, 8, 7)
    # the actions are the chain's end in env units
    assert torch.allclose(sample.actions, sample.chain[:, -1] * 0.5 + 0.1, atol=1e-6)
    rescored = policy.log_prob(obs, sample)
    assert torch.allclose(rescored, sample.log_probs, atol=1e-3)
    rescored.sum().backward()
    assert policy.action_out[1].weight.grad.abs().sum() > 0 and policy.encoder[0].weight.grad.abs().sum() > 0
    again = policy.sample(obs, torch.Generator().manual_seed(1))
    assert torch.equal(again.actions, sample.actions)


def test_behaviour_cloning_lowers_the_loss_and_the_policy_round_trips(tmp_path):
    policy = tiny_policy()
    obs, target = observation(8), 0.1 + 0.5 * torch.randn(8, 8, 7, generator=torch.Generator().manual_seed(3))
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    fixed = lambda: policy.loss(obs, target, generator=torch.Generator().manual_seed(9)).item()
    first = fixed()
    for step in range(60):
        opt.zero_grad()
        policy.loss(obs, target, generator=torch.Generator().manual_seed(step)).backward()
        opt.step()
    assert fixed() < 0.8 * first  # flow matching keeps the noise-to-data variance: far from 0
    policy.set_task_suffix(" advantage 1")
    policy.save_pretrained(tmp_path / "p")
    loaded = FlowPolicy.from_pretrained(tmp_path / "p")
    assert loaded.task_suffix == " advantage 1"
    g = lambda: torch.Generator().manual_seed(5)
    assert torch.allclose(loaded.sample_ode(obs, g()), policy.sample_ode(obs, g()), atol=1e-5)


def test_bad_input_gets_a_clear_error(tmp_path):
    policy, obs = tiny_policy(), observation()
    with pytest.raises(KeyError, match="observation.images.wrist"):
        policy.sample_ode({k: v for k, v in obs.items() if k != keys.image_key("wrist")})
    with pytest.raises(ValueError, match="observation.images.front must be"):
        policy.sample_ode(obs | {keys.image_key("front"): torch.rand(B, 3, 16, 16)})
    with pytest.raises(ValueError, match="observation.state must be"):
        policy.sample_ode(obs | {keys.STATE: torch.randn(B, 5)})
    with pytest.raises(ValueError, match="actions must be"):
        policy.loss(obs, torch.randn(B, 8, 6))
    with pytest.raises(ValueError, match="rl_steps must be <= num_steps"):
        tiny_policy(rl_steps=5)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        FlowPolicy.from_pretrained(tmp_path)
    assert math.isfinite(policy.loss(obs, torch.randn(B, 8, 7)).item())


def test_each_env_draws_its_own_seeded_noise_whatever_the_batch():
    policy = tiny_policy()
    obs = observation(3)
    policy.reset(obs, {}, seeds=[10, 11, 12])
    together = policy.select_action_chunk(obs)
    alone = tiny_policy()
    one = {k: v[1:2] for k, v in obs.items()}
    alone.reset(one, {}, seeds=[11])
    assert torch.allclose(alone.select_action_chunk(one)[0], together[1], atol=1e-5)
    # a partial reset re-seeds only the envs it starts
    policy.reset(obs, {}, mask=torch.tensor([False, True, False]), seeds=[11])
    again = policy.select_action_chunk(obs)
    assert torch.allclose(again[1], together[1], atol=1e-5) and not torch.allclose(again[0], together[0])
    with pytest.raises(ValueError, match="2 seeds for 1 started envs"):
        policy.reset(obs, {}, mask=torch.tensor([True, False, False]), seeds=[1, 2])


def test_fine_tuning_freezes_the_early_denoising_steps_and_round_trips(tmp_path):
    policy, obs = tiny_policy(num_steps=4, rl_steps=2), observation()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    before = policy.sample_ode(obs, g())
    policy.start_fine_tuning()
    assert torch.allclose(policy.sample_ode(obs, g()), before, atol=1e-6)  # same weights, same chunk
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("early.") for n in trainable)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    # the first N - K steps still run the frozen copy: its ODE state before the last K steps is the base's
    early, prefix = policy.early, policy.early.encode(obs)
    sample = policy.sample(obs, g())
    x, times = torch.randn(B, 8, 7, generator=g()), policy.times
    for i in range(2):
        x = x + (times[i + 1] - times[i]) * early.velocity(prefix, x, times[i].expand(B))
    assert torch.allclose(sample.chain[:, 0], x, atol=1e-5)
    policy.save_pretrained(tmp_path / "ft")
    loaded = FlowPolicy.from_pretrained(tmp_path / "ft")
    assert loaded.early is not None and torch.allclose(loaded.sample_ode(obs, g()), policy.sample_ode(obs, g()), atol=1e-5)
