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
    AlgorithmConfig,
    Rollouts,
    clipped_surrogate,
    fine_tuning_setup,
    group_advantages,
    group_starts,
    kl_k3,
    minibatches,
)


@AlgorithmConfig.register_subclass("grpo")
@dataclass
class GRPOConfig(AlgorithmConfig):
    """GRPO lowered physics success on Lift (-0.20 over three seeds, docs/benchmarks.md). Three
    guards against its drift were measured not to hold it at lr 1e-4 in physics and were removed:
    an adaptive KL weight, a per-iteration KL stop and equal episode weights (research log,
    2026-11-22)."""

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
    epochs: int = 2  # passes over an iteration's samples
    minibatch_size: int = 64  # chunk samples per gradient step
    lr: float = 1e-5  # AdamW's, on the policy's fine-tuned (last) denoising steps
    clip: float = 0.2  # ratio clip, per denoising step (log-ratio per action dimension)
    kl_weight: float = 1.0  # anchor to the base policy (KL per action dimension)
    grad_clip: float = 1.0  # on the policy's gradient norm

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"a group needs >= 2 rollouts to have an advantage, got {self.group_size=}")
        for name in ("epochs", "minibatch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        for name in ("lr", "clip", "grad_clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)=}")
        if self.kl_weight < 0 or self.min_return_std < 0:
            raise ValueError(f"need kl_weight >= 0 and min_return_std >= 0, got {self.kl_weight=} {self.min_return_std=}")


class GRPO(Algorithm):
    name = "grpo"
    needs_log_prob = True

    def __init__(self, policy, config: GRPOConfig, views: tuple[str, ...]):
        super().__init__(policy, config, views)
        self.reference, self.opt = fine_tuning_setup(policy, config.lr)

    def start_index(self, num_envs: int, num_starts: int, generator: torch.Generator) -> torch.Tensor:
        return group_starts(num_envs, num_starts, self.config.group_size, generator)

    def update(self, rollouts: Rollouts, generator: torch.Generator) -> dict:
        cfg = self.config
        advantages, kept = group_advantages(rollouts.returns, cfg.group_size, cfg.scale_by_std, cfg.min_return_std)
        t_idx, b_idx = torch.nonzero(rollouts.alive & kept[None], as_tuple=True)
        metrics = {"groups_kept": kept.float().mean().item(), "samples": len(t_idx)}
        if len(t_idx) == 0:  # every group's returns were equal: nothing to learn from
            return metrics
        B = rollouts.alive.shape[1]
        sums: dict[str, float] = {}
        batches = [mb for _ in range(cfg.epochs) for mb in minibatches(len(t_idx), cfg.minibatch_size, generator)]
        self.policy.train()
        for mb in batches:
            t, b = t_idx[mb], b_idx[mb]
            obs = rollouts.observation(t, b, self.views)
            sample = rollouts.samples[t * B + b].to(self.policy.device)
            new = self.policy.log_prob(obs, sample)
            dims = sample.actions[0].numel()
            loss, step_metrics = clipped_surrogate(new, sample.log_probs, advantages[b].to(new.device), cfg.clip, dims)
            with torch.no_grad():
                ref = self.reference.log_prob(obs, sample)
            kl = kl_k3(new, ref, dims)
            self.opt.zero_grad(set_to_none=True)
            (loss + cfg.kl_weight * kl).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            self.opt.step()
            step_metrics |= {"policy_loss": loss.item(), "kl_to_base": kl.item(), "grad_norm": float(grad_norm)}
            for k, v in step_metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        self.policy.eval()
        return metrics | {k: v / len(batches) for k, v in sums.items()} | {"gradient_steps": len(batches)}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
