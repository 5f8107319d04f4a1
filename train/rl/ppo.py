"""PPO in imagination with a learned critic (DPPO): GAE advantages over chunk steps.

Where GRPO gives every chunk of an episode the episode's group-standardised return, PPO gives
each chunk its own advantage from a critic V(observation): GAE over the chunk steps of the
imagined episode, bootstrapped with 0 after its last step. Starts are independent (the base
class's), as a critic needs no groups. The policy loss is GRPO's: PPO's clipped surrogate per
stochastic denoising step, its log-ratio per action dimension, plus a k3 KL anchor to the frozen
base policy. The critic regresses the GAE value targets (λ-returns) with its own optimiser.

The critic is small and separate from the policy (a shared trunk would let value gradients move
the policy away from its base): a CNN shared by the views whose last feature map becomes
keypoints (spatial softmax, so any image size works), and the state standardised with running
statistics of every rollout it has seen.

Dimension legend: T chunk steps, B envs, N samples, V views, S state dim, C channels,
h x w image size, H chunk length, A action dim, K stochastic denoising steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from simulator import keys
from train.rl.base import (
    Algorithm,
    AlgorithmConfig,
    Rollouts,
    clipped_surrogate,
    fine_tuning_setup,
    gae,
    kl_k3,
    minibatches,
)


@AlgorithmConfig.register_subclass("ppo")
@dataclass
class PPOConfig(AlgorithmConfig):
    """PPO with a learned critic and GAE over chunk steps (DPPO); independent starts."""

    epochs: int = 2  # passes over an iteration's samples
    minibatch_size: int = 64  # chunk samples per gradient step
    lr: float = 3e-5  # AdamW's on the policy (its fine-tuned last denoising steps)
    critic_lr: float = 3e-4  # AdamW's on the critic
    clip: float = 0.2  # ratio clip, per denoising step (log-ratio per action dimension)
    kl_weight: float = 0.1  # anchor to the base policy (KL per action dimension)
    gamma: float = 0.99  # discount per chunk step (the env's shaping uses its own gamma per env step)
    gae_lambda: float = 0.95  # GAE's lambda: 0 = one-step TD, 1 = Monte Carlo returns
    grad_clip: float = 1.0  # on the policy's and the critic's gradients, each
    critic_channels: tuple[int, ...] = (16, 32, 64, 64)  # one stride-2 conv level per entry
    critic_width: int = 256  # hidden width of the value head

    def __post_init__(self):
        self.critic_channels = tuple(self.critic_channels)
        for name in ("epochs", "minibatch_size", "critic_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        for name in ("lr", "critic_lr", "clip", "grad_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)=}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight=}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma=} {self.gae_lambda=}")
        if not self.critic_channels or min(self.critic_channels) < 1:
            raise ValueError(f"critic_channels must be positive channel counts, got {self.critic_channels=}")


def spatial_softmax(features: Tensor) -> Tensor:
    """Keypoints of a feature map: the expected (x, y) in [-1, 1] of each channel's softmax over
    positions (Levine et al.). (N, C, h, w) -> (N, 2C)."""
    N, C, h, w = features.shape
    weights = features.flatten(2).softmax(-1).view(N, C, h, w)
    ys = torch.linspace(-1, 1, h, device=features.device, dtype=features.dtype)
    xs = torch.linspace(-1, 1, w, device=features.device, dtype=features.dtype)
    x = (weights.sum(2) * xs).sum(-1)  # (N, C)
    y = (weights.sum(3) * ys).sum(-1)  # (N, C)
    return torch.cat([x, y], -1)


class RunningNorm(nn.Module):
    """Standardises its input with the mean and variance of everything passed to ``update``
    (Chan et al.'s parallel merge), kept as buffers so that they travel in the state dict."""

    def __init__(self, dim: int, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:  # x (N, dim)
        n = x.shape[0]
        if n == 0:
            return
        mean, var = x.mean(0), x.var(0, correction=0)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta.pow(2) * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / (self.var + self.eps).sqrt()


class Critic(nn.Module):
    """V(observation): images (B, V, 3, h, w) in [0, 1] and state (B, S) -> value (B,)."""

    def __init__(self, num_views: int, state_dim: int, channels: tuple[int, ...] = (16, 32, 64, 64),
                 width: int = 256):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(1, c), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*layers)
        self.state_norm = RunningNorm(state_dim)
        self.head = nn.Sequential(nn.Linear(num_views * 2 * c_in + state_dim, width), nn.SiLU(),
                                  nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))
        self.num_views, self.state_dim = num_views, state_dim

    def forward(self, images: Tensor, state: Tensor) -> Tensor:
        B, V = images.shape[:2]
        if V != self.num_views or state.shape != (B, self.state_dim):
            raise ValueError(f"the critic reads {self.num_views} views and a state of {self.state_dim}, got images "
                             f"{tuple(images.shape)} and state {tuple(state.shape)}")
        keypoints = spatial_softmax(self.encoder(images.flatten(0, 1) * 2 - 1)).view(B, -1)  # (B, V 2C)
        return self.head(torch.cat([keypoints, self.state_norm(state)], -1)).squeeze(-1)


