"""Reward-filtered imitation in imagination (RAFT, ReST; the fine-tuning on successful imagined
rollouts with which Ctrl-World improves a policy inside its world model).

The simplest policy improvement without likelihoods: each iteration, groups of ``group_size``
episodes start from identical frames (as GRPO), the policy acting as it normally does (its ODE
from fresh noise); the episodes that beat their group's mean return are kept and the policy
trains with its own flow-matching loss on their chunks, nothing else about them. A share of
each batch (``real_share``) comes from the dataset, as the anchor to real data; with
``real_successes_only`` only from its successful episodes, which by itself is filtered
behaviour cloning: ``real_share`` 1 is that offline ablation, the gain without any rollout.

With ``memory`` > 1 the kept chunks of the last ``memory`` iterations stay in the pool that the
imagined share is drawn from (ReST's growing dataset): an iteration's few starts (4 with 32 envs
in groups of 8) no longer decide alone what its gradient steps imitate. Kept chunks stay valid data as the policy moves on, since
they are judged by their outcome, not weighted by the policy's likelihood.

It is ``advantage_conditioned`` with two bins, without the conditioning: the bottom bin is
dropped instead of being told apart by words, so the policy's plain task changes meaning. So it
needs only the policy's ``loss``: lerobot policies train with theirs (lerobot's ``forward``), a
Diffusion Policy with lerobot-train's default two observation steps too, on the observation one env
step before and the action taken there (``advantage_conditioned``'s batches).

Dimension legend: B envs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from train.rl.advantage_conditioned import AdvantageConditioned, AdvantageConditionedConfig
from train.rl.base import AlgorithmConfig


@AlgorithmConfig.register_subclass("filtered_imitation")
@dataclass
class FilteredImitationConfig(AlgorithmConfig):
    """Filtered imitation (RAFT, ReST): the policy imitates its better-than-average imagined
    episodes beside real chunks. The defaults are the recipe measured best in imagination (a
    quarter real share, a memory of 40 iterations: docs/benchmarks.md, "RL in imagination
    (filtered_imitation, real share 0.25, memory 40)")."""

    group_size: int = 8  # envs per group (the same start frames)
    # Share of each batch from the dataset (1 = offline, the rollouts unused): 0.25 gained +0.07 over
    # three seeds with a memory of 40, 0.5 without memory +0.06 (research log, 2026-12-01).
    real_share: float = 0.25
    real_successes_only: bool = False  # the real share from successful episodes only (filtered BC)
    steps_per_iteration: int = 20  # gradient steps per update
    batch_size: int = 64  # chunks per gradient step, rollouts and real together
    lr: float = 1e-4  # AdamW's, on every trainable parameter of the policy
    grad_clip: float = 1.0  # on the policy's gradient norm
    shift: int = 4  # random image shift in pixels (DrQ), as in behaviour cloning (0 = none)
    # Iterations whose kept imagined chunks are imitated (1 = this iteration's only); 40 keeps every
    # iteration's of a 40-iteration run.
    memory: int = 40

    def __post_init__(self):
        self.conditioned()  # the same bounds as advantage conditioning's

    def conditioned(self) -> AdvantageConditionedConfig:
        """The advantage-conditioned settings this algorithm runs with: two bins, no words."""
        return AdvantageConditionedConfig(group_size=self.group_size, bins=2, dropout=0.0, real_share=self.real_share,
                                          steps_per_iteration=self.steps_per_iteration, batch_size=self.batch_size,
                                          lr=self.lr, grad_clip=self.grad_clip, shift=self.shift, memory=self.memory)


class FilteredImitation(AdvantageConditioned):
    name = "filtered_imitation"
    needs_log_prob = False
    needs = ("loss",)

    def __init__(self, policy, config: FilteredImitationConfig, views: tuple[str, ...], dataset=None, frames=None):
        super().__init__(policy, config.conditioned(), views, dataset=dataset, frames=frames)
        self.filter_config = config
        if self.frames is not None and config.real_successes_only:
            self.real_pool = torch.nonzero(self.frames.success).flatten()
            if len(self.real_pool) == 0:
                raise ValueError("real_successes_only, but no training episode of the dataset succeeded")

    def _trained(self, kept: Tensor, episode_bins: Tensor) -> Tensor:
        return kept & (episode_bins == self.top_bin)  # the better-than-average episodes only

    def _acting_suffix(self) -> str:
        return ""

    def _set_task_suffix(self, suffix: str) -> None:
        # a policy that acted with advantage words before (set_task_suffix) acts with the plain task
        if callable(getattr(self.policy, "set_task_suffix", None)):
            self.policy.set_task_suffix(suffix)

    def _condition(self, tasks: list[str], bins: Tensor, generator: torch.Generator) -> list[str]:
        return tasks
