"""GRPO in imagination (SimpleVLA-RL, WMPO, Flow-GRPO): groups of rollouts from identical start
frames, each episode's advantage its return standardised within its group, no critic.

The world model makes identical starts free: the envs of a group start from the same real frames
and differ only by the policy's and the world model's noise. Every chunk of an episode carries the
episode's advantage; the loss is PPO's clipped surrogate per stochastic denoising step (DPPO),
plus a KL anchor to the frozen base policy (k3 estimator on the rollout's own samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from train.rl.base import (
    Algorithm,
    Rollouts,
    adapt_kl_weight,
    clipped_surrogate,
    episode_weights,
    fine_tuning_setup,
    group_advantages,
    group_starts,
    kl_k3,
    minibatches,
)


@dataclass
class GRPOConfig:
    group_size: int = 8  # envs per group (the same start frames)
    # Divide advantages by the group's std (GRPO) or not (Dr. GRPO, the default): on Lift the
    # imagined returns of a group often differ only by how fast the episode succeeded, and the
    # division turned those small differences into full-size advantages that made the policy
    # drift (docs/research_log.md, 2026-11-21).
    scale_by_std: bool = False
    # Groups whose returns spread less than this (std) are dropped: with every episode solved,
    # returns differ only by speed and noise, and Adam turns even tiny gradients into full-size
    # steps; on Lift that drift took the policy from all to no imagined successes in a few
    # iterations (docs/benchmarks.md). 0.05 keeps every group where one episode of eight failed.
    min_return_std: float = 0.05
    # Weigh every episode the same, whatever its length (GRPO's per-sequence mean): a chunk carries
    # its episode's advantage x (mean length / its episode's length), so a group's advantages sum
    # to zero over its chunks. Per chunk (False), failed episodes, which run longer, outweigh the
    # successes, and the loss also lowers the likelihood of the policy's own samples. Measured in
    # the physics control at lr 1e-4, it did not stop the collapse (docs/benchmarks.md).
    episode_weights: bool = False
    epochs: int = 2  # passes over an iteration's samples
    minibatch_size: int = 64  # chunk samples per gradient step
    lr: float = 1e-5
    clip: float = 0.2  # ratio clip, per denoising step (log-ratio per action dimension)
    kl_weight: float = 1.0  # anchor to the base policy (KL per action dimension)
    # With a target, the anchor's weight adapts after every iteration (train.rl.base.adapt_kl_weight).
    kl_target: float | None = None
    # Early stop (PPO's target_kl, as in Stable-Baselines3): the iteration's remaining gradient
    # steps are skipped once a minibatch's approximate KL to the rollout policy (per dimension)
    # passes this. Unlike the anchor's weight, this bounds how far one iteration moves the policy;
    # it does not bound the sum of many (at lr 1e-4 in physics the KL to the base still grew 3x an
    # iteration, docs/benchmarks.md).
    max_step_kl: float | None = None
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"a group needs >= 2 rollouts to have an advantage, got {self.group_size=}")
        if (self.epochs < 1 or self.minibatch_size < 1 or self.lr <= 0 or self.clip <= 0 or self.kl_weight < 0
                or self.min_return_std < 0 or (self.max_step_kl is not None and self.max_step_kl <= 0)):
            raise ValueError(f"bad GRPO settings: {self}")
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_weight <= 0):
            raise ValueError(f"an adaptive KL needs kl_target > 0 and a starting kl_weight > 0, got "
                             f"{self.kl_target=} {self.kl_weight=}")


class GRPO(Algorithm):
    name = "grpo"
    needs_log_prob = True

    def __init__(self, policy, config: GRPOConfig, views: tuple[str, ...]):
        super().__init__(policy, config, views)
        self.reference, self.opt = fine_tuning_setup(policy, config.lr)
        self.kl_weight = config.kl_weight  # adapted after each update when config.kl_target is set

    def start_index(self, num_envs: int, num_starts: int, generator: torch.Generator) -> torch.Tensor:
        return group_starts(num_envs, num_starts, self.config.group_size, generator)

    def update(self, rollouts: Rollouts, generator: torch.Generator) -> dict:
        cfg = self.config
        advantages, kept = group_advantages(rollouts.returns, cfg.group_size, cfg.scale_by_std, cfg.min_return_std)
        t_idx, b_idx = torch.nonzero(rollouts.alive & kept[None], as_tuple=True)
        if cfg.episode_weights and kept.any():
            advantages = advantages * episode_weights(rollouts.alive, kept)
        metrics = {"groups_kept": kept.float().mean().item(), "samples": len(t_idx), "kl_weight": self.kl_weight}
        if len(t_idx) == 0:  # every group's returns were equal: nothing to learn from
            return metrics
        B = rollouts.alive.shape[1]
        sums: dict[str, float] = {}
        batches = [mb for _ in range(cfg.epochs) for mb in minibatches(len(t_idx), cfg.minibatch_size, generator)]
        steps, stop = 0, {}
        self.policy.train()
        for mb in batches:
            t, b = t_idx[mb], b_idx[mb]
            obs = rollouts.observation(t, b, self.views)
            sample = rollouts.samples[t * B + b].to(self.policy.device)
            new = self.policy.log_prob(obs, sample)
            dims = sample.actions[0].numel()
            loss, step_metrics = clipped_surrogate(new, sample.log_probs, advantages[b].to(new.device), cfg.clip, dims)
            if steps and cfg.max_step_kl is not None and step_metrics["approx_kl"] > cfg.max_step_kl:
                stop = {"approx_kl_at_stop": step_metrics["approx_kl"]}  # how far it had moved (not in the means)
                break  # this iteration has moved the policy far enough
            with torch.no_grad():
                ref = self.reference.log_prob(obs, sample)
            kl = kl_k3(new, ref, dims)
            self.opt.zero_grad(set_to_none=True)
            (loss + self.kl_weight * kl).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            self.opt.step()
            steps += 1
            step_metrics |= {"policy_loss": loss.item(), "kl_to_base": kl.item(), "grad_norm": float(grad_norm)}
            for k, v in step_metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        totals = {k: v / steps for k, v in sums.items()} | {"gradient_steps": steps} | stop
        self.policy.eval()
        if cfg.kl_target is not None:
            self.kl_weight = adapt_kl_weight(self.kl_weight, totals["kl_to_base"], cfg.kl_target)
        return metrics | totals

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "kl_weight": self.kl_weight}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.kl_weight = state.get("kl_weight", self.config.kl_weight)
