"""What every policy here offers, and what RL needs from one.

Every policy acts on chunks: ``reset(obs, info, mask, seeds)`` starts episodes and
``select_action_chunk(obs)`` returns (B, H, A) actions in env units, to run unchanged in the
physics env and the imagined env (``ChunkPolicy``).

A policy that RL can train also samples a chunk together with the log-probability of how it was
sampled, and re-scores that same sample under its current parameters (``RLPolicy``). For a
diffusion or flow policy the sample is the chain of its last K denoising steps, each a Gaussian
step: a DDPM/DDIM step with a floor on its standard deviation (DPPO), or a step of the SDE that
has the flow ODE's marginals (Flow-GRPO, piRL). ``ActionSample`` keeps the chain, so the
log-probability at update time is computed from exactly the values drawn at rollout time.

The maths are pure functions here, tested against closed forms: ``gaussian_log_prob`` and
``flow_sde_step``.

Dimension legend: B batch (envs), H chunk length, A action dim, K stochastic denoising steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class ActionSample:
    """An action chunk and how it was drawn, enough to re-score it under new parameters."""

    actions: Tensor  # (B, H, A) in env units: what the env executes
    log_probs: Tensor  # (B, K) log-density of each stochastic denoising step, at sampling time
    chain: Tensor  # (B, K + 1, H, A) the denoising states (policy units) before and after each step
    times: Tensor  # (K,) the denoising time of each step's start (flow time in [0, 1], or diffusion timestep)

    @property
    def log_prob(self) -> Tensor:
        """(B,) log-density of the whole stochastic chain."""
        return self.log_probs.sum(-1)

    def __getitem__(self, idx) -> ActionSample:
        return ActionSample(self.actions[idx], self.log_probs[idx], self.chain[idx], self.times)

    def to(self, device) -> ActionSample:
        return ActionSample(self.actions.detach().to(device), self.log_probs.detach().to(device),
                            self.chain.detach().to(device), self.times.to(device))

    @classmethod
    def cat(cls, samples: list[ActionSample]) -> ActionSample:
        return cls(torch.cat([s.actions for s in samples]), torch.cat([s.log_probs for s in samples]),
                   torch.cat([s.chain for s in samples]), samples[0].times)


@runtime_checkable
class ChunkPolicy(Protocol):
    num_envs: int

    def reset(self, obs: dict, info: dict, mask: Tensor | None = None, seeds: list[int] | None = None) -> None: ...

    def select_action_chunk(self, obs: dict) -> Tensor: ...


@runtime_checkable
class RLPolicy(Protocol):
    """A trainable chunk policy whose samples have log-probabilities (GRPO and PPO need them)."""

    def sample(self, obs: dict, generator: torch.Generator | None = None) -> ActionSample: ...

    def log_prob(self, obs: dict, sample: ActionSample) -> Tensor: ...  # (B, K), differentiable


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """log N(x; mean, std^2 I), summed over every dimension after the first: (B, ...) -> (B,)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).expand_as(x)
    z = (x - mean) / std
    log_density = -0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)
    return log_density.flatten(1).sum(-1)


def flow_sde_sigma(t: Tensor | float, noise_level: float, t_max: float) -> Tensor:
    """The SDE's diffusion coefficient sigma_t = a * sqrt(t / (1 - t)), with t capped at
    ``t_max`` < 1 where it would diverge (Flow-GRPO)."""
    t = torch.as_tensor(t).clamp(max=t_max)
    return noise_level * torch.sqrt(t / (1 - t))


def flow_sde_step(x: Tensor, v: Tensor, t: float, s: float, noise_level: float, t_max: float,
                  min_std: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mean and std of one step from flow time t to s < t of the reverse SDE that has the same
    marginals as the flow ODE dx/dt = v (x_t = (1 - t) x_0 + t noise, so v = noise - x_0):

        x_s = x_t + [v + sigma_t^2 / (2t) (x_t + (1 - t) v)] (s - t) + sigma_t sqrt(t - s) eps

    The bracket's second term is -sigma_t^2 / 2 times the score, written through v. With
    ``noise_level`` 0 this is the Euler step of the ODE. The std is floored at ``min_std`` (DPPO's
    floor keeps the log-probabilities finite and exploration alive)."""
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"a flow SDE step goes from t to s with 0 <= s < t <= 1, got {t=} {s=}")
    sigma = float(flow_sde_sigma(t, noise_level, t_max))
    dt = s - t
    mean = x + (v + sigma ** 2 / (2 * t) * (x + (1 - t) * v)) * dt
    std = max(sigma * math.sqrt(t - s), min_std)
    return mean, torch.full_like(x, std)


LIKELIHOOD_ALGORITHMS = ("grpo", "ppo")  # RL algorithms that need log-probabilities of the policy's samples
OTHER_ALGORITHMS = ("advantage_conditioned", "filtered_imitation")  # RL algorithms that train with the policy's own loss


def rl_algorithms_for(policy) -> tuple[str, ...]:
    """The RL algorithms that can train ``policy``: GRPO and PPO need an ``RLPolicy``; filtered
    imitation its own ``loss``; advantage conditioning that loss and ``set_task_suffix``."""
    fits = LIKELIHOOD_ALGORITHMS if isinstance(policy, RLPolicy) else ()
    if callable(getattr(policy, "loss", None)):
        words = ("advantage_conditioned",) if callable(getattr(policy, "set_task_suffix", None)) else ()
        fits += words + ("filtered_imitation",)
    return fits


def no_log_prob_message(policy_name: str, needed_by: str) -> str:
    """The error for a policy without log-probabilities where ``needed_by`` needs them."""
    return (f"{policy_name} gives no log-probabilities of its actions, which {needed_by} needs. Algorithms "
            f"that need them: {', '.join(LIKELIHOOD_ALGORITHMS)}; algorithms that train with the policy's own "
            f"loss instead: {', '.join(OTHER_ALGORITHMS)}")