def state_dim_of(policy) -> int:
    """The state size that ``policy`` reads: our FlowPolicy's spec, or a lerobot policy's input features."""
    spec = getattr(policy, "spec", None)
    if spec is not None and hasattr(spec, "state_dim"):
        return int(spec.state_dim)
    features = getattr(getattr(policy, "config", None), "input_features", None) or {}
    if keys.STATE in features:
        return int(features[keys.STATE].shape[0])
    raise TypeError(f"cannot tell the state size of a {type(policy).__name__} (no spec.state_dim, no "
                    f"config.input_features[{keys.STATE!r}]), which PPO's critic needs")


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """(N,) advantages of the alive steps -> zero mean, unit std (one sample is just centred)."""
    centred = advantages - advantages.mean()
    return centred / (centred.std(correction=0) + eps) if len(advantages) > 1 else centred


class PPO(Algorithm):
    name = "ppo"
    needs_log_prob = True

    def __init__(self, policy, config: PPOConfig, views: tuple[str, ...]):
        super().__init__(policy, config, views)
        self.reference, self.opt = fine_tuning_setup(policy, config.lr)
        self.critic = Critic(len(self.views), state_dim_of(policy), config.critic_channels,
                             config.critic_width).to(policy.device)
        self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=config.critic_lr, weight_decay=0.0)

    def values(self, rollouts: Rollouts, t_idx: Tensor, b_idx: Tensor) -> Tensor:
        """(N,) the critic's values at steps (t_idx, b_idx) (N,), differentiable."""
        device = next(self.critic.parameters()).device
        images = rollouts.images[t_idx, b_idx].to(device).float() / 255.0  # (N, V, 3, h, w)
        return self.critic(images, rollouts.state[t_idx, b_idx].to(device).float())

    @torch.no_grad()
    def advantages(self, rollouts: Rollouts) -> tuple[Tensor, Tensor, Tensor]:
        """GAE over chunk steps with the current critic: (advantages (T, B), value targets (T, B),
        values (T + 1, B) with 0 after the end)."""
        cfg = self.config
        T, B = rollouts.alive.shape
        t_idx, b_idx = torch.nonzero(rollouts.alive, as_tuple=True)
        values = torch.zeros(T + 1, B)
        for mb in torch.arange(len(t_idx)).split(cfg.minibatch_size):
            values[t_idx[mb], b_idx[mb]] = self.values(rollouts, t_idx[mb], b_idx[mb]).float().cpu()
        adv, targets = gae(rollouts.rewards.float(), values, rollouts.alive, cfg.gamma, cfg.gae_lambda)
        return adv, targets, values

    def update(self, rollouts: Rollouts, generator: torch.Generator) -> dict:
        cfg = self.config
        t_idx, b_idx = torch.nonzero(rollouts.alive, as_tuple=True)
        metrics = {"samples": len(t_idx)}
        if len(t_idx) == 0:
            return metrics
        self.critic.state_norm.update(rollouts.state[t_idx, b_idx].float().to(self.critic.state_norm.mean.device))
        adv, targets, values = self.advantages(rollouts)
        adv_n = normalize_advantages(adv[t_idx, b_idx])  # (N,)
        targets_n = targets[t_idx, b_idx]  # (N,)
        residual = targets_n - values[t_idx, b_idx]
        metrics |= {"value": values[t_idx, b_idx].mean().item(),
                    "explained_variance": (1 - residual.var() / targets_n.var().clamp_min(1e-8)).item()
                    if len(t_idx) > 1 else 0.0}
        B = rollouts.alive.shape[1]
        totals: dict[str, float] = {}
        batches = [mb for _ in range(cfg.epochs) for mb in minibatches(len(t_idx), cfg.minibatch_size, generator)]
        self.policy.train()
        self.critic.train()
        for mb in batches:
            step_metrics = self._step(rollouts, t_idx[mb], b_idx[mb], B, adv_n[mb], targets_n[mb])
            for k, v in step_metrics.items():
                totals[k] = totals.get(k, 0.0) + v / len(batches)
        self.policy.eval()
        self.critic.eval()
        return metrics | totals

    def _step(self, rollouts: Rollouts, t: Tensor, b: Tensor, B: int, advantages: Tensor, targets: Tensor) -> dict:
        """One gradient step of the policy and the critic on the samples (t, b) (n,)."""
        cfg = self.config
        obs = rollouts.observation(t, b, self.views)
        sample = rollouts.samples[t * B + b].to(self.policy.device)
        new = self.policy.log_prob(obs, sample)  # (n, K)
        with torch.no_grad():
            ref = self.reference.log_prob(obs, sample)
        dims = sample.actions[0].numel()  # H * A
        loss, step_metrics = clipped_surrogate(new, sample.log_probs, advantages.to(new.device), cfg.clip, dims)
        kl = kl_k3(new, ref, dims)
        values = self.values(rollouts, t, b)
        value_loss = (values - targets.to(values.device)).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        (loss + cfg.kl_weight * kl + value_loss).backward()  # disjoint parameters: one backward serves both
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        critic_grad_norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.opt.step()
        self.critic_opt.step()
        return step_metrics | {"policy_loss": loss.item(), "kl_to_base": kl.item(), "value_loss": value_loss.item(),
                               "grad_norm": float(grad_norm), "critic_grad_norm": float(critic_grad_norm)}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "critic": self.critic.state_dict(),
                "critic_opt": self.critic_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
